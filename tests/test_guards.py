"""The monitor's guards against the paper exchange: the daily-loss kill switch (from realised and
from unrealised loss, below, at and above its limit), the stop-loss guard and its cool-down, the
end-of-day flatten on the exchange's clock, and what the console shows of them."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.utils import timezone

from risk.checklist import checklist_run
from risk.daily import session_open, stop_loss_cooldown_until
from risk.entries import submit_bracket_order
from risk.market import clock_forget
from risk.models import Alert, RiskEvent, TradingDay
from risk.monitor import monitor_cycle
from tests.helpers import open_bracket
from trading.models import CloseReason, Position, PositionStatus, TradingMode
from trading.selectors import trading_state

pytestmark = pytest.mark.django_db


@pytest.fixture
def kill_switch(settings):
    settings.DAILY_LOSS_LIMIT = Decimal("100")
    return settings


def _items(now=None) -> dict:
    return {item.key: item for item in checklist_run(now=now).items}


# --- Today's open ------------------------------------------------------------------------------


@pytest.mark.parametrize("now,opened", [
    (datetime(2026, 11, 27, 15, 0, tzinfo=UTC), datetime(2026, 11, 27, 14, 30, tzinfo=UTC)),  # 10:00 New York
    (datetime(2026, 11, 27, 14, 0, tzinfo=UTC), datetime(2026, 11, 26, 14, 30, tzinfo=UTC)),  # 09:00: yesterday's
    (datetime(2026, 7, 1, 13, 30, tzinfo=UTC), datetime(2026, 7, 1, 13, 30, tzinfo=UTC)),  # 09:30 summer time
    (datetime(2026, 7, 2, 3, 0, tzinfo=UTC), datetime(2026, 7, 1, 13, 30, tzinfo=UTC)),  # 23:00 the day before
])
def test_todays_open_is_the_last_0930_in_new_york(now, opened):
    assert session_open(now=now) == opened


# --- The daily-loss kill switch -----------------------------------------------------------------


@pytest.mark.parametrize("limit,trips", [("50.11", False), ("50.10", False), ("50.09", True)],
                         ids=["loss below the limit", "loss at the limit", "loss beyond the limit"])
def test_kill_switch_from_unrealised_loss(exchange, kill_switch, limit, trips):
    kill_switch.DAILY_LOSS_LIMIT = Decimal(limit)
    open_bracket(quantity=10)  # bought at the ask, 150.01; stop 140
    exchange.control.set_quote("AAPL", "145.00", "145.02")  # a long is worth its bid: -50.10

    monitor_cycle(owner="test")

    day = TradingDay.objects.get()
    assert (day.realised_pnl, day.unrealised_pnl) == (0, Decimal("-50.10"))
    assert (trading_state().mode == TradingMode.HALTED) is trips
    assert Alert.objects.filter(kind="daily_loss").exists() is trips
    assert (day.tripped_at is not None) is trips
    assert Position.objects.get().status == PositionStatus.OPEN  # halted, not flattened


def test_a_short_is_marked_at_the_ask(exchange, kill_switch):
    open_bracket(quantity=10, side="sell")  # sold at the bid, 149.99
    exchange.control.set_quote("AAPL", "154.00", "155.00")
    monitor_cycle(owner="test")
    assert TradingDay.objects.get().unrealised_pnl == Decimal("-50.10")


def test_kill_switch_from_realised_loss_halts_once_alerts_and_blocks_resuming_today(exchange, kill_switch):
    position = open_bracket(quantity=10)  # 150.01
    exchange.control.set_quote("AAPL", "139.00", "139.02")  # through the stop: out at 139.00, -110.10

    monitor_cycle(owner="test")

    position.refresh_from_db()
    assert position.status == PositionStatus.CLOSED and position.close_reason == CloseReason.STOP_LOSS_HIT
    day = TradingDay.objects.get()
    assert (day.realised_pnl, day.unrealised_pnl, day.tripped_pnl) == (Decimal("-110.10"), 0, Decimal("-110.10"))
    state = trading_state()
    assert state.mode == TradingMode.HALTED and state.changed_by_name == "system"
    assert "daily-loss kill switch" in state.reason and "-110.10" in state.reason and "-100.00" in state.reason
    event = RiskEvent.objects.get(kind="kill_switch")
    assert Decimal(event.data["pnl"]) == Decimal("-110.10") and event.data["flatten"] is False
    assert Alert.objects.filter(kind="daily_loss").count() == 1

    monitor_cycle(owner="test")  # once a trading day
    assert Alert.objects.filter(kind="daily_loss").count() == 1 and RiskEvent.objects.filter(kind="kill_switch").count() == 1
    item = _items()["daily_loss"]
    assert not item.ok and "resuming today needs an override" in item.detail


def test_kill_switch_with_flatten_closes_everything(exchange, kill_switch):
    kill_switch.DAILY_LOSS_FLATTEN = True
    kill_switch.DAILY_LOSS_LIMIT = Decimal("50")
    loser = open_bracket("AAPL", quantity=10)
    other = open_bracket("MSFT", quantity=1)
    exchange.control.set_quote("AAPL", "145.00", "145.02")  # -50.10 unrealised, above the 140 stop

    monitor_cycle(owner="test")

    for position in (loser, other):
        position.refresh_from_db()
        assert position.status == PositionStatus.CLOSED and position.close_reason == CloseReason.EMERGENCY_STOP
    assert TradingDay.objects.get().flattened
    assert trading_state().mode == TradingMode.HALTED
    assert not exchange.control.state()["positions"]


def test_kill_switch_off_evaluates_nothing(exchange, settings):
    settings.DAILY_LOSS_LIMIT = Decimal("0")
    open_bracket(quantity=10)
    exchange.control.set_quote("AAPL", "141.00", "141.02")
    monitor_cycle(owner="test")
    assert not TradingDay.objects.exists() and trading_state().mode == TradingMode.ACTIVE
    assert _items()["daily_loss"].ok


def test_kill_switch_waits_for_the_market(exchange, kill_switch):
    open_bracket(quantity=10)
    exchange.control.set_quote("AAPL", "141.00", "141.02")
    exchange.control.set_clock(False)
    clock_forget()  # moved by hand: not at a turn the last read announced
    monitor_cycle(owner="test")
    assert trading_state().mode == TradingMode.ACTIVE and not TradingDay.objects.exists()


# --- The stop-loss guard ---------------------------------------------------------------------------


@pytest.fixture
def guard(settings):
    settings.STOP_LOSS_GUARD_COUNT = 2
    settings.STOP_LOSS_GUARD_MINUTES = 30
    settings.STOP_LOSS_GUARD_COOLDOWN_MINUTES = 60
    return settings


def _stop_out(exchange, symbol: str, bid: str) -> None:
    exchange.control.set_quote(symbol, bid, str(Decimal(bid) + Decimal("0.02")))
    monitor_cycle(owner="test")


def test_stop_loss_guard_below_at_and_above(exchange, guard):
    open_bracket("AAPL", quantity=1)
    open_bracket("MSFT", quantity=1)
    third = submit_bracket_order(symbol="TSLA", quantity=1, side="buy", stop_loss="240", take_profit="260")

    _stop_out(exchange, "AAPL", "139.00")  # 1 of 2: below
    assert trading_state().mode == TradingMode.ACTIVE and not RiskEvent.objects.filter(kind="stop_loss_guard")

    _stop_out(exchange, "MSFT", "389.00")  # 2 of 2: at
    state = trading_state()
    assert state.mode == TradingMode.HALTED and "stop-loss guard: 2 stop-loss closes within 30 min" in state.reason
    event = RiskEvent.objects.get(kind="stop_loss_guard")
    assert Alert.objects.filter(kind="stop_loss_guard").count() == 1
    until = stop_loss_cooldown_until()
    assert until is not None and timedelta(minutes=59) < until - timezone.now() <= timedelta(minutes=60)

    _stop_out(exchange, "TSLA", "239.00")  # a third: only closes after the trip count again
    third.refresh_from_db()
    assert third.close_reason == CloseReason.STOP_LOSS_HIT
    assert list(RiskEvent.objects.filter(kind="stop_loss_guard")) == [event]


def test_stops_older_than_the_window_do_not_count(exchange, guard):
    first = open_bracket("AAPL", quantity=1)
    open_bracket("MSFT", quantity=1)
    _stop_out(exchange, "AAPL", "139.00")
    Position.objects.filter(pk=first.pk).update(closed_at=timezone.now() - timedelta(minutes=31))
    _stop_out(exchange, "MSFT", "389.00")
    assert trading_state().mode == TradingMode.ACTIVE


def test_after_the_cool_down_back_to_active_only_through_the_checklist(exchange, guard):
    open_bracket("AAPL", quantity=1)
    open_bracket("MSFT", quantity=1)
    _stop_out(exchange, "AAPL", "139.00")
    _stop_out(exchange, "MSFT", "389.00")

    item = _items()["stop_loss_cooldown"]
    assert not item.ok and "cool-down ends" in item.detail
    later = timezone.now() + timedelta(minutes=61)
    assert _items(now=later)["stop_loss_cooldown"].ok
    assert trading_state().mode == TradingMode.HALTED  # still halted once the cool-down is over

    from tests.helpers import token_client
    operator = token_client("operator", ["trading.change_trading_mode"])
    refused = operator.post("/api/v1/trading-state", {"mode": "ACTIVE", "reason": "back"}, format="json")
    assert refused.status_code == 400
    assert any(i["key"] == "stop_loss_cooldown" and not i["ok"] for i in refused.json()["checklist"]["items"])


# --- The end-of-day flatten ---------------------------------------------------------------------------


def _entry(symbol: str, intraday: bool | None) -> Position:
    stop, target = {"AAPL": ("140", "160"), "MSFT": ("390", "410"), "TSLA": ("240", "260")}[symbol]
    return submit_bracket_order(symbol=symbol, quantity=1, side="buy", stop_loss=stop, take_profit=target,
                                intraday=intraday, time_in_force="gtc")


def test_end_of_day_flatten_on_the_exchanges_clock(exchange, active, settings):
    # The paper exchange's clock, open, says the market closes 6 hours (360 minutes) from now.
    intraday, overnight, unsaid = _entry("AAPL", True), _entry("MSFT", False), _entry("TSLA", None)
    settings.EOD_FLATTEN_MINUTES = 359
    monitor_cycle(owner="test")
    assert Position.objects.filter(status=PositionStatus.OPEN).count() == 3  # a minute early

    settings.EOD_FLATTEN_MINUTES = 361
    monitor_cycle(owner="test")

    for position in (intraday, overnight, unsaid):
        position.refresh_from_db()
    assert intraday.status == PositionStatus.CLOSED and intraday.close_reason == CloseReason.MARKET_CLOSE
    assert intraday.exit_price == Decimal("149.99")
    assert overnight.status == unsaid.status == PositionStatus.OPEN
    assert RiskEvent.objects.get(kind="end_of_day").data["positions"] == [intraday.pk]

    settings.EOD_FLATTEN = "all"  # every position not said to stay overnight
    monitor_cycle(owner="test")
    unsaid.refresh_from_db()
    overnight.refresh_from_db()
    assert unsaid.status == PositionStatus.CLOSED and unsaid.close_reason == CloseReason.MARKET_CLOSE
    assert overnight.status == PositionStatus.OPEN

    # The one that stays keeps its GTC stop through the close.
    exchange.control.expire_day_orders()
    legs = overnight.entry_order.legs.all()
    remote = {o["id"]: o for o in exchange.control.state()["orders"]}
    assert {remote[leg.broker_order_id]["time_in_force"] for leg in legs} == {"gtc"}
    assert all(remote[leg.broker_order_id]["status"] in ("new", "held") for leg in legs)


def test_end_of_day_flatten_cancels_an_intraday_entry_still_working(exchange, active, settings):
    """A resting intraday entry would fill after the flatten and be held overnight: cancelled."""
    resting = submit_bracket_order(symbol="AAPL", quantity=1, side="buy", stop_loss="140", take_profit="160",
                                   entry_price="145", intraday=True, time_in_force="gtc")
    assert resting.status == PositionStatus.PENDING
    settings.EOD_FLATTEN_MINUTES = 361
    monitor_cycle(owner="test")
    resting.refresh_from_db()
    assert resting.status == PositionStatus.CANCELLED
    remote = {o["id"]: o for o in exchange.control.state()["orders"]}
    assert remote[resting.entry_order.broker_order_id]["status"] == "canceled"
    assert RiskEvent.objects.get(kind="end_of_day").data["positions"] == [resting.pk]


def test_end_of_day_flatten_off_or_market_closed(exchange, active, settings):
    position = _entry("AAPL", True)
    settings.EOD_FLATTEN_MINUTES = 361
    settings.EOD_FLATTEN = "off"
    monitor_cycle(owner="test")
    assert Position.objects.get(pk=position.pk).status == PositionStatus.OPEN
    settings.EOD_FLATTEN = "intraday"
    exchange.control.set_clock(False)
    clock_forget()  # moved by hand: not at a turn the last read announced
    monitor_cycle(owner="test")
    assert Position.objects.get(pk=position.pk).status == PositionStatus.OPEN


# --- The console ------------------------------------------------------------------------------------


def test_the_index_shows_todays_pnl_the_kill_switch_and_the_cool_down(exchange, kill_switch, guard):
    user = User.objects.create_user("operator", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_position"))
    client = Client(HTTP_X_FORWARDED_PROTO="https")
    client.force_login(user)
    assert b"not evaluated yet" in client.get("/admin/").content

    open_bracket("AAPL", quantity=10)
    open_bracket("MSFT", quantity=1)
    _stop_out(exchange, "AAPL", "139.00")  # -110.10: the kill switch
    _stop_out(exchange, "MSFT", "389.00")  # the second stop: the guard

    page = client.get("/admin/").content.decode()
    assert 'id="guards-box"' in page and "P&amp;L today -" in page
    assert "Daily-loss kill switch tripped" in page and "cool-down until" in page
