"""Reads about the monitor and its records, for the console (admin, API, metrics)."""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from .models import MONITOR, Heartbeat

RECENT_ERROR_CYCLES = 10  # a cycle's error is shown while it is at most this many intervals old


def monitor_stale_after_seconds() -> int:
    return 2 * settings.MONITOR_INTERVAL_SECONDS


# How long each heartbeat (a Heartbeat row, by name) may go without a beat (`finished_at`)
# before it is stale. A process with a heartbeat of its own (the trade_updates stream:
# "stream") adds its threshold here; a name not listed gets the monitor's.
STALE_AFTER: dict[str, Callable[[], int]] = {MONITOR: monitor_stale_after_seconds}


def heartbeat_stale_after_seconds(name: str) -> int:
    return STALE_AFTER.get(name, monitor_stale_after_seconds)()


@dataclass(frozen=True)
class HeartbeatStatus:
    """A heartbeat and whether it is fresh (it beat within its `stale_after_seconds`)."""

    name: str
    heartbeat: Heartbeat | None
    age_seconds: int | None  # since the last beat (for the monitor: since its last cycle finished)
    stale_after_seconds: int
    checked_at: datetime

    @property
    def stale(self) -> bool:
        return self.age_seconds is None or self.age_seconds > self.stale_after_seconds

    @property
    def finished_at(self) -> datetime | None:
        return self.heartbeat.finished_at if self.heartbeat else None

    @property
    def recent_error(self) -> str:
        """The last error while it is recent (RECENT_ERROR_CYCLES intervals), else ""."""
        row = self.heartbeat
        if row is None or not row.last_error or row.last_error_at is None:
            return ""
        window = timedelta(seconds=RECENT_ERROR_CYCLES * settings.MONITOR_INTERVAL_SECONDS)
        return row.last_error if self.checked_at - row.last_error_at <= window else ""


def _status(name: str, heartbeat: Heartbeat | None, now: datetime) -> HeartbeatStatus:
    age = None
    if heartbeat is not None and heartbeat.finished_at is not None:
        age = max(0, int((now - heartbeat.finished_at).total_seconds()))
    return HeartbeatStatus(name=name, heartbeat=heartbeat, age_seconds=age,
                           stale_after_seconds=heartbeat_stale_after_seconds(name), checked_at=now)


def monitor_status(*, now: datetime | None = None) -> HeartbeatStatus:
    """The monitor's heartbeat. One query."""
    now = now or timezone.now()
    return _status(MONITOR, Heartbeat.objects.filter(name=MONITOR).first(), now)


def heartbeats_status(*, now: datetime | None = None) -> list[HeartbeatStatus]:
    """Every heartbeat there is (the monitor's, the stream's...), by name. One query."""
    now = now or timezone.now()
    return [_status(row.name, row, now) for row in Heartbeat.objects.order_by("name")]
