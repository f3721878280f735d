"""What a position holds and why it closed, read from its orders; what the broker says of them.

Everything here works on order-shaped values: our `Order` rows, or `OrderView`s (a row
overlaid with the broker's latest answer), so the close engine, reconciliation and the
protection audit count a position the same way.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Protocol

from django.db.models import Prefetch

from .broker import BrokerOrder
from .models import (
    FINAL_ORDER_STATUSES,
    LEG_CLOSE_REASONS,
    ExitShare,
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


@dataclass(frozen=True)
class ShareView:
    """A position's share of an exit order, as an order of its own: the order's status and
    price, the share's quantity and fill."""

    order: Order
    qty: Decimal
    filled_qty: Decimal
    role: str = OrderRole.EXIT

    @property
    def status(self) -> str:
        return self.order.status

    @property
    def filled_avg_price(self) -> Decimal | None:
        return self.order.filled_avg_price

    @property
    def filled_at(self) -> datetime | None:
        return self.order.filled_at

    @property
    def broker_order_id(self) -> str | None:
        return self.order.broker_order_id

    @property
    def client_order_id(self) -> str:
        return self.order.client_order_id

    @property
    def is_final(self) -> bool:
        return self.order.is_final


def with_orders(positions):
    """A Position queryset with what `position_orders` reads prefetched (three queries in all)."""
    shares = Prefetch("exit_shares", queryset=ExitShare.objects.select_related("order"))
    return positions.prefetch_related("orders", shares)


def position_orders(position: Position) -> list:
    """What a position's holding is counted from: its own orders other than exits (entry,
    legs, OCOs) and its shares of exit orders (an exit may close several positions)."""
    own = [o for o in position.orders.all() if o.role != OrderRole.EXIT]
    return own + [ShareView(s.order, s.qty, s.filled_qty) for s in position.exit_shares.all()]


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


def order_views(rows: Iterable, remote: RemoteOrders | None = None) -> list:
    """A position's orders (`position_orders`), each overlaid with what `remote` knows of it,
    plus legs the broker has that the database doesn't have yet. Exit shares are taken as
    they are: reconciliation brings their orders up to date first."""
    remote = remote or RemoteOrders()
    shares = [row for row in rows if isinstance(row, ShareView)]
    rows = [row for row in rows if not isinstance(row, ShareView)]
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
    return views + shares
