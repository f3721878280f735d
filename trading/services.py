"""Everything that changes orders, positions or the trading state goes through here.

Orders are written before they are sent (write-ahead, with their client_order_id), so a
crash or a timeout never loses one: the next attempt looks the id up at the broker.
"""

import logging
import uuid
from decimal import Decimal

from django.conf import settings
from django.utils import timezone

from . import broker
from .broker import BrokerError, BrokerOrder
from .models import (
    FINAL_ORDER_STATUSES,
    Order,
    OrderClass,
    OrderRole,
    OrderStatus,
    OrderType,
    Position,
    PositionStatus,
    Protection,
    TradingMode,
    TradingStateChange,
)
from .validation import (
    BracketSpec,
    OrderValidationError,
    normalize_symbol,
    position_side,
    round_price,
    validate_bracket,
)

log = logging.getLogger(__name__)


class TradingHalted(Exception):
    """New entries are refused in the current trading state."""


class BracketNotProtected(Exception):
    """The broker did not hold both legs of a bracket; the entry was cancelled (or had filled)."""

    def __init__(self, message: str, *, entry: Order, position: Position | None):
        self.entry = entry
        self.position = position
        super().__init__(message)


def new_client_order_id(prefix: str) -> str:
    return f"catalyst-{prefix}-{uuid.uuid4().hex}"[:48]


# --- Trading state ---------------------------------------------------------------------


def trading_state() -> TradingStateChange:
    """The state in force. A fresh install starts HALTED: verify, then resume."""
    latest = TradingStateChange.objects.order_by("-changed_at", "-id").first()
    if latest is None:
        return TradingStateChange(
            mode=TradingMode.HALTED,
            reason="Initial state: verify a test bracket and the monitor, then resume.",
            changed_by_name="system",
        )
    return latest


def trading_state_set(*, mode: str, reason: str, user=None, overrode_checklist: bool = False) -> TradingStateChange:
    if mode not in TradingMode.values:
        raise OrderValidationError({"mode": f"{mode!r} is not one of {', '.join(TradingMode.values)}"})
    if not reason or not reason.strip():
        raise OrderValidationError({"reason": "a reason is required"})
    change = TradingStateChange.objects.create(
        mode=mode,
        reason=reason.strip(),
        changed_by=user if user is not None and user.is_authenticated else None,
        changed_by_name=getattr(user, "username", "") or "system",
        overrode_checklist=overrode_checklist,
    )
    log.warning("trading state -> %s by %s: %s", mode, change.changed_by_name, change.reason)
    return change


def _check_entry_allowed(spec: BracketSpec, *, is_test: bool) -> None:
    if is_test:
        if spec.quantity > settings.TEST_ORDER_MAX_QTY:
            raise OrderValidationError(
                {"quantity": f"test orders are limited to {settings.TEST_ORDER_MAX_QTY} shares, got {spec.quantity}"}
            )
        return
    state = trading_state()
    if state.mode != TradingMode.ACTIVE:
        raise TradingHalted(f"trading is {state.mode}: no new entries ({state.reason})")


# --- Orders ----------------------------------------------------------------------------


def _role_of_leg(leg: BrokerOrder) -> str:
    return OrderRole.STOP_LOSS if leg.type in (OrderType.STOP, OrderType.STOP_LIMIT) else OrderRole.TAKE_PROFIT


def order_apply(*, order: Order, remote: BrokerOrder) -> Order:
    """Copy what the broker says about an order onto its row, legs included."""
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
    order.save()
    for leg in remote.legs:
        row = Order.objects.filter(broker_order_id=leg.id).first() or Order(
            broker_order_id=leg.id,
            client_order_id=leg.client_order_id[:48],
            parent=order,
            position=order.position,
            role=_role_of_leg(leg),
            symbol=leg.symbol,
            side=leg.side,
            qty=leg.qty,
            type=leg.type if leg.type in OrderType.values else OrderType.LIMIT,
            time_in_force=leg.time_in_force,
            limit_price=leg.limit_price,
            stop_price=leg.stop_price,
        )
        if row.position_id is None and order.position_id is not None:
            row.position_id = order.position_id
        order_apply(order=row, remote=leg)
    return order


def order_refresh(*, order: Order) -> Order:
    """Read an order (and its legs) back from the broker."""
    if not order.broker_order_id:
        remote = broker.find_order_by_client_id(order.client_order_id)
        if remote is None:
            return order
    else:
        remote = broker.get_order(order.broker_order_id)
    return order_apply(order=order, remote=remote)


def _leg_problem(remote: BrokerOrder, spec: BracketSpec) -> str | None:
    if remote.order_class != OrderClass.BRACKET:
        return f"the broker holds a {remote.order_class!r} order, not a bracket"
    if len(remote.legs) != 2:
        return f"the broker holds {len(remote.legs)} legs instead of 2"
    stops = [leg for leg in remote.legs if leg.type in (OrderType.STOP, OrderType.STOP_LIMIT)]
    targets = [leg for leg in remote.legs if leg.type == OrderType.LIMIT]
    if len(stops) != 1 or len(targets) != 1:
        return "the legs are not one stop and one limit"
    exit_side = "sell" if spec.side == "buy" else "buy"
    if stops[0].stop_price != spec.stop_loss:
        return f"stop leg at {stops[0].stop_price} instead of {spec.stop_loss}"
    if targets[0].limit_price != spec.take_profit:
        return f"take-profit leg at {targets[0].limit_price} instead of {spec.take_profit}"
    for leg in remote.legs:
        if leg.side != exit_side or leg.qty != spec.quantity:
            return f"leg {leg.id} is {leg.side} {leg.qty}, expected {exit_side} {spec.quantity}"
    return None


def submit_bracket_order(
    *,
    symbol: object,
    quantity: object,
    side: object,
    stop_loss: object,
    take_profit: object,
    entry_price: object = None,
    time_in_force: str | None = None,
    is_test: bool = False,
) -> Position:
    """Send a bracket (entry + stop + target), verify both legs at the broker, record it all.

    Raises OrderValidationError before anything is sent, TradingHalted when entries are
    not allowed, BrokerError when the broker fails, BracketNotProtected when the order
    came back without its two legs (the original incident).
    """
    reference = None
    if entry_price is None:
        try:
            reference = broker.latest_price(normalize_symbol(symbol))
        except OrderValidationError:
            pass  # validate_bracket reports the symbol with every other bad field
    spec = validate_bracket(
        symbol=symbol,
        quantity=quantity,
        side=side,
        stop_loss=stop_loss,
        take_profit=take_profit,
        entry_price=entry_price,
        reference_price=reference,
    )
    _check_entry_allowed(spec, is_test=is_test)
    tif = time_in_force or settings.BRACKET_TIME_IN_FORCE

    entry = Order.objects.create(
        client_order_id=new_client_order_id("test" if is_test else "entry"),
        role=OrderRole.ENTRY,
        symbol=spec.symbol,
        side=spec.side,
        qty=spec.quantity,
        type=OrderType.MARKET if spec.entry_price is None else OrderType.LIMIT,
        order_class=OrderClass.BRACKET,
        time_in_force=tif,
        limit_price=spec.entry_price,
    )
    try:
        remote = broker.submit_bracket(
            symbol=spec.symbol,
            qty=spec.quantity,
            side=spec.side,
            stop_loss=spec.stop_loss,
            take_profit=spec.take_profit,
            entry_price=spec.entry_price,
            time_in_force=tif,
            client_order_id=entry.client_order_id,
        )
    except BrokerError as exc:
        if not exc.outcome_unknown:
            entry.status = OrderStatus.SUBMIT_FAILED
        entry.error = str(exc)
        entry.save(update_fields=["status", "error", "synced_at"])
        raise
    order_apply(order=entry, remote=remote)
    # Recorded as soon as the broker has it, so a failure below can't leave it unguarded:
    # the monitor watches an open position's stop whether or not its legs are confirmed.
    position = _position_open(entry=entry, spec=spec, reference=reference, is_test=is_test)

    try:
        remote = broker.get_order(remote.id)  # what the broker really holds, legs and all
    except BrokerError as exc:
        entry.error = f"legs not verified, position #{position.pk} left open for the monitor to guard: {exc}"
        entry.save(update_fields=["error", "synced_at"])
        raise
    order_apply(order=entry, remote=remote)
    problem = _leg_problem(remote, spec)
    if problem is not None:
        _bracket_failed(entry=entry, position=position, remote=remote, spec=spec, problem=problem)
    Position.objects.filter(pk=position.pk).update(protection=Protection.PROTECTED, protection_checked_at=timezone.now())
    position.refresh_from_db()
    log.info(
        "ORDER CONFIRMED [BRACKET] %s %s %s stop=%s target=%s entry=%s",
        spec.side, spec.quantity, spec.symbol, spec.stop_loss, spec.take_profit, remote.id,
    )
    return position


def _position_open(*, entry: Order, spec: BracketSpec, reference: Decimal | None, is_test: bool) -> Position:
    position = Position.objects.create(
        symbol=spec.symbol,
        side=position_side(spec.side),
        quantity=spec.quantity,
        entry_price=entry.filled_avg_price or spec.entry_price or round_price(reference),
        stop_loss=spec.stop_loss,
        take_profit=spec.take_profit,
        status=PositionStatus.OPEN,
        opened_at=timezone.now(),
        entry_order=entry,
        is_test=is_test,
    )
    entry.position = position
    entry.save(update_fields=["position", "synced_at"])
    entry.legs.update(position=position)
    return position


def _bracket_failed(*, entry: Order, position: Position, remote: BrokerOrder, spec: BracketSpec, problem: str) -> None:
    from risk.services import alert_raise, event_record  # risk builds on trading, not the reverse

    cancelled = broker.cancel_order(remote.id)
    order_apply(order=entry, remote=broker.get_order(remote.id))
    if entry.filled_qty > 0:
        Position.objects.filter(pk=position.pk).update(
            quantity=entry.filled_qty, protection=Protection.UNPROTECTED, protection_checked_at=timezone.now()
        )
        position.refresh_from_db()
        outcome = (f"entry had filled {entry.filled_qty}: position #{position.pk} is open and UNPROTECTED, "
                   "the monitor guards its stop and target")
    else:
        # Never filled, so never held: the orders keep the record, the position goes.
        position.orders.update(position=None)
        Position.objects.filter(pk=position.pk).delete()
        position = None
        outcome = "entry cancelled" if cancelled else f"entry could not be cancelled (status {entry.status})"
    message = f"BRACKET NOT PROTECTED {spec.side} {spec.quantity} {spec.symbol}: {problem}; {outcome}"
    entry.error = message
    entry.save(update_fields=["error", "synced_at"])
    log.error(message)
    event_record(kind="bracket_not_protected", position=position, symbol=spec.symbol, reason=problem, message=message,
                 data={"entry_order": remote.id, "client_order_id": entry.client_order_id})
    alert_raise(kind="bracket_not_protected", message=message, position=position)
    raise BracketNotProtected(message, entry=entry, position=position)


def exit_submit(*, position: Position, qty: Decimal) -> Order:
    """Send the market exit for a position, at most once per attempt.

    The client_order_id is derived from the position and the number of its earlier exits
    that are over (filled for part of the quantity, rejected, cancelled...), so a retry or
    a restart re-finds the same order while one is pending.
    """
    attempt = position.orders.filter(role=OrderRole.EXIT, status__in=FINAL_ORDER_STATUSES).count()
    client_order_id = f"{position.exit_client_order_id}-{attempt}"
    order, _ = Order.objects.get_or_create(
        client_order_id=client_order_id,
        defaults=dict(
            position=position,
            role=OrderRole.EXIT,
            symbol=position.symbol,
            side=position.exit_side,
            qty=qty,
            type=OrderType.MARKET,
            time_in_force="day",
        ),
    )
    if order.broker_order_id:
        return order
    try:
        remote = broker.submit_market(symbol=order.symbol, qty=order.qty, side=order.side, client_order_id=client_order_id)
    except BrokerError as exc:
        if not exc.outcome_unknown:
            order.status = OrderStatus.SUBMIT_FAILED
        order.error = str(exc)
        order.save(update_fields=["status", "error", "synced_at"])
        raise
    return order_apply(order=order, remote=remote)


def orders_cancel(*, position: Position) -> list[Order]:
    """Cancel the position's live orders other than its exits (legs, an unfilled entry,
    protective OCOs), then read them back so the caller sees what really happened."""
    live = list(position.orders.live().exclude(role=OrderRole.EXIT).exclude(broker_order_id=None))
    live_ids = {order.pk for order in live}
    roots = [order for order in live if order.parent_id not in live_ids]
    for order in roots:
        broker.cancel_order(order.broker_order_id)
    tops = {order.parent_id or order.pk for order in roots}
    return [order_refresh(order=order) for order in Order.objects.filter(pk__in=tops)]
