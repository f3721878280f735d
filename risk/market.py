"""Whether orders that trade (exits) may go out now: only while the broker's clock says the
market is open, unless MONITOR_MARKET_HOURS_ONLY=false (then the clock is not read at all).
Protective orders may be placed while closed (Alpaca queues them)."""

from django.conf import settings

from trading import broker


def exits_allowed() -> bool:
    """Raises BrokerError when the clock can't be read (nothing is decided blind)."""
    if not settings.MONITOR_MARKET_HOURS_ONLY:
        return True
    return broker.clock().is_open
