"""The one module that sends, cancels and reads back orders at the broker.

Every order is written to the database first, with its client_order_id, then sent, then
marked with the broker's answer. A crash or a timeout never loses one: the next attempt
looks the id up at the broker instead of sending a second order.
"""

import uuid
from collections.abc import Callable, Iterable
from decimal import Decimal

from django.db import IntegrityError, transaction

from . import broker
from .broker import BrokerError, BrokerOrder
from .holdings import RemoteOrders, order_tops
from .models import (
    FINAL_ORDER_STATUSES,
    ExitShare,
    Order,
    OrderClass,
    OrderRole,
    OrderStatus,
    OrderType,
    Position,
    leg_role,
)
from .validation import BracketSpec

EXIT_TIME_IN_FORCE = "day"  # Alpaca takes fractional market orders only as day orders


def new_client_order_id(prefix: str) -> str:
    return f"catalyst-{prefix}-{uuid.uuid4().hex}"[:48]


# --- Reading back -----------------------------------------------------------------------


_APPLIED_FIELDS = ["broker_order_id", "status", "filled_qty", "filled_avg_price", "submitted_at", "filled_at",
                  "updated_at", "order_class", "raw", "synced_at"]


def order_apply(*, order: Order, remote: BrokerOrder) -> Order:
    """Copy what the broker says about an order onto its row, legs included. An answer older
    than what the row already holds (the stream and a read-back racing) is not applied."""
    if order.updated_at and remote.updated_at and remote.updated_at < order.updated_at:
        return order
    order.broker_order_id = remote.id
    order.status = remote.status
    order.filled_qty = remote.filled_qty
    order.filled_avg_price = remote.filled_avg_price
    order.submitted_at = remote.submitted_at or order.submitted_at
    order.filled_at = remote.filled_at
    order.updated_at = remote.updated_at
    if remote.order_class in OrderClass.values:
        order.order_class = remote.order_class
    order.raw = remote.raw
    if order.pk is None:
        order.save()
    else:  # only what the broker said: a row read before another writer linked it keeps its link
        order.save(update_fields=_APPLIED_FIELDS + (["position"] if order.position_id is not None else []))
    if order.role == OrderRole.EXIT:
        _shares_allocate(order)
    for leg in remote.legs:
        order_apply(order=_leg_row(order, leg), remote=leg)
    return order


def _leg_row(parent: Order, leg: BrokerOrder) -> Order:
    """The row of a leg, created the first time the broker shows it (by whichever writer sees
    it first: the stream and a read-back may race to it)."""
    row = Order.objects.filter(broker_order_id=leg.id).first()
    if row is None:
        try:
            with transaction.atomic():
                row = Order.objects.create(
                    broker_order_id=leg.id, client_order_id=leg.client_order_id[:48], parent=parent,
                    position=parent.position, role=leg_role(leg.type), symbol=leg.symbol, side=leg.side, qty=leg.qty,
                    type=leg.type if leg.type in OrderType.values else OrderType.LIMIT,
                    time_in_force=leg.time_in_force, limit_price=leg.limit_price, stop_price=leg.stop_price)
        except IntegrityError:
            row = Order.objects.get(broker_order_id=leg.id)
    if row.position_id is None and parent.position_id is not None:
        row.position_id = parent.position_id
    return row


def replacement_record(*, remote: BrokerOrder) -> Order | None:
    """The row for an order that replaced one of ours (a PATCH, ours or another client's): the
    same role, position and parent; None when what it replaces isn't ours."""
    replaced = Order.objects.filter(broker_order_id=remote.raw.get("replaces")).first()
    if replaced is None:
        return None
    return Order.objects.create(
        broker_order_id=remote.id, client_order_id=remote.client_order_id[:48], parent=replaced.parent,
        position=replaced.position, role=replaced.role, symbol=remote.symbol, side=remote.side, qty=remote.qty,
        type=remote.type if remote.type in OrderType.values else replaced.type, order_class=replaced.order_class,
        time_in_force=remote.time_in_force or replaced.time_in_force, limit_price=remote.limit_price,
        stop_price=remote.stop_price)


def orders_link(*, position: Position, remotes: list[BrokerOrder]) -> list[Order]:
    """Rows for broker orders another client placed that cover a position of ours (its legs,
    an OCO, a stop), tied to it; an order already recorded is tied to it as it is."""
    rows = []
    for remote in remotes:
        row = Order.objects.filter(broker_order_id=remote.id).first() or Order(
            broker_order_id=remote.id, client_order_id=remote.client_order_id[:48], role=leg_role(remote.type),
            symbol=remote.symbol, side=remote.side, qty=remote.qty,
            type=remote.type if remote.type in OrderType.values else OrderType.LIMIT,
            order_class=remote.order_class if remote.order_class in OrderClass.values else OrderClass.SIMPLE,
            time_in_force=remote.time_in_force, limit_price=remote.limit_price, stop_price=remote.stop_price)
        row.position = position
        rows.append(order_apply(order=row, remote=remote))
    return rows


def _shares_allocate(order: Order) -> None:
    """Share an exit's fill out among the positions it closes, in the order of their shares
    (oldest position first): a partial fill closes whole positions first."""
    left = order.filled_qty
    changed = []
    for share in order.shares.all():
        filled = min(share.qty, max(left, Decimal("0")))
        left -= filled
        if share.filled_qty != filled:
            share.filled_qty = filled
            changed.append(share)
    ExitShare.objects.bulk_update(changed, ["filled_qty"])


def order_read(*, order: Order) -> BrokerOrder | None:
    """Read an order (and its legs) from the broker onto its rows; None when the broker has
    never heard of it (it was never sent)."""
    if order.broker_order_id:
        remote = broker.get_order(order.broker_order_id)
    else:
        remote = broker.find_order_by_client_id(order.client_order_id)
        if remote is None:
            return None
    order_apply(order=order, remote=remote)
    shown = {leg.id for leg in remote.legs}
    for leg in order.legs.live().exclude(broker_order_id=None).exclude(broker_order_id__in=shown):
        order_apply(order=leg, remote=broker.get_order(leg.broker_order_id))  # replaced: the group shows its successor
    return remote


def order_refresh(*, order: Order) -> Order:
    order_read(order=order)
    return order


def orders_refresh(*, orders: Iterable[Order], remote: RemoteOrders | None = None) -> None:
    """Bring orders (with their legs) up to date, each order group once: from `remote` when
    it shows the order (no request), else read from the broker one by one."""
    for top in order_tops(orders):
        found = remote.of(top) if remote is not None else None
        if found is not None:
            order_apply(order=top, remote=found)
        else:
            order_refresh(order=top)


def position_orders_fetch(*, position: Position, remote: RemoteOrders, apply: bool) -> list[BrokerOrder]:
    """Read every order of the position that `remote` doesn't show as final from the broker,
    one call per order group, into `remote`; onto the rows too when `apply`."""
    live = [o for o in position.orders.all().select_related("parent") if remote.status_of(o) not in FINAL_ORDER_STATUSES]
    read = []
    for top in order_tops(live):
        if top.broker_order_id:
            fresh = broker.get_order(top.broker_order_id)
        else:
            fresh = broker.find_order_by_client_id(top.client_order_id)
            if fresh is None:
                continue
        remote.add(fresh)
        read.append(fresh)
        if apply:
            order_apply(order=top, remote=fresh)
    return read


# --- Sending ---------------------------------------------------------------------------------


def _send(order: Order, submit: Callable[[], BrokerOrder]) -> Order:
    """Send an order already written; a refusal marks it failed, an unknown outcome (timeout,
    5xx) leaves it pending so the next attempt finds it by its client_order_id."""
    try:
        remote = submit()
    except BrokerError as exc:
        if not exc.outcome_unknown:
            order.status = OrderStatus.SUBMIT_FAILED
        order.error = str(exc)
        order.save(update_fields=["status", "error", "synced_at"])
        raise
    return order_apply(order=order, remote=remote)


def bracket_send(*, spec: BracketSpec, time_in_force: str, prefix: str, client_order_id: str | None = None) -> Order:
    """Entry + stop + target as ONE order with order_class=bracket. Raises BrokerError.

    With a `client_order_id` (the order gate's, the caller's own) a retry finds the entry
    written before: one the broker has is read back, never sent again."""
    entry, _ = Order.objects.get_or_create(
        client_order_id=client_order_id or new_client_order_id(prefix),
        defaults=dict(
            role=OrderRole.ENTRY,
            symbol=spec.symbol,
            side=spec.side,
            qty=spec.quantity,
            type=OrderType.MARKET if spec.entry_price is None else OrderType.LIMIT,
            order_class=OrderClass.BRACKET,
            time_in_force=time_in_force,
            limit_price=spec.entry_price,
        ),
    )
    if entry.broker_order_id:
        return order_refresh(order=entry)
    return _send(entry, lambda: broker.submit_bracket(
        symbol=spec.symbol, qty=spec.quantity, side=spec.side, stop_loss=spec.stop_loss,
        take_profit=spec.take_profit, entry_price=spec.entry_price, time_in_force=time_in_force,
        client_order_id=entry.client_order_id,
    ))


def oco_send(*, position: Position, qty: Decimal, stop: Decimal, target: Decimal, time_in_force: str) -> Order:
    """Protect a position already held: a take-profit limit and a stop, one cancelling the other."""
    order = Order.objects.create(
        position=position,
        client_order_id=new_client_order_id("protect"),
        role=OrderRole.TAKE_PROFIT,
        symbol=position.symbol,
        side=position.exit_side,
        qty=qty,
        type=OrderType.LIMIT,
        order_class=OrderClass.OCO,
        time_in_force=time_in_force,
        limit_price=target,
    )
    return _send(order, lambda: broker.submit_oco_exit(
        symbol=position.symbol, qty=qty, side=position.exit_side, stop_loss=stop, take_profit=target,
        time_in_force=time_in_force, client_order_id=order.client_order_id,
    ))


def exit_write(*, shares: list[tuple[Position, Decimal]]) -> Order:
    """Write ONE market exit for positions of one symbol and side, each with its share, before
    anything is sent; its shares go with it in one transaction.

    The client_order_id is derived from the batch: its first position, that position's number
    of exits already over (filled for part of the quantity, rejected, cancelled...) and, when
    netted, how many positions it closes. While the exit is not over, its positions are not
    batched again: a retry or a restart sends (or looks up) this very order."""
    shares = sorted(shares, key=lambda share: share[0].pk)
    first = shares[0][0]
    attempt = ExitShare.objects.filter(position=first, order__status__in=FINAL_ORDER_STATUSES).count()
    client_order_id = f"{first.exit_client_order_id}-{attempt}" + (f"-of{len(shares)}" if len(shares) > 1 else "")
    with transaction.atomic():
        order, created = Order.objects.get_or_create(
            client_order_id=client_order_id,
            defaults=dict(position=first if len(shares) == 1 else None, role=OrderRole.EXIT, symbol=first.symbol,
                          side=first.exit_side, qty=sum((qty for _, qty in shares), Decimal("0")),
                          type=OrderType.MARKET, time_in_force=EXIT_TIME_IN_FORCE),
        )
        if created:
            ExitShare.objects.bulk_create(ExitShare(order=order, position=position, qty=qty) for position, qty in shares)
    return order


def exit_send(*, shares: list[tuple[Position, Decimal]]) -> Order:
    """ONE market exit for positions of one symbol and side: written (`exit_write`), then sent."""
    return exit_submit(order=exit_write(shares=shares))


def exit_submit(*, order: Order) -> Order:
    """Send an exit already written, unless the broker has it: an unknown outcome leaves it
    pending, and sending it again finds the first one by its client_order_id."""
    if order.broker_order_id:
        return order
    return _send(order, lambda: broker.submit_market(
        symbol=order.symbol, qty=order.qty, side=order.side, client_order_id=order.client_order_id,
    ))


# --- Cancelling ----------------------------------------------------------------------------


def order_cancel(*, order: Order) -> bool:
    """Cancel one order (with its legs) and read it back. False when it was already final."""
    cancelled = broker.cancel_order(order.broker_order_id)
    order_refresh(order=order)
    return cancelled


def orders_cancel(*, position: Position) -> list[Order]:
    """Cancel the position's live orders other than its exits (legs, an unfilled entry,
    protective OCOs), then read them back so the caller sees what really happened."""
    live = position.orders.live().exclude(role=OrderRole.EXIT).exclude(broker_order_id=None).select_related("parent")
    live_ids = {order.pk for order in live}
    roots = [order for order in live if order.parent_id not in live_ids]
    for order in roots:
        broker.cancel_order(order.broker_order_id)
    return [order_refresh(order=top) for top in order_tops(roots)]


def orders_cancel_all() -> tuple[int, RemoteOrders]:
    """Cancel every open order of the account (ours or not, exits included) in ONE request,
    then read the orders back in one more, so that what an order filled before it was
    cancelled (a working exit's fill above all) is on its rows before anything else is
    sent. Returns how many the broker cancelled, and the orders as read back."""
    cancelled = broker.cancel_all_orders()
    remote = RemoteOrders(broker.list_orders(status="all", limit=500))
    for result in cancelled:
        if result.order is not None and result.id not in remote.by_id:
            remote.add(result.order)
    ours = Order.objects.live().filter(broker_order_id__in=list(remote.by_id)).select_related("parent")
    orders_refresh(orders=[o for o in ours if remote.of(o.parent or o) is not None], remote=remote)
    return sum(1 for result in cancelled if result.status == 200), remote
