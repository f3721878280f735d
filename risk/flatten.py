"""Emergency flattening and manual closing, for the admin and the API.

flatten: halt trading (unless already halted), then close the positions through
`positions_close`, the one safe close path, exits netted per symbol. Flattening everything
reads and cancels in as few requests as the broker allows: every open order cancelled in ONE
request (a working exit with them: what it filled first is on its positions before the rest
of them joins the netted exit), the orders and the positions read back in one request each,
then one exit per symbol and side. Doing it twice does nothing more: the claim (open ->
closing) lets one caller close a position, a second gets "skipped".
"""

import logging
import time
from dataclasses import dataclass, field
from decimal import Decimal

from django.conf import settings
from django.db.models import Prefetch
from django.template.defaultfilters import pluralize

from trading import broker, budget
from trading.broker import BrokerError
from trading.budget import Priority
from trading.models import (
    CloseReason,
    Closer,
    Order,
    Position,
    PositionStatus,
    TradingMode,
    TradingStateChange,
)
from trading.orders import orders_cancel_all
from trading.selectors import trading_state

from .closing import Shared, claimed_close, positions_close
from .finalize import CloseOutcome, CloseState
from .journal import event_record
from .models import RiskEventKind
from .trading_state import trading_state_set

log = logging.getLogger("risk.flatten")
ACTIVE = (PositionStatus.OPEN, PositionStatus.CLOSING)  # closing ones show as skipped


@dataclass(frozen=True)
class PreviewOrder:
    broker_order_id: str
    symbol: str
    side: str
    qty: Decimal
    type: str
    role: str
    status: str


@dataclass(frozen=True)
class PreviewRow:
    position: Position
    exit_side: str
    quantity: Decimal
    will_close: bool  # False: already closing or closed, it will be skipped
    orders_to_cancel: list[Order]
    cancel_entry: bool = False  # an entry still working: cancelled, never exited (it holds nothing)


@dataclass
class FlattenPreview:
    rows: list[PreviewRow]
    everything: bool
    halt: bool  # trading will be set to HALTED
    mode: str
    broker_orders: list[PreviewOrder] = field(default_factory=list)  # "everything": what the broker holds open
    broker_error: str = ""

    @property
    def to_close(self) -> list[PreviewRow]:
        return [row for row in self.rows if row.will_close]


def _positions_for(positions) -> list[Position]:
    live = Prefetch("orders", queryset=Order.objects.live().exclude(broker_order_id=None).order_by("id"),
                    to_attr="live_orders")
    if positions is None:
        queryset = Position.objects.filter(status__in=[PositionStatus.PENDING, *ACTIVE])
    else:
        ids = [p.pk if isinstance(p, Position) else int(p) for p in positions]
        queryset = Position.objects.filter(pk__in=ids)
    return list(queryset.prefetch_related(live).order_by("id"))


def _roles(rows: list[PreviewRow]) -> dict[str, str]:
    return {order.broker_order_id: order.role for row in rows for order in row.orders_to_cancel}


def close_preview(*, positions) -> FlattenPreview:
    """What closing these positions will do, nothing changed (manual close)."""
    preview = flatten_preview(positions=positions)
    preview.halt = False
    return preview


def flatten_preview(*, positions=None) -> FlattenPreview:
    """What `flatten` would do, without doing it. positions=None: everything (all open and
    closing positions, plus every open order at the broker)."""
    rows = [
        PreviewRow(
            position=position,
            exit_side=position.exit_side,
            quantity=position.quantity,
            will_close=position.status == PositionStatus.OPEN,
            orders_to_cancel=(list(position.live_orders)
                              if position.status in (PositionStatus.OPEN, PositionStatus.PENDING) else []),
            cancel_entry=position.status == PositionStatus.PENDING,
        )
        for position in _positions_for(positions)
    ]
    mode = trading_state().mode
    preview = FlattenPreview(rows=rows, everything=positions is None, halt=mode != TradingMode.HALTED, mode=mode)
    if preview.everything:
        roles = _roles(rows)
        try:
            remote = broker.live_orders()
        except BrokerError as exc:
            preview.broker_error = str(exc)
        else:
            preview.broker_orders = [
                PreviewOrder(broker_order_id=o.id, symbol=o.symbol, side=o.side, qty=o.qty, type=o.type,
                             role=roles.get(o.id, "order" if o.client_order_id.startswith("catalyst-") else "not ours"),
                             status=o.status)
                for o in remote
            ]
    return preview


@dataclass
class FlattenResult:
    outcomes: list[CloseOutcome]
    halted: TradingStateChange | None = None  # the state change made, None when already halted
    cancelled_orders: int | None = None  # "everything": orders the broker cancelled
    errors: list[str] = field(default_factory=list)


def _who(user) -> str:
    return getattr(user, "username", "") or "system"


def flatten(*, user, positions=None) -> FlattenResult:
    """EMERGENCY_STOP: halt, cancel open orders, close the positions (all open ones when
    positions is None). Safe to repeat: a position already closing or closed is skipped."""
    who = _who(user)
    result = FlattenResult(outcomes=[])
    if trading_state().mode != TradingMode.HALTED:
        result.halted = trading_state_set(mode=TradingMode.HALTED, reason=f"emergency flatten by {who}", user=user)
    owner = f"flatten-{who}"[:64]
    if positions is not None:
        targets = _positions_for(positions)
        _flatten_recorded(who, targets, result, everything=False)
        result.outcomes = positions_close(positions=targets, reason=CloseReason.EMERGENCY_STOP, by=Closer.FLATTEN,
                                         owner=owner)
        return result
    targets = list(Position.objects.filter(status__in=[PositionStatus.PENDING, *ACTIVE]).order_by("id"))
    until = time.monotonic() + float(settings.FLATTEN_SEND_SECONDS)  # a web request must end: the monitor carries on
    with budget.priority(Priority.EXIT):
        shared = _everything_cancelled(result)
    shared.until = until
    _flatten_recorded(who, targets, result, everything=True)
    closing = [p.pk for p in targets if p.status == PositionStatus.CLOSING and p.keep_quantity is None]
    outcomes = positions_close(positions=[p for p in targets if p.pk not in closing],  # a reduce is taken over
                               reason=CloseReason.EMERGENCY_STOP, by=Closer.FLATTEN, owner=owner, shared=shared)
    if closing:  # their working exits were cancelled with the rest: what is left of them goes out now
        outcomes = [o for o in outcomes if o.position.pk not in closing] + claimed_close(closing, owner, until=until)
    order = {p.pk: i for i, p in enumerate(targets)}
    result.outcomes = sorted(outcomes, key=lambda o: order[o.position.pk])
    return result


def _everything_cancelled(result: FlattenResult) -> Shared:
    """Every open order cancelled in one request, the orders and the broker's positions read
    back in one each (after the cancel, so what filled meanwhile shows)."""
    shared = Shared()
    try:
        result.cancelled_orders, shared.remote = orders_cancel_all()
    except BrokerError as exc:  # each close still cancels its own position's legs before exiting
        result.errors.append(f"cancelling all orders failed: {exc}")
        log.error("flatten: cancel all orders failed: %s", exc)
    try:
        shared.positions = {p.symbol: p for p in broker.list_positions()}
    except BrokerError as exc:  # each symbol asks for its own
        result.errors.append(f"reading the broker's positions failed: {exc}")
        log.error("flatten: reading the broker's positions failed: %s", exc)
    return shared


def _flatten_recorded(who: str, targets: list[Position], result: FlattenResult, *, everything: bool) -> None:
    event_record(kind=RiskEventKind.TRADING_STATE, reason=CloseReason.EMERGENCY_STOP,
                 message=f"emergency flatten by {who}: {len(targets)} position{pluralize(len(targets))}"
                         + (f", {result.cancelled_orders} orders cancelled" if everything else ""),
                 data={"positions": [p.pk for p in targets], "user": who, "everything": everything})


def close_manually(*, user, positions) -> list[CloseOutcome]:
    """MANUAL close of the chosen positions; the trading state is left as it is."""
    targets = _positions_for(positions)
    return positions_close(positions=targets, reason=CloseReason.MANUAL, by=Closer.OPERATOR,
                           owner=f"manual-{_who(user)}"[:64])


def outcome_summary(outcome: CloseOutcome) -> str:
    """One line for an operator: closed at price / exit pending / skipped: already closing."""
    position = outcome.position
    if outcome.state == CloseState.CLOSED:
        if position.exit_price is not None:
            return f"closed at {position.exit_price} ({position.close_reason})"
        return f"closed without a fill ({outcome.detail or position.review_note})"
    if outcome.state == CloseState.CANCELLED:
        return "entry cancelled: it never filled, so it was never a position"
    if outcome.state == CloseState.SKIPPED:
        return f"skipped: {outcome.detail or 'already ' + position.status}"
    if outcome.state == CloseState.EXIT_PENDING:
        return f"exit pending ({outcome.detail})" if outcome.detail else "exit pending"
    if outcome.state == CloseState.WAITING:
        return f"waiting: {outcome.detail}"
    if outcome.state == CloseState.ERROR:
        return f"error: {outcome.detail}; the monitor will carry on closing it"
    return f"{outcome.state}: {outcome.detail}"
