"""Whether orders that trade (exits) may go out now: only while the broker's clock says the
market is open, unless MONITOR_MARKET_HOURS_ONLY=false (then the clock is not read at all).
Protective orders may be placed while closed (Alpaca queues them).

The clock changes only at the turns it announces (`next_open`, `next_close`), and every read
spends from the request budget shared with the trading service; so a process reads it again at
its next turn, and at least every CLOCK_MAX_SECONDS (a holiday or an early close is announced by
the clock read before it)."""

import threading
from dataclasses import replace
from datetime import timedelta
from time import monotonic

from django.conf import settings
from django.utils import timezone

from trading import broker
from trading.broker import Clock

CLOCK_MAX_SECONDS = 300.0
CLOCK_MIN_SECONDS = 1.0  # a turn just passed (the broker's clock a little behind ours): ask again soon

_lock = threading.Lock()
_kept: tuple[Clock, float, float] | None = None  # (clock, read at, valid until), in monotonic()


def broker_clock() -> Clock:
    """The broker's clock, kept until its next turn and at most CLOCK_MAX_SECONDS; a kept one's
    `timestamp` moves on by the time since it was read (the end-of-day flatten starts on it).
    Raises BrokerError when it can't be read (nothing is kept: the next call asks again)."""
    global _kept
    with _lock:
        kept = _kept
    now = monotonic()
    if kept is not None and now < kept[2]:
        clock, read_at, _ = kept
        if clock.timestamp is None:
            return clock
        return replace(clock, timestamp=clock.timestamp + timedelta(seconds=now - read_at))
    clock = broker.clock()
    read_at = monotonic()
    with _lock:
        _kept = (clock, read_at, read_at + _valid_for(clock))
    return clock


def market_clock() -> Clock | None:
    """The broker's clock when market hours matter; None when they don't (it is not read).
    Raises BrokerError when the clock can't be read."""
    return broker_clock() if settings.MONITOR_MARKET_HOURS_ONLY else None


def _valid_for(clock: Clock) -> float:
    """Seconds until the clock's next turn (open or close), at most CLOCK_MAX_SECONDS."""
    turn = clock.next_close if clock.is_open else clock.next_open
    if turn is None:
        return CLOCK_MIN_SECONDS
    return max(CLOCK_MIN_SECONDS, min(CLOCK_MAX_SECONDS, (turn - timezone.now()).total_seconds()))


def clock_forget() -> None:
    """Read the clock afresh at the next call (the exchange's clock was moved by hand, as the
    tests do)."""
    global _kept
    with _lock:
        _kept = None


def exits_allowed(clock: Clock | None = None) -> bool:
    """Raises BrokerError when the clock can't be read (nothing is decided blind). `clock`: one
    just read by market_clock()."""
    clock = clock or market_clock()
    return clock is None or clock.is_open
