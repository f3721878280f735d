"""Reconciliation: make the database agree with what the broker really holds and did.

One run (`reconcile_run`):

1. Orders: every order the database still thinks is live (legs included) is read back from
   the broker, with one `list_orders(status="all")` call for all their symbols (a per-order
   call only for what that list leaves out), so the console shows what the broker did.
2. Positions, symbol by symbol, against `list_positions()` (read after the orders, so a fill
   in between shows up as an order fill, never as a vanished position):
   - an open position whose own fills (stop/target leg, exit) closed it is closed from those
     fills through the close path (claim + `position_finalize`);
   - an open position the broker no longer holds, with no closing fill of ours, is closed
     WITHOUT a price (exit_price NULL, close_reason NULL, needs_review) — never guessed;
   - a broker position with no open/closing position here is adopted (no stop, UNPROTECTED);
   - a quantity or side difference is flagged (needs_review, risk event, alert), never traded on.
   Before a close without fills, a mismatch or an adoption is acted on, the symbol's orders
   and the broker position are read again, so a fill racing the run is not mistaken for one.
3. One summary line to the log ("risk.reconcile"), a `reconciled` risk event and the
   heartbeat's last_reconcile_at / last_reconcile_summary.

`dry_run=True` reads the broker and the database and reports what would be done: no row is
written and no order is sent or cancelled.
"""

import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum

from django.conf import settings
from django.db import DatabaseError
from django.utils import timezone

from trading import broker
from trading.broker import BrokerError, BrokerOrder, BrokerPosition
from trading.holdings import (
    OrderView,
    RemoteOrders,
    close_reason_from_fills,
    holding,
    order_tops,
    order_views,
    position_orders,
    with_orders,
)
from trading.models import (
    Closer,
    Order,
    OrderRole,
    OrderStatus,
    Position,
    PositionStatus,
    Protection,
    Side,
    leg_role,
)
from trading.orders import order_apply, orders_cancel, position_orders_fetch

from .alerts import alert_send
from .adoption import position_adopt
from .claims import closings_unlock, position_claim
from .finalize import position_finalize
from .follow import position_follow
from .journal import event_record
from .lease import lease_acquire, lease_release
from .models import MONITOR, AlertKind, Heartbeat, RiskEventKind

log = logging.getLogger("risk.reconcile")

LEASE = "reconcile"
ENTRY_IN_FLIGHT = timedelta(minutes=10)
LIST_LIMIT = 500
PRICE_PLACES = Decimal("0.0001")
UNEXPLAINED_NOTE = "broker holds no position; no closing fill found"
MISMATCH_PREFIX = "reconcile mismatch:"
TRACKED = (PositionStatus.PENDING, PositionStatus.OPEN, PositionStatus.CLOSING)


# --- The report ------------------------------------------------------------------------------


class FindingKind(StrEnum):
    ADOPTED = "adopted"
    CLOSED = "closed"
    CLOSED_UNEXPLAINED = "closed_unexplained"
    MISMATCH = "mismatch"
    ORDER_SYNCED = "order_synced"
    ORDER_MISSING = "order_missing"
    SKIPPED = "skipped"
    ERROR = "error"


@dataclass
class Finding:
    """One thing reconciliation found, and what it did (or, in a dry run, would do)."""

    kind: FindingKind
    symbol: str
    message: str
    position_id: int | None = None
    done: bool = False
    data: dict = field(default_factory=dict)

    def line(self, *, dry_run: bool = False) -> str:
        where = f" #{self.position_id}" if self.position_id else ""
        quiet = dry_run or self.done or self.kind in (FindingKind.SKIPPED, FindingKind.ERROR, FindingKind.ORDER_MISSING)
        state = "" if quiet else " (not done)"
        return f"{self.kind:<18} {self.symbol}{where}: {self.message}{state}"


@dataclass
class ReconcileReport:
    dry_run: bool
    started_at: datetime
    finished_at: datetime | None = None
    broker_positions: int = 0
    db_positions: int = 0
    orders_checked: int = 0
    findings: list[Finding] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def count(self, kind: FindingKind) -> int:
        return sum(1 for f in self.findings if f.kind == kind)

    def counts(self) -> dict:
        kinds = [kind for kind in FindingKind if kind != FindingKind.ERROR]
        return {str(kind): self.count(kind) for kind in kinds} | {"errors": len(self.errors)}

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        counts = self.counts()
        head = "reconcile DRY RUN" if self.dry_run else "reconcile"
        text = (f"{head}: broker_positions={self.broker_positions} db_positions={self.db_positions} "
                f"orders_checked={self.orders_checked} synced={counts['order_synced']} "
                f"adopted={counts['adopted']} closed={counts['closed']} "
                f"closed_unexplained={counts['closed_unexplained']} mismatches={counts['mismatch']} "
                f"errors={counts['errors']}")
        if self.errors:
            text += f" ({'; '.join(self.errors)[:300]})"
        return text


# --- Orders ------------------------------------------------------------------------------------


def _q(value: Decimal | None) -> Decimal | None:
    return None if value is None else value.quantize(PRICE_PLACES)


def _order_changes(top: Order, remote: BrokerOrder) -> list[str]:
    rows = {row.broker_order_id: row for row in top.legs.all() if row.broker_order_id}
    changes = []
    for r in (remote, *remote.legs):
        row = top if r is remote else rows.get(r.id)
        if row is None:
            changes.append(f"new {leg_role(r.type)} leg {r.id} {r.status}")
            continue
        if (row.broker_order_id != r.id or row.status != r.status or row.filled_qty != r.filled_qty
                or _q(row.filled_avg_price) != _q(r.filled_avg_price)):
            fill = f", filled {r.filled_qty} @ {r.filled_avg_price}" if r.filled_qty else ""
            changes.append(f"{row.role} {row.status} -> {r.status}{fill}")
    return changes


def _orders_sync(report: ReconcileReport, remote: RemoteOrders) -> None:
    tops = order_tops(Order.objects.live().select_related("parent", "parent__position", "position")
                      .prefetch_related("legs", "parent__legs"))
    if not tops:
        return
    symbols = sorted({top.symbol for top in tops})
    for order in broker.list_orders(status="all", symbols=symbols, limit=LIST_LIMIT):
        remote.add(order)
    for top in sorted(tops, key=lambda o: o.pk):
        found = remote.of(top)
        if found is None:
            try:
                found = (broker.get_order(top.broker_order_id) if top.broker_order_id
                         else broker.find_order_by_client_id(top.client_order_id))
            except BrokerError as exc:
                if exc.status != 404:
                    report.errors.append(f"order {top.client_order_id}: {exc}")
                    continue
                found = None
            if found is None:
                if top.created_at < timezone.now() - ENTRY_IN_FLIGHT:
                    message = f"{top.role} {top.client_order_id} ({top.status}) is unknown to the broker; left as is"
                    report.findings.append(Finding(FindingKind.ORDER_MISSING, top.symbol, message, top.position_id))
                    if not report.dry_run:
                        event_record(kind=RiskEventKind.ORDER_SYNCED, position=top.position, symbol=top.symbol,
                                     reason="order unknown to the broker", message=message)
                continue
            remote.add(found)
        report.orders_checked += 1
        changes = _order_changes(top, found)
        if not changes:
            continue
        message = f"{top.role} {top.side} {top.qty.normalize():f} {top.symbol} {found.id}: " + "; ".join(changes)
        finding = Finding(FindingKind.ORDER_SYNCED, top.symbol, message, top.position_id, data={"order": found.id})
        report.findings.append(finding)
        if not report.dry_run:
            order_apply(order=top, remote=found)
            finding.done = True
            event_record(kind=RiskEventKind.ORDER_SYNCED, position=top.position, symbol=top.symbol,
                         reason="order synced", message=message, data={"order": found.id, "changes": changes})


# --- Positions: a plan per symbol, then its execution ---------------------------------------


class PlanKind(StrEnum):
    CLOSE_FILLED = "close_filled"  # its own fills closed it
    CLOSE_PARTIAL = "close_partial"  # the broker holds nothing; fills of ours cover part of it
    CLOSE_UNEXPLAINED = "close_unexplained"  # the broker holds nothing; no fill of ours
    ENTRY_UNFILLED = "entry_unfilled"
    ADOPT = "adopt"
    MISMATCH = "mismatch"
    SKIP = "skip"


@dataclass
class _Action:
    kind: PlanKind
    symbol: str
    message: str
    position: Position | None = None
    positions: list[Position] = field(default_factory=list)
    remote: BrokerPosition | None = None
    reason: str | None = None

    @property
    def suspicious(self) -> bool:
        """Acted on only after a second look at the broker."""
        return self.kind in (PlanKind.CLOSE_PARTIAL, PlanKind.CLOSE_UNEXPLAINED, PlanKind.ADOPT, PlanKind.MISMATCH)


def _signed(side: str, qty: Decimal) -> Decimal:
    return qty if side == Side.LONG else -qty


def _describe(side: str, qty: Decimal, symbol: str) -> str:
    return f"{side} {qty.normalize():f} {symbol}"


def _fills_text(fills: list[OrderView]) -> str:
    return ", ".join(f"{v.role} {v.filled_qty.normalize():f} @ {v.filled_avg_price}" for v in fills)


def _plan(symbol: str, remote_position: BrokerPosition | None, positions: list[Position],
          remote: RemoteOrders) -> list[_Action]:
    if any(p.status == PositionStatus.CLOSING for p in positions):
        return [_Action(PlanKind.SKIP, symbol, "a closing is in progress; the monitor finishes it")]
    actions: list[_Action] = []
    counted: list[tuple[Position, Decimal]] = []
    pending: list[Position] = []
    for position in positions:
        if position.status == PositionStatus.PENDING:  # an entry still working: not a position, but its fill
            pending.append(position)                  # may be what the broker shows
            continue
        h = holding(position, order_views(position_orders(position), remote))
        if h.entry_live:
            if h.entry_qty > 0:
                counted.append((position, h.held))
            else:
                pending.append(position)
            continue
        if h.entry_qty <= 0:
            actions.append(_Action(PlanKind.ENTRY_UNFILLED, symbol, "entry ended unfilled: closed without a price",
                                   position=position))
            continue
        if h.held <= 0:
            reason = close_reason_from_fills(h.fills, default=position.close_reason)
            actions.append(_Action(PlanKind.CLOSE_FILLED, symbol, f"closed at the broker by {_fills_text(h.fills)}",
                                   position=position, reason=reason))
            continue
        if remote_position is None:
            if h.fills:
                actions.append(_Action(
                    PlanKind.CLOSE_PARTIAL, symbol,
                    f"broker holds no position; fills of ours cover {h.closed_qty.normalize():f} of "
                    f"{h.entry_qty.normalize():f} ({_fills_text(h.fills)})", position=position))
            else:
                actions.append(_Action(PlanKind.CLOSE_UNEXPLAINED, symbol, UNEXPLAINED_NOTE, position=position))
            continue
        counted.append((position, h.held))

    broker_net = _signed(remote_position.side, remote_position.qty) if remote_position else Decimal("0")
    db_net = sum((_signed(p.side, held) for p, held in counted), Decimal("0"))
    if remote_position is not None and not counted:
        if pending:
            actions.append(_Action(PlanKind.SKIP, symbol, "an entry of ours is still working; broker position not adopted"))
        elif _entry_in_flight(symbol):
            actions.append(_Action(PlanKind.SKIP, symbol, "an entry of ours is being sent; broker position not adopted"))
        else:
            actions.append(_Action(
                PlanKind.ADOPT, symbol,
                f"broker holds {_describe(remote_position.side, remote_position.qty, symbol)} "
                f"@ {remote_position.avg_entry_price} unknown here: adopted",
                remote=remote_position))
    elif counted and db_net != broker_net:
        broker_text = (_describe(remote_position.side, remote_position.qty, symbol) if remote_position
                       else f"no {symbol}")
        ours = ", ".join(f"#{p.pk} {_describe(p.side, held, '')}".strip() for p, held in counted)
        actions.append(_Action(PlanKind.MISMATCH, symbol, f"broker holds {broker_text}; database holds {ours}",
                               positions=[p for p, _ in counted], remote=remote_position))
    return actions


def _entry_in_flight(symbol: str) -> bool:
    """An entry of ours written but not yet tied to a position: its fill may be what the broker shows."""
    return Order.objects.filter(
        symbol=symbol, role=OrderRole.ENTRY, position__isnull=True,
        created_at__gte=timezone.now() - ENTRY_IN_FLIGHT,
    ).exclude(status__in=[OrderStatus.SUBMIT_FAILED, OrderStatus.CANCELED, OrderStatus.EXPIRED,
                          OrderStatus.REJECTED]).exists()


def _symbol_reconcile(report: ReconcileReport, symbol: str, remote_position: BrokerPosition | None,
                      positions: list[Position], remote: RemoteOrders) -> None:
    actions = _plan(symbol, remote_position, positions, remote)
    if any(a.suspicious for a in actions):
        # A second look: the symbol's live orders and its broker position, read again now.
        for position in positions:
            position_orders_fetch(position=position, remote=remote, apply=not report.dry_run)
        remote_position = broker.get_position(symbol)
        positions = list(with_orders(Position.objects.filter(symbol=symbol, status__in=TRACKED)).order_by("opened_at", "pk"))
        actions = _plan(symbol, remote_position, positions, remote)
    for action in actions:
        _execute(report, action)


def _execute(report: ReconcileReport, action: _Action) -> None:
    if action.kind == PlanKind.SKIP:
        report.findings.append(Finding(FindingKind.SKIPPED, action.symbol, action.message))
        return
    if action.kind == PlanKind.ADOPT:
        _adopt(report, action)
    elif action.kind == PlanKind.MISMATCH:
        _flag_mismatch(report, action)
    else:
        _close(report, action)


def _adopt(report: ReconcileReport, action: _Action) -> None:
    remote = action.remote
    finding = Finding(FindingKind.ADOPTED, action.symbol, action.message,
                      data={"side": remote.side, "qty": str(remote.qty), "avg_entry_price": str(remote.avg_entry_price)})
    report.findings.append(finding)
    if report.dry_run:
        return
    now = timezone.now()
    position, levels = position_adopt(remote=remote, note=f"adopted from the broker at {now:%Y-%m-%d %H:%M:%S}Z: "
                                                          f"{_describe(remote.side, remote.qty, remote.symbol)} "
                                                          f"@ {remote.avg_entry_price}")
    finding.position_id = position.pk
    finding.done = True
    finding.message += f"; {levels.describe()}"
    finding.data.update(stop=str(levels.stop), target=str(levels.target))
    event_record(kind=RiskEventKind.ADOPTED, position=position, price=position.entry_price, reason="adopted",
                 message=finding.message, data=finding.data)
    if position.protection == Protection.PROTECTED:
        cover = f"protected by {levels.describe()}, linked to it; the monitor watches them"
    elif levels.stop is not None:
        cover = (f"{levels.describe()}, but its stops cover only {levels.stop_qty.normalize():f}: UNPROTECTED "
                 f"until the protection audit covers the rest")
    else:
        cover = ("no stop at the broker: UNPROTECTED until the protection audit covers it (at the percent "
                 "defaults, marked as such: protection only, never an exit)")
    alert_send(kind=AlertKind.ADOPTED, position=position,
               message=f"Adopted {position} from the broker @ {position.entry_price}: {cover}.")


def _flag_mismatch(report: ReconcileReport, action: _Action) -> None:
    note = f"{MISMATCH_PREFIX} {action.message}"
    for position in action.positions:
        finding = Finding(FindingKind.MISMATCH, action.symbol, action.message + "; flagged for review, not traded",
                          position.pk, data={"note": note})
        report.findings.append(finding)
        if report.dry_run:
            continue
        already = position.needs_review and note in position.review_note
        if not already:
            review_note = f"{position.review_note}\n{note}".strip() if position.review_note else note
            Position.objects.filter(pk=position.pk).update(needs_review=True, review_note=review_note)
            position.needs_review, position.review_note = True, review_note
        finding.done = True
        event_record(kind=RiskEventKind.MISMATCH, position=position, reason="quantity or side mismatch",
                     message=action.message, data={"already_flagged": already})
        if not already:
            alert_send(kind=AlertKind.MISMATCH, position=position,
                        message=f"Reconciliation mismatch for {position}: {action.message}. "
                                f"Flagged for review; nothing was traded.")


def _close(report: ReconcileReport, action: _Action) -> None:
    """Close through the monitor's path: claim (open -> closing), cancel what is left of its
    orders so nothing fills later, then `position_finalize` from the real fills (none: no price)."""
    position = action.position
    unexplained = action.kind in (PlanKind.CLOSE_UNEXPLAINED, PlanKind.CLOSE_PARTIAL)
    kind = FindingKind.CLOSED_UNEXPLAINED if unexplained else FindingKind.CLOSED
    finding = Finding(kind, action.symbol, action.message, position.pk)
    report.findings.append(finding)
    if report.dry_run:
        return
    owner = f"reconcile-{uuid.uuid4().hex[:12]}"
    if not position_claim(position_id=position.pk, reason=action.reason, owner=owner, by=Closer.RECONCILE):
        finding.message += "; not closed: another worker claimed it first"
        return
    event_record(kind=RiskEventKind.CLAIMED, position=position, reason=action.reason or "reconcile",
                 message=f"claimed by reconciliation: {action.message}")
    try:
        if position.orders.live().exclude(broker_order_id=None).exists():
            orders_cancel(position=position)  # e.g. a leg left live on a position the broker no longer holds
        position.refresh_from_db()
        notes = {PlanKind.CLOSE_UNEXPLAINED: UNEXPLAINED_NOTE, PlanKind.CLOSE_PARTIAL: action.message,
                 PlanKind.ENTRY_UNFILLED: "entry never filled"}
        position_finalize(position, position_orders(position), note=notes.get(action.kind, ""))
    except Exception:
        closings_unlock(position_ids=[position.pk], owner=owner)  # left closing: the monitor carries on
        raise
    if action.kind == PlanKind.CLOSE_PARTIAL:
        # The fills of ours cover only part of it: an average of those is not its exit price.
        Position.objects.filter(pk=position.pk).update(needs_review=True, exit_price=None)
    position.refresh_from_db()
    finding.done = position.status == PositionStatus.CLOSED
    exit_text = f"exit {position.exit_price}" if position.exit_price is not None else "no exit price"
    finding.message += f" -> {position.status}, {position.close_reason or 'no close reason'}, {exit_text}"
    event_record(kind=RiskEventKind.RECONCILED, position=position, price=position.exit_price,
                 reason=f"closed from the broker: {action.kind}", message=finding.message)
    if unexplained:
        alert_send(kind=AlertKind.MISMATCH, position=position,
                    message=f"Reconciliation closed {position} without a price: {action.message}. "
                            f"Check the broker's activity and fill in the exit.")


def _positions_reconcile(report: ReconcileReport, remote_positions: list[BrokerPosition],
                         remote: RemoteOrders) -> None:
    remote_by_symbol = {p.symbol: p for p in remote_positions}
    active = list(with_orders(Position.objects.filter(status__in=TRACKED)).order_by("opened_at", "pk"))
    report.broker_positions = len(remote_positions)
    report.db_positions = sum(1 for p in active if p.status != PositionStatus.PENDING)
    by_symbol: dict[str, list[Position]] = {}
    for position in active:
        by_symbol.setdefault(position.symbol, []).append(position)
    for symbol in sorted(set(remote_by_symbol) | set(by_symbol)):
        try:
            _symbol_reconcile(report, symbol, remote_by_symbol.get(symbol), by_symbol.get(symbol, []), remote)
        except (BrokerError, DatabaseError) as exc:
            message = f"{symbol}: {type(exc).__name__}: {exc}"
            report.errors.append(message)
            report.findings.append(Finding(FindingKind.ERROR, symbol, message))
            if not report.dry_run:
                event_record(kind=RiskEventKind.ERROR, symbol=symbol, reason="reconcile failed", message=message)


# --- The run -------------------------------------------------------------------------------------


def reconcile_run(*, dry_run: bool = False) -> ReconcileReport:
    """Bring the database in step with the broker; never raises for a broker or database
    fault (they are in the report's errors). See the module docstring."""
    report = ReconcileReport(dry_run=dry_run, started_at=timezone.now())
    holder = f"reconcile-{uuid.uuid4().hex[:12]}"
    leased = False
    try:
        if not dry_run:
            leased = lease_acquire(name=LEASE, holder=holder, seconds=max(settings.MONITOR_LEASE_SECONDS, 300))
            if not leased:
                report.errors.append("another reconciliation is running")
                return _finish(report, record=False)
        remote = RemoteOrders()
        _orders_sync(report, remote)
        if not dry_run:
            for position in Position.objects.pending():  # entries that filled or ended meanwhile
                position_follow(position=position)
        remote_positions = broker.list_positions()  # after the orders: see _plan
        _positions_reconcile(report, remote_positions, remote)
    except (BrokerError, DatabaseError) as exc:
        report.errors.append(f"{type(exc).__name__}: {exc}")
        if not dry_run:
            event_record(kind=RiskEventKind.ERROR, reason="reconcile failed", message=f"{type(exc).__name__}: {exc}")
    finally:
        if leased:
            try:
                lease_release(name=LEASE, holder=holder)
            except DatabaseError as exc:
                log.error("reconcile lease not released (%s)", type(exc).__name__)
    return _finish(report, record=not dry_run)


def _finish(report: ReconcileReport, *, record: bool) -> ReconcileReport:
    report.finished_at = timezone.now()
    summary = report.summary()
    if report.errors or any(f.kind in (FindingKind.MISMATCH, FindingKind.CLOSED_UNEXPLAINED, FindingKind.ADOPTED)
                            for f in report.findings):
        log.warning(summary)
    elif not record:  # a recorded run's line is its journal event's: not twice
        log.info(summary)
    if record:
        event_record(kind=RiskEventKind.RECONCILED, reason="reconcile run", message=summary,
                     data=report.counts() | {"broker_positions": report.broker_positions,
                                             "db_positions": report.db_positions,
                                             "orders_checked": report.orders_checked})
        try:
            Heartbeat.objects.update_or_create(
                name=MONITOR,
                defaults={"last_reconcile_at": report.finished_at, "last_reconcile_summary": summary},
            )
        except DatabaseError as exc:
            log.error("heartbeat not updated with the reconciliation (%s): %s", type(exc).__name__, exc)
    return report
