"""New positions: a bracket (entry + stop + target) sent, verified at the broker, recorded.

The bracket is refused before anything is sent when its fields are bad or the trading
state doesn't allow it; after it is sent it is read back, and a bracket the broker does not
hold with both legs at the requested prices (the original incident) is cancelled, recorded
(order error, risk event, alert) and raised as BracketNotProtected.
"""

import logging
from collections.abc import Callable
from decimal import Decimal

from django.conf import settings
from django.template.defaultfilters import pluralize
from django.utils import timezone

from trading import broker
from trading.broker import BrokerError, BrokerOrder
from trading.models import (
    STOP_TYPES,
    Order,
    OrderClass,
    OrderSide,
    OrderType,
    Position,
    PositionStatus,
    Protection,
    TradingMode,
)
from trading.orders import bracket_send, order_cancel, order_read
from trading.selectors import trading_state
from trading.validation import (
    BracketSpec,
    OrderValidationError,
    normalize_symbol,
    position_side,
    round_price,
    validate_bracket,
)

from .alerts import alert_send
from .follow import position_follow
from .journal import event_record
from .models import AlertKind, RiskEventKind

log = logging.getLogger(__name__)


class TradingHalted(Exception):
    """New entries are refused in the current trading state."""


class BracketNotProtected(Exception):
    """The broker did not hold both legs of a bracket; the entry was cancelled (or had filled)."""

    def __init__(self, message: str, *, entry: Order, position: Position | None):
        self.entry = entry
        self.position = position
        super().__init__(message)


def _check_entry_allowed(spec: BracketSpec, *, is_test: bool) -> None:
    if is_test:
        if spec.quantity > settings.TEST_ORDER_MAX_QTY:
            raise OrderValidationError(
                {"quantity": f"test orders are limited to {settings.TEST_ORDER_MAX_QTY} share"
                             f"{pluralize(settings.TEST_ORDER_MAX_QTY)}, got {spec.quantity}"}
            )
        return
    state = trading_state()
    if state.mode != TradingMode.ACTIVE:
        raise TradingHalted(f"trading is {state.mode}: no new entries ({state.reason})")


def _leg_problem(remote: BrokerOrder, spec: BracketSpec) -> str | None:
    if remote.order_class != OrderClass.BRACKET:
        return f"the broker holds a {remote.order_class!r} order, not a bracket"
    if len(remote.legs) != 2:
        return f"the broker holds {len(remote.legs)} legs instead of 2"
    stops = [leg for leg in remote.legs if leg.type in STOP_TYPES]
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
    client_order_id: str | None = None,
    intraday: bool | None = None,
    admit: Callable[[BracketSpec, Decimal | None], None] | None = None,
) -> Position:
    """Send a bracket (entry + stop + target), verify both legs at the broker, record it all.

    Raises OrderValidationError before anything is sent, TradingHalted when entries are
    not allowed, BrokerError when the broker fails, BracketNotProtected when the order
    came back without its two legs (the original incident). `admit` (the order gate) is
    called with the checked bracket and the price a market entry will trade at (the ask for
    a buy, the bid for a sell; None for a limit entry) just before sending; it raises to
    refuse. `client_order_id` is the gate's (the caller's own) instead of a new one.
    """
    quote = None
    if entry_price is None:
        try:
            quote = broker.latest_quote(normalize_symbol(symbol))
        except OrderValidationError:
            pass  # validate_bracket reports the symbol with every other bad field
    spec = validate_bracket(symbol=symbol, quantity=quantity, side=side, stop_loss=stop_loss,
                            take_profit=take_profit, entry_price=entry_price,
                            bid=quote.bid if quote else None, ask=quote.ask if quote else None)
    _check_entry_allowed(spec, is_test=is_test)
    expected = None if quote is None else (quote.ask if spec.side == OrderSide.BUY else quote.bid)
    if admit is not None:
        admit(spec, expected)
    entry = bracket_send(spec=spec, time_in_force=time_in_force or settings.BRACKET_TIME_IN_FORCE,
                         prefix="test" if is_test else "entry", client_order_id=client_order_id)
    return bracket_record(entry=entry, spec=spec, expected_price=expected, is_test=is_test, intraday=intraday)


def bracket_record(*, entry: Order, spec: BracketSpec, expected_price: Decimal | None, is_test: bool = False,
                   intraday: bool | None = None) -> Position:
    """Record the position of a bracket the broker has taken, then verify both legs there.
    Safe to repeat for one entry (the order gate settling a retry): its position is reused."""
    # Recorded as soon as the broker has it (pending until its entry fills), so a failure below
    # can't leave it unguarded: once filled, the monitor watches its stop whether or not its
    # legs are confirmed.
    position = _position_record(entry=entry, spec=spec, expected_price=expected_price, is_test=is_test,
                                intraday=intraday)
    position_follow(position=position)
    try:
        remote = order_read(order=entry)  # what the broker really holds, legs and all
    except BrokerError as exc:
        entry.error = f"legs not verified, position #{position.pk} left open for the monitor to guard: {exc}"
        entry.save(update_fields=["error", "synced_at"])
        raise
    problem = _leg_problem(remote, spec)
    if problem is not None:
        _bracket_failed(entry=entry, position=position, spec=spec, problem=problem)
    position.refresh_from_db()
    position_follow(position=position)  # what the read-back says: filled (open, protected by its legs) or not yet
    position.refresh_from_db()
    log.info("ORDER CONFIRMED [BRACKET] %s %s %s stop=%s target=%s entry=%s",
             spec.side, spec.quantity, spec.symbol, spec.stop_loss, spec.take_profit, remote.id)
    return position


def _position_record(*, entry: Order, spec: BracketSpec, expected_price: Decimal | None, is_test: bool,
                     intraday: bool | None) -> Position:
    """The position of an entry the broker accepted: pending until the entry fills, priced at
    its limit or (a market entry) the side of the quote it will trade on until then; the one
    it has when it was recorded before."""
    if entry.position_id is not None:
        return Position.objects.get(pk=entry.position_id)
    position = Position.objects.create(
        symbol=spec.symbol,
        side=position_side(spec.side),
        quantity=spec.quantity,
        entry_price=entry.filled_avg_price or spec.entry_price or round_price(expected_price),
        stop_loss=spec.stop_loss,
        take_profit=spec.take_profit,
        status=PositionStatus.PENDING,
        opened_at=timezone.now(),
        entry_order=entry,
        is_test=is_test,
        intraday=intraday,
    )
    entry.position = position
    entry.save(update_fields=["position", "synced_at"])
    entry.legs.update(position=position)
    return position


def _bracket_failed(*, entry: Order, position: Position, spec: BracketSpec, problem: str) -> None:
    cancelled = order_cancel(order=entry)
    if entry.filled_qty > 0:
        Position.objects.filter(pk=position.pk).update(
            status=PositionStatus.OPEN, quantity=entry.filled_qty, protection=Protection.UNPROTECTED,
            protection_checked_at=timezone.now(), entry_price=entry.filled_avg_price or position.entry_price)
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
    event_record(kind=RiskEventKind.BRACKET_NOT_PROTECTED, position=position, symbol=spec.symbol, reason=problem,
                 message=message, data={"entry_order": entry.broker_order_id, "client_order_id": entry.client_order_id})
    alert_send(kind=AlertKind.BRACKET_NOT_PROTECTED, message=message, position=position)
    raise BracketNotProtected(message, entry=entry, position=position)
