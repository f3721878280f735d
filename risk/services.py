"""The fallback monitor and the one safe way to close a position.

The monitor cycle, `runmonitor`, the django-q2 task, the admin and the API all close
positions through `position_close` / `closings_progress`, so there is one code path:
claim (compare-and-set open -> closing), cancel the remaining legs, exit once on the
correct side with a deterministic client_order_id, and close from the real fill.
"""

import json
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import DatabaseError, IntegrityError, close_old_connections, connection, transaction
from django.db.models import Q, Sum, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from trading import broker
from trading.broker import BrokerError, Quote
from trading.models import CloseReason, Order, OrderRole, OrderStatus, Position, PositionStatus, Side
from trading.services import exit_submit, order_refresh, orders_cancel

from .models import Alert, Heartbeat, Lease, RiskEvent, RiskEventKind

log = logging.getLogger("risk.monitor")

MONITOR = "monitor"
LEG_REASONS = {OrderRole.STOP_LOSS: CloseReason.STOP_LOSS_HIT, OrderRole.TAKE_PROFIT: CloseReason.TAKE_PROFIT_HIT}


# --- Records -------------------------------------------------------------------------------


def _log_line(payload: dict) -> None:
    log.info(json.dumps(payload, default=str, sort_keys=True))


def event_record(
    *,
    kind: str,
    position: Position | None = None,
    symbol: str = "",
    price: Decimal | None = None,
    quote_time: datetime | None = None,
    reason: str = "",
    message: str = "",
    data: dict | None = None,
) -> RiskEvent | None:
    """Append a risk event and log it as one structured line. A database fault is logged,
    never raised: recording must not stop the monitor from protecting positions."""
    event = RiskEvent(
        kind=kind,
        position=position,
        symbol=symbol or (position.symbol if position else ""),
        price=price,
        quote_time=quote_time,
        reason=reason[:255],
        message=message,
        data=data or {},
    )
    _log_line({"event": kind, "position": position.pk if position else None, "symbol": event.symbol,
               "price": price, "quote_time": quote_time, "reason": reason, "message": message})
    try:
        with transaction.atomic():  # a savepoint: a failed insert must not poison the caller's transaction
            event.save()
    except DatabaseError as exc:
        log.exception("risk event not stored (%s): %s", type(exc).__name__, exc)
        return None
    return event


def alert_raise(*, kind: str, message: str, position: Position | None = None) -> Alert | None:
    from .alerts import alert_send

    return alert_send(kind=kind, message=message, position=position)


# --- Decisions -------------------------------------------------------------------------------


def quote_problem(*, quote: Quote | None, now: datetime, max_age: timedelta) -> str | None:
    """Why a quote must not be acted on, or None when it is usable."""
    if quote is None:
        return "no quote"
    if quote.crossed:
        return f"crossed quote (bid {quote.bid} > ask {quote.ask})"
    if quote.price is None:
        return "no bid and no ask"
    if quote.time is None:
        return "quote has no time"
    if now - quote.time > max_age:
        return f"stale quote ({int((now - quote.time).total_seconds())}s old)"
    return None


def trigger_reason(*, side: str, price: Decimal, stop_loss: Decimal | None, take_profit: Decimal | None) -> str | None:
    """STOP_LOSS_HIT, TAKE_PROFIT_HIT or None. Long: price <= stop / >= target; short: the
    reverse. When both hold, the stop wins."""
    if side == Side.LONG:
        stop_hit = stop_loss is not None and price <= stop_loss
        target_hit = take_profit is not None and price >= take_profit
    else:
        stop_hit = stop_loss is not None and price >= stop_loss
        target_hit = take_profit is not None and price <= take_profit
    if stop_hit:
        return CloseReason.STOP_LOSS_HIT
    if target_hit:
        return CloseReason.TAKE_PROFIT_HIT
    return None


# --- Claiming ----------------------------------------------------------------------------


def _lock_span() -> timedelta:
    return timedelta(seconds=settings.MONITOR_LEASE_SECONDS)


def position_claim(*, position_id: int, reason: str, owner: str) -> bool:
    """Move one position from open to closing. True for exactly one caller, however many race."""
    now = timezone.now()
    with transaction.atomic():
        candidates = Position.objects.filter(pk=position_id, status=PositionStatus.OPEN)
        if connection.features.has_select_for_update_skip_locked:
            if not list(candidates.select_for_update(skip_locked=True).values_list("pk", flat=True)):
                return False
        return candidates.update(
            status=PositionStatus.CLOSING, close_reason=reason, lock_owner=owner, locked_until=now + _lock_span()
        ) == 1


def _closing_lock(*, position_id: int, owner: str) -> bool:
    """Take the working lock on a closing position, unless a live worker holds it."""
    now = timezone.now()
    free = Q(locked_until__isnull=True) | Q(locked_until__lt=now) | Q(lock_owner=owner)
    return Position.objects.filter(Q(pk=position_id, status=PositionStatus.CLOSING) & free).update(
        lock_owner=owner, locked_until=now + _lock_span()
    ) == 1


def _closing_unlock(*, position_id: int, owner: str) -> None:
    Position.objects.filter(pk=position_id, lock_owner=owner).update(lock_owner="", locked_until=None)


# --- Closing ---------------------------------------------------------------------------------


@dataclass
class CloseOutcome:
    position: Position
    state: str  # closed / exit_pending / waiting / error / skipped
    detail: str = ""


def _orders(position: Position) -> list[Order]:
    return list(position.orders.all())


def _refresh_orders(position: Position) -> list[Order]:
    """Bring every live order of the position up to date (entry with its legs, exits, OCOs)."""
    tops = {}
    for order in position.orders.live().select_related("parent"):
        top = order.parent if order.parent_id else order
        tops[top.pk] = top
    for top in tops.values():
        order_refresh(order=top)
    return _orders(position)


def _filled_entry_qty(position: Position, orders: list[Order]) -> Decimal:
    entries = [o for o in orders if o.role == OrderRole.ENTRY]
    if not entries:
        return position.quantity  # adopted from the broker: no entry order of ours
    return sum((o.filled_qty for o in entries), Decimal("0"))


def _closed_qty(orders: list[Order]) -> Decimal:
    return sum((o.filled_qty for o in orders if o.role != OrderRole.ENTRY), Decimal("0"))


def _finalize(position: Position, orders: list[Order], *, note: str = "") -> CloseOutcome:
    """Close the position from its real fills: exit price = their weighted average."""
    fills = [o for o in orders if o.role != OrderRole.ENTRY and o.filled_qty > 0 and o.filled_avg_price is not None]
    entry_qty = _filled_entry_qty(position, orders)
    reason = position.close_reason
    leg_fills = [o for o in fills if o.role in LEG_REASONS]
    if leg_fills and not any(o.role == OrderRole.EXIT for o in fills):
        reason = LEG_REASONS[max(leg_fills, key=lambda o: o.filled_qty).role]
    update = dict(status=PositionStatus.CLOSED, close_reason=reason, lock_owner="", locked_until=None)
    if fills:
        qty = sum((o.filled_qty for o in fills), Decimal("0"))
        update["exit_price"] = (sum((o.filled_qty * o.filled_avg_price for o in fills), Decimal("0")) / qty).quantize(
            Decimal("0.0001")
        )
        update["closed_at"] = max((o.filled_at for o in fills if o.filled_at), default=timezone.now())
    else:
        update["closed_at"] = timezone.now()
        update["needs_review"] = entry_qty > 0
        note = note or ("the broker holds nothing and no fill of ours closed it" if entry_qty > 0 else "entry never filled")
    if entry_qty > 0 and entry_qty != position.quantity:
        update["quantity"] = entry_qty
    if note:
        update["review_note"] = note
    entry = next((o for o in orders if o.role == OrderRole.ENTRY and o.filled_avg_price), None)
    if entry is not None:
        update["entry_price"] = entry.filled_avg_price
    Position.objects.filter(pk=position.pk, status=PositionStatus.CLOSING).update(**update)
    position.refresh_from_db()
    event_record(kind=RiskEventKind.CLOSED, position=position, price=position.exit_price, reason=position.close_reason or "",
                 message=note or f"closed at {position.exit_price}", data={"pnl": position.realised_pnl})
    return CloseOutcome(position, "closed", note)


def _held_by_others(position: Position) -> Decimal:
    """What our other active positions in the symbol hold by their records: each entry's
    fills (the whole quantity when adopted) less their exits' and legs' fills. While another
    position's exit is filling, its record lags the broker, so this can only overstate."""
    zero = Value(Decimal("0"))
    others = (
        Position.objects.active().filter(symbol=position.symbol, side=position.side).exclude(pk=position.pk)
        .annotate(entry_filled=Coalesce(Sum("orders__filled_qty", filter=Q(orders__role=OrderRole.ENTRY)), zero),
                  closed=Coalesce(Sum("orders__filled_qty", filter=~Q(orders__role=OrderRole.ENTRY)), zero))
    )
    return max(sum(((o.entry_filled if o.entry_order_id else o.quantity) - o.closed for o in others), Decimal("0")),
               Decimal("0"))


def _to_exit(position: Position, orders: list[Order]) -> Decimal | None:
    """How much to exit for this position: 0 when it is flat (its own fills cover it, or the
    broker holds nothing on its side); None when every share the broker holds is accounted
    to our other positions in the symbol (their records are catching up: try again next
    cycle). Never more than the broker holds beyond the others, so an exit can't sell
    another position's shares."""
    remaining = _filled_entry_qty(position, orders) - _closed_qty(orders)
    if remaining <= 0:
        return Decimal("0")
    remote = broker.get_position(position.symbol)
    if remote is None or remote.side != position.side:
        return Decimal("0")
    attributable = remote.qty - _held_by_others(position)
    if attributable <= 0:
        return None
    return min(remaining, attributable)


UNATTRIBUTED = "the broker's shares in the symbol are accounted to other positions; trying again next cycle"


def _progress(position: Position) -> CloseOutcome:
    """One idempotent step towards closing a claimed position. Safe to repeat after a crash."""
    orders = _refresh_orders(position)
    exits = [o for o in orders if o.role == OrderRole.EXIT]
    if any(not o.is_final and o.broker_order_id for o in exits):
        return CloseOutcome(position, "exit_pending", "waiting for the exit to fill")

    held = _to_exit(position, orders)
    if held is None:
        return CloseOutcome(position, "waiting", UNATTRIBUTED)
    if held <= 0:
        if position.orders.live().exclude(broker_order_id=None).exists():
            orders_cancel(position=position)  # an unfilled entry and its legs must not fill later
        return _finalize(position, _orders(position))

    cancelled = orders_cancel(position=position)
    if cancelled:
        event_record(kind=RiskEventKind.LEGS_CANCELLED, position=position,
                     message=", ".join(f"{o.role} {o.broker_order_id}: {o.status}" for o in cancelled))
        orders = _orders(position)
        still_live = [o for o in orders if o.role != OrderRole.EXIT and not o.is_final]
        if still_live:
            return CloseOutcome(position, "waiting", f"{len(still_live)} orders not yet cancelled")
        # A leg may have filled while it was being cancelled: ask again before exiting.
        held = _to_exit(position, orders)
        if held is None:
            return CloseOutcome(position, "waiting", UNATTRIBUTED)
        if held <= 0:
            return _finalize(position, orders)

    try:
        exit_order = exit_submit(position=position, qty=held)
    except BrokerError as exc:
        kind = RiskEventKind.ERROR if exc.outcome_unknown else RiskEventKind.EXIT_REJECTED
        event_record(kind=kind, position=position, reason="exit failed", message=str(exc))
        if not exc.outcome_unknown:
            alert_raise(kind="exit_rejected", message=f"Exit for {position} rejected: {exc}", position=position)
        return CloseOutcome(position, "error", str(exc))
    event_record(kind=RiskEventKind.EXIT_SENT, position=position, reason=position.close_reason or "",
                 message=f"{exit_order.side} {exit_order.qty} {position.symbol} market, {exit_order.client_order_id}",
                 data={"order": exit_order.broker_order_id})
    alert_raise(kind="exit_sent", message=f"Fallback exit sent for {position}: {position.close_reason}", position=position)
    if exit_order.status == OrderStatus.FILLED:
        return _after_exit_fill(position)
    return CloseOutcome(position, "exit_pending", "exit sent")


def _after_exit_fill(position: Position) -> CloseOutcome:
    orders = _orders(position)
    filled = [o for o in orders if o.role == OrderRole.EXIT and o.status == OrderStatus.FILLED]
    for order in filled:
        if not RiskEvent.objects.filter(kind=RiskEventKind.EXIT_FILLED, data__order=order.broker_order_id).exists():
            event_record(kind=RiskEventKind.EXIT_FILLED, position=position, price=order.filled_avg_price,
                         message=f"{order.filled_qty} @ {order.filled_avg_price}", data={"order": order.broker_order_id})
    remaining = _filled_entry_qty(position, orders) - _closed_qty(orders)
    if remaining <= 0:
        return _finalize(position, orders)
    return CloseOutcome(position, "exit_pending", f"{remaining} still to exit")


def _step(position_id: int, owner: str) -> CloseOutcome:
    """Work one closing position under its lock; "locked" when another worker holds it."""
    if not _closing_lock(position_id=position_id, owner=owner):
        position = Position.objects.get(pk=position_id)
        return CloseOutcome(position, "closed" if position.status == PositionStatus.CLOSED else "locked",
                            f"being closed by {position.lock_owner}" if position.lock_owner else "")
    position = Position.objects.get(pk=position_id)
    try:
        return _progress(position)
    except (BrokerError, DatabaseError) as exc:
        event_record(kind=RiskEventKind.ERROR, position=position, reason="close step failed", message=str(exc))
        return CloseOutcome(position, "error", str(exc))
    finally:
        _closing_unlock(position_id=position_id, owner=owner)


def _await_exits(outcomes: list[CloseOutcome], owner: str) -> list[CloseOutcome]:
    """Wait briefly for pending exits to fill, so a close usually ends within the same cycle."""
    deadline = time.monotonic() + float(settings.MONITOR_EXIT_FILL_WAIT_SECONDS)
    pending = [o for o in outcomes if o.state == "exit_pending"]
    done = [o for o in outcomes if o.state != "exit_pending"]
    while pending:
        still = []
        for outcome in pending:
            result = _step(outcome.position.pk, owner)
            (still if result.state == "exit_pending" else done).append(result)
        pending = still
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    return done + pending


def position_close(*, position: Position, reason: str, owner: str | None = None,
                   price: Decimal | None = None, quote_time: datetime | None = None) -> CloseOutcome:
    """Close one position safely. A position already closing or closed is left alone."""
    owner = owner or f"close-{uuid.uuid4().hex[:12]}"
    if not position_claim(position_id=position.pk, reason=reason, owner=owner):
        position.refresh_from_db()
        return CloseOutcome(position, "skipped", f"already {position.status}")
    event_record(kind=RiskEventKind.CLAIMED, position=position, price=price, quote_time=quote_time, reason=reason)
    return _await_exits([_step(position.pk, owner)], owner)[0]


def positions_close(*, positions: list[Position], reason: str, owner: str | None = None) -> list[CloseOutcome]:
    """Close many positions: every exit is sent first, then the fills are awaited together."""
    owner = owner or f"close-{uuid.uuid4().hex[:12]}"
    skipped, claimed = [], []
    for position in positions:
        if position_claim(position_id=position.pk, reason=reason, owner=owner):
            event_record(kind=RiskEventKind.CLAIMED, position=position, reason=reason)
            claimed.append(position.pk)
        else:
            position.refresh_from_db()
            skipped.append(CloseOutcome(position, "skipped", f"already {position.status}"))
    outcomes = skipped + _await_exits(_steps(claimed, owner), owner)
    order = {p.pk: i for i, p in enumerate(positions)}
    return sorted(outcomes, key=lambda o: order[o.position.pk])


def _steps(position_ids: list[int], owner: str) -> list[CloseOutcome]:
    """Work claimed positions side by side (MONITOR_CLOSE_WORKERS threads, one symbol each
    at a time), so when many cross at once the last exit doesn't wait for every other one's
    round trips. Positions in one symbol go one after another: each reads the broker's
    holding after the previous one's exit. Inside a transaction (other connections couldn't
    see its rows) everything is worked one by one."""
    workers = min(settings.MONITOR_CLOSE_WORKERS, len(position_ids))
    if workers <= 1 or connection.in_atomic_block:
        return [_step(pk, owner) for pk in position_ids]
    by_symbol: dict[str, list[int]] = {}
    for pk, symbol in Position.objects.filter(pk__in=position_ids).values_list("pk", "symbol"):
        by_symbol.setdefault(symbol, []).append(pk)

    def work(pks: list[int]) -> list[CloseOutcome]:
        try:
            return [_step(pk, owner) for pk in pks]
        finally:
            connection.close()  # the worker thread's own connection

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="close") as pool:
        return [outcome for group in pool.map(work, by_symbol.values()) for outcome in group]


def closings_progress(*, owner: str) -> list[CloseOutcome]:
    """Carry on closings left by an earlier cycle, a crash or another worker that died."""
    ids = list(Position.objects.closing().values_list("pk", flat=True))
    outcomes = [_step(pk, owner) for pk in ids]
    return _await_exits([o for o in outcomes if o.state != "locked"], owner)


# --- The cycle -------------------------------------------------------------------------------


@dataclass
class CycleResult:
    started_at: datetime
    finished_at: datetime | None = None
    checked: int = 0
    actions: int = 0
    errors: int = 0
    skipped: int = 0
    market_open: bool | None = None
    outcomes: list[CloseOutcome] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)

    def summary(self) -> str:
        market = {True: "open", False: "closed", None: "unknown"}[self.market_open]
        text = (f"checked={self.checked} actions={self.actions} skipped={self.skipped} "
                f"errors={self.errors} market={market}")
        return text + (f" ({'; '.join(self.messages)})" if self.messages else "")


def _check_positions(result: CycleResult, owner: str) -> None:
    positions = list(
        Position.objects.open().filter(stop_loss__isnull=False).only("id", "symbol", "side", "stop_loss", "take_profit")
    )
    result.checked = len(positions)
    if not positions:
        return
    quotes = broker.latest_quotes({p.symbol for p in positions})
    now = timezone.now()
    max_age = timedelta(seconds=settings.MONITOR_QUOTE_MAX_AGE_SECONDS)
    skipped, triggered = [], []
    problems: dict[str, str | None] = {}
    for position in positions:
        quote = quotes.get(position.symbol)
        if position.symbol not in problems:
            problems[position.symbol] = quote_problem(quote=quote, now=now, max_age=max_age)
        problem = problems[position.symbol]
        if problem:
            skipped.append(RiskEvent(kind=RiskEventKind.SKIPPED, position=position, symbol=position.symbol,
                                     price=quote.price if quote else None, quote_time=quote.time if quote else None,
                                     reason=problem))
            continue
        reason = trigger_reason(side=position.side, price=quote.price, stop_loss=position.stop_loss,
                                take_profit=position.take_profit)
        if reason:
            triggered.append((position, reason, quote))
    if skipped:
        RiskEvent.objects.bulk_create(skipped, batch_size=500)
        by_reason: dict[str, int] = {}
        for event in skipped:
            by_reason[event.reason] = by_reason.get(event.reason, 0) + 1
        _log_line({"event": "skipped", "count": len(skipped), "reasons": by_reason})
        result.skipped = len(skipped)
    claimed = []
    for position, reason, quote in triggered:
        if position_claim(position_id=position.pk, reason=reason, owner=owner):
            event_record(kind=RiskEventKind.TRIGGERED, position=position, price=quote.price, quote_time=quote.time,
                         reason=reason,
                         message=f"price {quote.price} vs stop {position.stop_loss} / target {position.take_profit}")
            claimed.append(position.pk)
    result.actions += len(claimed)
    result.outcomes.extend(_await_exits(_steps(claimed, owner), owner))


def monitor_cycle(*, owner: str | None = None) -> CycleResult:
    """One check: finish pending closings, then close every position whose stop or target
    was crossed. Broker and database faults are recorded and end the cycle, never the process."""
    owner = owner or f"cycle-{uuid.uuid4().hex[:12]}"
    result = CycleResult(started_at=timezone.now())
    try:
        clock = broker.clock()
        result.market_open = clock.is_open
        resumed = closings_progress(owner=owner)
        result.outcomes.extend(resumed)
        result.actions += sum(1 for o in resumed if o.state in ("closed", "exit_pending"))
        if clock.is_open or not settings.MONITOR_MARKET_HOURS_ONLY:
            _check_positions(result, owner)
        else:
            result.messages.append("market closed: positions not checked")
    except (BrokerError, DatabaseError) as exc:
        result.errors += 1
        result.messages.append(f"{type(exc).__name__}: {exc}")
        event_record(kind=RiskEventKind.ERROR, reason="cycle failed", message=f"{type(exc).__name__}: {exc}")
    result.errors += sum(1 for o in result.outcomes if o.state == "error")
    result.finished_at = timezone.now()
    event_record(kind=RiskEventKind.CYCLE, reason="cycle", message=result.summary(),
                 data={"checked": result.checked, "actions": result.actions, "errors": result.errors,
                       "skipped": result.skipped})
    heartbeat_write(result=result)
    return result


def heartbeat_write(*, result: CycleResult) -> None:
    try:
        heartbeat, _ = Heartbeat.objects.get_or_create(name=MONITOR)
        heartbeat.started_at = result.started_at
        heartbeat.finished_at = result.finished_at
        heartbeat.positions_checked = result.checked
        heartbeat.actions = result.actions
        heartbeat.errors = result.errors
        heartbeat.cycles += 1
        heartbeat.market_open = result.market_open
        heartbeat.consecutive_error_cycles = heartbeat.consecutive_error_cycles + 1 if result.errors else 0
        heartbeat.last_error = "; ".join(result.messages) if result.errors else heartbeat.last_error
        # only the cycle's own fields: a reconciliation may be writing its own meanwhile
        heartbeat.save(update_fields=["started_at", "finished_at", "positions_checked", "actions", "errors", "cycles",
                                      "market_open", "consecutive_error_cycles", "last_error"])
    except DatabaseError as exc:
        log.error("heartbeat not stored (%s): %s", type(exc).__name__, exc)
        return
    if heartbeat.consecutive_error_cycles == settings.MONITOR_ALERT_AFTER_ERROR_CYCLES:
        alert_raise(kind="monitor_errors",
                    message=f"Monitor failed {heartbeat.consecutive_error_cycles} cycles in a row: {heartbeat.last_error}")


# --- Lease: one cycle at a time, and a dead holder loses it --------------------------------


def lease_acquire(*, name: str, holder: str, seconds: int) -> bool:
    now = timezone.now()
    try:
        Lease.objects.get_or_create(name=name)
    except IntegrityError:
        pass  # created by a concurrent caller
    free = Q(expires_at__isnull=True) | Q(expires_at__lt=now) | Q(holder=holder)
    return Lease.objects.filter(Q(name=name) & free).update(holder=holder, expires_at=now + timedelta(seconds=seconds)) == 1


def lease_release(*, name: str, holder: str) -> None:
    Lease.objects.filter(name=name, holder=holder).update(holder="", expires_at=None)


def _housekeeping() -> None:
    """Reconcile with the broker, then audit every open position's protection, then retry
    alerts a dead process left undelivered (off the monitor's thread: a dead webhook
    must not hold up protection)."""
    from .alerts import alerts_deliver_pending
    from .protection import protection_audit
    from .reconcile import reconcile_run

    reconcile_run()  # logs and records its own summary
    try:
        protection_audit()
    except BrokerError as exc:
        event_record(kind=RiskEventKind.ERROR, reason="protection audit failed", message=str(exc))
    threading.Thread(target=_deliver_pending_alerts, args=(alerts_deliver_pending,), daemon=True).start()


def _deliver_pending_alerts(deliver) -> None:
    try:
        deliver()
    finally:
        close_old_connections()


_housekeeper: threading.Thread | None = None


def _housekeeping_in_background() -> None:
    """Housekeeping beside the cycles, not in front of them: with thousands of positions a
    reconciliation takes seconds, and detection must not wait for it. One at a time."""
    global _housekeeper
    if _housekeeper is not None and _housekeeper.is_alive():
        return

    def run():
        try:
            _housekeeping()
        except Exception:  # a thread must not die silently; the next run tries again
            log.exception("housekeeping failed")
        finally:
            close_old_connections()

    _housekeeper = threading.Thread(target=run, name="housekeeping", daemon=True)
    _housekeeper.start()


def _housekeeping_due() -> bool:
    cycles = Heartbeat.objects.filter(name=MONITOR).values_list("cycles", flat=True).first() or 0
    return cycles % settings.RECONCILE_EVERY_N_CYCLES == 0


def monitor_tick(*, holder: str, keep_lease: bool = False, housekeeping: bool | None = None,
                 background: bool = False) -> CycleResult | None:
    """Run one cycle if this holder gets the monitor lease; None when another holds it.

    Reconciliation and the protection audit run when `housekeeping` is True (a monitor
    starting up) or, by default, every RECONCILE_EVERY_N_CYCLES cycles: before the cycle,
    or beside it in a thread when `background` (the long-running `runmonitor` loop).
    """
    span = max(settings.MONITOR_LEASE_SECONDS, 2 * settings.MONITOR_INTERVAL_SECONDS)
    if not connection.in_atomic_block:
        close_old_connections()  # a connection broken in the last cycle is replaced, not reused
    try:
        if not lease_acquire(name=MONITOR, holder=holder, seconds=span):
            return None
    except DatabaseError as exc:
        log.error("monitor lease unavailable (%s): %s", type(exc).__name__, exc)
        raise
    try:
        try:
            if housekeeping or (housekeeping is None and _housekeeping_due()):
                _housekeeping_in_background() if background else _housekeeping()
        except DatabaseError as exc:
            event_record(kind=RiskEventKind.ERROR, reason="housekeeping failed", message=f"{type(exc).__name__}: {exc}")
        return monitor_cycle(owner=holder)
    finally:
        if not keep_lease:
            try:
                lease_release(name=MONITOR, holder=holder)
            except DatabaseError as exc:  # it expires on its own
                log.error("monitor lease not released (%s): %s", type(exc).__name__, exc)
