"""Alerts: stored first, then delivered by email and webhook off the monitor's thread.

- The row is written before anything is sent, so an alert is never lost: a delivery that
  fails (or a process that exits before its delivery thread ran) leaves it `pending` or
  `failed`, and `alerts_deliver_pending()` sends it later.
- Delivery runs in daemon threads started after the transaction commits, at most
  ALERT_MAX_PARALLEL_DELIVERIES at a time; each webhook POST has a timeout and a few
  retries, so a slow or dead webhook never holds up the monitor.
- Messages are scrubbed of the broker credentials and the webhook URL before they are
  stored, mailed or posted; delivery errors are kept as a type name and HTTP status, never
  the exception text (which may carry the webhook URL, itself a secret for Slack).
"""

import logging
import threading
import time
from datetime import timedelta

import requests
from django.conf import settings
from django.core.mail import send_mail
from django.db import DatabaseError, close_old_connections, transaction
from django.db.models import Q
from django.utils import timezone

from trading.models import Position
from trading.redaction import scrub

from .models import Alert, AlertKind, DeliveryStatus

log = logging.getLogger("risk.alerts")

RETRY_BACKOFF_SECONDS = 0.5  # waits 0.5 s, 1 s, 1.5 s... between attempts of one channel
ALERT_MAX_PARALLEL_DELIVERIES = 4
DB_RETRIES = 10

_slots = threading.BoundedSemaphore(ALERT_MAX_PARALLEL_DELIVERIES)
_threads: set[threading.Thread] = set()
_threads_lock = threading.Lock()

def alert_send(*, kind: str, message: str, position: Position | None = None) -> Alert | None:
    """Store an alert and deliver it in the background once the transaction commits.

    Never raises: an alert that can't be stored is logged, and the caller (the monitor)
    carries on protecting positions.
    """
    if kind not in AlertKind.values:
        log.error("alert of unknown kind %r stored anyway", kind)
    message = scrub(message)
    try:
        alert = Alert.objects.create(
            kind=kind,
            message=message,
            position=position,
            email_status=DeliveryStatus.PENDING if settings.ALERT_EMAIL_TO else DeliveryStatus.SKIPPED,
            webhook_status=DeliveryStatus.PENDING if settings.ALERT_WEBHOOK_URL else DeliveryStatus.SKIPPED,
        )
    except DatabaseError as exc:
        log.error("alert not stored (%s): %s | %s", type(exc).__name__, kind, message)
        return None
    log.warning("ALERT %s: %s", kind, message)
    if DeliveryStatus.PENDING in (alert.email_status, alert.webhook_status):
        alert_id = alert.pk
        try:
            transaction.on_commit(lambda: _start_delivery(alert_id))
        except Exception as exc:  # e.g. a broken transaction: the sweeper sends it later
            log.error("alert %s delivery not scheduled (%s)", alert_id, type(exc).__name__)
    return alert


def _start_delivery(alert_id: int) -> threading.Thread:
    thread = threading.Thread(target=_deliver_in_thread, args=(alert_id,), daemon=True,
                              name=f"alert-{alert_id}")
    with _threads_lock:
        _threads.add(thread)
    thread.start()
    return thread


def _with_db_retries(fn, what: str):
    """Run a small query, retried briefly: a busy SQLite (another process or thread writing)
    answers "locked" at once instead of waiting."""
    for attempt in range(DB_RETRIES):
        try:
            return fn()
        except DatabaseError as exc:
            if attempt + 1 == DB_RETRIES:
                raise
            log.info("%s: %s, retrying", what, type(exc).__name__)
            close_old_connections()
            time.sleep(0.2 * (attempt + 1))


def _deliver_in_thread(alert_id: int) -> None:
    try:
        with _slots:
            alert = _with_db_retries(lambda: Alert.objects.get(pk=alert_id),
                                     f"alert {alert_id} not read")
            alert_deliver(alert=alert)
    except Exception:  # a thread must not die silently
        log.exception("alert %s delivery crashed", alert_id)
    finally:
        close_old_connections()
        with _threads_lock:
            _threads.discard(threading.current_thread())


def alert_threads_join(timeout: float = 10.0) -> bool:
    """Wait (at most `timeout` seconds in all) for deliveries in flight; True when none is left.

    For short-lived processes (management commands) so their alerts go out before exit.
    """
    deadline = time.monotonic() + timeout
    while True:
        with _threads_lock:
            pending = [t for t in _threads if t.is_alive()]
        if not pending:
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        pending[0].join(min(remaining, 0.5))


def _alert_text(alert: Alert) -> str:
    return f"[Catalyst] {alert.get_kind_display()}: {scrub(alert.message)}"  # messages name their position


def _subject(alert: Alert) -> str:
    first_line = " ".join(scrub(alert.message).split())[:120]
    return f"[Catalyst] {alert.get_kind_display()}: {first_line}"


def _webhook_post(text: str) -> None:
    response = requests.post(
        settings.ALERT_WEBHOOK_URL, json={"text": text}, timeout=float(settings.ALERT_WEBHOOK_TIMEOUT_SECONDS)
    )
    response.raise_for_status()


def _email_send(alert: Alert, text: str) -> None:
    send_mail(_subject(alert), text, None, list(settings.ALERT_EMAIL_TO))


def _describe_error(exc: Exception) -> str:
    """A failure without its text: exception texts may carry the webhook URL."""
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return f"{type(exc).__name__} HTTP {exc.response.status_code}"
    return type(exc).__name__


def alert_deliver(*, alert: Alert) -> Alert:
    """Deliver a stored alert on every pending channel; each channel is tried
    1 + ALERT_WEBHOOK_RETRIES times, with a short backoff. Failures are kept on the row,
    never raised."""
    text = _alert_text(alert)
    channels = (
        ("email_status", "email", lambda: _email_send(alert, text)),
        ("webhook_status", "webhook", lambda: _webhook_post(text)),
    )
    errors = []
    for status_field, name, send in channels:
        if getattr(alert, status_field) != DeliveryStatus.PENDING:
            continue
        if name == "email" and not settings.ALERT_EMAIL_TO or name == "webhook" and not settings.ALERT_WEBHOOK_URL:
            setattr(alert, status_field, DeliveryStatus.SKIPPED)  # configuration changed since it was stored
            continue
        attempts = settings.ALERT_WEBHOOK_RETRIES + 1
        for attempt in range(attempts):
            alert.attempts = min(alert.attempts + 1, 32767)
            try:
                send()
            except Exception as exc:  # any failure of a channel is recorded, never raised
                last = f"{name}: {_describe_error(exc)} after {attempt + 1} attempt(s)"
                if attempt + 1 < attempts:
                    time.sleep(RETRY_BACKOFF_SECONDS * (attempt + 1))
                    continue
                errors.append(last)
                setattr(alert, status_field, DeliveryStatus.FAILED)
                log.error("alert %s not delivered by %s", alert.pk, last)
            else:
                setattr(alert, status_field, DeliveryStatus.SENT)
            break
    alert.last_error = "; ".join(errors)
    try:
        _with_db_retries(lambda: alert.save(update_fields=["email_status", "webhook_status", "attempts", "last_error"]),
                         f"alert {alert.pk} status not stored")
    except DatabaseError as exc:
        log.error("alert %s delivery status not stored (%s)", alert.pk, type(exc).__name__)
    return alert


def alerts_deliver_pending_in_background() -> threading.Thread:
    """`alerts_deliver_pending` in a daemon thread of its own (a dead webhook must not hold
    up its caller)."""

    def run():
        try:
            alerts_deliver_pending()
        except Exception:  # a thread must not die silently; the next run tries again
            log.exception("pending alerts not delivered")
        finally:
            close_old_connections()

    thread = threading.Thread(target=run, name="alerts-pending", daemon=True)
    thread.start()
    return thread


def alerts_deliver_pending(*, older_than_seconds: int = 60, limit: int = 50) -> int:
    """Deliver alerts still pending after `older_than_seconds` (their process exited before the
    thread ran, or scheduling failed). Runs in the caller's thread; returns how many it tried."""
    cutoff = timezone.now() - timedelta(seconds=older_than_seconds)
    pending = Q(email_status=DeliveryStatus.PENDING) | Q(webhook_status=DeliveryStatus.PENDING)
    stuck = list(Alert.objects.filter(pending, created_at__lt=cutoff).order_by("created_at", "id")[:limit])
    for alert in stuck:
        alert_deliver(alert=alert)
    return len(stuck)
