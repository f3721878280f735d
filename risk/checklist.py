"""The re-enable checklist: what must hold before trading resumes (to ACTIVE).

Computed live on every call: the test bracket is checked at the broker, the rest from
the database.
"""

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.template.defaultfilters import pluralize
from django.utils import timezone

from trading import broker
from trading.broker import BrokerError, BrokerOrder
from trading.models import STOP_TYPES, OrderClass, OrderStatus, OrderType, Position
from trading.selectors import latest_test_entry, positions_without_stop

from .daily import stop_loss_cooldown_until, trading_day
from .selectors import monitor_status

TEST_BRACKET = "test_bracket"
MONITOR_FRESH = "monitor_fresh"
ALL_PROTECTED = "all_protected"
NO_OLD_POSITIONS = "no_old_positions"
DAILY_LOSS = "daily_loss"
STOP_LOSS_COOLDOWN = "stop_loss_cooldown"


@dataclass(frozen=True)
class ChecklistItem:
    key: str
    label: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class Checklist:
    items: list[ChecklistItem] = field(default_factory=list)
    checked_at: datetime | None = None

    @property
    def passed(self) -> bool:
        return all(item.ok for item in self.items)

    @property
    def failing(self) -> list[ChecklistItem]:
        return [item for item in self.items if not item.ok]


def _check_test_bracket() -> ChecklistItem:
    label = "The latest test bracket has both legs at the broker"
    entry = latest_test_entry()
    if entry is None:
        return ChecklistItem(TEST_BRACKET, label, False, "no test bracket has been sent yet (POST /api/v1/orders/test)")
    when = f"test bracket {entry.client_order_id} of {entry.created_at:%Y-%m-%d %H:%M:%S}"
    if not entry.broker_order_id:
        return ChecklistItem(TEST_BRACKET, label, False, f"{when} never reached the broker ({entry.status}: {entry.error})")
    try:
        remote = broker.get_order(entry.broker_order_id)
    except BrokerError as exc:
        return ChecklistItem(TEST_BRACKET, label, False, f"{when}: could not ask the broker ({exc})")
    stops = [leg for leg in remote.legs if leg.type in STOP_TYPES]
    targets = [leg for leg in remote.legs if leg.type == OrderType.LIMIT]
    bad = [leg for leg in remote.legs if leg.status in (OrderStatus.REJECTED, OrderStatus.SUBMIT_FAILED)]
    if remote.order_class != OrderClass.BRACKET or len(remote.legs) != 2 or len(stops) != 1 or len(targets) != 1:
        return ChecklistItem(
            TEST_BRACKET, label, False,
            f"{when}: the broker holds a {remote.order_class} order with {len(remote.legs)} legs, not a stop and a target",
        )
    if bad:
        return ChecklistItem(TEST_BRACKET, label, False, f"{when}: leg {bad[0].id} was {bad[0].status}")
    stop, target = stops[0], targets[0]
    legs = f"stop {stop.stop_price} ({stop.status}), target {target.limit_price} ({target.status})"
    return ChecklistItem(TEST_BRACKET, label, _legs_held(stop, target), f"{when}: {legs}")


def _legs_held(stop: BrokerOrder, target: BrokerOrder) -> bool:
    """Both legs live at the broker, or one filled and its sibling cancelled by that fill. Both
    cancelled (by hand, or expired at the close) proves nothing about protection."""
    live = [leg for leg in (stop, target) if not leg.is_final]
    if len(live) == 2:
        return True
    filled = [leg for leg in (stop, target) if leg.status == OrderStatus.FILLED]
    return len(filled) == 1 and {stop.status, target.status} == {OrderStatus.FILLED, OrderStatus.CANCELED}


def _check_monitor(now: datetime) -> ChecklistItem:
    status = monitor_status(now=now)
    label = f"The monitor finished a cycle within {status.stale_after_seconds}s"
    if status.heartbeat is None or status.age_seconds is None:
        return ChecklistItem(MONITOR_FRESH, label, False, "the monitor has never finished a cycle")
    detail = f"last cycle finished {status.age_seconds}s ago"
    if status.heartbeat.errors:
        detail += f", with {status.heartbeat.errors} errors ({status.heartbeat.last_error[:200]})"
    return ChecklistItem(MONITOR_FRESH, label, not status.stale, detail)


def _check_protection() -> ChecklistItem:
    label = "Every open position has a live stop (and every closing one a working exit or a stop)"
    lacking = list(positions_without_stop().values_list("pk", "symbol")[:20])
    if lacking:
        names = ", ".join(f"#{pk} {symbol}" for pk, symbol in lacking)
        return ChecklistItem(ALL_PROTECTED, label, False, f"without a live stop or marked unprotected: {names}")
    count = Position.objects.open().count()
    return ChecklistItem(ALL_PROTECTED, label, True,
                         f"{count} open position{pluralize(count)}, {'all with' if count != 1 else 'with'} a live stop")


def _check_age(now: datetime) -> ChecklistItem:
    hours = settings.CHECKLIST_MAX_POSITION_AGE_HOURS
    label = f"No open position is older than {hours}h"
    old = list(
        Position.objects.open().filter(opened_at__lt=now - timedelta(hours=hours)).order_by("opened_at")
        .values_list("pk", "symbol", "opened_at")[:20]
    )
    if old:
        names = ", ".join(f"#{pk} {symbol} (opened {opened:%Y-%m-%d %H:%M})" for pk, symbol, opened in old)
        return ChecklistItem(NO_OLD_POSITIONS, label, False, names)
    return ChecklistItem(NO_OLD_POSITIONS, label, True, "none")


def _check_daily_loss(now: datetime) -> ChecklistItem:
    label = "The daily-loss kill switch has not halted trading today"
    day = trading_day(now=now)
    if day is not None and day.tripped_at is not None:
        return ChecklistItem(DAILY_LOSS, label, False,
                             f"it halted trading at {day.tripped_at:%Y-%m-%d %H:%M %Z} (P&L {day.tripped_pnl:,.2f}, "
                             f"limit -{day.loss_limit:,.2f}); resuming today needs an override")
    if not settings.DAILY_LOSS_LIMIT:
        return ChecklistItem(DAILY_LOSS, label, True, "off (DAILY_LOSS_LIMIT=0)")
    if day is None or day.evaluated_at is None:
        return ChecklistItem(DAILY_LOSS, label, True, "not evaluated yet today")
    return ChecklistItem(DAILY_LOSS, label, True,
                         f"P&L today {day.pnl:,.2f} against a limit of -{settings.DAILY_LOSS_LIMIT:,.2f}")


def _check_cooldown(now: datetime) -> ChecklistItem:
    label = "No stop-loss guard cool-down is in force"
    until = stop_loss_cooldown_until(now=now)
    if until is not None:
        return ChecklistItem(STOP_LOSS_COOLDOWN, label, False,
                             f"the stop-loss guard halted trading; its cool-down ends {until:%Y-%m-%d %H:%M %Z}")
    return ChecklistItem(STOP_LOSS_COOLDOWN, label, True, "none")


def checklist_run(*, now: datetime | None = None) -> Checklist:
    """Every item, computed now (asks the broker about the latest test bracket)."""
    now = now or timezone.now()
    items = [_check_test_bracket(), _check_monitor(now), _check_protection(), _check_age(now), _check_daily_loss(now),
             _check_cooldown(now)]
    return Checklist(items=items, checked_at=now)
