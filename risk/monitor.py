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
from django.db.models import F, Q, Value
from django.utils import timezone

from trading import broker, budget
from trading.broker import BrokerError, BrokerThrottled, Clock, Quote
from trading.budget import Priority
from trading.models import WATCHED, Position, PositionStatus

from .alerts import alert_send, alerts_deliver_pending_in_background
from .broker_sync import broker_sync
from .closing import closings_progress
from .deciding import DecidedOn, positions_judge, skips_record, triggered_close
from .finalize import CloseOutcome, CloseState
from .guards import guards_step
from .journal import event_record, log_line
from .lease import lease_acquire, lease_release
from .market import exits_allowed, market_clock
from .models import MONITOR, AlertKind, Heartbeat, RiskEventKind
from .protection import protection_audit
from .reconcile import reconcile_run
from .selectors import stream_status, streamed_symbols

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
    clock_failed: bool = False  # reading it failed (recorded): what needs it waits for the next cycle
    quotes: dict[str, Quote] = field(default_factory=dict)  # what the cycle fetched, for the guards

    def summary(self) -> str:
        market = {True: "open", False: "closed", None: "unknown"}[self.market_open]
        text = (f"checked={self.checked} actions={self.actions} skipped={self.skipped} "
                f"errors={self.errors} market={market}")
        return text + (f" ({'; '.join(self.messages)})" if self.messages else "")


def _watched() -> tuple[list[int], list[Position]]:
    """In one query: the closings to carry on, and the open positions to check
    (`PositionQuerySet.watched`)."""
    rows = list(Position.objects.filter(Q(status=PositionStatus.CLOSING) | WATCHED)
                .only("id", "symbol", "side", "stop_loss", "take_profit", "status"))
    return ([p.pk for p in rows if p.status == PositionStatus.CLOSING],
            [p for p in rows if p.status == PositionStatus.OPEN])


def _check_positions(result: CycleResult, owner: str, positions: list[Position]) -> None:
    positions = _due(result, positions)
    result.checked = len(positions)
    if not positions:
        return
    quotes = result.quotes = broker.latest_quotes({p.symbol for p in positions})
    judgement = positions_judge(positions=positions, quotes=quotes, now=timezone.now(),
                                max_age=timedelta(seconds=settings.MONITOR_QUOTE_MAX_AGE_SECONDS))
    skips_record(skipped=judgement.skipped, via=DecidedOn.POLL)
    result.skipped = len(judgement.skipped)
    claimed, outcomes = triggered_close(triggered=judgement.triggered, owner=owner, via=DecidedOn.POLL,
                                        market_open=True)  # checked only once this cycle's clock said open
    result.actions += claimed
    result.outcomes.extend(outcomes)
    for position in positions:
        _polled_at[position.symbol] = time.monotonic()


# When this process last polled each symbol (time.monotonic()): a symbol the quote stream
# watches is polled only every MONITOR_STREAMED_INTERVAL_SECONDS, as a backstop.
_polled_at: dict[str, float] = {}


def backstop_forget() -> None:
    """Forget when symbols were last polled: every streamed symbol is polled at the next cycle
    (as in a process just started; the tests, which share one process, start each so)."""
    _polled_at.clear()


def _due(result: CycleResult, positions: list[Position]) -> list[Position]:
    """The positions to poll now: all of them while the quote stream is stale (silent, dropped,
    or not running), else those of symbols it does not stream, and the streamed ones whose
    backstop poll is due. A stream going silent is thus met by polling every symbol at the
    next cycle, within one interval."""
    streamed = streamed_symbols()
    if not streamed:
        return positions
    now = time.monotonic()
    backstop = settings.MONITOR_STREAMED_INTERVAL_SECONDS
    due = [p for p in positions
           if p.symbol not in streamed or now - _polled_at.get(p.symbol, float("-inf")) >= backstop]
    if len(due) < len(positions):
        result.messages.append(f"{len(positions) - len(due)} positions left to the quote stream")
    return due


def _failed(result: CycleResult, exc: Exception, what: str) -> None:
    result.errors += 1
    result.messages.append(f"{what}: {type(exc).__name__}: {exc}")
    event_record(kind=RiskEventKind.ERROR, reason=f"{what} failed", message=f"{type(exc).__name__}: {exc}")


def _market_open(result: CycleResult) -> bool:
    """Whether positions may be acted on now. The clock is read only when market hours matter."""
    result.clock_failed = True  # until it is read
    result.clock = market_clock()
    result.clock_failed = False
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
        if stream_status().stale:  # no stream to follow the broker: catch up with it now
            sync = broker_sync()
            if sync.changes:
                result.messages.append(sync.summary())
    except BrokerThrottled as exc:  # the budget went to exits: the next cycle syncs
        result.messages.append(f"broker sync postponed: {exc}")
    except (BrokerError, DatabaseError) as exc:
        _failed(result, exc, "broker sync")
    with budget.priority(Priority.EXIT):  # detection and its exits come before any read
        try:
            closing, positions = _watched()
        except DatabaseError as exc:
            _failed(result, exc, "cycle")
            closing, positions = [], []
        try:
            resumed = closings_progress(owner=owner, position_ids=closing)
            result.outcomes.extend(resumed)
            result.actions += sum(1 for o in resumed if o.state in (CloseState.CLOSED, CloseState.EXIT_PENDING))
        except (BrokerError, DatabaseError) as exc:
            _failed(result, exc, "closings")
        try:
            if positions and _market_open(result):  # nothing to check: the clock is not asked either
                _check_positions(result, owner, positions)
            elif positions:
                result.messages.append("market closed: positions not checked")
        except BrokerThrottled as exc:  # the budget went to exits: the next cycle checks
            result.messages.append(f"positions not checked: {exc}")
        except (BrokerError, DatabaseError) as exc:
            _failed(result, exc, "cycle")
    try:
        guarded = guards_step(clock=result.clock, clock_failed=result.clock_failed, quotes=result.quotes,
                              outcomes=result.outcomes, owner=owner)
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
    """One UPDATE of the cycle's own fields (a reconciliation may be writing its own meanwhile);
    the row is made on the first cycle, and read back only after a failing cycle."""
    fields = dict(started_at=result.started_at, finished_at=result.finished_at, positions_checked=result.checked,
                  actions=result.actions, errors=result.errors, cycles=F("cycles") + 1, market_open=result.market_open,
                  consecutive_error_cycles=F("consecutive_error_cycles") + 1 if result.errors else Value(0),
                  last_error=Value("; ".join(result.messages) or f"{result.errors} positions failed to close")
                  if result.errors else F("last_error"),
                  last_error_at=Value(result.finished_at) if result.errors else F("last_error_at"))
    try:
        if not Heartbeat.objects.filter(name=MONITOR).update(**fields):
            Heartbeat.objects.get_or_create(name=MONITOR)
            Heartbeat.objects.filter(name=MONITOR).update(**fields)
        if not result.errors:
            return
        heartbeat = Heartbeat.objects.get(name=MONITOR)
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
