"""Reads about the monitor, the stream and their records, for the console (admin, API, metrics)."""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from trading.models import Position

from .models import MONITOR, QUOTES, STREAM, Heartbeat, StreamedSymbol

RECENT_ERROR_CYCLES = 10  # a cycle's error is shown while it is at most this many intervals old


def monitor_stale_after_seconds() -> int:
    return 2 * settings.MONITOR_INTERVAL_SECONDS


# How long each heartbeat (a Heartbeat row, by name) may go without a beat (`finished_at`)
# before it is stale; a name not listed gets the monitor's. The trade_updates stream beats
# while it is connected: stale means down (or its process dead), and the monitor syncs.
STALE_AFTER: dict[str, Callable[[], int]] = {MONITOR: monitor_stale_after_seconds,
                                             STREAM: lambda: settings.STREAM_HEALTHY_SECONDS,
                                             QUOTES: lambda: settings.STREAM_SILENCE_SECONDS}


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


def stream_status(*, now: datetime | None = None) -> HeartbeatStatus:
    """The trade_updates stream's heartbeat: fresh while it was seen connected within
    STREAM_HEALTHY_SECONDS (`started_at`: connected since; `cycles`: events applied). One query."""
    now = now or timezone.now()
    return _status(STREAM, Heartbeat.objects.filter(name=STREAM).first(), now)


@dataclass(frozen=True)
class ProtectionAsOf:
    """When the broker last confirmed our picture of the positions' protection: the stream
    while it is fresh, else the monitor's last broker sync."""

    at: datetime | None
    stale_after_seconds: int
    age_seconds: int | None

    @property
    def stale(self) -> bool:
        return self.age_seconds is None or self.age_seconds > self.stale_after_seconds


def protection_as_of(*, monitor: HeartbeatStatus, stream: HeartbeatStatus,
                     now: datetime | None = None) -> ProtectionAsOf:
    now = now or timezone.now()
    candidates = [row.last_broker_sync_at for row in (monitor.heartbeat, stream.heartbeat) if row is not None]
    candidates.append(stream.finished_at if not stream.stale else None)
    at = max((c for c in candidates if c is not None), default=None)
    age = None if at is None else max(0, int((now - at).total_seconds()))
    return ProtectionAsOf(at=at, stale_after_seconds=monitor_stale_after_seconds(), age_seconds=age)


@dataclass(frozen=True)
class QuoteStreamStatus:
    """The quote stream (`manage.py runquotes`): its heartbeat (stale = silent during market
    hours, dropped, or not running) and the symbols it asked for. While it is stale every
    symbol is polled at the monitor's normal interval."""

    heartbeat: HeartbeatStatus
    symbols: list[StreamedSymbol]

    @property
    def streamed(self) -> set[str]:
        """The symbols decided on each quote now (none while the stream is stale)."""
        return set() if self.heartbeat.stale else {row.symbol for row in self.symbols if row.accepted}

    def polled(self) -> list[str]:
        """The watched positions' symbols the monitor polls at its normal interval (one query)."""
        watched = Position.objects.watched().values_list("symbol", flat=True).distinct()
        return sorted(set(watched) - self.streamed)


def quote_stream_status(*, now: datetime | None = None) -> QuoteStreamStatus:
    """Two queries."""
    now = now or timezone.now()
    heartbeat = _status(QUOTES, Heartbeat.objects.filter(name=QUOTES).first(), now)
    return QuoteStreamStatus(heartbeat=heartbeat, symbols=list(StreamedSymbol.objects.all()))


def streamed_symbols(*, now: datetime | None = None) -> set[str]:
    """The symbols the quote stream decides on now; empty while it is stale or not running."""
    return quote_stream_status(now=now).streamed
