"""The fallback monitor: one cycle checks every open position's stop and target against the
latest quotes and closes the crossed ones through `risk.closing`.

`monitor_tick` is what `runmonitor` and the django-q2 task run: one cycle under the monitor
lease, with housekeeping (reconciliation, the protection audit, alert retries) every
RECONCILE_EVERY_N_CYCLES cycles. How housekeeping runs (inline, or in a thread beside the
cycles) is the caller's choice.
"""

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection
from django.utils import timezone

from trading import broker
from trading.broker import BrokerError, Clock, Quote
from trading.models import Closer, Position, Side

from .alerts import alert_send, alerts_deliver_pending_in_background
from .broker_sync import broker_sync
from .claims import position_claim
from .closing import claimed_close, closings_progress
from .finalize import CloseOutcome, CloseState
from .guards import guards_step
from .journal import event_record, log_line
from .lease import lease_acquire, lease_release
from .market import exits_allowed, market_clock
from .models import MONITOR, AlertKind, Heartbeat, RiskEvent, RiskEventKind
from .protection import protection_audit
from .reconcile import reconcile_run
from .rules import exit_price, quote_problem, trigger_reason
from .selectors import stream_status

log = logging.getLogger("risk.monitor")


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
    clock: Clock | None = None  # the broker's clock, when the cycle read it
    quotes: dict[str, Quote] = field(default_factory=dict)  # what the cycle fetched, for the guards

    def summary(self) -> str:
        market = {True: "open", False: "closed", None: "unknown"}[self.market_open]
        text = (f"checked={self.checked} actions={self.actions} skipped={self.skipped} "
                f"errors={self.errors} market={market}")
        return text + (f" ({'; '.join(self.messages)})" if self.messages else "")


def _check_positions(result: CycleResult, owner: str) -> None:
    positions = list(Position.objects.watched().only("id", "symbol", "side", "stop_loss", "take_profit"))
    result.checked = len(positions)
    if not positions:
        return
    quotes = result.quotes = broker.latest_quotes({p.symbol for p in positions})
    now = timezone.now()
    max_age = timedelta(seconds=settings.MONITOR_QUOTE_MAX_AGE_SECONDS)
    problems = {symbol: quote_problem(quote=quotes.get(symbol), now=now, max_age=max_age)
                for symbol in {p.symbol for p in positions}}
    skipped, triggered = [], []
    for position in positions:
        quote = quotes.get(position.symbol)
        price = None if problems[position.symbol] else exit_price(quote=quote, side=position.side)
        if price is None:
            problem = problems[position.symbol] or f"no {'bid' if position.side == Side.LONG else 'ask'} to exit at"
            skipped.append(RiskEvent(kind=RiskEventKind.SKIPPED, position=position, symbol=position.symbol,
                                     price=quote.price if quote else None, quote_time=quote.time if quote else None,
                                     reason=problem, data=_quote_data(quote)))
            continue
        reason = trigger_reason(side=position.side, price=price, stop_loss=position.stop_loss,
                                take_profit=position.take_profit)
        if reason:
            triggered.append((position, reason, quote, price))
    if skipped:
        RiskEvent.objects.bulk_create(skipped, batch_size=500)
        by_reason: dict[str, int] = {}
        for event in skipped:
            by_reason[event.reason] = by_reason.get(event.reason, 0) + 1
        log_line({"event": "skipped", "count": len(skipped), "reasons": by_reason})
        result.skipped = len(skipped)
    claimed = []
    for position, reason, quote, price in triggered:
        if position_claim(position_id=position.pk, reason=reason, owner=owner, by=Closer.MONITOR):
            event_record(kind=RiskEventKind.TRIGGERED, position=position, price=price, quote_time=quote.time,
                         reason=reason, data=_quote_data(quote) | {"price_used": price},
                         message=f"{'bid' if position.side == Side.LONG else 'ask'} {price} (bid {quote.bid} / "
                                 f"ask {quote.ask}) vs stop {position.stop_loss} / target {position.take_profit}")
            claimed.append(position.pk)
    result.actions += len(claimed)
    result.outcomes.extend(claimed_close(claimed, owner))


def _quote_data(quote) -> dict:
    return {} if quote is None else {"bid": quote.bid, "ask": quote.ask}


def _failed(result: CycleResult, exc: Exception, what: str) -> None:
    result.errors += 1
    result.messages.append(f"{what}: {type(exc).__name__}: {exc}")
    event_record(kind=RiskEventKind.ERROR, reason=f"{what} failed", message=f"{type(exc).__name__}: {exc}")


def _market_open(result: CycleResult) -> bool:
    """Whether positions may be acted on now. The clock is read only when market hours matter."""
    result.clock = market_clock()
    allowed = exits_allowed(result.clock)
    if settings.MONITOR_MARKET_HOURS_ONLY:
        result.market_open = allowed
    return allowed


def monitor_cycle(*, owner: str | None = None) -> CycleResult:
    """One check: catch up with the broker when the trade_updates stream isn't healthy, carry
    on closings in progress, then close every position whose stop or target was crossed.
    Each step's broker or database fault is recorded and ends that step, never the others (a
    clock outage never stops closings under way) nor the process."""
    owner = owner or f"cycle-{uuid.uuid4().hex[:12]}"
    result = CycleResult(started_at=timezone.now())
    try:
        if stream_status().stale:
            sync = broker_sync()
            if sync.changes:
                result.messages.append(sync.summary())
    except (BrokerError, DatabaseError) as exc:
        _failed(result, exc, "broker sync")
    try:
        resumed = closings_progress(owner=owner)
        result.outcomes.extend(resumed)
        result.actions += sum(1 for o in resumed if o.state in (CloseState.CLOSED, CloseState.EXIT_PENDING))
    except (BrokerError, DatabaseError) as exc:
        _failed(result, exc, "closings")
    try:
        if _market_open(result):
            _check_positions(result, owner)
        else:
            result.messages.append("market closed: positions not checked")
    except (BrokerError, DatabaseError) as exc:
        _failed(result, exc, "cycle")
    try:
        guarded = guards_step(clock=result.clock, quotes=result.quotes, outcomes=result.outcomes, owner=owner)
        result.outcomes.extend(guarded)
        result.actions += len(guarded)
    except (BrokerError, DatabaseError) as exc:
        _failed(result, exc, "guards")
    result.errors += sum(1 for o in result.outcomes if o.state == CloseState.ERROR)
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
        if result.errors:
            heartbeat.last_error = "; ".join(result.messages) or f"{result.errors} positions failed to close"
            heartbeat.last_error_at = result.finished_at
        # only the cycle's own fields: a reconciliation may be writing its own meanwhile
        heartbeat.save(update_fields=["started_at", "finished_at", "positions_checked", "actions", "errors", "cycles",
                                      "market_open", "consecutive_error_cycles", "last_error", "last_error_at"])
    except DatabaseError as exc:
        log.error("heartbeat not stored (%s): %s", type(exc).__name__, exc)
        return
    if heartbeat.consecutive_error_cycles == settings.MONITOR_ALERT_AFTER_ERROR_CYCLES:
        alert_send(kind=AlertKind.MONITOR_ERRORS,
                   message=f"Monitor failed {heartbeat.consecutive_error_cycles} cycles in a row: {heartbeat.last_error}")


def broker_await(*, timeout: float, stop: Callable[[], bool] = lambda: False) -> bool:
    """Wait until the broker answers (its clock), at most `timeout` seconds: a monitor started
    beside the paper exchange would otherwise fail its first cycle. True once it answered."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            broker.clock()
        except BrokerError:
            if time.monotonic() >= deadline or stop():
                return False
            time.sleep(0.5)
        else:
            return True


# --- Housekeeping and the tick -----------------------------------------------------------------


def housekeeping() -> None:
    """Reconcile with the broker, then audit every open position's protection, then retry
    alerts a dead process left undelivered (in the background: a dead webhook must not hold
    up protection)."""
    reconcile_run()  # logs and records its own summary
    try:
        protection_audit()
    except BrokerError as exc:
        event_record(kind=RiskEventKind.ERROR, reason="protection audit failed", message=str(exc))
    alerts_deliver_pending_in_background()


def housekeeping_due() -> bool:
    cycles = Heartbeat.objects.filter(name=MONITOR).values_list("cycles", flat=True).first() or 0
    return cycles % settings.RECONCILE_EVERY_N_CYCLES == 0


def monitor_lease_seconds() -> int:
    return max(settings.MONITOR_LEASE_SECONDS, 2 * settings.MONITOR_INTERVAL_SECONDS)


def monitor_tick(*, holder: str, keep_lease: bool = False, housekeeping_now: bool | None = None,
                 run_housekeeping: Callable[[Callable[[], None]], None] | None = None) -> CycleResult | None:
    """Run one cycle if this holder gets the monitor lease; None when another holds it.

    Housekeeping runs when `housekeeping_now` is True (a monitor starting up) or, when it is
    None, every RECONCILE_EVERY_N_CYCLES cycles: handed to `run_housekeeping` (which may run
    it beside the cycle, as `runmonitor` does) or else run before the cycle.
    """
    if not connection.in_atomic_block:
        close_old_connections()  # a connection broken in the last cycle is replaced, not reused
    if not lease_acquire(name=MONITOR, holder=holder, seconds=monitor_lease_seconds()):
        return None
    try:
        try:
            if housekeeping_now or (housekeeping_now is None and housekeeping_due()):
                (run_housekeeping or (lambda job: job()))(housekeeping)
        except DatabaseError as exc:
            event_record(kind=RiskEventKind.ERROR, reason="housekeeping failed", message=f"{type(exc).__name__}: {exc}")
        return monitor_cycle(owner=holder)
    finally:
        if not keep_lease:
            try:
                lease_release(name=MONITOR, holder=holder)
            except DatabaseError as exc:  # it expires on its own
                log.error("monitor lease not released (%s): %s", type(exc).__name__, exc)
