"""Reads about the monitor and its records, for the console (admin and API)."""

from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.utils import timezone

from .models import Heartbeat

MONITOR = "monitor"


@dataclass(frozen=True)
class MonitorStatus:
    """The monitor's heartbeat and whether it is fresh (a cycle finished within 2 intervals)."""

    heartbeat: Heartbeat | None
    age_seconds: int | None  # since the last cycle finished
    stale_after_seconds: int

    @property
    def stale(self) -> bool:
        return self.age_seconds is None or self.age_seconds > self.stale_after_seconds

    @property
    def finished_at(self) -> datetime | None:
        return self.heartbeat.finished_at if self.heartbeat else None


def monitor_stale_after_seconds() -> int:
    return 2 * settings.MONITOR_INTERVAL_SECONDS


def monitor_status(*, now: datetime | None = None) -> MonitorStatus:
    """One query."""
    now = now or timezone.now()
    heartbeat = Heartbeat.objects.filter(name=MONITOR).first()
    age = None
    if heartbeat is not None and heartbeat.finished_at is not None:
        age = max(0, int((now - heartbeat.finished_at).total_seconds()))
    return MonitorStatus(heartbeat=heartbeat, age_seconds=age, stale_after_seconds=monitor_stale_after_seconds())
