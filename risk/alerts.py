"""Alerts: stored first, then delivered by email (Django's mail) and through Apprise (Slack,
Telegram, PagerDuty, a JSON webhook and the rest: ALERT_APPRISE_URLS) off the monitor's thread.

- The row is written before anything is sent, so an alert is never lost: a delivery that
  fails (or a process that exits before its delivery thread ran) leaves it `pending` or
  `failed`, and `alerts_deliver_pending()` sends it later.
- Delivery runs in daemon threads started after the transaction commits, at most
  ALERT_MAX_PARALLEL_DELIVERIES at a time; each Apprise URL has a timeout and a few retries
  (ALERT_WEBHOOK_TIMEOUT_SECONDS, ALERT_WEBHOOK_RETRIES), so a slow or dead endpoint never
  holds up the monitor. Only the URLs that failed are tried again.
- The Apprise URLs carry credentials: messages are scrubbed of them and of the broker keys
  before they are stored, mailed or sent; a failure is kept as the URL's position, scheme and
  HTTP status, never the URL or an exception text. Apprise's own log (which names hosts) is
  not shown.
- ALERT_WEBHOOK_URL (the former Slack-compatible webhook) is sent through Apprise's json://
  with the same `{"text": ...}` body it always had.
"""

import logging
import re
import threading
import time
from datetime import timedelta
from urllib.parse import parse_qsl, urlsplit

import apprise
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
            apprise_status=DeliveryStatus.PENDING if apprise_urls() else DeliveryStatus.SKIPPED,
        )
    except DatabaseError as exc:
        log.error("alert not stored (%s): %s | %s", type(exc).__name__, kind, message)
        return None
    log.warning("ALERT %s: %s", kind, message)
    if DeliveryStatus.PENDING in (alert.email_status, alert.apprise_status):
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


def _legacy_webhook(url: str) -> str:
    """ALERT_WEBHOOK_URL as an Apprise URL: json(s):// posting `{"text": ...}` as before."""
    parts = urlsplit(url)
    scheme = "jsons" if parts.scheme == "https" else "json"
    params = "&".join(f"-{key}={value}" for key, value in parse_qsl(parts.query))  # its own query, kept
    drop = ":version=&:title=&:attachments=&:type="
    return f"{scheme}://{parts.netloc}{parts.path or '/'}?:message=text&{drop}" + (f"&{params}" if params else "")


def apprise_urls() -> list[str]:
    """Where alerts go besides email: ALERT_APPRISE_URLS, then ALERT_WEBHOOK_URL translated."""
    urls = list(settings.ALERT_APPRISE_URLS)
    if settings.ALERT_WEBHOOK_URL:
        urls.append(_legacy_webhook(settings.ALERT_WEBHOOK_URL))
    return urls


def _with_timeouts(url: str) -> str:
    """The URL with Apprise's connect and read timeouts (cto, rto), unless it sets its own."""
    timeout = f"{settings.ALERT_WEBHOOK_TIMEOUT_SECONDS:g}"
    extra = "&".join(f"{key}={timeout}" for key in ("cto", "rto") if not re.search(rf"[?&]{key}=", url))
    if not extra:
        return url
    return f"{url}{'&' if '?' in url else '?'}{extra}"


def _failure(result: apprise.AppriseResult) -> str:
    """What went wrong, from Apprise's own log of the call (the HTTP status, a connection
    error): a short description, never its text, which can name the host."""
    text = " ".join(entry.message for entry in result.logs())
    status = re.search(r"error=(\d{3})", text)
    if status:
        return f"HTTP {status.group(1)}"
    if re.search(r"(?i)connection error|timed out|timeout", text):
        return "connection error or timeout"
    return "not delivered"


def _apprise_send(url: str, text: str) -> str:
    """Send one notification to one Apprise URL: "" when delivered, else a description."""
    notifier = apprise.Apprise()
    if not notifier.add(_with_timeouts(url)):
        return "not a URL Apprise can read"
    result = notifier.notify(body=text, title="", log_level=logging.WARNING)
    return "" if result else _failure(result)


def _scheme(url: str) -> str:
    return url.split("://", 1)[0].lower()[:12]


def _email_send(alert: Alert, text: str) -> None:
    send_mail(_subject(alert), text, None, list(settings.ALERT_EMAIL_TO))


def _email_deliver(alert: Alert, text: str, attempts: int) -> str:
    """"" when sent, else what went wrong (an exception's type, never its text)."""
    for attempt in range(attempts):
        alert.attempts = min(alert.attempts + 1, 32767)
        try:
            _email_send(alert, text)
        except Exception as exc:  # any failure of a channel is recorded, never raised
            if attempt + 1 < attempts:
                time.sleep(RETRY_BACKOFF_SECONDS * (attempt + 1))
                continue
            return f"email: {type(exc).__name__} after {attempt + 1} attempt(s)"
        return ""
    return ""


def _apprise_deliver(alert: Alert, text: str, urls: list[str], attempts: int) -> str:
    """Each URL tried up to `attempts` times (only the failing ones again); "" when all took it."""
    failing = dict(enumerate(urls, start=1))
    problems: dict[int, str] = {}
    for attempt in range(attempts):
        alert.attempts = min(alert.attempts + 1, 32767)
        for number, url in list(failing.items()):
            problem = _apprise_send(url, text)
            if problem:
                problems[number] = problem
            else:
                del failing[number]
        if not failing:
            return ""
        if attempt + 1 < attempts:
            time.sleep(RETRY_BACKOFF_SECONDS * (attempt + 1))
    return "; ".join(f"apprise URL #{number} ({_scheme(url)}): {problems[number]} after {attempts} attempt(s)"
                     for number, url in failing.items())


def alert_deliver(*, alert: Alert) -> Alert:
    """Deliver a stored alert on every pending channel; each is tried 1 + ALERT_WEBHOOK_RETRIES
    times, with a short backoff. Failures are kept on the row (scrubbed), never raised."""
    text = _alert_text(alert)
    attempts = settings.ALERT_WEBHOOK_RETRIES + 1
    urls = apprise_urls()
    errors = []
    if alert.email_status == DeliveryStatus.PENDING:
        if not settings.ALERT_EMAIL_TO:  # configuration changed since it was stored
            alert.email_status = DeliveryStatus.SKIPPED
        else:
            problem = _email_deliver(alert, text, attempts)
            alert.email_status = DeliveryStatus.FAILED if problem else DeliveryStatus.SENT
            errors += [problem] if problem else []
    if alert.apprise_status == DeliveryStatus.PENDING:
        if not urls:
            alert.apprise_status = DeliveryStatus.SKIPPED
        else:
            problem = _apprise_deliver(alert, text, urls, attempts)
            alert.apprise_status = DeliveryStatus.FAILED if problem else DeliveryStatus.SENT
            errors += [problem] if problem else []
    alert.last_error = scrub("; ".join(errors))
    for error in errors:
        log.error("alert %s not delivered: %s", alert.pk, scrub(error))
    try:
        _with_db_retries(lambda: alert.save(update_fields=["email_status", "apprise_status", "attempts", "last_error"]),
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
    pending = Q(email_status=DeliveryStatus.PENDING) | Q(apprise_status=DeliveryStatus.PENDING)
    stuck = list(Alert.objects.filter(pending, created_at__lt=cutoff).order_by("created_at", "id")[:limit])
    for alert in stuck:
        alert_deliver(alert=alert)
    return len(stuck)
