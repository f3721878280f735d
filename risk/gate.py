"""The order gate: every order of the trading service goes through here, as a risk engine sits
between the strategies and the venue (README "The order gate").

- An entry (a bracket, market or limit, long or short) needs trading ACTIVE, a valid bracket and
  every pre-trade limit (risk.limits); it is then sent by risk.entries.submit_bracket_order
  (trading.orders.bracket_send) under the caller's own client_order_id. A position that stays
  overnight gets GTC legs whatever BRACKET_TIME_IN_FORCE says.
- A reduce (ACTIVE or REDUCING) exits part or all of an open position through
  risk.closing.position_reduce, and the rest is re-protected at once with an OCO.

The caller's client_order_id is the idempotency key. The request is recorded (an OrderRequest,
under the limits' row lock, so racing orders are counted against each other) before anything is
sent; the same id again gets the same answer and sends nothing, a different request under it is
a conflict. A refusal before the request is recorded (bad input, trading halted, a limit) leaves
the id free. A request whose broker answer never came (UNKNOWN), or whose worker died, is settled
by the next retry: found at the broker by its client_order_id and recorded, or sent then.
"""

import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from enum import StrEnum
from typing import NoReturn

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from trading import broker
from trading.broker import BrokerError
from trading.holdings import holding, position_orders
from trading.models import Order, OrderStatus, Position, PositionStatus, TradingMode
from trading.orders import bracket_send, order_read
from trading.selectors import trading_state
from trading.validation import (
    BracketSpec,
    OrderValidationError,
    normalize_quantity,
    normalize_side,
    round_price,
    to_decimal,
)

from .closing import position_reduce
from .finalize import CloseOutcome, CloseState
from .end_of_day import eod_flattens
from .entries import BracketNotProtected, TradingHalted, bracket_record, submit_bracket_order
from .journal import event_record
from .limits import Breach, limits_breaches, limits_current, usage_now
from .models import OrderRequest, OrderRequestKind, OrderRequestState, RiskEventKind, RiskLimits
from .protection import reduced_protect

log = logging.getLogger("risk.gate")

CLIENT_ORDER_ID_MAX = 48  # Alpaca takes 128; the orders table keeps 48
CLIENT_ORDER_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*")
RESERVED_PREFIX = "catalyst-"  # the console's own orders (tests, exits, OCOs)
OVERNIGHT_TIME_IN_FORCE = "gtc"
POLL_SECONDS = 0.1


class Refusal(StrEnum):
    TRADING_HALTED = "trading_halted"
    IDEMPOTENCY_CONFLICT = "idempotency_conflict"
    IN_PROGRESS = "in_progress"
    LIMIT_EXCEEDED = "limit_exceeded"
    BROKER_REFUSED = "broker_refused"
    BROKER_FAILED = "broker_failed"
    BRACKET_NOT_PROTECTED = "bracket_not_protected"
    POSITION_NOT_OPEN = "position_not_open"


class GateRefused(Exception):
    """The gate did not (or not yet) carry the order out. `code` says why, `data` the details
    (the limits broken, the working orders and positions the broker's refusal is about...)."""

    def __init__(self, code: Refusal, message: str, *, data: dict | None = None, request: OrderRequest | None = None):
        self.code = code
        self.data = data or {}
        self.request = request
        super().__init__(message)


class _AlreadyRequested(Exception):
    """Another call recorded this client_order_id first."""


@dataclass
class GateResult:
    request: OrderRequest
    replayed: bool  # an earlier call's answer
    outcome: CloseOutcome | None = None  # a reduce carried out by this call


# --- Input -----------------------------------------------------------------------------------------


def client_order_id_check(value: object) -> str:
    """The caller's id: 1 to 48 ASCII letters, digits and . _ : - (starting with a letter or digit),
    not starting with "catalyst-". Raises OrderValidationError on `client_order_id`."""
    text = value if isinstance(value, str) else ""
    if len(text) > CLIENT_ORDER_ID_MAX or not CLIENT_ORDER_ID_RE.fullmatch(text):
        raise OrderValidationError({"client_order_id": f"must be 1 to {CLIENT_ORDER_ID_MAX} ASCII letters, digits, "
                                                       "'.', '_', ':' or '-', starting with a letter or digit"})
    if text.lower().startswith(RESERVED_PREFIX):
        raise OrderValidationError({"client_order_id": f"ids starting with {RESERVED_PREFIX!r} are the console's own"})
    return text


def _number(value: object, *, price: bool = False) -> str | None:
    """A number as the gate compares it (prices on Alpaca's increments); what is not a number as given."""
    if value is None:
        return None
    try:
        number = to_decimal(value, "value")
    except OrderValidationError:
        return str(value)
    if price and 0 < number < Decimal("1e9"):
        number = round_price(number)
    return f"{number.normalize():f}"


def _side(value: object) -> str:
    try:
        return normalize_side(value).value
    except OrderValidationError:
        return str(value)


def _fingerprint(canonical: dict) -> str:
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


def _who(user) -> tuple:
    return (user if user is not None and user.is_authenticated else None), (getattr(user, "username", "") or "system")


# --- Answers ---------------------------------------------------------------------------------------


def _claim_span() -> timedelta:
    """How long a worker may take to send an order and read it back (every broker call timing
    out after its retries), after which another call may take its request over."""
    calls = 4 * (settings.BROKER_RETRY_ATTEMPTS + 1)
    return timedelta(seconds=float(settings.BROKER_TIMEOUT_SECONDS) * calls + float(settings.MONITOR_EXIT_FILL_WAIT_SECONDS))


def _finish(request: OrderRequest, state: str, *, refusal: str = "", detail: str = "", data: dict | None = None,
            entry: Order | None = None, position: Position | None = None) -> OrderRequest:
    request.state = state
    request.refusal = refusal
    request.detail = detail
    request.data = data or {}
    request.entry_order = entry or request.entry_order
    request.position = position or request.position
    request.claimed_until = None
    request.save(update_fields=["state", "refusal", "detail", "data", "entry_order", "position", "claimed_until",
                                "updated_at"])
    return request


def _answer(request: OrderRequest, *, replayed: bool) -> GateResult:
    """A settled request's answer: the result, or its refusal raised again."""
    if request.state == OrderRequestState.DONE:
        return GateResult(request, replayed=replayed)
    raise GateRefused(Refusal(request.refusal), request.detail, data=request.data, request=request)


def _replay(request: OrderRequest, canonical: dict) -> GateResult:
    """The answer for a client_order_id already used: the same one for the same request (waiting
    while another call is still sending it, settling it when its outcome is unknown), a conflict
    for a different one."""
    if request.fingerprint != _fingerprint(canonical):
        differs = sorted(k for k in set(canonical) | set(request.request) if canonical.get(k) != request.request.get(k))
        then = ", ".join(f"{k} {request.request.get(k)!r}" for k in differs)
        raise GateRefused(Refusal.IDEMPOTENCY_CONFLICT,
                          f"client_order_id {request.client_order_id!r} was used for a different request "
                          f"({then}); use a new client_order_id for a new order",
                          data={"conflicting_fields": differs}, request=request)
    deadline = time.monotonic() + float(settings.BROKER_TIMEOUT_SECONDS)
    while True:
        request.refresh_from_db()
        if request.state == OrderRequestState.UNKNOWN or (
                request.state == OrderRequestState.PENDING and request.claimed_until is not None
                and request.claimed_until < timezone.now()):
            if _take_over(request):
                return _settle(request)
            continue
        if request.state != OrderRequestState.PENDING:
            return _answer(request, replayed=True)
        if time.monotonic() >= deadline:
            raise GateRefused(Refusal.IN_PROGRESS, f"{request.kind} {request.client_order_id!r} is still being sent; "
                                                   "ask again with the same client_order_id", request=request)
        time.sleep(POLL_SECONDS)


def _take_over(request: OrderRequest) -> bool:
    """Compare-and-set: this call settles an UNKNOWN request, or one whose worker's claim ran out."""
    now = timezone.now()
    stale = Q(state=OrderRequestState.UNKNOWN) | Q(state=OrderRequestState.PENDING, claimed_until__lt=now)
    taken = OrderRequest.objects.filter(Q(pk=request.pk) & stale).update(
        state=OrderRequestState.PENDING, claimed_until=now + _claim_span(), updated_at=now) == 1
    request.refresh_from_db()
    return taken


def _settle(request: OrderRequest) -> GateResult:
    if request.kind == OrderRequestKind.REDUCE:  # a reduce's close carries on in the monitor: report where it is
        position = request.position
        return GateResult(_finish(request, OrderRequestState.DONE, data={**request.data, "outcome": "resumed",
                                                                         "detail": f"position is {position.status}"}),
                          replayed=True)
    spec = _spec(request.request)
    entry = Order.objects.filter(client_order_id=request.client_order_id).first()
    try:
        remote = order_read(order=entry) if entry is not None else None
        if remote is None:  # it never reached the broker: send it now, if entries are still allowed
            mode = trading_state().mode
            if mode != TradingMode.ACTIVE:
                if entry is not None:
                    Order.objects.filter(pk=entry.pk).update(status=OrderStatus.SUBMIT_FAILED,
                                                             error=f"never sent: trading became {mode}")
                _finish(request, OrderRequestState.REFUSED, refusal=Refusal.TRADING_HALTED,
                        detail=f"the order never reached the broker, and trading is now {mode}: not sent")
                return _answer(request, replayed=True)
            entry = bracket_send(spec=spec, time_in_force=_time_in_force(request.request["intraday"]), prefix="entry",
                                 client_order_id=request.client_order_id)
        position = bracket_record(entry=entry, spec=spec, expected_price=request.expected_price,
                                  intraday=request.request["intraday"])
    except (BracketNotProtected, BrokerError) as exc:
        _failed(request, exc, spec)
    return _answer(_finish(request, OrderRequestState.DONE, entry=position.entry_order, position=position),
                   replayed=True)


# --- Entries ---------------------------------------------------------------------------------------


def _time_in_force(intraday: bool | None) -> str:
    """Legs of a position closed before the close may be day orders; one that stays overnight keeps GTC legs."""
    return settings.BRACKET_TIME_IN_FORCE if eod_flattens(intraday) else OVERNIGHT_TIME_IN_FORCE


def _spec(canonical: dict) -> BracketSpec:
    """The bracket of a request admitted earlier (checked then)."""
    return BracketSpec(symbol=canonical["symbol"], side=normalize_side(canonical["side"]),
                       quantity=Decimal(canonical["quantity"]), stop_loss=Decimal(canonical["stop_loss"]),
                       take_profit=Decimal(canonical["take_profit"]),
                       entry_price=None if canonical["entry_price"] is None else Decimal(canonical["entry_price"]))


def _conflicts(symbol: str) -> dict:
    """What a broker's refusal is usually about: the symbol's working orders and open position
    (ours named by id). Empty when the broker can't say."""
    try:
        tops = broker.list_orders_open_and_recent(symbols=[symbol])
        remote_position = broker.get_position(symbol)
    except BrokerError:
        return {}
    working = [o for top in tops for o in (top, *top.legs) if not o.is_final and o.symbol == symbol]
    ours = {o.broker_order_id: o for o in Order.objects.filter(broker_order_id__in=[o.id for o in working])}
    data = {"working_orders": [
        {"broker_order_id": o.id, "client_order_id": o.client_order_id, "side": o.side, "type": o.type,
         "qty": f"{o.qty.normalize():f}", "status": o.status,
         "order_id": ours[o.id].pk if o.id in ours else None,
         "position_id": ours[o.id].position_id if o.id in ours else None}
        for o in working]}
    data["positions"] = [] if remote_position is None else [{
        "symbol": symbol, "side": remote_position.side, "qty": f"{remote_position.qty.normalize():f}",
        "position_ids": list(Position.objects.active().filter(symbol=symbol).order_by("pk").values_list("pk", flat=True)),
    }]
    return data


def _conflicts_text(data: dict) -> str:
    parts = [f"{o['side']} {o['qty']} {o['type']} {o['broker_order_id']}"
             + (f" (order #{o['order_id']}, position #{o['position_id']})" if o["order_id"] else " (not ours)")
             for o in data.get("working_orders", [])]
    text = f"; working orders: {', '.join(parts)}" if parts else ""
    for p in data.get("positions", []):
        ids = ", ".join(f"#{pk}" for pk in p["position_ids"]) or "none of ours"
        text += f"; open position: {p['side']} {p['qty']} {p['symbol']} (positions {ids})"
    return text


def _failed(request: OrderRequest, exc: Exception, spec: BracketSpec) -> NoReturn:
    """Record how sending failed and raise the refusal. Never a half-recorded position: a refused
    entry has none; a bracket the broker took keeps its position (guarded by the monitor)."""
    entry = Order.objects.filter(client_order_id=request.client_order_id).first()
    if isinstance(exc, BracketNotProtected):
        _finish(request, OrderRequestState.NOT_PROTECTED, refusal=Refusal.BRACKET_NOT_PROTECTED, detail=str(exc),
                entry=exc.entry, position=exc.position)
    elif exc.outcome_unknown or (entry is not None and entry.broker_order_id):
        _finish(request, OrderRequestState.UNKNOWN, refusal=Refusal.BROKER_FAILED, entry=entry,
                position=entry.position if entry is not None else None,
                detail=f"{exc}; the order may be at the broker: ask again with the same client_order_id to settle it")
    else:
        data = _conflicts(spec.symbol) if exc.status in (403, 422) else {}
        data["broker_status"] = exc.status
        detail = f"the broker refused the order: {exc}{_conflicts_text(data)}"
        _finish(request, OrderRequestState.REFUSED, refusal=Refusal.BROKER_REFUSED, detail=detail, data=data, entry=entry)
        event_record(kind=RiskEventKind.ORDER_REFUSED, symbol=spec.symbol, reason=f"broker HTTP {exc.status}",
                     message=detail, data={"client_order_id": request.client_order_id, **data})
    log.warning("order gate: %s %s: %s", request.client_order_id, request.state, request.detail)
    raise GateRefused(Refusal(request.refusal), request.detail, data=request.data, request=request)


def _admit_entry(*, client_order_id: str, canonical: dict, spec: BracketSpec, expected: Decimal | None,
                 user) -> OrderRequest:
    """Under the limits' row lock: check every limit against what is held and in flight, and
    record the request. Raises GateRefused (a limit) or _AlreadyRequested."""
    base = spec.entry_price if spec.entry_price is not None else expected
    limits = limits_current()
    with transaction.atomic():
        limits = RiskLimits.objects.select_for_update().get(pk=limits.pk)
        if OrderRequest.objects.filter(client_order_id=client_order_id).exists():
            raise _AlreadyRequested
        used = Order.objects.filter(client_order_id=client_order_id).first()
        if used is not None:
            raise GateRefused(Refusal.IDEMPOTENCY_CONFLICT,
                              f"client_order_id {client_order_id!r} is already order #{used.pk}, not sent through "
                              "the gate; use a new client_order_id")
        breaches = limits_breaches(limits=limits, spec=spec, base=base, usage=usage_now())
        if not breaches:
            by, by_name = _who(user)
            try:
                with transaction.atomic():
                    return OrderRequest.objects.create(
                        client_order_id=client_order_id, kind=OrderRequestKind.ENTRY,
                        fingerprint=_fingerprint(canonical), request=canonical, expected_price=expected,
                        notional=(spec.quantity * base).quantize(Decimal("0.01")), requested_by=by,
                        requested_by_name=by_name, claimed_until=timezone.now() + _claim_span(),
                    )
            except IntegrityError:
                raise _AlreadyRequested from None
    _limit_refused(client_order_id=client_order_id, spec=spec, breaches=breaches)


def _limit_refused(*, client_order_id: str, spec: BracketSpec, breaches: list[Breach]) -> NoReturn:
    message = f"refused by the pre-trade limits: {'; '.join(b.text for b in breaches)}"
    event_record(kind=RiskEventKind.LIMIT_REFUSED, symbol=spec.symbol, reason=breaches[0].limit[:255],
                 message=f"{spec.side} {spec.quantity} {spec.symbol} ({client_order_id}) {message}",
                 data={"client_order_id": client_order_id, "limits": [vars(b) for b in breaches]})
    raise GateRefused(Refusal.LIMIT_EXCEEDED, message, data={"limits": [vars(b) for b in breaches]})


def order_submit(*, client_order_id: object, symbol: object, side: object, quantity: object, stop_loss: object,
                 take_profit: object, entry_price: object = None, intraday: bool | None = None,
                 user=None) -> GateResult:
    """Send a bracket entry for the trading service, once per client_order_id.

    Raises OrderValidationError (bad fields: nothing recorded), TradingHalted (trading not
    ACTIVE), GateRefused (a limit, a conflict, the broker's refusal or failure, a bracket not
    held), BrokerError (the broker failed before the request was recorded: nothing sent)."""
    client_order_id = client_order_id_check(client_order_id)
    canonical = {"kind": OrderRequestKind.ENTRY.value, "symbol": str(symbol).strip().upper(), "side": _side(side),
                 "quantity": _number(quantity), "entry_price": _number(entry_price, price=True),
                 "stop_loss": _number(stop_loss, price=True), "take_profit": _number(take_profit, price=True),
                 "intraday": intraday}
    existing = OrderRequest.objects.filter(client_order_id=client_order_id).first()
    if existing is not None:
        return _replay(existing, canonical)
    admitted: list[OrderRequest] = []

    def admit(spec: BracketSpec, expected: Decimal | None) -> None:
        admitted.append(_admit_entry(client_order_id=client_order_id, canonical=canonical, spec=spec,
                                     expected=expected, user=user))

    try:
        position = submit_bracket_order(symbol=symbol, quantity=quantity, side=side, stop_loss=stop_loss,
                                        take_profit=take_profit, entry_price=entry_price,
                                        time_in_force=_time_in_force(intraday), client_order_id=client_order_id,
                                        intraday=intraday, admit=admit)
    except _AlreadyRequested:
        return _replay(OrderRequest.objects.get(client_order_id=client_order_id), canonical)
    except (BracketNotProtected, BrokerError) as exc:
        if not admitted:
            raise
        _failed(admitted[0], exc, _spec(canonical))
    request = _finish(admitted[0], OrderRequestState.DONE, entry=position.entry_order, position=position)
    return GateResult(request, replayed=False)


# --- Reduces ----------------------------------------------------------------------------------------


def position_reduce_submit(*, client_order_id: object, position_id: int, quantity: object, user=None) -> GateResult:
    """Reduce an open position by `quantity` (all it holds: close it) for the trading service,
    once per client_order_id; allowed while ACTIVE or REDUCING. The rest is re-protected with an
    OCO at the position's stop and target as soon as the exit has filled.

    Raises OrderValidationError (bad quantity, more than it holds), Position.DoesNotExist,
    GateRefused (halted, the position not open, a conflict)."""
    client_order_id = client_order_id_check(client_order_id)
    canonical = {"kind": OrderRequestKind.REDUCE.value, "position": position_id, "quantity": _number(quantity)}
    existing = OrderRequest.objects.filter(client_order_id=client_order_id).first()
    if existing is not None:
        return _replay(existing, canonical)
    qty = normalize_quantity(quantity, whole=False)
    position = Position.objects.get(pk=position_id)
    mode = trading_state().mode
    if mode == TradingMode.HALTED:
        raise TradingHalted(f"trading is {mode}: nothing is sent for the trading service ({trading_state().reason})")
    if position.status != PositionStatus.OPEN:
        raise GateRefused(Refusal.POSITION_NOT_OPEN, f"position #{position.pk} is {position.status}: nothing to reduce")
    held = holding(position, position_orders(position)).held
    if qty > held:
        raise OrderValidationError({"quantity": f"{qty.normalize():f} is more than the {held.normalize():f} "
                                                f"{position.symbol} position #{position.pk} holds"})
    by, by_name = _who(user)
    try:
        with transaction.atomic():
            request = OrderRequest.objects.create(
                client_order_id=client_order_id, kind=OrderRequestKind.REDUCE, fingerprint=_fingerprint(canonical),
                request=canonical, position=position, requested_by=by, requested_by_name=by_name,
                claimed_until=timezone.now() + _claim_span())
    except IntegrityError:
        return _replay(OrderRequest.objects.get(client_order_id=client_order_id), canonical)
    outcome = position_reduce(position=position, quantity=qty, owner=f"reduce-{request.pk}")
    if outcome.state == CloseState.SKIPPED:
        _finish(request, OrderRequestState.REFUSED, refusal=Refusal.POSITION_NOT_OPEN,
                detail=f"position #{position.pk} is {outcome.position.status}: nothing to reduce")
        _answer(request, replayed=False)
    detail = outcome.detail
    try:
        protected = reduced_protect(outcomes=[outcome])
    except BrokerError as exc:
        detail += f"; re-protection failed ({exc}): the protection audit retries"
    else:
        detail += "".join(f"; {result.action}: {result.detail}" for result in protected)
    request = _finish(request, OrderRequestState.DONE, position=outcome.position,
                      data={"outcome": outcome.state.value, "detail": detail, "quantity": f"{qty.normalize():f}"})
    return GateResult(request, replayed=False, outcome=outcome)
