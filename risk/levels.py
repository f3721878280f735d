"""A position's protective levels: its own stop and target, or defaults from the entry."""

from decimal import Decimal

from django.conf import settings

from trading.models import Position, Side
from trading.validation import round_price


def default_levels(position: Position) -> tuple[Decimal, Decimal]:
    """Stop and target at PROTECTION_DEFAULT_STOP/TARGET_PERCENT from the entry, by side."""
    stop_pct = Decimal(settings.PROTECTION_DEFAULT_STOP_PERCENT) / 100
    target_pct = Decimal(settings.PROTECTION_DEFAULT_TARGET_PERCENT) / 100
    entry = position.entry_price
    if position.side == Side.LONG:
        return round_price(entry * (1 - stop_pct)), round_price(entry * (1 + target_pct))
    return round_price(entry * (1 + stop_pct)), round_price(entry * (1 - target_pct))


def protection_levels(position: Position) -> tuple[Decimal, Decimal, bool]:
    """(stop, target, defaults_used): the position's own, each missing one from the defaults."""
    default_stop, default_target = default_levels(position)
    stop = position.stop_loss if position.stop_loss is not None else default_stop
    target = position.take_profit if position.take_profit is not None else default_target
    return round_price(stop), round_price(target), position.stop_loss is None or position.take_profit is None
