"""The fallback monitor against the paper exchange over HTTP."""

import time
from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from risk import closing
from risk.models import EXIT_ALERT_KINDS, Alert, AlertKind, Heartbeat, RiskEvent
from risk.closing import position_close
from risk import market
from risk.market import clock_forget
from risk.monitor import monitor_cycle
from risk.rules import trigger_reason
from trading.broker import BrokerError, Clock
from trading.models import CloseReason, Closer, OrderRole, OrderStatus, Position, PositionStatus
from risk.entries import BracketNotProtected, submit_bracket_order
from tests.helpers import crash_once_the_broker_accepts_an_exit

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("active")]  # `exchange`: tests/conftest.py


def exits_sent(exchange) -> list[dict]:
    return [
        r["body"] for r in exchange.control.requests_log()
        if r["method"] == "POST" and r["path"] == "/v2/orders" and r["body"]["client_order_id"].startswith("catalyst-exit-")
    ]


def unprotected(exchange, *, symbol="AAPL", side="buy", qty=10, stop="140", target="160") -> Position:
    """A position whose legs never reached the broker: the original incident."""
    exchange.control.add_fault("drop_legs", count=1)
    with pytest.raises(BracketNotProtected) as caught:
        submit_bracket_order(symbol=symbol, quantity=qty, side=side, stop_loss=stop, take_profit=target)
    return caught.value.position


def protected(exchange, *, symbol="AAPL", side="buy", qty=10, stop="140", target="160") -> Position:
    return submit_bracket_order(symbol=symbol, quantity=qty, side=side, stop_loss=stop, take_profit=target)


@pytest.mark.parametrize(
    "side,price,stop,target,expected",
    [
        ("long", "139.99", "140", "160", CloseReason.STOP_LOSS_HIT),
        ("long", "140", "140", "160", CloseReason.STOP_LOSS_HIT),
        ("long", "160", "140", "160", CloseReason.TAKE_PROFIT_HIT),
        ("long", "150", "140", "160", None),
        ("long", "150", "140", None, None),
        ("short", "160", "160", "140", CloseReason.STOP_LOSS_HIT),
        ("short", "140", "160", "140", CloseReason.TAKE_PROFIT_HIT),
        ("short", "150", "160", "140", None),
        ("long", "150", "155", "145", CloseReason.STOP_LOSS_HIT),  # both crossed: the stop wins
        ("short", "150", "145", "155", CloseReason.STOP_LOSS_HIT),
    ],
)
def test_trigger_rules(side, price, stop, target, expected):
    assert trigger_reason(
        side=side, price=Decimal(price), stop_loss=Decimal(stop), take_profit=Decimal(target) if target else None
    ) == expected


def test_long_stop_crossed_sells_once_and_closes_from_the_fill(exchange):
    position = unprotected(exchange)
    exchange.control.set_quote("AAPL", "138.00", "138.02")

    result = monitor_cycle()

    assert result.errors == 0 and result.actions == 1
    (exit_body,) = exits_sent(exchange)
    assert exit_body["side"] == "sell" and Decimal(str(exit_body["qty"])) == 10
    assert exit_body["type"] == "market" and "order_class" not in exit_body or exit_body.get("order_class") in (None, "simple")
    position.refresh_from_db()
    assert position.status == PositionStatus.CLOSED
    assert position.close_reason == CloseReason.STOP_LOSS_HIT
    assert position.exit_price == Decimal("138.00")  # the fill (the bid), not the 138.01 midpoint
    exit_order = position.orders.get(role=OrderRole.EXIT)
    assert position.closed_at == exit_order.filled_at
    assert position.realised_pnl == (Decimal("138.00") - position.entry_price) * 10
    kinds = list(RiskEvent.objects.filter(position=position).order_by("id").values_list("kind", flat=True))
    assert kinds[-4:] == ["triggered", "exit_sent", "exit_filled", "closed"] or kinds[-3:] == ["exit_sent", "exit_filled", "closed"]
    assert "triggered" in kinds
    assert exchange.control.state()["positions"] in ({}, [])
    # the safety net fired, and the alert says so (and who fired it)
    assert position.closed_by == Closer.MONITOR and position.updated_at >= position.closed_at
    (alert,) = Alert.objects.filter(position=position, kind__in=EXIT_ALERT_KINDS.values())
    assert alert.kind == AlertKind.FALLBACK_EXIT and alert.message.startswith("Fallback exit by the monitor for ")

    monitor_cycle()  # nothing more to do: never a second exit
    assert len(exits_sent(exchange)) == 1


def test_short_stop_crossed_buys_to_cover(exchange):
    position = unprotected(exchange, symbol="TSLA", side="short", qty=3, stop="260", target="240")
    exchange.control.set_quote("TSLA", "261.00", "261.02")

    monitor_cycle()

    (exit_body,) = exits_sent(exchange)
    assert exit_body["side"] == "buy" and Decimal(str(exit_body["qty"])) == 3
    position.refresh_from_db()
    assert position.status == PositionStatus.CLOSED
    assert position.close_reason == CloseReason.STOP_LOSS_HIT
    assert position.exit_price == Decimal("261.02")  # bought at the ask
    assert position.realised_pnl == (position.entry_price - Decimal("261.02")) * 3


def test_short_target_crossed(exchange):
    position = unprotected(exchange, symbol="TSLA", side="short", qty=2, stop="260", target="240")
    exchange.control.set_quote("TSLA", "239.00", "239.02")
    monitor_cycle()
    position.refresh_from_db()
    assert position.close_reason == CloseReason.TAKE_PROFIT_HIT
    assert exits_sent(exchange)[0]["side"] == "buy"


def test_broker_already_flat_sends_nothing_and_closes_from_the_leg(exchange):
    position = protected(exchange)
    exchange.control.set_quote("AAPL", "139.50", "139.52")  # the exchange's stop leg fills itself

    result = monitor_cycle()

    assert result.errors == 0
    assert exits_sent(exchange) == []
    position.refresh_from_db()
    assert position.status == PositionStatus.CLOSED
    assert position.close_reason == CloseReason.STOP_LOSS_HIT
    stop_leg = position.orders.get(role=OrderRole.STOP_LOSS)
    assert stop_leg.status == OrderStatus.FILLED
    assert position.exit_price == stop_leg.filled_avg_price
    assert position.closed_at == stop_leg.filled_at


def test_legs_still_open_are_cancelled_before_the_exit(exchange):
    """Our stop was tightened above the broker's leg: the legs hold the shares, so they
    must be cancelled first or the exit would be rejected for held quantity."""
    position = protected(exchange)
    Position.objects.filter(pk=position.pk).update(stop_loss=Decimal("148"))
    exchange.control.set_quote("AAPL", "147.00", "147.02")

    result = monitor_cycle()

    assert result.errors == 0
    (exit_body,) = exits_sent(exchange)
    position.refresh_from_db()
    assert position.status == PositionStatus.CLOSED, position.review_note
    assert position.exit_price == Decimal("147.00")
    legs = position.orders.filter(role__in=[OrderRole.STOP_LOSS, OrderRole.TAKE_PROFIT])
    assert set(legs.values_list("status", flat=True)) == {OrderStatus.CANCELED}
    assert RiskEvent.objects.filter(position=position, kind="legs_cancelled").exists()
    assert not RiskEvent.objects.filter(kind="exit_rejected").exists()


def test_partly_filled_entry_is_protected_for_the_filled_quantity(exchange):
    exchange.control.add_fault("partial_fill", count=1)
    position = protected(exchange, qty=10)  # 5 fill, the legs stay held
    entry = position.entry_order
    entry.refresh_from_db()
    exchange.control.set_quote("AAPL", "139.00", "139.02")

    monitor_cycle()

    (exit_body,) = exits_sent(exchange)
    assert Decimal(str(exit_body["qty"])) == 5
    position.refresh_from_db()
    assert position.status == PositionStatus.CLOSED
    assert position.quantity == 5
    entry.refresh_from_db()
    assert entry.status == OrderStatus.CANCELED  # the rest can never fill unprotected


def test_crash_between_cancelling_legs_and_sending_the_exit_is_finished_once(exchange, monkeypatch):
    position = protected(exchange)
    Position.objects.filter(pk=position.pk).update(stop_loss=Decimal("148"))
    exchange.control.set_quote("AAPL", "147.00", "147.02")

    def crash(**kwargs):
        raise SystemExit("killed")

    monkeypatch.setattr(closing, "exit_send", crash)
    with pytest.raises(SystemExit):
        monitor_cycle()
    monkeypatch.undo()
    position.refresh_from_db()
    assert position.status == PositionStatus.CLOSING
    assert exits_sent(exchange) == []
    # a killed process never unlocks: simulate its lock left behind, then expired
    Position.objects.filter(pk=position.pk).update(lock_owner="dead", locked_until=timezone.now() + timedelta(seconds=60))
    monitor_cycle()
    assert exits_sent(exchange) == []  # the dead worker's lock is respected until it expires
    Position.objects.filter(pk=position.pk).update(locked_until=timezone.now() - timedelta(seconds=1))

    monitor_cycle()

    assert len(exits_sent(exchange)) == 1
    position.refresh_from_db()
    assert position.status == PositionStatus.CLOSED
    assert position.close_reason == CloseReason.STOP_LOSS_HIT


def test_exit_sent_but_crash_before_recording_it_is_not_sent_again(exchange, monkeypatch):
    position = unprotected(exchange)
    exchange.control.set_quote("AAPL", "138.00", "138.02")
    crash_once_the_broker_accepts_an_exit(monkeypatch)
    with pytest.raises(SystemExit):
        monitor_cycle()
    monkeypatch.undo()

    monitor_cycle()

    # the next cycle found the accepted exit by its client_order_id instead of sending again
    assert len(exits_sent(exchange)) == 1
    position.refresh_from_db()
    assert position.status == PositionStatus.CLOSED
    assert position.exit_price == Decimal("138.00")
    assert position.orders.get(role=OrderRole.EXIT).status == OrderStatus.FILLED


def test_broker_down_for_a_cycle_is_recorded_and_the_next_cycle_recovers(exchange):
    position = unprotected(exchange)
    exchange.control.set_quote("AAPL", "138.00", "138.02")
    exchange.control.add_fault("http_500")

    result = monitor_cycle()

    assert result.errors >= 1  # each step that met the outage (the broker sync, the cycle) records it
    heartbeat = Heartbeat.objects.get(name="monitor")
    assert heartbeat.errors == result.errors and heartbeat.consecutive_error_cycles == 1
    assert RiskEvent.objects.filter(kind="error").exists()
    position.refresh_from_db()
    assert position.status == PositionStatus.OPEN

    exchange.control.clear_faults()
    result = monitor_cycle()
    assert result.errors == 0
    position.refresh_from_db()
    assert position.status == PositionStatus.CLOSED
    assert Heartbeat.objects.get(name="monitor").consecutive_error_cycles == 0


def test_market_closed_means_no_action(exchange):
    position = unprotected(exchange)
    exchange.control.set_quote("AAPL", "138.00", "138.02")
    exchange.control.set_clock(False)
    clock_forget()  # moved by hand: not at a turn the last read announced

    result = monitor_cycle()

    assert result.market_open is False and result.checked == 0
    position.refresh_from_db()
    assert position.status == PositionStatus.OPEN
    assert exits_sent(exchange) == []


def test_market_hours_can_be_waived(exchange, settings):
    settings.MONITOR_MARKET_HOURS_ONLY = False
    unprotected(exchange)
    exchange.control.set_clock(False)
    clock_forget()  # moved by hand: not at a turn the last read announced
    exchange.control.set_quote("AAPL", "138.00", "138.02")
    result = monitor_cycle()
    assert result.actions == 1 and len(exits_sent(exchange)) == 1


def clock_reads(exchange) -> int:
    return sum(1 for r in exchange.control.requests_log() if r["path"] == "/v2/clock")


def test_the_clock_is_read_once_until_its_next_turn_at_most_every_five_minutes(exchange, monkeypatch):
    """It changes only at the turns it announces; every read spends the shared request budget."""
    unprotected(exchange)
    exchange.control.set_quote("AAPL", "150.00", "150.02")  # inside the levels: nothing to do
    exchange.control.clear_requests_log()
    assert [monitor_cycle().market_open for _ in range(3)] == [True] * 3
    assert clock_reads(exchange) == 1
    exchange.control.set_clock(False)  # by hand, between turns: seen once the read is due
    later = time.monotonic() + market.CLOCK_MAX_SECONDS + 1
    monkeypatch.setattr(market, "monotonic", lambda: later)
    assert monitor_cycle().market_open is False and clock_reads(exchange) == 2


def test_the_clock_is_read_again_at_the_turn_it_announced_and_a_failure_is_not_kept(exchange, monkeypatch):
    now = timezone.now()
    closing_soon = Clock(is_open=True, timestamp=now, next_open=now + timedelta(hours=18),
                         next_close=now + timedelta(seconds=10))
    reads = []

    def clock():
        reads.append(1)
        if len(reads) == 2:
            raise BrokerError("clock: HTTP 500", status=500)
        return closing_soon

    monkeypatch.setattr(market.broker, "clock", clock)
    started = time.monotonic()
    monkeypatch.setattr(market, "monotonic", lambda: started)
    assert market.market_clock() is closing_soon
    monkeypatch.setattr(market, "monotonic", lambda: started + 4)
    kept = market.market_clock()
    assert len(reads) == 1 and kept.next_close == closing_soon.next_close
    assert kept.timestamp == now + timedelta(seconds=4)  # the broker's time, moved on (the end-of-day flatten)
    monkeypatch.setattr(market, "monotonic", lambda: started + 11)  # the close it announced has come
    with pytest.raises(BrokerError):
        market.market_clock()
    assert market.market_clock() is closing_soon and len(reads) == 3  # the failure was not kept


@pytest.mark.parametrize(
    "bid,ask,age,why",
    [
        ("138.00", "138.02", 600, "stale"),
        ("139.00", "138.00", 0, "crossed"),
        ("0", "0", 0, "no bid and no ask"),
    ],
)
def test_bad_quotes_are_skipped_and_recorded(exchange, bid, ask, age, why):
    position = unprotected(exchange)
    when = (timezone.now() - timedelta(seconds=age)).isoformat()
    exchange.control.set_quote("AAPL", bid, ask, time=when)

    result = monitor_cycle()

    assert result.skipped == 1 and result.actions == 0
    event = RiskEvent.objects.get(kind="skipped", position=position)
    assert why in event.reason
    position.refresh_from_db()
    assert position.status == PositionStatus.OPEN
    assert exits_sent(exchange) == []


def test_missing_quote_is_skipped(exchange):
    position = unprotected(exchange)
    exchange.control.reset()
    exchange.control.set_position("AAPL", 10, "150.01")  # still held, but no quote any more
    result = monitor_cycle()
    assert result.skipped == 1
    assert RiskEvent.objects.get(kind="skipped", position=position).reason == "no quote"


def test_manual_close_twice_sends_one_exit(exchange):
    position = unprotected(exchange)
    first = position_close(position=position, reason=CloseReason.MANUAL, by=Closer.OPERATOR)
    second = position_close(position=position, reason=CloseReason.MANUAL, by=Closer.OPERATOR)
    assert first.state == "closed" and second.state == "skipped"
    assert len(exits_sent(exchange)) == 1
    position.refresh_from_db()
    assert position.close_reason == CloseReason.MANUAL
    assert position.exit_price == Decimal("149.99")
    assert position.closed_by == Closer.OPERATOR
    exit_alerts = Alert.objects.filter(position=position, kind__in=EXIT_ALERT_KINDS.values())
    assert list(exit_alerts.values_list("kind", flat=True)) == [AlertKind.OPERATOR_CLOSE]


def test_exit_rejected_stays_closing_and_is_retried_next_cycle(exchange):
    position = unprotected(exchange)
    exchange.control.set_quote("AAPL", "138.00", "138.02")
    exchange.control.add_fault("reject", method="POST", path="/v2/orders", count=1)

    monitor_cycle()
    position.refresh_from_db()
    assert position.status == PositionStatus.CLOSING
    assert RiskEvent.objects.filter(kind="exit_rejected", position=position).exists()

    monitor_cycle()
    position.refresh_from_db()
    assert position.status == PositionStatus.CLOSED
    assert position.orders.filter(role=OrderRole.EXIT, status=OrderStatus.FILLED).count() == 1


def test_exit_not_filled_within_the_cycle_stays_closing_until_it_fills(exchange):
    position = unprotected(exchange)
    exchange.control.set_quote("AAPL", "138.00", "138.02")
    exchange.control.add_fault("no_fill", count=1)

    monitor_cycle()
    position.refresh_from_db()
    assert position.status == PositionStatus.CLOSING
    exit_order = position.orders.get(role=OrderRole.EXIT)
    exchange.control.fill_order(exit_order.broker_order_id, price="137.50")

    monitor_cycle()
    position.refresh_from_db()
    assert position.status == PositionStatus.CLOSED
    assert position.exit_price == Decimal("137.50")
    assert len(exits_sent(exchange)) == 1


def test_runmonitor_once_exit_codes(exchange, caplog):
    protected(exchange)  # a position to check: the cycle asks the broker's clock
    with caplog.at_level("INFO", logger="risk.monitor"):
        call_command("runmonitor", "--once")
    payloads = [r.payload for r in caplog.records if hasattr(r, "payload")]
    events = [p["event"] for p in payloads]
    started = payloads[events.index("monitor_started")]
    assert events.count("cycle") == 1 and events.count("monitor_started") == 1
    assert "interval_seconds" not in started  # --once: no interval to speak of

    exchange.control.add_fault("http_500")
    with pytest.raises(CommandError, match="error"):
        call_command("runmonitor", "--once")

    with pytest.raises(CommandError, match="--interval"):
        call_command("runmonitor", "--interval", "0")


def test_schedule_is_created_once_however_often_we_migrate():
    from django_q.models import Schedule

    from console.schedule import SCHEDULE_NAME

    call_command("migrate", verbosity=0)
    call_command("migrate", verbosity=0)
    schedule = Schedule.objects.get(name=SCHEDULE_NAME)
    assert schedule.func == "console.tasks.monitor_task"
    assert schedule.cron == "* * * * * */30"
    assert Schedule.objects.filter(func="console.tasks.monitor_task").count() == 1


def test_lease_keeps_one_cycle_at_a_time_and_expires(exchange):
    from risk.models import Lease
    from risk.lease import lease_acquire
    from risk.monitor import monitor_tick

    assert lease_acquire(name="monitor", holder="a", seconds=60)
    assert monitor_tick(holder="b") is None  # a holds it
    Lease.objects.filter(name="monitor").update(expires_at=timezone.now() - timedelta(seconds=1))
    assert monitor_tick(holder="b") is not None  # a died: its lease ran out


def test_scheduled_task_runs_a_cycle(exchange):
    from console.tasks import monitor_task

    assert "checked=" in monitor_task()
    assert Heartbeat.objects.get(name="monitor").cycles == 1


def test_monitor_start_up_reconciles_and_protects_what_the_broker_holds(exchange):
    from risk.monitor import monitor_tick

    exchange.control.set_position("MSFT", 7, "400.00")  # left at the broker, unknown here
    exchange.control.set_quote("MSFT", "409.99", "410.01")

    monitor_tick(holder="starting-monitor", housekeeping_now=True)

    adopted = Position.objects.get(symbol="MSFT")
    assert adopted.adopted and adopted.quantity == 7 and adopted.side == "long"
    assert adopted.protection == "protected"  # the audit placed an OCO at the default levels
    assert adopted.stop_loss is not None and adopted.stop_loss < Decimal("400")
    ocos = [r["body"] for r in exchange.control.requests_log()
            if r["method"] == "POST" and r["path"] == "/v2/orders" and r["body"].get("order_class") == "oco"]
    assert len(ocos) == 1 and ocos[0]["side"] == "sell"
    assert RiskEvent.objects.filter(kind="adopted", position=adopted).exists()
    assert Heartbeat.objects.get(name="monitor").last_reconcile_at is not None


def test_flatten_everything_settles_a_working_exit_cancelled_with_the_rest_first(exchange):
    """Cancelling everything in one request takes a working exit along: what it filled stays
    its position's, and only the rest goes out in the flatten's exit."""
    from risk.flatten import flatten

    position = unprotected(exchange)
    exchange.control.set_quote("AAPL", "138.00", "138.02")
    exchange.control.add_fault("partial_fill", count=1)  # the exit fills 5 of 10 and keeps working
    monitor_cycle()
    position.refresh_from_db()
    assert position.status == PositionStatus.CLOSING
    working = position.orders.get(role=OrderRole.EXIT)

    result = flatten(user=None)

    assert [o.state for o in result.outcomes] == ["closed"]
    working.refresh_from_db()
    assert working.status == OrderStatus.CANCELED and working.filled_qty == 5
    assert [Decimal(str(body["qty"])) for body in exits_sent(exchange)] == [10, 5]
    position.refresh_from_db()
    assert position.status == PositionStatus.CLOSED and position.close_reason == CloseReason.STOP_LOSS_HIT
    assert position.exit_price == Decimal("138.00")
    assert exchange.control.state()["positions"] in ({}, [])


def test_a_working_entry_in_the_same_symbol_does_not_hide_held_shares(exchange):
    held = unprotected(exchange, qty=10)
    working = submit_bracket_order(symbol="AAPL", quantity=10, side="buy", stop_loss="120", take_profit="160",
                                   entry_price="130")  # a limit entry far below: not filled
    assert working.entry_order.filled_qty == 0
    exchange.control.set_quote("AAPL", "138.00", "138.02")

    monitor_cycle()

    (exit_body,) = exits_sent(exchange)
    assert Decimal(str(exit_body["qty"])) == 10
    held.refresh_from_db()
    assert held.status == PositionStatus.CLOSED and held.exit_price == Decimal("138.00")
