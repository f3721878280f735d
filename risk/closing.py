"""The one safe way to close a position.

The monitor, the admin, the API, reconciliation and the protection audit all close through
here: claim (compare-and-set open -> closing), cancel the remaining legs, exit once on the
correct side with a deterministic client_order_id, and close from the real fill.
"""

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.db import DatabaseError, connection
from django.db.models import F
from django.utils import timezone

from trading import broker
from trading.broker import BrokerError
from trading.holdings import holding
from trading.models import (
    CloseReason,
    Closer,
    Order,
    OrderRole,
    OrderStatus,
    Position,
    PositionStatus,
    Protection,
)
from trading.orders import (
    exit_send,
    oco_send,
    order_cancel,
    orders_cancel,
    position_orders_refresh,
)

from .alerts import alert_send
from .claims import closing_lock, closing_unlock, position_claim
from .finalize import CloseOutcome, CloseState, position_finalize
from .follow import Change, position_follow
from .journal import event_record
from .levels import protection_levels
from .market import exits_allowed
from .models import EXIT_ALERT_KINDS, AlertKind, RiskEvent, RiskEventKind

ZERO = Decimal("0")
UNATTRIBUTED = "the broker's shares in the symbol are accounted to other positions; trying again next cycle"


def _held_by_others(position: Position) -> Decimal:
    """What our other active positions in the symbol hold by their records. While another
    position's exit is filling, its record lags the broker, so this can only overstate."""
    others = (Position.objects.active().filter(symbol=position.symbol, side=position.side).exclude(pk=position.pk)
              .prefetch_related("orders"))
    return max(sum((holding(o, o.orders.all()).held for o in others), ZERO), ZERO)


def _to_exit(position: Position, orders: list[Order]) -> Decimal | None:
    """How much to exit for this position: 0 when it is flat (its own fills cover it, or the
    broker holds nothing on its side); None when every share the broker holds is accounted
    to our other positions in the symbol (their records are catching up: try again next
    cycle). Never more than the broker holds beyond the others, so an exit can't sell
    another position's shares."""
    remaining = holding(position, orders).held
    if remaining <= 0:
        return ZERO
    remote = broker.get_position(position.symbol)
    if remote is None or remote.side != position.side:
        return ZERO
    attributable = remote.qty - _held_by_others(position)
    if attributable <= 0:
        return None
    return min(remaining, attributable)


def _progress(position: Position) -> CloseOutcome:
    """One idempotent step towards closing a claimed position. Safe to repeat after a crash."""
    orders = position_orders_refresh(position=position)
    if any(o.role == OrderRole.EXIT and not o.is_final and o.broker_order_id for o in orders):
        return CloseOutcome(position, CloseState.EXIT_PENDING, "waiting for the exit to fill")

    held = _to_exit(position, orders)
    if held is None:
        return CloseOutcome(position, CloseState.WAITING, UNATTRIBUTED)
    keep = position.keep_quantity or ZERO
    if 0 < held <= keep:
        return _reduce_done(position, held)
    if held <= 0:
        if position.orders.live().exclude(broker_order_id=None).exists():
            orders_cancel(position=position)  # an unfilled entry and its legs must not fill later
        return position_finalize(position, list(position.orders.all()))
    if not exits_allowed():  # its legs stay until the exit can go out: never naked overnight
        return CloseOutcome(position, CloseState.WAITING, "market closed: the exit goes out once it opens")

    cancelled = orders_cancel(position=position)
    if cancelled:
        event_record(kind=RiskEventKind.LEGS_CANCELLED, position=position,
                     message=", ".join(f"{o.role} {o.broker_order_id}: {o.status}" for o in cancelled))
    if _wash_risks_cancel(position) or cancelled:
        orders = list(position.orders.all())
        still_live = [o for o in orders if o.role != OrderRole.EXIT and not o.is_final]
        if still_live:
            return CloseOutcome(position, CloseState.WAITING, f"{len(still_live)} orders not yet cancelled")
        # A leg may have filled while it was being cancelled: ask again before exiting.
        held = _to_exit(position, orders)
        if held is None:
            return CloseOutcome(position, CloseState.WAITING, UNATTRIBUTED)
        if 0 < held <= keep:
            return _reduce_done(position, held)
        if held <= 0:
            return position_finalize(position, orders)
    return _exit(position, held - keep)


def _wash_risks_cancel(position: Position) -> list[Order]:
    """Our other positions' entries still working in the symbol on the other side. Alpaca
    refuses an order that could trade against the account's own working opposite-side order
    (a wash trade), so such an entry would block this exit: it is cancelled first (the exit
    wins); what it had filled stays its position's."""
    opposite = Order.objects.live().filter(symbol=position.symbol, role=OrderRole.ENTRY, parent__isnull=True,
                                           side=position.entry_side).exclude(position=position)
    cancelled = []
    for entry in opposite.exclude(broker_order_id=None):
        order_cancel(order=entry)
        event_record(kind=RiskEventKind.LEGS_CANCELLED, position=entry.position, symbol=entry.symbol,
                     message=f"entry {entry.client_order_id} ({entry.side} {entry.qty}) cancelled: it would "
                             f"wash-trade against the exit of #{position.pk}")
        cancelled.append(entry)
    return cancelled


def _exit(position: Position, qty: Decimal) -> CloseOutcome:
    try:
        exit_order = exit_send(position=position, qty=qty)
    except BrokerError as exc:
        if exc.outcome_unknown:  # it may be at the broker: the next step looks its id up
            event_record(kind=RiskEventKind.ERROR, position=position, reason="exit failed", message=str(exc))
            return CloseOutcome(position, CloseState.ERROR, str(exc))
        return _exit_refused(position, qty, exc)
    event_record(kind=RiskEventKind.EXIT_SENT, position=position, reason=position.close_reason or "",
                 message=f"{exit_order.side} {exit_order.qty} {position.symbol} market, {exit_order.client_order_id}",
                 data={"order": exit_order.broker_order_id})
    kind = EXIT_ALERT_KINDS.get(position.closed_by, AlertKind.FALLBACK_EXIT)
    alert_send(kind=kind, message=f"{AlertKind(kind).label} for {position}: {exit_order.side} {exit_order.qty} at "
                                  f"market, close reason {position.close_reason}", position=position)
    if exit_order.status == OrderStatus.FILLED:
        return _after_exit_fill(position)
    return CloseOutcome(position, CloseState.EXIT_PENDING, "exit sent")


def _exit_refused(position: Position, qty: Decimal, exc: BrokerError) -> CloseOutcome:
    """The broker refused the exit, and the legs are gone: the shares are naked. Shown as
    UNPROTECTED at once; the next step tries again, and after MONITOR_EXIT_ATTEMPTS refusals
    the position is re-protected at its stop and target (GTC) and left to an operator."""
    Position.objects.filter(pk=position.pk).update(
        exit_refusals=F("exit_refusals") + 1, protection=Protection.UNPROTECTED, protection_checked_at=timezone.now(),
        updated_at=timezone.now())
    position.refresh_from_db()
    attempts = f"{position.exit_refusals} of {settings.MONITOR_EXIT_ATTEMPTS}"
    event_record(kind=RiskEventKind.EXIT_REJECTED, position=position, reason="exit refused",
                 message=f"refusal {attempts}: {exc}")
    alert_send(kind=AlertKind.EXIT_REJECTED, position=position,
               message=f"Exit for {position} refused ({attempts}); it holds no stop until the exit goes out: {exc}")
    if position.exit_refusals < settings.MONITOR_EXIT_ATTEMPTS:
        return CloseOutcome(position, CloseState.ERROR, f"exit refused ({attempts}): {exc}")
    return _reprotect(position, qty, exc)


def _reprotect(position: Position, qty: Decimal, exc: BrokerError) -> CloseOutcome:
    """Give up exiting: an OCO at the position's stop and target, GTC, then back to open,
    flagged for review and left out of the monitor's triggers (the broker's OCO guards it)."""
    stop, target, defaults = protection_levels(position)
    levels = f"stop {stop} target {target}" + (" (defaults from the entry)" if defaults else "")
    qty += position.keep_quantity or ZERO  # a reduce's exit was refused: protect all it holds
    try:
        order = oco_send(position=position, qty=qty, stop=stop, target=target, time_in_force="gtc")
    except BrokerError as oco_exc:
        event_record(kind=RiskEventKind.ERROR, position=position, reason="re-protection failed",
                     message=f"OCO {levels} refused: {oco_exc}")
        return CloseOutcome(position, CloseState.ERROR, f"exit refused and OCO {levels} refused: {oco_exc}")
    now = timezone.now()
    note = (f"exit refused {position.exit_refusals} times ({exc}); re-protected with OCO {levels} "
            f"({order.broker_order_id}); close it by hand once the cause is cleared")
    Position.objects.filter(pk=position.pk, status=PositionStatus.CLOSING).update(
        status=PositionStatus.OPEN, protection=Protection.PROTECTED, protection_checked_at=now, exit_refused_at=now,
        needs_review=True, review_note=note, lock_owner="", locked_until=None, keep_quantity=None, updated_at=now,
        **({"stop_loss": stop, "take_profit": target} if defaults else {}))
    position.refresh_from_db()
    event_record(kind=RiskEventKind.PROTECTED, position=position, reason="re-protected after refused exits",
                 message=note, data={"order": order.broker_order_id, "stop": str(stop), "target": str(target),
                                     "defaults": defaults})
    alert_send(kind=AlertKind.EXIT_REFUSED, position=position, message=f"{position}: {note}")
    return CloseOutcome(position, CloseState.ERROR, note)


def _after_exit_fill(position: Position) -> CloseOutcome:
    orders = list(position.orders.all())
    for order in orders:
        if order.role != OrderRole.EXIT or order.status != OrderStatus.FILLED:
            continue
        if not RiskEvent.objects.filter(kind=RiskEventKind.EXIT_FILLED, data__order=order.broker_order_id).exists():
            event_record(kind=RiskEventKind.EXIT_FILLED, position=position, price=order.filled_avg_price,
                         message=f"{order.filled_qty} @ {order.filled_avg_price}", data={"order": order.broker_order_id})
    remaining = holding(position, orders).held
    if remaining <= 0:
        return position_finalize(position, orders)
    if position.keep_quantity is not None and remaining <= position.keep_quantity:
        return _reduce_done(position, remaining)
    return CloseOutcome(position, CloseState.EXIT_PENDING, f"{remaining} still to exit")


def _reduce_done(position: Position, held: Decimal) -> CloseOutcome:
    """A reduce has exited what it was asked to: the position is open again for what it still
    holds, marked UNPROTECTED (its legs were cancelled) until it is re-protected. A full close
    that took the reduce over meanwhile (keep_quantity cleared) is left to carry on."""
    reopened = Position.objects.filter(pk=position.pk, status=PositionStatus.CLOSING,
                                       keep_quantity__isnull=False).update(
        status=PositionStatus.OPEN, close_reason=None, closed_by="", keep_quantity=None, lock_owner="",
        locked_until=None, protection=Protection.UNPROTECTED, protection_checked_at=timezone.now())
    position.refresh_from_db()
    if not reopened:
        return CloseOutcome(position, CloseState.WAITING, "taken over by a full close")
    detail = f"{held.normalize():f} left open, to be re-protected"
    event_record(kind=RiskEventKind.REDUCED, position=position, reason=CloseReason.REDUCED, message=detail,
                 data={"held": held})
    return CloseOutcome(position, CloseState.REDUCED, detail)


def close_step(position_id: int, owner: str) -> CloseOutcome:
    """Work one closing position under its lock; LOCKED when another worker holds it."""
    if not closing_lock(position_id=position_id, owner=owner):
        position = Position.objects.get(pk=position_id)
        state = CloseState.CLOSED if position.status == PositionStatus.CLOSED else CloseState.LOCKED
        return CloseOutcome(position, state, f"being closed by {position.lock_owner}" if position.lock_owner else "")
    position = Position.objects.get(pk=position_id)
    try:
        return _progress(position)
    except (BrokerError, DatabaseError) as exc:
        event_record(kind=RiskEventKind.ERROR, position=position, reason="close step failed", message=str(exc))
        return CloseOutcome(position, CloseState.ERROR, str(exc))
    finally:
        closing_unlock(position_id=position_id, owner=owner)


def _await_exits(outcomes: list[CloseOutcome], owner: str) -> list[CloseOutcome]:
    """Wait briefly for pending exits to fill, so a close usually ends within the same cycle."""
    deadline = time.monotonic() + float(settings.MONITOR_EXIT_FILL_WAIT_SECONDS)
    pending = [o for o in outcomes if o.state == CloseState.EXIT_PENDING]
    done = [o for o in outcomes if o.state != CloseState.EXIT_PENDING]
    while pending:
        still = []
        for outcome in pending:
            result = close_step(outcome.position.pk, owner)
            (still if result.state == CloseState.EXIT_PENDING else done).append(result)
        pending = still
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    return done + pending


def _steps(position_ids: list[int], owner: str) -> list[CloseOutcome]:
    """Work claimed positions side by side (MONITOR_CLOSE_WORKERS threads, one symbol each
    at a time), so when many cross at once the last exit doesn't wait for every other one's
    round trips. Positions in one symbol go one after another: each reads the broker's
    holding after the previous one's exit. Inside a transaction (other connections couldn't
    see its rows) everything is worked one by one."""
    workers = min(settings.MONITOR_CLOSE_WORKERS, len(position_ids))
    if workers <= 1 or connection.in_atomic_block:
        return [close_step(pk, owner) for pk in position_ids]
    by_symbol: dict[str, list[int]] = {}
    for pk, symbol in Position.objects.filter(pk__in=position_ids).values_list("pk", "symbol"):
        by_symbol.setdefault(symbol, []).append(pk)

    def work(pks: list[int]) -> list[CloseOutcome]:
        try:
            return [close_step(pk, owner) for pk in pks]
        finally:
            connection.close()  # the worker thread's own connection

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="close") as pool:
        return [outcome for group in pool.map(work, by_symbol.values()) for outcome in group]


def claimed_close(position_ids: list[int], owner: str) -> list[CloseOutcome]:
    """Step positions this owner has claimed (every exit first), then await their fills together."""
    return _await_exits(_steps(position_ids, owner), owner)


def position_close(*, position: Position, reason: str, by: Closer, owner: str | None = None,
                   price: Decimal | None = None, quote_time: datetime | None = None) -> CloseOutcome:
    """Close one position safely. A position already closing or closed is left alone."""
    return positions_close(positions=[position], reason=reason, by=by, owner=owner, price=price,
                           quote_time=quote_time)[0]


def position_reduce(*, position: Position, quantity: Decimal, owner: str) -> CloseOutcome:
    """Exit `quantity` of an open position the safe way, keeping the rest open: claimed like a
    close (its legs cancelled, ONE exit per attempt, never more than it holds), then reopened
    for the rest (CloseState.REDUCED), which the caller re-protects. Reducing by all it holds
    closes it (close_reason REDUCED). A position not open is SKIPPED."""
    held = holding(position, position.orders.all()).held
    keep = held - quantity if quantity < held else None
    if not position_claim(position_id=position.pk, reason=CloseReason.REDUCED, owner=owner, by=Closer.GATE,
                          keep=keep):
        position.refresh_from_db()
        return CloseOutcome(position, CloseState.SKIPPED, f"already {position.status}")
    event_record(kind=RiskEventKind.CLAIMED, position=position, reason=CloseReason.REDUCED,
                 message=f"reduce by {quantity.normalize():f} of {held.normalize():f}"
                         + (f", keeping {keep.normalize():f}" if keep is not None else ", closing it"))
    return claimed_close([position.pk], owner)[0]


def positions_close(*, positions: list[Position], reason: str, by: Closer, owner: str | None = None,
                    price: Decimal | None = None, quote_time: datetime | None = None) -> list[CloseOutcome]:
    """Close many positions: every exit is sent first, then the fills are awaited together.
    `by` says who closes them; `price` and `quote_time` (what the decision was made on) go on each
    claim event."""
    owner = owner or f"close-{uuid.uuid4().hex[:12]}"
    skipped, claimed = [], []
    for position in positions:
        if position.status == PositionStatus.PENDING:
            skipped.append(entry_cancel(position=position))
        elif position_claim(position_id=position.pk, reason=reason, owner=owner, by=by):
            event_record(kind=RiskEventKind.CLAIMED, position=position, price=price, quote_time=quote_time,
                         reason=reason)
            claimed.append(position.pk)
        else:
            position.refresh_from_db()
            skipped.append(CloseOutcome(position, CloseState.SKIPPED, f"already {position.status}"))
    outcomes = skipped + claimed_close(claimed, owner)
    order = {p.pk: i for i, p in enumerate(positions)}
    return sorted(outcomes, key=lambda o: order[o.position.pk])


def entry_cancel(*, position: Position) -> CloseOutcome:
    """An entry still working is not a position: closing it means cancelling the entry (with
    its legs); what it filled meanwhile becomes an open position, closed like any other."""
    try:
        orders_cancel(position=position)
        change = position_follow(position=position)
    except (BrokerError, DatabaseError) as exc:
        event_record(kind=RiskEventKind.ERROR, position=position, reason="entry cancel failed", message=str(exc))
        return CloseOutcome(position, CloseState.ERROR, str(exc))
    position.refresh_from_db()
    if change == Change.CANCELLED:
        return CloseOutcome(position, CloseState.CANCELLED, "entry cancelled before it filled")
    return CloseOutcome(position, CloseState.SKIPPED, f"entry {change or 'unchanged'}: now {position.status}")


def closings_progress(*, owner: str) -> list[CloseOutcome]:
    """Carry on closings left by an earlier cycle, a crash or another worker that died."""
    ids = list(Position.objects.closing().values_list("pk", flat=True))
    outcomes = [close_step(pk, owner) for pk in ids]
    return _await_exits([o for o in outcomes if o.state != CloseState.LOCKED], owner)
