"""The one safe way to close positions.

The monitor, the admin, the API, reconciliation, the protection audit and flatten all close
through here: claim (compare-and-set open -> closing), cancel the remaining legs, exit once on
the correct side with a deterministic client_order_id, and close from the real fill.

Positions are worked a symbol at a time. Those of one symbol and side that must go out together
(one cycle's triggers, a flatten, a manual close of several) go out as ONE market order for the
sum (an exit netted over them: `ExitShare`), never for more than they hold by their records nor
than the broker holds beyond our other positions in the symbol; each is closed from that order's
fill at its price, with its own close_reason. Every broker request is spent at the EXIT priority
of the shared request budget (trading/budget.py); when the budget is spent, what is not sent yet
waits (the positions stay closing) and goes out when the budget allows.
"""

import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import DatabaseError, connection
from django.db.models import F
from django.utils import timezone

from trading import broker, budget
from trading.broker import BrokerError, BrokerPosition, BrokerThrottled
from trading.budget import Priority
from trading.holdings import RemoteOrders, holding, position_orders, with_orders
from trading.models import CloseReason, Closer, Order, OrderRole, Position, PositionStatus, Protection
from trading.orders import exit_send, exit_submit, oco_send, order_cancel, orders_cancel, orders_refresh

from .alerts import alert_send
from .claims import closings_lock, closings_unlock, position_claim, positions_claim
from .finalize import CloseOutcome, CloseState, positions_finalize
from .follow import Change, position_follow
from .journal import event_record, events_record, log_line
from .levels import protection_levels
from .market import exits_allowed
from .models import EXIT_ALERT_KINDS, AlertKind, RiskEvent, RiskEventKind

log = logging.getLogger("risk.closing")

ZERO = Decimal("0")
UNATTRIBUTED = "the broker's shares in the symbol are accounted to other positions; trying again next cycle"
BUDGET_SPENT = "held back by the broker request budget; the monitor sends it as soon as the budget allows"
FILL_POLL_SECONDS = 0.5


# --- One step for the claimed positions of one symbol ----------------------------------------


@dataclass
class Shared:
    """What the steps of one round share: the broker's positions read once (None: each
    symbol asks for its own), orders read in bulk (None: each is read by id), whether the
    request budget ran out, and until when the caller may send (a web request must end): then
    no step sends anything more this round, and the monitor carries on."""

    positions: dict[str, BrokerPosition] | None = None
    remote: RemoteOrders | None = None
    spent: threading.Event = field(default_factory=threading.Event)
    until: float | None = None  # time.monotonic()
    market: list[bool] = field(default_factory=list)  # whether exits may go out, read once a round
    lock: threading.Lock = field(default_factory=threading.Lock)

    def held_up(self) -> bool:
        return self.spent.is_set() or (self.until is not None and time.monotonic() > self.until)

    def exits_allowed(self) -> bool:
        """The broker's clock, read at most once a round, and only when an exit is to go out."""
        with self.lock:
            if not self.market:
                self.market.append(exits_allowed())
            return self.market[0]


def _load(ids) -> list[Position]:
    return list(with_orders(Position.objects.filter(pk__in=ids)).order_by("opened_at", "pk"))


def _own_live(position: Position) -> list[Order]:
    """Its orders the broker may still act on, other than exits (legs, OCOs, an entry)."""
    return [o for o in position.orders.all() if o.role != OrderRole.EXIT and not o.is_final and o.broker_order_id]


def _held_by_others(symbol: str, side: str, members: list[int]) -> Decimal:
    """What our other active positions in the symbol and side hold by their records. While
    another position's exit is filling, its record lags the broker, so this can only overstate."""
    others = with_orders(Position.objects.active().filter(symbol=symbol, side=side).exclude(pk__in=members))
    return max(sum((holding(o, position_orders(o)).held for o in others), ZERO), ZERO)


def _broker_position(symbol: str, shared: Shared, fresh: bool) -> BrokerPosition | None:
    """The broker's position in the symbol: from the round's read, unless this step changed
    something at the broker (cancelled orders: a leg may have filled meanwhile)."""
    if shared.positions is not None and not fresh:
        return shared.positions.get(symbol)
    return broker.get_position(symbol)


def _symbol_progress(positions: list[Position], shared: Shared) -> list[CloseOutcome]:
    """One idempotent step for claimed positions of one symbol, safe to repeat after a crash."""
    if shared.held_up():
        return [CloseOutcome(p, CloseState.WAITING, BUDGET_SPENT) for p in positions]
    symbol, ids = positions[0].symbol, [p.pk for p in positions]
    live = [o for p in positions for o in _own_live(p)]
    live += [s.order for p in positions for s in p.exit_shares.all() if not s.order.is_final]  # unacknowledged: looked up
    if live:
        orders_refresh(orders=live, remote=shared.remote)
        positions = _load(ids)

    outcomes, finished, candidates, unsent = [], [], [], {}
    reduced = []
    for position in positions:
        views = position_orders(position)
        held = holding(position, views).held
        working = [v for v in views if v.role == OrderRole.EXIT and not v.is_final]
        if working:
            for view in working:
                if not view.broker_order_id:  # written, never acknowledged (a crash or an unknown outcome)
                    unsent.setdefault(view.order.pk, view.order)
            if held <= 0:  # its share of a netted exit is filled, whatever the others' are
                finished.append(position)
            elif _kept(position, held):
                reduced.append((position, held))
            elif not any(not v.broker_order_id for v in working):
                outcomes.append(CloseOutcome(position, CloseState.EXIT_PENDING, "waiting for the exit to fill"))
        elif held <= 0:
            finished.append(position)
        elif _kept(position, held):
            reduced.append((position, held))
        else:
            candidates.append(position)
    for order in unsent.values():
        outcomes += _exit_answered(order, lambda order=order: exit_submit(order=order), shared)

    if candidates and not shared.exits_allowed():  # its legs stay until the exit can go out: never naked
        outcomes += [CloseOutcome(p, CloseState.WAITING, "market closed: the exit goes out once it opens")
                     for p in candidates]
        candidates = []
    if candidates:
        cancelled = _cancel_before_exit(candidates)
        fresh = bool(cancelled)
        if fresh:
            candidates = _load([p.pk for p in candidates])
        ready = []
        for position in candidates:
            views = position_orders(position)
            still = [o for o in position.orders.all() if o.role != OrderRole.EXIT and not o.is_final]
            if still:
                outcomes.append(CloseOutcome(position, CloseState.WAITING, f"{len(still)} orders not yet cancelled"))
            elif holding(position, views).held <= 0:
                finished.append(position)
            elif _kept(position, holding(position, views).held):
                reduced.append((position, holding(position, views).held))
            else:
                ready.append(position)
        if ready:
            remote_position = _broker_position(symbol, shared, fresh)
            for side in sorted({p.side for p in ready}):
                members = [p for p in ready if p.side == side]
                if remote_position is None or remote_position.side != side:
                    finished += members  # the broker holds nothing on this side: closed from what filled
                    continue
                outcomes += _batch_exit(members, remote_position, shared)
    if finished:
        outcomes += _finish(finished)
    return outcomes + [_reduce_done(position, held) for position, held in reduced]


def _kept(position: Position, held: Decimal) -> bool:
    """A reduce has exited what it was asked to: what is held is what it keeps."""
    return position.keep_quantity is not None and 0 < held <= position.keep_quantity


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


def _cancel_before_exit(candidates: list[Position]) -> list[Order]:
    """Cancel what is left of their own orders (legs, OCOs, an entry: they hold the shares the
    exit needs), and our other positions' entries that would wash-trade against the exits."""
    cancelled = []
    for position in candidates:
        if _own_live(position):
            done = orders_cancel(position=position)
            if done:
                event_record(kind=RiskEventKind.LEGS_CANCELLED, position=position,
                             message=", ".join(f"{o.role} {o.broker_order_id}: {o.status}" for o in done))
            cancelled += done
    return cancelled + _wash_risks_cancel(candidates)


def _wash_risks_cancel(candidates: list[Position]) -> list[Order]:
    """Our other positions' entries still working in the symbol on the other side of the exits.
    Alpaca refuses an order that could trade against the account's own working opposite-side
    order (a wash trade), so such an entry would block an exit: it is cancelled first (the exit
    wins); what it had filled stays its position's."""
    symbol, ids = candidates[0].symbol, [p.pk for p in candidates]
    cancelled = []
    for side in {p.entry_side for p in candidates}:
        opposite = Order.objects.live().filter(symbol=symbol, role=OrderRole.ENTRY, parent__isnull=True,
                                               side=side).exclude(position__in=ids).exclude(broker_order_id=None)
        for entry in opposite.select_related("position"):
            order_cancel(order=entry)
            event_record(kind=RiskEventKind.LEGS_CANCELLED, position=entry.position, symbol=entry.symbol,
                         message=f"entry {entry.client_order_id} ({entry.side} {entry.qty}) cancelled: it would "
                                 f"wash-trade against the exit of #{', #'.join(str(pk) for pk in ids)}")
            cancelled.append(entry)
    return cancelled


def _finish(positions: list[Position]) -> list[CloseOutcome]:
    """Close positions nothing more is to be sent for, from their fills; what is left of their
    own orders (an unfilled entry and its legs) is cancelled first, so it can never fill later."""
    leftovers = [p for p in positions if _own_live(p)]
    for position in leftovers:
        orders_cancel(position=position)
    if leftovers:
        positions = _load([p.pk for p in positions])
    return positions_finalize([(p, position_orders(p)) for p in positions])


def _batch_exit(members: list[Position], remote_position: BrokerPosition, shared: Shared) -> list[CloseOutcome]:
    """ONE exit for positions of one symbol and side: each asks what it holds by its records,
    oldest first, while the broker holds shares not accounted to our other positions."""
    kept = sum((p.keep_quantity or ZERO for p in members), ZERO)  # a reduce's rest stays at the broker
    left = remote_position.qty - kept - _held_by_others(members[0].symbol, members[0].side, [p.pk for p in members])
    shares, outcomes = [], []
    for position in members:
        held = holding(position, position_orders(position)).held
        take = min(held - (position.keep_quantity or ZERO), max(left, ZERO))
        left -= take
        if take > 0:
            shares.append((position, take))
        elif position.keep_quantity is not None:  # the broker holds no more than it keeps: nothing to sell
            outcomes.append(_reduce_done(position, held))
        else:
            outcomes.append(CloseOutcome(position, CloseState.WAITING, UNATTRIBUTED))
    if shares:
        outcomes += _exit_answered(None, lambda: exit_send(shares=shares), shared, shares=shares)
    return outcomes


def _exit_answered(order: Order | None, send, shared: Shared, *,
                   shares: list[tuple[Position, Decimal]] | None = None) -> list[CloseOutcome]:
    """Send an exit (a new batch, or one written but never acknowledged) and act on the answer."""
    members = shares if shares is not None else [(s.position, s.qty) for s in order.shares.select_related("position")]
    try:
        order = send()
    except BrokerError as exc:
        return _exit_failed(members, exc, shared)
    ids = [p.pk for p, _ in members]
    reasons = sorted({p.close_reason or "" for p, _ in members})
    events_record(events=[RiskEvent(
        kind=RiskEventKind.EXIT_SENT, position=p, symbol=p.symbol, reason=p.close_reason or "",
        message=f"{order.side} {qty} {p.symbol} of {order.qty} market, {order.client_order_id}",
        data={"order": order.broker_order_id}) for p, qty in members])
    kind = EXIT_ALERT_KINDS.get(members[0][0].closed_by, AlertKind.FALLBACK_EXIT)
    who = str(members[0][0]) if len(members) == 1 else ", ".join(f"#{pk}" for pk in ids)
    alert_send(kind=kind, position=members[0][0] if len(members) == 1 else None,
               message=f"{AlertKind(kind).label} for {who}: {order.side} {order.qty} {order.symbol} at market, "
                       f"close reason {', '.join(reasons)}")
    outcomes, filled = [], []
    for position in _load(ids):
        held = holding(position, position_orders(position)).held
        if held <= 0:
            filled.append(position)
        elif _kept(position, held):
            outcomes.append(_reduce_done(position, held))
        else:
            outcomes.append(CloseOutcome(position, CloseState.EXIT_PENDING, "exit sent"))
    return outcomes + (_finish(filled) if filled else [])


def _exit_failed(members: list[tuple[Position, Decimal]], exc: BrokerError, shared: Shared) -> list[CloseOutcome]:
    if exc.throttled:  # nothing was sent, nor is anything more this round
        shared.spent.set()
    if isinstance(exc, BrokerThrottled):  # our own budget: the positions wait for it, still closing
        log_line({"event": "exit_waiting", "symbol": members[0][0].symbol, "positions": [p.pk for p, _ in members],
                  "message": str(exc)})
        return [CloseOutcome(p, CloseState.WAITING, f"{BUDGET_SPENT} ({exc})") for p, _ in members]
    if exc.outcome_unknown or exc.throttled:  # may be at the broker (the next step looks its id up), or 429
        events_record(events=[RiskEvent(kind=RiskEventKind.ERROR, position=p, symbol=p.symbol, reason="exit failed",
                                        message=str(exc)) for p, _ in members])
        return [CloseOutcome(p, CloseState.ERROR, str(exc)) for p, _ in members]
    return [_exit_refused(p, qty, exc) for p, qty in members]


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


def _symbol_step(ids: list[int], owner: str, shared: Shared) -> list[CloseOutcome]:
    """Work closing positions of one symbol under their locks; LOCKED where another worker holds one."""
    if shared.held_up():  # nothing is sent this round: the claim's own locks go, so the monitor may carry on
        closings_unlock(position_ids=ids, owner=owner)
        return [CloseOutcome(p, CloseState.WAITING, BUDGET_SPENT) for p in Position.objects.filter(pk__in=ids)]
    locked = closings_lock(position_ids=ids, owner=owner)
    others = Position.objects.filter(pk__in=set(ids) - set(locked))
    outcomes = [CloseOutcome(p, CloseState.CLOSED if p.status == PositionStatus.CLOSED else CloseState.LOCKED,
                             f"being closed by {p.lock_owner}" if p.lock_owner else "") for p in others]
    if not locked:
        return outcomes
    positions = _load(locked)
    try:
        with budget.priority(Priority.EXIT):
            return outcomes + _symbol_progress(positions, shared)
    except (BrokerError, DatabaseError) as exc:
        events_record(events=[RiskEvent(kind=RiskEventKind.ERROR, position=p, symbol=p.symbol,
                                        reason="close step failed", message=str(exc)) for p in positions])
        return outcomes + [CloseOutcome(p, CloseState.ERROR, str(exc)) for p in positions]
    finally:
        closings_unlock(position_ids=locked, owner=owner)


def _shared_for(position_ids: list[int], *, until: float | None = None) -> Shared:
    """The round's shared reads: with positions in several symbols, the broker's positions in
    ONE request instead of one per symbol."""
    shared = Shared(until=until)
    if Position.objects.filter(pk__in=position_ids).values("symbol").distinct().count() > 1:
        try:
            with budget.priority(Priority.EXIT):
                shared.positions = {p.symbol: p for p in broker.list_positions()}
        except BrokerError as exc:  # each symbol asks for its own
            if exc.throttled:
                shared.spent.set()
            log.warning("broker positions not read for the round (%s)", exc)
    return shared


def _steps(position_ids: list[int], owner: str, shared: Shared) -> list[CloseOutcome]:
    """Work closing positions symbol by symbol, MONITOR_CLOSE_WORKERS symbols side by side, so
    when many cross at once the last exit doesn't wait for every other one's round trips.
    Inside a transaction (other connections couldn't see its rows) one symbol after another."""
    by_symbol: dict[str, list[int]] = {}
    for pk, symbol in Position.objects.filter(pk__in=position_ids).values_list("pk", "symbol"):
        by_symbol.setdefault(symbol, []).append(pk)
    workers = min(settings.MONITOR_CLOSE_WORKERS, len(by_symbol))
    if workers <= 1 or connection.in_atomic_block:
        return [outcome for pks in by_symbol.values() for outcome in _symbol_step(pks, owner, shared)]

    def work(pks: list[int]) -> list[CloseOutcome]:
        try:
            return _symbol_step(pks, owner, shared)
        finally:
            connection.close()  # the worker thread's own connection

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="close") as pool:
        return [outcome for group in pool.map(work, by_symbol.values()) for outcome in group]


def _exits_read(position_ids: list[int]) -> RemoteOrders | None:
    """The working exits of these positions, read in ONE request when there are several."""
    exits = list(Order.objects.live().filter(role=OrderRole.EXIT, shares__position__in=position_ids)
                 .exclude(broker_order_id=None).distinct())
    if len(exits) < 2:
        return None
    since = min((o.submitted_at for o in exits if o.submitted_at), default=None)
    with budget.priority(Priority.EXIT):
        return RemoteOrders(broker.list_orders(status="all", symbols=sorted({o.symbol for o in exits}), limit=500,
                                               after=since - timedelta(seconds=1) if since else None))


def _await_exits(outcomes: list[CloseOutcome], owner: str) -> list[CloseOutcome]:
    """Wait briefly for pending exits to fill, so a close usually ends within the same step;
    each round reads every working exit in one request."""
    deadline = time.monotonic() + float(settings.MONITOR_EXIT_FILL_WAIT_SECONDS)
    pending = [o for o in outcomes if o.state == CloseState.EXIT_PENDING]
    done = [o for o in outcomes if o.state != CloseState.EXIT_PENDING]
    while pending and time.monotonic() < deadline:
        time.sleep(FILL_POLL_SECONDS)
        ids = [o.position.pk for o in pending]
        try:
            shared = Shared(remote=_exits_read(ids))
        except BrokerError as exc:
            log.warning("working exits not read (%s)", exc)
            break
        results = _steps(ids, owner, shared)
        pending = [o for o in results if o.state == CloseState.EXIT_PENDING]
        done += [o for o in results if o.state != CloseState.EXIT_PENDING]
    return done + pending


def claimed_close(position_ids: list[int], owner: str, *, shared: Shared | None = None,
                  until: float | None = None, wait: bool = True,
                  market_open: bool | None = None) -> list[CloseOutcome]:
    """Step positions this owner has claimed (every exit first), then await their fills together
    (unless not `wait`: the monitor's next cycle, or the trade_updates stream, carries on);
    `until` (time.monotonic()): send nothing after then; `market_open`: what the broker's clock
    said when the caller decided (not read again: a request less before the exit)."""
    if not position_ids:
        return []
    shared = shared or _shared_for(position_ids, until=until)
    if market_open is not None and not shared.market:
        shared.market.append(market_open)
    outcomes = _steps(position_ids, owner, shared)
    return _await_exits(outcomes, owner) if wait else outcomes


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
    held = holding(position, position_orders(position)).held
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
                    price: Decimal | None = None, quote_time: datetime | None = None,
                    shared: Shared | None = None) -> list[CloseOutcome]:
    """Close many positions: claimed at once, exits netted per symbol and side and sent first,
    then the fills awaited together. `by` says who closes them; `price` and `quote_time` (what
    the decision was made on) go on each claim event; `shared`: broker reads the caller already
    made for the round. An entry still working is cancelled instead: it holds nothing."""
    owner = owner or f"close-{uuid.uuid4().hex[:12]}"
    pending = [entry_cancel(position=p) for p in positions if p.status == PositionStatus.PENDING]
    wanted = [p for p in positions if p.status != PositionStatus.PENDING]
    claimed = positions_claim(position_ids=[p.pk for p in wanted], reason=reason, owner=owner, by=by)
    taken = set(claimed)
    events_record(events=[RiskEvent(kind=RiskEventKind.CLAIMED, position=p, symbol=p.symbol, price=price,
                                    quote_time=quote_time, reason=reason) for p in wanted if p.pk in taken])
    skipped = [CloseOutcome(p, CloseState.SKIPPED, f"already {p.status}")
               for p in Position.objects.filter(pk__in=[p.pk for p in wanted if p.pk not in taken])]
    outcomes = pending + skipped + claimed_close(claimed, owner, shared=shared)
    order = {p.pk: i for i, p in enumerate(positions)}
    return sorted(outcomes, key=lambda o: order[o.position.pk])


def entry_cancel(*, position: Position) -> CloseOutcome:
    """An entry still working is not a position: closing it means cancelling the entry (with
    its legs); what it filled meanwhile becomes an open position, closed like any other."""
    try:
        with budget.priority(Priority.EXIT):
            orders_cancel(position=position)
        change = position_follow(position=position)
    except (BrokerError, DatabaseError) as exc:
        event_record(kind=RiskEventKind.ERROR, position=position, reason="entry cancel failed", message=str(exc))
        return CloseOutcome(position, CloseState.ERROR, str(exc))
    position.refresh_from_db()
    if change == Change.CANCELLED:
        return CloseOutcome(position, CloseState.CANCELLED, "entry cancelled before it filled")
    return CloseOutcome(position, CloseState.SKIPPED, f"entry {change or 'unchanged'}: now {position.status}")


def closings_progress(*, owner: str, position_ids: list[int] | None = None) -> list[CloseOutcome]:
    """Carry on closings left by an earlier cycle, a crash, a spent budget or another worker that
    died (`position_ids`: the closing positions, when the caller has read them already)."""
    ids = list(Position.objects.closing().values_list("pk", flat=True)) if position_ids is None else position_ids
    if not ids:
        return []
    outcomes = _steps(ids, owner, _shared_for(ids))
    return _await_exits([o for o in outcomes if o.state != CloseState.LOCKED], owner)
