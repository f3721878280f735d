"""Whether orders that trade (exits) may go out now: only while the broker's clock says the
market is open, unless MONITOR_MARKET_HOURS_ONLY=false (then the clock is not read at all).
Protective orders may be placed while closed (Alpaca queues them)."""

from django.conf import settings

from trading import broker
from trading.broker import Clock


def market_clock() -> Clock | None:
    """The broker's clock when market hours matter; None when they don't (it is not read).
    Raises BrokerError when the clock can't be read."""
    return broker.clock() if settings.MONITOR_MARKET_HOURS_ONLY else None


def exits_allowed(clock: Clock | None = None) -> bool:
    """Raises BrokerError when the clock can't be read (nothing is decided blind). `clock`: one
    just read by market_clock()."""
    clock = clock or market_clock()
    return clock is None or clock.is_open
