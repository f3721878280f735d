"""Reconciliation against the paper exchange over HTTP (no mocking of alpaca)."""

from decimal import Decimal

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from risk.models import Alert, Heartbeat, RiskEvent
from risk.reconcile import UNEXPLAINED_NOTE, reconcile_run
from tests.helpers import bracket, leg, two_brackets_in_one_symbol
from trading import broker
from trading.models import (
    CloseReason,
    Order,
    OrderRole,
    OrderStatus,
    Position,
    PositionStatus,
    Protection,
)

pytestmark = pytest.mark.django_db


def _writes(exchange) -> list[dict]:
    return [r for r in exchange.control.requests_log() if r["method"] in ("POST", "DELETE", "PATCH")]


def _events(kind: str, **filters) -> int:
    return RiskEvent.objects.filter(kind=kind, **filters).count()


# --- Adoption -----------------------------------------------------------------------------------


def test_a_broker_only_position_is_adopted_unprotected_with_an_event_and_an_alert(exchange):
    exchange.control.set_position("MSFT", 5, "401.123456")
    exchange.control.set_position("TSLA", -3, "250.00")

    report = reconcile_run()

    assert report.ok, report.errors
    assert report.count("adopted") == 2
    msft = Position.objects.get(symbol="MSFT")
    assert (msft.side, msft.quantity, msft.entry_price) == ("long", Decimal("5"), Decimal("401.1235"))
    assert msft.adopted and msft.status == PositionStatus.OPEN
    assert msft.stop_loss is None and msft.take_profit is None
    assert msft.protection == Protection.UNPROTECTED
    assert msft.opened_at is not None
    tsla = Position.objects.get(symbol="TSLA")
    assert (tsla.side, tsla.quantity) == ("short", Decimal("3"))
    assert _events("adopted") == 2
    assert Alert.objects.filter(kind="adopted").count() == 2
    assert "adopted=2" in report.summary()

    heartbeat = Heartbeat.objects.get(name="monitor")
    assert heartbeat.last_reconcile_at is not None
    assert heartbeat.last_reconcile_summary == report.summary()
    assert _events("reconciled", reason="reconcile run") == 1

    again = reconcile_run()  # idempotent: nothing new to adopt
    assert again.count("adopted") == 0 and again.count("mismatch") == 0
    assert Position.objects.count() == 2


def test_a_position_known_here_is_not_adopted_again(exchange, active):
    bracket()
    report = reconcile_run()
    assert report.findings == []
    assert Position.objects.count() == 1
    assert "adopted=0" in report.summary()


def test_an_entry_in_flight_blocks_adoption(exchange):
    # The entry row is written before it is sent: until its position exists, the broker's
    # position may be that entry's fill, so it is not adopted.
    Order.objects.create(client_order_id="catalyst-entry-inflight", role=OrderRole.ENTRY, symbol="MSFT", side="buy",
                         qty=5, type="market", order_class="bracket", time_in_force="gtc",
                         status=OrderStatus.PENDING_SUBMIT)
    exchange.control.set_position("MSFT", 5, "400")
    report = reconcile_run()
    assert report.count("adopted") == 0
    assert report.count("skipped") == 1
    assert not Position.objects.exists()


# --- Positions the broker no longer holds --------------------------------------------------------


def test_a_stop_leg_filled_while_the_monitor_was_down_closes_the_position_at_the_fill(exchange, active):
    position = bracket()
    stop = leg(position, OrderRole.STOP_LOSS)
    exchange.control.fill_order(stop.broker_order_id, price="139.50")

    report = reconcile_run()

    assert report.ok, report.errors
    position.refresh_from_db()
    assert position.status == PositionStatus.CLOSED
    assert position.close_reason == CloseReason.STOP_LOSS_HIT
    assert position.exit_price == Decimal("139.50")
    assert not position.needs_review
    stop.refresh_from_db()
    assert stop.status == OrderStatus.FILLED and stop.filled_qty == 10
    assert leg(position, OrderRole.TAKE_PROFIT).status == OrderStatus.CANCELED
    assert report.count("order_synced") == 1 and report.count("closed") == 1
    assert _events("order_synced", position=position) == 1
    assert _events("closed", position=position) == 1
    assert _events("reconciled", position=position) == 1
    assert not Alert.objects.filter(kind="mismatch").exists()


def test_a_target_leg_filled_closes_with_take_profit_hit(exchange, active):
    position = bracket(side="sell", stop_loss="160", take_profit="140")
    target = leg(position, OrderRole.TAKE_PROFIT)
    exchange.control.fill_order(target.broker_order_id)  # at its limit

    reconcile_run()

    position.refresh_from_db()
    assert position.side == "short"
    assert (position.status, position.close_reason, position.exit_price) == (
        PositionStatus.CLOSED, CloseReason.TAKE_PROFIT_HIT, Decimal("140.00"))


def test_a_position_gone_without_a_fill_is_closed_without_a_price_and_its_legs_cancelled(exchange, active):
    position = bracket()
    exchange.control.set_position("AAPL", 0)  # sold elsewhere: no fill of ours
    exchange.control.clear_requests_log()

    report = reconcile_run()

    position.refresh_from_db()
    assert position.status == PositionStatus.CLOSED
    assert position.close_reason is None
    assert position.exit_price is None
    assert position.needs_review
    assert position.review_note == UNEXPLAINED_NOTE
    assert report.count("closed_unexplained") == 1
    # its bracket legs must not sell a position that is no longer there
    deletes = [r for r in exchange.control.requests_log() if r["method"] == "DELETE"]
    assert deletes
    assert {leg.status for leg in position.entry_order.legs.all()} == {OrderStatus.CANCELED}
    assert Alert.objects.filter(kind="mismatch", position=position).count() == 1


def test_an_unfilled_limit_entry_is_left_alone(exchange, active):
    position = bracket(entry_price="145")  # below the ask: rests
    report = reconcile_run()
    position.refresh_from_db()
    assert position.status == PositionStatus.PENDING  # not a position until it fills
    assert not position.needs_review
    assert report.count("mismatch") == 0 and report.count("closed_unexplained") == 0


def test_an_entry_cancelled_unfilled_is_recorded_as_cancelled_never_closed(exchange, active):
    position = bracket(entry_price="145")
    broker.cancel_order(position.entry_order.broker_order_id)
    reconcile_run()
    position.refresh_from_db()
    assert position.status == PositionStatus.CANCELLED and position.close_reason is None
    assert position.exit_price is None and not position.needs_review
    assert position.review_note.startswith("entry ended unfilled (canceled)")


# --- Mismatches -------------------------------------------------------------------------------------


def test_a_quantity_mismatch_is_flagged_once_and_not_traded(exchange, active):
    position = bracket()
    exchange.control.set_position("AAPL", 15, "150.01")
    exchange.control.clear_requests_log()

    report = reconcile_run()

    assert report.count("mismatch") == 1
    assert report.count("adopted") == 0
    assert _writes(exchange) == []  # no order sent or cancelled
    position.refresh_from_db()
    assert position.status == PositionStatus.OPEN and position.quantity == 10
    assert position.needs_review
    assert "broker holds long 15 AAPL" in position.review_note
    assert _events("mismatch", position=position) == 1
    assert Alert.objects.filter(kind="mismatch", position=position).count() == 1

    reconcile_run()  # still there: another event, no second alert, note not repeated
    position.refresh_from_db()
    assert _events("mismatch", position=position) == 2
    assert Alert.objects.filter(kind="mismatch", position=position).count() == 1
    assert position.review_note.count("reconcile mismatch") == 1


def test_a_side_mismatch_is_flagged_not_closed(exchange, active):
    position = bracket()
    exchange.control.set_position("AAPL", -10, "150")
    exchange.control.clear_requests_log()

    report = reconcile_run()

    assert report.count("mismatch") == 1
    position.refresh_from_db()
    assert position.status == PositionStatus.OPEN and position.needs_review
    assert "short 10 AAPL" in position.review_note
    assert _writes(exchange) == []


def test_two_positions_in_one_symbol_are_compared_in_total(exchange, active):
    first, _ = two_brackets_in_one_symbol(exchange, {"quantity": 4}, {"quantity": 6})
    report = reconcile_run()
    assert report.count("mismatch") == 0

    exchange.control.fill_order(leg(first, OrderRole.STOP_LOSS).broker_order_id, price="139")
    report = reconcile_run()
    first.refresh_from_db()
    assert first.status == PositionStatus.CLOSED and first.close_reason == CloseReason.STOP_LOSS_HIT
    assert report.count("mismatch") == 0
    assert Position.objects.open().get().quantity == 6


# --- Orders -------------------------------------------------------------------------------------------


def test_order_statuses_are_synced_with_one_list_call(exchange, active):
    positions = [bracket(), bracket(symbol="MSFT", quantity=1, stop_loss="390", take_profit="410")]
    exchange.control.expire_day_orders()  # nothing is a day order here
    for position in positions:
        broker.cancel_order(leg(position, OrderRole.STOP_LOSS).broker_order_id)  # by hand, at the broker
    exchange.control.clear_requests_log()

    report = reconcile_run()

    gets = [r for r in exchange.control.requests_log() if r["method"] == "GET" and r["path"].startswith("/v2/orders")]
    assert len(gets) == 1 and gets[0]["query"]["status"] == "all"
    assert report.count("order_synced") == 2
    for position in positions:
        assert set(position.entry_order.legs.values_list("status", flat=True)) == {OrderStatus.CANCELED}
    assert report.count("mismatch") == 0


# --- Dry run, faults, the command ------------------------------------------------------------------------


def _snapshot():
    return {
        "positions": list(Position.objects.order_by("pk").values()),
        "orders": list(Order.objects.order_by("pk").values()),
        "events": RiskEvent.objects.count(),
        "alerts": Alert.objects.count(),
        "heartbeats": list(Heartbeat.objects.values()),
    }


def test_a_dry_run_changes_nothing_and_reports_what_it_would_do(exchange, active):
    filled = bracket()
    exchange.control.fill_order(leg(filled, OrderRole.STOP_LOSS).broker_order_id, price="139.50")
    bracket(symbol="MSFT", quantity=2, stop_loss="390", take_profit="410")
    exchange.control.set_position("MSFT", 3, "400")  # mismatch
    exchange.control.set_position("TSLA", 7, "250")  # adoption
    before = _snapshot()
    exchange.control.clear_requests_log()

    report = reconcile_run(dry_run=True)

    assert _snapshot() == before
    assert _writes(exchange) == []
    assert report.dry_run
    kinds = {f.kind for f in report.findings}
    assert {"order_synced", "closed", "mismatch", "adopted"} <= kinds
    assert not any(f.done for f in report.findings)
    closed = next(f for f in report.findings if f.kind == "closed")
    assert "stop_loss 10 @ 139.5" in closed.message
    assert report.summary().startswith("reconcile DRY RUN")


def test_a_broker_outage_is_reported_not_raised(exchange, active, settings):
    settings.BROKER_RETRY_ATTEMPTS = 0
    bracket()
    exchange.control.add_fault("http_500", method="GET", path="/v2/positions")
    report = reconcile_run()
    assert not report.ok
    assert "errors=1" in report.summary()
    assert Position.objects.get().status == PositionStatus.OPEN
    assert _events("error", reason="reconcile failed") == 1
    assert "errors=1" in Heartbeat.objects.get(name="monitor").last_reconcile_summary


def test_the_command_prints_findings_and_the_summary(exchange, capsys):
    exchange.control.set_position("MSFT", 5, "400")
    call_command("reconcile", "--dry-run")
    out = capsys.readouterr().out
    assert "adopted" in out and "MSFT" in out and "reconcile DRY RUN" in out
    assert not Position.objects.exists()

    call_command("reconcile")
    out = capsys.readouterr().out
    assert "adopted=1" in out
    assert Position.objects.get().adopted


def test_the_command_fails_when_the_broker_does(exchange, settings):
    settings.BROKER_RETRY_ATTEMPTS = 0
    exchange.control.add_fault("http_500", method="GET", path="/v2/positions")
    with pytest.raises(CommandError, match="error"):
        call_command("reconcile")
