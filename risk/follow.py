"""A position follows what its orders say at the broker.

An entry that fills opens it (for what filled), one that ends unfilled cancels it (it was
never a position), a leg that fills closes it from the fill, a stop that goes away makes it
unprotected at once, a stop or target moved at the broker (an order replaced) moves the
position's level, so the fallback never decides on a level the broker no longer holds. The
trade_updates stream calls this after each event, the monitor's
quick sync after each change it reads; both read the orders first, this only follows them.
"""

import logging
from decimal import Decimal
from enum import StrEnum

from django.utils import timezone

from trading.holdings import close_reason_from_fills, holding, position_orders
from trading.models import Closer, LevelsSource, Order, OrderRole, Position, PositionStatus, Protection
from trading.orders import orders_cancel

from .claims import closings_lock, closings_unlock, position_claim
from .finalize import position_finalize
from .journal import event_record
from .models import RiskEventKind

log = logging.getLogger("risk.follow")
ZERO = Decimal("0")
FOLLOWER = "broker"


class Change(StrEnum):
    NONE = "none"
    OPENED = "opened"  # an entry filled (or filled more)
    CANCELLED = "cancelled"  # the entry ended unfilled
    CLOSED = "closed"  # its own orders closed it at the broker
    UNPROTECTED = "unprotected"  # its stop went away while it holds shares
    PROTECTED = "protected"  # a live stop covers it again
    LEVELS = "levels"  # its live stop or target was moved at the broker


def _stop_cover(orders: list[Order]) -> Decimal:
    return sum((o.qty - o.filled_qty for o in orders if o.role == OrderRole.STOP_LOSS and not o.is_final), ZERO)


def _entry_price(orders: list[Order]) -> Decimal | None:
    entries = [o for o in orders if o.role == OrderRole.ENTRY and o.filled_avg_price]
    return entries[0].filled_avg_price if entries else None


def _pending(position: Position, orders: list[Order]) -> Change:
    if not any(o.role == OrderRole.ENTRY for o in orders):
        return Change.NONE  # its entry not linked to it yet (being recorded): nothing filled that we know of
    h = holding(position, orders)
    now = timezone.now()
    if h.entry_qty > 0:
        protected = _stop_cover(orders) >= h.entry_qty
        Position.objects.filter(pk=position.pk, status=PositionStatus.PENDING).update(
            status=PositionStatus.OPEN, quantity=h.entry_qty, entry_price=_entry_price(orders) or position.entry_price,
            opened_at=now, updated_at=now, protection_checked_at=now,
            protection=Protection.PROTECTED if protected else Protection.UNPROTECTED)
        event_record(kind=RiskEventKind.ENTRY_FILLED, position=position, price=_entry_price(orders),
                     message=f"entry filled {h.entry_qty.normalize():f}: the position is open")
        return Change.OPENED
    if h.entry_live:
        return Change.NONE
    if any(not o.is_final and o.broker_order_id for o in orders):
        orders_cancel(position=position)  # its legs must not outlive the entry
    entry = next((o for o in orders if o.role == OrderRole.ENTRY), None)
    note = f"entry ended unfilled ({entry.status if entry else 'no entry'}): never a position"
    Position.objects.filter(pk=position.pk, status=PositionStatus.PENDING).update(
        status=PositionStatus.CANCELLED, closed_at=now, updated_at=now, review_note=note)
    event_record(kind=RiskEventKind.ENTRY_CANCELLED, position=position, message=note)
    return Change.CANCELLED


def _closed_at_broker(position: Position, orders: list[Order]) -> Change:
    """Its own fills cover it (a leg, an OCO, an exit): closed from those fills, through the
    one close path (claim, then finalize)."""
    h = holding(position, orders)
    if position.status == PositionStatus.OPEN:
        reason = close_reason_from_fills(h.fills, default=position.close_reason)
        if not position_claim(position_id=position.pk, reason=reason, owner=FOLLOWER, by=Closer.BROKER):
            return Change.NONE  # someone else is closing it: they finish
    elif not closings_lock(position_ids=[position.pk], owner=FOLLOWER):
        return Change.NONE
    try:
        position.refresh_from_db()
        position_finalize(position, position_orders(position))
    finally:
        closings_unlock(position_ids=[position.pk], owner=FOLLOWER)
    return Change.CLOSED


def _protection(position: Position, orders: list[Order], held: Decimal) -> Change:
    covered = _stop_cover(orders) >= held
    now = timezone.now()
    if covered and position.protection != Protection.PROTECTED:
        Position.objects.filter(pk=position.pk).update(protection=Protection.PROTECTED, protection_checked_at=now,
                                                       updated_at=now)
        return Change.PROTECTED
    if not covered and position.protection != Protection.UNPROTECTED:
        Position.objects.filter(pk=position.pk).update(protection=Protection.UNPROTECTED, protection_checked_at=now,
                                                       updated_at=now)
        event_record(kind=RiskEventKind.UNPROTECTED, position=position, reason="stop gone at the broker",
                     message=f"no live stop covers the {held.normalize():f} held")
        return Change.UNPROTECTED
    return Change.NONE


def _live_level(orders: list[Order], role: OrderRole, field: str) -> Decimal | None:
    """The one price the position's live orders of that role hold (None: none, or several)."""
    prices = {getattr(o, field) for o in orders if o.role == role and not o.is_final and o.broker_order_id}
    return prices.pop() if len(prices) == 1 and None not in prices else None


def _levels(position: Position, orders: list[Order]) -> Change:
    """The levels its live legs hold at the broker, when they moved (a replace, by anyone)."""
    moved = {}
    for role, field, level in ((OrderRole.STOP_LOSS, "stop_price", "stop_loss"),
                               (OrderRole.TAKE_PROFIT, "limit_price", "take_profit")):
        live = _live_level(orders, role, field)
        if live is not None and live != getattr(position, level):
            moved[level] = live
    if not moved:
        return Change.NONE
    before = ", ".join(f"{name} {getattr(position, name)} -> {value}" for name, value in moved.items())
    Position.objects.filter(pk=position.pk, status=PositionStatus.OPEN).update(
        **moved, levels_source=LevelsSource.BROKER)
    event_record(kind=RiskEventKind.ORDER_SYNCED, position=position, reason="levels moved at the broker",
                 message=before)
    return Change.LEVELS


def position_follow(*, position: Position, orders: list[Order] | None = None) -> Change:
    """Bring one position in line with its orders as last read from the broker."""
    orders = position_orders(position) if orders is None else orders
    if position.status == PositionStatus.PENDING:
        return _pending(position, orders)
    if position.status not in (PositionStatus.OPEN, PositionStatus.CLOSING):
        return Change.NONE
    h = holding(position, orders)
    if h.held <= 0 and h.fills:
        if any(o.role == OrderRole.EXIT and not o.is_final and o.broker_order_id for o in orders):
            return Change.NONE  # an exit still working: the close engine settles it
        return _closed_at_broker(position, orders)
    if position.status == PositionStatus.OPEN and h.entry_qty > position.quantity:
        Position.objects.filter(pk=position.pk).update(quantity=h.entry_qty, updated_at=timezone.now())
    if position.status != PositionStatus.OPEN:
        return Change.NONE
    levels = _levels(position, orders)
    protection = _protection(position, orders, h.held)
    return levels if protection == Change.NONE else protection
