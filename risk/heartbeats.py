"""Noticing a heartbeat that stopped: one alert when it goes stale, one when it beats again.

Run by whatever is still alive: the django-q2 scheduled task (every MONITOR_INTERVAL_SECONDS,
whether or not it gets to run a cycle) and `runmonitor` after each cycle. Each transition is
a compare-and-set on `Heartbeat.stale_alerted_at`, so however many processes check, a
staleness episode raises one alert. Works for any Heartbeat row by name (the monitor's, and
the trade_updates stream's once it writes one); thresholds: risk.selectors.STALE_AFTER.
"""

from datetime import datetime

from django.utils import timezone

from .alerts import alert_send
from .models import MONITOR, QUOTES, AlertKind, Heartbeat
from .selectors import HeartbeatStatus, heartbeats_status

CONSEQUENCE = {MONITOR: "No stop or target is checked by the fallback monitor until it runs again.",
               QUOTES: "The quote stream is silent or down: the monitor polls every symbol at its normal "
                       "interval again until it is back."}


def _stale_message(status: HeartbeatStatus) -> str:
    if status.finished_at is None:
        last = "it has never beaten"
    else:
        last = f"last beat {status.finished_at:%Y-%m-%d %H:%M:%S} UTC, {status.age_seconds}s ago"
    consequence = CONSEQUENCE.get(status.name, "")
    return (f"The {status.name} heartbeat is stale: {last} (stale after {status.stale_after_seconds}s). "
            f"{consequence}").strip()


def heartbeats_stale_check(*, now: datetime | None = None) -> list[str]:
    """Alert heartbeats that went stale or came back since the last check; returns the alerts'
    kinds and names ("heartbeat_stale monitor"). One query when nothing changed."""
    now = now or timezone.now()
    raised = []
    for status in heartbeats_status(now=now):
        row = status.heartbeat
        if status.stale and row.stale_alerted_at is None:
            if Heartbeat.objects.filter(pk=row.pk, stale_alerted_at__isnull=True).update(stale_alerted_at=now):
                alert_send(kind=AlertKind.HEARTBEAT_STALE, message=_stale_message(status))
                raised.append(f"{AlertKind.HEARTBEAT_STALE} {status.name}")
        elif not status.stale and row.stale_alerted_at is not None:
            if Heartbeat.objects.filter(pk=row.pk, stale_alerted_at=row.stale_alerted_at).update(stale_alerted_at=None):
                down = int((row.finished_at - row.stale_alerted_at).total_seconds()) if row.finished_at else 0
                alert_send(kind=AlertKind.HEARTBEAT_BACK,
                           message=f"The {status.name} heartbeat beats again: last beat "
                                   f"{row.finished_at:%Y-%m-%d %H:%M:%S} UTC, {max(down, 0)}s after the stale alert.")
                raised.append(f"{AlertKind.HEARTBEAT_BACK} {status.name}")
    return raised
