"""Adopting a position the broker holds and we have no record of (the trading service sent
its own orders): with the broker's levels, not made-up ones.

Its stop and target come from the live orders that cover it at the broker (bracket legs, an
OCO, a standalone stop; placed by any client), which are linked to it; it is PROTECTED when
their stops cover its full quantity, and the monitor watches it from its next cycle. With no
level at the broker it has none here either: the protection audit places protection at the
percent defaults (marked as defaults), and no exit is ever sent on them.
"""

from dataclasses import dataclass
from decimal import Decimal

from django.utils import timezone

from trading import broker
from trading.broker import BrokerOrder, BrokerPosition
from trading.models import STOP_TYPES, LevelsSource, OrderType, Position, PositionStatus, Protection, Side
from trading.orders import orders_link

ZERO = Decimal("0")
PRICE_PLACES = Decimal("0.0001")


@dataclass(frozen=True)
class BrokerLevels:
    stop: Decimal | None
    target: Decimal | None
    stop_qty: Decimal  # how much the live stops cover
    orders: list[BrokerOrder]

    def describe(self) -> str:
        if self.stop is None and self.target is None:
            return "no stop or target at the broker"
        return f"the broker's stop {self.stop or '-'} / target {self.target or '-'}"


def broker_levels(*, remote: BrokerPosition) -> BrokerLevels:
    """The live exit-side orders covering a broker position, read in one request."""
    exit_side = "sell" if remote.side == Side.LONG else "buy"
    live = [o for o in broker.list_orders(status="open", nested=False, symbols=[remote.symbol])
            if o.side == exit_side and not o.is_final]
    stops = [o for o in live if o.type in STOP_TYPES and o.stop_price is not None]
    targets = [o for o in live if o.type == OrderType.LIMIT and o.limit_price is not None]

    def largest(orders: list[BrokerOrder]) -> BrokerOrder | None:
        return max(orders, key=lambda o: (o.qty - o.filled_qty, o.submitted_at or timezone.now()), default=None)

    stop, target = largest(stops), largest(targets)
    return BrokerLevels(stop=stop.stop_price if stop else None, target=target.limit_price if target else None,
                        stop_qty=sum((o.qty - o.filled_qty for o in stops), ZERO), orders=stops + targets)


def position_adopt(*, remote: BrokerPosition, note: str) -> tuple[Position, BrokerLevels]:
    levels = broker_levels(remote=remote)
    now = timezone.now()
    position = Position.objects.create(
        symbol=remote.symbol, side=remote.side, quantity=remote.qty,
        entry_price=remote.avg_entry_price.quantize(PRICE_PLACES), status=PositionStatus.OPEN, opened_at=now,
        adopted=True, stop_loss=levels.stop, take_profit=levels.target, levels_source=LevelsSource.BROKER,
        protection=Protection.PROTECTED if levels.stop_qty >= remote.qty else Protection.UNPROTECTED,
        protection_checked_at=now, review_note=f"{note}; {levels.describe()}")
    orders_link(position=position, remotes=levels.orders)
    return position, levels
