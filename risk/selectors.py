"""Reads about the monitor, the stream and their records, for the console (admin and API)."""

from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.utils import timezone

from .models import MONITOR, STREAM, Heartbeat


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


@dataclass(frozen=True)
class StreamStatus:
    """The trade_updates stream: healthy while connected and seen within STREAM_HEALTHY_SECONDS."""

    heartbeat: Heartbeat | None
    age_seconds: int | None  # since it was last seen connected

    @property
    def healthy(self) -> bool:
        return (self.heartbeat is not None and self.age_seconds is not None
                and self.heartbeat.consecutive_error_cycles == 0 and self.age_seconds <= settings.STREAM_HEALTHY_SECONDS)

    @property
    def connected_since(self) -> datetime | None:
        return self.heartbeat.started_at if self.healthy else None


def stream_status(*, now: datetime | None = None) -> StreamStatus:
    """One query."""
    now = now or timezone.now()
    heartbeat = Heartbeat.objects.filter(name=STREAM).first()
    age = None
    if heartbeat is not None and heartbeat.finished_at is not None:
        age = max(0, int((now - heartbeat.finished_at).total_seconds()))
    return StreamStatus(heartbeat=heartbeat, age_seconds=age)


@dataclass(frozen=True)
class ProtectionAsOf:
    """When the broker last confirmed our picture of the positions' protection: the stream
    while it is healthy (now), else the monitor's last quick sync."""

    at: datetime | None
    stale_after_seconds: int
    age_seconds: int | None

    @property
    def stale(self) -> bool:
        return self.age_seconds is None or self.age_seconds > self.stale_after_seconds


def protection_as_of(*, monitor: MonitorStatus, stream: StreamStatus, now: datetime | None = None) -> ProtectionAsOf:
    now = now or timezone.now()
    candidates = [monitor.heartbeat.last_broker_sync_at if monitor.heartbeat else None,
                  stream.heartbeat.finished_at if stream.healthy else None]
    at = max((c for c in candidates if c is not None), default=None)
    age = None if at is None else max(0, int((now - at).total_seconds()))
    return ProtectionAsOf(at=at, stale_after_seconds=monitor_stale_after_seconds(), age_seconds=age)
