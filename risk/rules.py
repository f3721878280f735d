"""When a quote may be acted on, and what it triggers: the monitor's rules, in one place."""

from datetime import datetime, timedelta
from decimal import Decimal

from trading.broker import Quote
from trading.models import CloseReason, Side


def quote_problem(*, quote: Quote | None, now: datetime, max_age: timedelta) -> str | None:
    """Why a quote must not be acted on, or None when it is usable."""
    if quote is None:
        return "no quote"
    if quote.crossed:
        return f"crossed quote (bid {quote.bid} > ask {quote.ask})"
    if quote.price is None:
        return "no bid and no ask"
    if quote.time is None:
        return "quote has no time"
    if now - quote.time > max_age:
        return f"stale quote ({int((now - quote.time).total_seconds())}s old)"
    return None


def exit_price(*, quote: Quote, side: str) -> Decimal | None:
    """The price an exit would trade at: a long sells at the bid, a short buys at the ask. A
    quote gapped through a stop (bid 94 / ask 131 on a long stopped at 95) is a stop, whatever
    its midpoint says."""
    return quote.bid if side == Side.LONG else quote.ask


def trigger_reason(*, side: str, price: Decimal, stop_loss: Decimal | None, take_profit: Decimal | None) -> str | None:
    """STOP_LOSS_HIT, TAKE_PROFIT_HIT or None for the price an exit would trade at (`exit_price`).
    Long: price <= stop / >= target; short: the reverse. When both hold, the stop wins."""
    if side == Side.LONG:
        stop_hit = stop_loss is not None and price <= stop_loss
        target_hit = take_profit is not None and price >= take_profit
    else:
        stop_hit = stop_loss is not None and price >= stop_loss
        target_hit = take_profit is not None and price <= take_profit
    if stop_hit:
        return CloseReason.STOP_LOSS_HIT
    if target_hit:
        return CloseReason.TAKE_PROFIT_HIT
    return None
