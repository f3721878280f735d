"""Alerts: stored first, then delivered by email and webhook off the monitor's thread."""

import logging
import threading
import time

import requests
from django.conf import settings
from django.core.mail import send_mail
from django.db import DatabaseError, close_old_connections, transaction

from trading.models import Position

from .models import Alert, DeliveryStatus

log = logging.getLogger("risk.alerts")


def alert_send(*, kind: str, message: str, position: Position | None = None) -> Alert | None:
    """Store an alert and deliver it in the background once the transaction commits.

    Delivery has a timeout and a few retries, and runs in a daemon thread, so a slow or
    dead webhook can never hold up the monitor.
    """
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
        transaction.on_commit(lambda: threading.Thread(target=_deliver_in_thread, args=(alert.pk,), daemon=True).start())
    return alert


def _deliver_in_thread(alert_id: int) -> None:
    try:
        alert_deliver(alert=Alert.objects.get(pk=alert_id))
    except Exception:  # a thread must not die silently
        log.exception("alert %s delivery crashed", alert_id)
    finally:
        close_old_connections()


def _webhook_post(text: str) -> None:
    response = requests.post(
        settings.ALERT_WEBHOOK_URL, json={"text": text}, timeout=float(settings.ALERT_WEBHOOK_TIMEOUT_SECONDS)
    )
    response.raise_for_status()


def alert_deliver(*, alert: Alert) -> Alert:
    """Deliver a stored alert; each channel retried a few times, failures kept on the row."""
    text = f"[Catalyst] {alert.get_kind_display()}: {alert.message}"
    errors = []
    for status_field, send in (
        ("email_status", lambda: send_mail(f"[Catalyst] {alert.get_kind_display()}", text, None, settings.ALERT_EMAIL_TO)),
        ("webhook_status", lambda: _webhook_post(text)),
    ):
        if getattr(alert, status_field) != DeliveryStatus.PENDING:
            continue
        for attempt in range(settings.ALERT_WEBHOOK_RETRIES + 1):
            alert.attempts += 1
            try:
                send()
            except Exception as exc:  # any failure of a channel is recorded, never raised
                last = f"{status_field.split('_')[0]}: {type(exc).__name__}"
                if attempt < settings.ALERT_WEBHOOK_RETRIES:
                    time.sleep(0.5 * (attempt + 1))
                    continue
                errors.append(last)
                setattr(alert, status_field, DeliveryStatus.FAILED)
            else:
                setattr(alert, status_field, DeliveryStatus.SENT)
            break
    alert.last_error = "; ".join(errors)
    alert.save(update_fields=["email_status", "webhook_status", "attempts", "last_error"])
    return alert
