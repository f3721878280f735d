"""Protection audit: every open position must have a live stop at the broker for all it holds.

`protection_audit` reads the broker's open and recent orders once and,
for each open position, looks for live stop orders on its exit side: its bracket's stop leg
(any non-final status, once the entry has filled), the stop leg of an OCO, or a standalone
stop for the symbol. Stops tied to a position by our Order rows count for that position;
other stops for the symbol are shared out among the positions still short of cover.

A position found UNPROTECTED gets a risk event and an alert, then the policy
(settings.PROTECTION_POLICY, or the `policy` argument):
- protect: what is left of its own exit orders is cancelled, then an OCO (exit side, the full
  quantity held, gtc) goes out at its stop/target, or at PROTECTION_DEFAULT_*_PERCENT from
  the entry when it has none (those then become its stop/target);
- flatten: closed through `position_close(reason=EMERGENCY_STOP)`;
- alert: recorded and alerted only.
A position whose price (the side of the latest quote its exit would trade at) has already
crossed a level somebody set is exited instead (STOP_LOSS_HIT; TAKE_PROFIT_HIT when it is the
target) under protect and flatten, while the market is open; levels from the percent defaults
only ever place protection, and while the market is closed protection is placed instead of
any exit (Alpaca queues it). Positions flagged needs_review (e.g. a reconciliation mismatch) are never traded:
they are reported and alerted.

`dry_run=True` writes nothing and sends nothing; each result says what would be done.
"""

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from enum import StrEnum

from django.conf import settings
from django.db import DatabaseError
from django.utils import timezone

from trading import broker
from trading.broker import BrokerError, BrokerOrder
from trading.holdings import RemoteOrders, holding, order_views, position_orders, with_orders
from trading.models import (
    STOP_TYPES,
    CloseReason,
    Closer,
    LevelsSource,
    Order,
    OrderClass,
    OrderRole,
    OrderStatus,
    Position,
    PositionStatus,
    Protection,
)
from trading.orders import oco_send, order_cancel, orders_cancel, position_orders_fetch

from .alerts import alert_send
from .closing import position_close
from .finalize import CloseOutcome, CloseState
from .journal import event_record, events_record
from .levels import protection_levels
from .market import exits_allowed
from .models import Alert, AlertKind, RiskEvent, RiskEventKind
from .rules import exit_price, quote_problem, trigger_reason

log = logging.getLogger("risk.protection")

POLICIES = ("protect", "flatten", "alert")
ZERO = Decimal("0")
LIST_LIMIT = 500
OCO_TIME_IN_FORCE = "gtc"
ALERT_REPEAT = timedelta(hours=1)  # the alert policy re-alerts a still-unprotected position at most hourly
ALERTS_EACH_AT_MOST = 10  # more found unprotected at once: one alert for them all
BRACKET_CLASSES = (OrderClass.BRACKET, OrderClass.OTO)


class ProtectionAction(StrEnum):
    NONE = "none"
    PROTECTED = "protected"
    FLATTENED = "flattened"
    EXITED = "exited"
    ALERTED = "alerted"
    SKIPPED = "skipped"
    FAILED = "failed"


DRY_RUN_VERBS = {ProtectionAction.PROTECTED: "would protect", ProtectionAction.FLATTENED: "would flatten",
                 ProtectionAction.EXITED: "would exit", ProtectionAction.ALERTED: "would alert"}
CLOSE_STARTED = (CloseState.CLOSED, CloseState.EXIT_PENDING)


class ProtectionPolicyError(ValueError):
    """An unknown protection policy."""


@dataclass
class ProtectionResult:
    position: Position
    protection: str  # protected / unprotected / unknown (not judged: entry working, nothing held...)
    action: ProtectionAction
    detail: str = ""
    dry_run: bool = False
    order: Order | None = None
    data: dict = field(default_factory=dict)
    found: str = ""  # what the audit found (protected / unprotected / unknown) before acting

    def __post_init__(self):
        self.found = self.found or self.protection

    def line(self) -> str:
        p = self.position
        if self.action == ProtectionAction.NONE:
            action = "nothing to do"
        elif self.dry_run and self.action in DRY_RUN_VERBS:
            action = DRY_RUN_VERBS[self.action]
        else:
            action = self.action
        return (f"#{p.pk} {p.side} {p.quantity.normalize():f} {p.symbol}: {self.found}; {action}"
                + (f" ({self.detail})" if self.detail else ""))


# --- What covers what ----------------------------------------------------------------------


@dataclass
class _Stop:
    id: str
    parent_id: str | None
    symbol: str
    side: str
    remaining: Decimal
    stop_price: Decimal | None


def _live_stops(orders: list[BrokerOrder]) -> list[_Stop]:
    """Stop orders the broker will act on: standalone stops, OCO stop legs, and bracket/OTO
    stop legs once their entry has filled (Alpaca shows those as `held`)."""
    stops = []
    for top in orders:
        if top.type in STOP_TYPES and not top.is_final:
            stops.append(_Stop(top.id, None, top.symbol, top.side, top.qty - top.filled_qty, top.stop_price))
        for leg in top.legs:
            if leg.type not in STOP_TYPES or leg.is_final:
                continue
            if top.order_class in BRACKET_CLASSES and top.status != OrderStatus.FILLED:
                continue
            stops.append(_Stop(leg.id, top.id, leg.symbol, leg.side, leg.qty - leg.filled_qty, leg.stop_price))
    return stops


# --- The audit -----------------------------------------------------------------------------------


def _selected(positions) -> list[Position]:
    """With their orders and exit shares, so judging them costs no query per position."""
    if positions is None:
        return list(with_orders(Position.objects.open()).order_by("symbol", "pk"))
    ids = [p.pk if isinstance(p, Position) else int(p) for p in positions]
    return list(with_orders(Position.objects.filter(pk__in=ids)).order_by("symbol", "pk"))


def protection_audit(*, policy: str | None = None, dry_run: bool = False, positions=None) -> list[ProtectionResult]:
    """Check every open position (or `positions`: a queryset, a list of positions or ids) for a
    live stop at the broker and apply the policy to those without one. Raises
    ProtectionPolicyError for an unknown policy and BrokerError when the broker's orders
    can't be read (nothing is judged blind); per-position failures are in the results."""
    policy = policy or settings.PROTECTION_POLICY
    if policy not in POLICIES:
        raise ProtectionPolicyError(f"unknown protection policy {policy!r}: use one of {', '.join(POLICIES)}")
    results: list[ProtectionResult] = []
    candidates = []
    for position in _selected(positions):
        if position.status != PositionStatus.OPEN:
            results.append(ProtectionResult(position, position.protection, ProtectionAction.SKIPPED,
                                            f"position is {position.status}", dry_run))
        else:
            candidates.append(position)
    if not candidates:
        return results
    # Older brackets the database still holds live are read one by one (see _held).
    symbols = sorted({p.symbol for p in candidates})
    tops = {order.id: order for order in broker.list_orders_open_and_recent(symbols=symbols, limit=LIST_LIMIT)}
    judged = _held(candidates, tops, results, dry_run=dry_run)
    now = timezone.now()
    protected, unprotected = [], []
    for position, held, covered in _covered(judged, candidates, tops):
        (protected if covered >= held else unprotected).append((position, held, covered))
    results.extend(_protected(protected, now, dry_run))
    results.extend(_policy_apply(unprotected, policy=policy, now=now, dry_run=dry_run))
    return results


def _held(candidates: list[Position], tops: dict[str, BrokerOrder], results: list[ProtectionResult], *,
          dry_run: bool) -> list[tuple[Position, Decimal]]:
    """The positions to judge with what each holds; the others (entry still working, nothing
    held, orders unreadable) go to `results`. Orders the broker's lists left out are read."""
    remote = RemoteOrders(tops.values())
    judged = []
    for position in candidates:
        views = order_views(position_orders(position), remote)
        if any(not v.is_final and (not v.broker_order_id or v.broker_order_id not in remote.by_id) for v in views):
            try:
                for fresh in position_orders_fetch(position=position, remote=remote, apply=not dry_run):
                    tops[fresh.id] = fresh
            except BrokerError as exc:
                results.append(ProtectionResult(position, position.protection, ProtectionAction.FAILED,
                                                f"its orders could not be read: {exc}", dry_run))
                continue
            views = order_views(position_orders(position), remote)
        h = holding(position, views)
        if h.entry_live:
            results.append(ProtectionResult(position, Protection.UNKNOWN, ProtectionAction.NONE,
                                            "entry still working: its bracket legs protect it once filled", dry_run))
        elif h.held <= 0:
            results.append(ProtectionResult(position, Protection.UNKNOWN, ProtectionAction.NONE,
                                            "nothing held by its orders (reconciliation closes it)", dry_run))
        else:
            judged.append((position, h.held))
    return judged


def _covered(judged: list[tuple[Position, Decimal]], candidates: list[Position],
             tops: dict[str, BrokerOrder]) -> list[tuple[Position, Decimal, Decimal]]:
    """(position, held, covered by live stops): its own stops first, then the symbol's other
    stops shared out, oldest position first."""
    ours = dict(Order.objects.filter(position__in=candidates).exclude(broker_order_id=None)
                .values_list("broker_order_id", "position_id"))
    cover: dict[int, Decimal] = {}
    pool: dict[tuple[str, str], Decimal] = {}
    for stop in _live_stops(list(tops.values())):
        owner = ours.get(stop.id) or (ours.get(stop.parent_id) if stop.parent_id else None)
        if owner is not None:
            cover[owner] = cover.get(owner, ZERO) + stop.remaining
        else:
            pool[(stop.symbol, stop.side)] = pool.get((stop.symbol, stop.side), ZERO) + stop.remaining
    rows = []
    for position, held in judged:
        covered = cover.get(position.pk, ZERO)
        key = (position.symbol, position.exit_side)
        take = min(pool.get(key, ZERO), max(held - covered, ZERO))
        if take > 0:
            pool[key] -= take
            covered += take
        rows.append((position, held, covered))
    return rows


def _policy_apply(unprotected: list[tuple[Position, Decimal, Decimal]], *, policy: str, now,
                  dry_run: bool) -> list[ProtectionResult]:
    quotes, exits_ok = {}, False
    if unprotected and policy != "alert":
        try:
            exits_ok = exits_allowed()  # closed: nothing exits, protection is placed (Alpaca queues it)
            quotes = broker.latest_quotes({p.symbol for p, _, _ in unprotected})
        except BrokerError as exc:
            log.warning("no clock or quotes for the protection audit: %s", exc)
    was = {p.pk: p.protection for p, _, _ in unprotected}
    alerted_lately = set() if dry_run else _unprotected_marked(unprotected, policy=policy, now=now)
    results, alerts = [], []
    for position, held, covered in unprotected:
        try:
            result = _unprotected(position, held, covered, policy=policy, quote=quotes.get(position.symbol), now=now,
                                  exits_ok=exits_ok, dry_run=dry_run)
        except (BrokerError, DatabaseError) as exc:  # one position's failure must not leave the others bare
            detail = f"{type(exc).__name__}: {exc}"
            if not dry_run:
                event_record(kind=RiskEventKind.ERROR, position=position, reason="protection failed", message=detail)
            results.append(ProtectionResult(position, Protection.UNPROTECTED, ProtectionAction.FAILED, detail, dry_run))
            continue
        results.append(result)
        quiet = result.action in (ProtectionAction.ALERTED, ProtectionAction.SKIPPED)
        if not dry_run and not (quiet and was[position.pk] == Protection.UNPROTECTED and position.pk in alerted_lately):
            alerts.append((position, f"{position} {_found(position, held, covered)}; policy {policy}: {result.action}"
                                     + (f" ({result.detail})" if result.detail else "")))
    _alerts_send(alerts)
    return results


def _found(position: Position, held: Decimal, covered: Decimal) -> str:
    return f"UNPROTECTED: live stop for {covered.normalize():f} of {held.normalize():f} {position.symbol} held"


def _unprotected_marked(unprotected: list[tuple[Position, Decimal, Decimal]], *, policy: str, now) -> set[int]:
    """Mark them UNPROTECTED with an event each (one UPDATE, one insert); the ids among them
    alerted as unprotected within the last ALERT_REPEAT (one query)."""
    ids = [p.pk for p, _, _ in unprotected]
    Position.objects.filter(pk__in=ids).update(protection=Protection.UNPROTECTED, protection_checked_at=now)
    events_record(events=[RiskEvent(kind=RiskEventKind.UNPROTECTED, position=p, symbol=p.symbol,
                                    reason="no live stop at the broker", message=_found(p, held, covered),
                                    data={"held": str(held), "covered": str(covered), "policy": policy})
                          for p, held, covered in unprotected])
    for position, _, _ in unprotected:
        position.protection, position.protection_checked_at = Protection.UNPROTECTED, now
    return set(Alert.objects.filter(kind=AlertKind.UNPROTECTED, position__in=ids, created_at__gte=now - ALERT_REPEAT)
               .values_list("position_id", flat=True))


def _alerts_send(alerts: list[tuple[Position, str]]) -> None:
    """One alert per position; past ALERTS_EACH_AT_MOST at once (a broker that lost every stop),
    one alert naming them all: an operator reads it, ten thousand would bury it."""
    if len(alerts) <= ALERTS_EACH_AT_MOST:
        for position, message in alerts:
            alert_send(kind=AlertKind.UNPROTECTED, position=position, message=message)
    elif alerts:
        ids = ", ".join(f"#{p.pk}" for p, _ in alerts)
        alert_send(kind=AlertKind.UNPROTECTED, message=f"{len(alerts)} positions UNPROTECTED: {ids[:2000]}. "
                                                       f"First: {alerts[0][1]}")


def _protected(protected: list[tuple[Position, Decimal, Decimal]], now, dry_run: bool) -> list[ProtectionResult]:
    if not dry_run and protected:
        Position.objects.filter(pk__in=[p.pk for p, _, _ in protected]).update(
            protection=Protection.PROTECTED, protection_checked_at=now)
    results = []
    for position, held, covered in protected:
        if not dry_run:
            position.protection, position.protection_checked_at = Protection.PROTECTED, now
        results.append(ProtectionResult(position, Protection.PROTECTED, ProtectionAction.NONE,
                                        f"live stop for {covered.normalize():f} of {held.normalize():f}", dry_run))
    return results


def _crossed(position: Position, quote, now) -> tuple[Decimal | None, str | None]:
    """(price, STOP_LOSS_HIT / TAKE_PROFIT_HIT) when the price its exit would trade at crossed
    a level somebody set: the percent defaults only ever place protection, never an exit."""
    if quote is None or position.levels_source == LevelsSource.DEFAULT:
        return None, None
    if quote_problem(quote=quote, now=now, max_age=timedelta(seconds=settings.MONITOR_QUOTE_MAX_AGE_SECONDS)):
        return None, None
    price = exit_price(quote=quote, side=position.side)
    if price is None:
        return None, None
    return price, trigger_reason(side=position.side, price=price, stop_loss=position.stop_loss,
                                 take_profit=position.take_profit)


def _unprotected(position: Position, held: Decimal, covered: Decimal, *, policy: str, quote, now, exits_ok: bool,
                 dry_run: bool) -> ProtectionResult:
    if position.needs_review:
        result = ProtectionResult(position, Protection.UNPROTECTED, ProtectionAction.SKIPPED,
                                  f"needs review, not traded: {position.review_note[:200]}", dry_run)
    else:
        stop, target, defaults = protection_levels(position)
        price, crossed = _crossed(position, quote, now) if policy != "alert" and exits_ok else (None, None)
        if crossed:
            result = _exit(position, reason=crossed, price=price, stop=stop, target=target, quote=quote,
                           dry_run=dry_run)
        elif policy == "protect" or policy == "flatten" and not exits_ok:  # closed: protect now (Alpaca queues it)
            result = _protect(position, held, stop=stop, target=target, defaults=defaults, dry_run=dry_run)
        elif policy == "flatten":
            result = _flatten(position, dry_run=dry_run)
        else:
            result = ProtectionResult(position, Protection.UNPROTECTED, ProtectionAction.ALERTED, "policy alert: no order sent",
                                      dry_run)

    result.found = Protection.UNPROTECTED
    return result


def _exit(position: Position, *, reason: str, price, stop, target, quote, dry_run: bool) -> ProtectionResult:
    detail = f"price {price} already crossed its {'stop' if reason == CloseReason.STOP_LOSS_HIT else 'target'} " \
             f"(stop {stop}, target {target}): exit {reason}, not re-protected"
    if dry_run:
        return ProtectionResult(position, Protection.UNPROTECTED, ProtectionAction.EXITED, detail, True)
    outcome = position_close(position=position, reason=reason, by=Closer.PROTECTION, owner=f"protect-{position.pk}",
                             price=price, quote_time=quote.time if quote else None)
    action = ProtectionAction.EXITED if outcome.state in CLOSE_STARTED else ProtectionAction.FAILED
    return ProtectionResult(outcome.position, Protection.UNPROTECTED, action,
                            f"{detail}; {outcome.state} {outcome.detail}".strip())


def _flatten(position: Position, *, dry_run: bool) -> ProtectionResult:
    if dry_run:
        return ProtectionResult(position, Protection.UNPROTECTED, ProtectionAction.FLATTENED, "policy flatten: market exit", True)
    outcome = position_close(position=position, reason=CloseReason.EMERGENCY_STOP, by=Closer.PROTECTION,
                             owner=f"protect-{position.pk}")
    action = ProtectionAction.FLATTENED if outcome.state in CLOSE_STARTED else ProtectionAction.FAILED
    return ProtectionResult(outcome.position, Protection.UNPROTECTED, action,
                            f"policy flatten: {outcome.state} {outcome.detail}".strip())


def _protect(position: Position, held: Decimal, *, stop: Decimal, target: Decimal, defaults: bool,
             dry_run: bool) -> ProtectionResult:
    levels = f"OCO {position.exit_side} {held.normalize():f} stop {stop} target {target}" + (
        " (defaults from the entry)" if defaults else "")
    if dry_run:
        return ProtectionResult(position, Protection.UNPROTECTED, ProtectionAction.PROTECTED, levels, True)

    # What is left of its own exit orders (a lone target leg, a smaller OCO) holds shares the
    # OCO needs, and would double-sell later: cancel it first.
    if position.orders.live().exclude(role=OrderRole.ENTRY).exclude(broker_order_id=None).exists():
        try:
            orders_cancel(position=position)
        except BrokerError as exc:
            return _protect_failed(position, f"its remaining orders could not be cancelled: {exc}")
        if position.orders.live().exclude(role=OrderRole.EXIT).exclude(broker_order_id=None).exists():
            return _protect_failed(position, "its remaining orders are not cancelled yet; try again")

    try:
        order = oco_send(position=position, qty=held, stop=stop, target=target, time_in_force=OCO_TIME_IN_FORCE)
    except BrokerError as exc:
        return _protect_failed(position, f"{levels} refused: {exc}")

    position.refresh_from_db()
    if position.status != PositionStatus.OPEN:  # claimed for closing meanwhile: the OCO must not outlive it
        order_cancel(order=order)
        return ProtectionResult(position, Protection.UNPROTECTED, ProtectionAction.SKIPPED,
                                f"position became {position.status} while protecting; OCO cancelled", order=order)
    updates = {"protection": Protection.PROTECTED, "protection_checked_at": timezone.now()}
    if position.stop_loss is None:
        updates["stop_loss"] = stop
    if position.take_profit is None:
        updates["take_profit"] = target
    if defaults and position.stop_loss is None:  # levels nobody set: protection only, never an exit
        updates["levels_source"] = LevelsSource.DEFAULT
    Position.objects.filter(pk=position.pk).update(**updates)
    position.refresh_from_db()
    event_record(kind=RiskEventKind.PROTECTED, position=position, reason="oco placed", message=levels,
                 data={"order": order.broker_order_id, "client_order_id": order.client_order_id, "stop": str(stop),
                       "target": str(target), "defaults": defaults})
    return ProtectionResult(position, Protection.PROTECTED, ProtectionAction.PROTECTED,
                            f"{levels}, {order.broker_order_id} {order.status}", order=order)


def reduced_protect(*, outcomes: list[CloseOutcome]) -> list[ProtectionResult]:
    """Protect at once what reduces left open (CloseState.REDUCED): an OCO for all each position
    still holds, at its stop and target (the defaults when it has none). No alert: a reduce is
    routine; a failure is a risk event, and the audit's to retry."""
    results = []
    for outcome in outcomes:
        if outcome.state != CloseState.REDUCED:
            continue
        position = outcome.position
        stop, target, defaults = protection_levels(position)
        held = holding(position, position_orders(position)).held
        results.append(_protect(position, held, stop=stop, target=target, defaults=defaults, dry_run=False))
    return results


def _protect_failed(position: Position, detail: str, order: Order | None = None) -> ProtectionResult:
    event_record(kind=RiskEventKind.ERROR, position=position, reason="protection failed", message=detail)
    return ProtectionResult(position, Protection.UNPROTECTED, ProtectionAction.FAILED, detail, order=order)
