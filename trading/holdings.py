"""What a position holds and why it closed, read from its orders; what the broker says of them.

Everything here works on order-shaped values: our `Order` rows, or `OrderView`s (a row
overlaid with the broker's latest answer), so the close engine, reconciliation and the
protection audit count a position the same way.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from .broker import BrokerOrder
from .models import (
    FINAL_ORDER_STATUSES,
    LEG_CLOSE_REASONS,
    Order,
    OrderRole,
    Position,
    leg_role,
)

ZERO = Decimal("0")


class OrderLike(Protocol):
    role: str
    status: str
    filled_qty: Decimal
    filled_avg_price: Decimal | None

    @property
    def is_final(self) -> bool: ...


@dataclass
class Holding:
    """How much of a position the broker should hold, by its own orders."""

    entry_live: bool  # the entry may still fill
    entry_qty: Decimal  # filled entry quantity (the position's quantity when adopted: no entry of ours)
    closed_qty: Decimal  # filled by its legs, OCOs and exits
    fills: list  # its closing fills (orders other than the entry with a filled quantity)

    @property
    def held(self) -> Decimal:
        return self.entry_qty - self.closed_qty


def holding(position: Position, orders: Iterable[OrderLike]) -> Holding:
    orders = list(orders)
    entries = [o for o in orders if o.role == OrderRole.ENTRY]
    fills = [o for o in orders if o.role != OrderRole.ENTRY and o.filled_qty > 0]
    return Holding(
        entry_live=any(not o.is_final for o in entries),
        entry_qty=sum((o.filled_qty for o in entries), ZERO) if entries else position.quantity,
        closed_qty=sum((o.filled_qty for o in fills), ZERO),
        fills=fills,
    )


def close_reason_from_fills(fills: Iterable[OrderLike], *, default: str | None) -> str | None:
    """A position closed by its legs alone closed for the reason of its largest leg fill (the
    stop leg: STOP_LOSS_HIT); when an exit of ours took part, the reason it was claimed for.
    Exits with no claim behind them (reduces: the position was reopened after them) leave the
    reason to its legs."""
    fills = list(fills)
    legs = [o for o in fills if o.role in LEG_CLOSE_REASONS]
    if legs and not (default and any(o.role == OrderRole.EXIT for o in fills)):
        return LEG_CLOSE_REASONS[max(legs, key=lambda o: o.filled_qty).role]
    return default


def order_tops(orders: Iterable[Order]) -> list[Order]:
    """The top-level orders (a leg's parent, else the order itself), each once: the broker
    reads and cancels an order together with its legs."""
    tops: dict[int, Order] = {}
    for order in orders:
        top = order.parent if order.parent_id else order
        tops.setdefault(top.pk, top)
    return list(tops.values())


class RemoteOrders:
    """Broker orders (legs included) by broker id and by client_order_id."""

    def __init__(self, orders: Iterable[BrokerOrder] = ()):
        self.by_id: dict[str, BrokerOrder] = {}
        self.by_client_id: dict[str, BrokerOrder] = {}
        for order in orders:
            self.add(order)

    def add(self, remote: BrokerOrder) -> None:
        self.by_id[remote.id] = remote
        self.by_client_id[remote.client_order_id] = remote
        for leg in remote.legs:
            self.add(leg)

    def of(self, row: Order) -> BrokerOrder | None:
        if row.broker_order_id:
            return self.by_id.get(row.broker_order_id)
        return self.by_client_id.get(row.client_order_id)

    def status_of(self, row: Order) -> str:
        found = self.of(row)
        return found.status if found is not None else row.status


@dataclass(frozen=True)
class OrderView:
    """An order of a position as the broker last said it is (the row, or the broker's answer)."""

    role: str
    status: str
    filled_qty: Decimal
    filled_avg_price: Decimal | None
    broker_order_id: str | None
    client_order_id: str

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_ORDER_STATUSES


def order_views(rows: Iterable[Order], remote: RemoteOrders | None = None) -> list[OrderView]:
    """A position's order rows, each overlaid with what `remote` knows of it, plus legs the
    broker has that the database doesn't have yet."""
    remote = remote or RemoteOrders()
    rows = list(rows)
    views, seen = [], set()
    for row in rows:
        found = remote.of(row)
        if found is not None:
            seen.add(found.id)
            views.append(OrderView(row.role, found.status, found.filled_qty, found.filled_avg_price, found.id,
                                   row.client_order_id))
        else:
            views.append(OrderView(row.role, row.status, row.filled_qty, row.filled_avg_price, row.broker_order_id,
                                   row.client_order_id))
            if row.broker_order_id:
                seen.add(row.broker_order_id)
    for row in rows:
        found = remote.of(row)
        for leg in found.legs if found is not None else ():
            if leg.id not in seen:
                seen.add(leg.id)
                views.append(OrderView(leg_role(leg.type), leg.status, leg.filled_qty, leg.filled_avg_price, leg.id,
                                       leg.client_order_id))
    return views
