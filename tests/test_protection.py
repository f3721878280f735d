"""The protection audit against the paper exchange over HTTP (no mocking of alpaca)."""

from decimal import Decimal
from io import StringIO

import pytest
import requests
from django.core.management import call_command
from django.core.management.base import CommandError

from risk.models import Alert, RiskEvent
from risk.levels import default_levels
from risk.protection import ProtectionPolicyError, protection_audit
from risk.reconcile import reconcile_run
from tests.helpers import bracket, leg, two_brackets_in_one_symbol
from trading import broker
from trading.models import (
    CloseReason,
    Order,
    OrderClass,
    OrderRole,
    OrderStatus,
    Position,
    PositionStatus,
    Protection,
)

pytestmark = pytest.mark.django_db


def _posts(exchange) -> list[dict]:
    return [r for r in exchange.control.requests_log() if r["method"] == "POST" and r["path"] == "/v2/orders"]


def _writes(exchange) -> list[dict]:
    return [r for r in exchange.control.requests_log() if r["method"] in ("POST", "DELETE", "PATCH")]


def _cancel_stop_by_hand(position: Position) -> None:
    """Cancel the stop leg at the broker, as someone would in Alpaca's dashboard (the
    target leg goes with it); the database is not told."""
    broker.cancel_order(leg(position, OrderRole.STOP_LOSS).broker_order_id)


def _price(value) -> Decimal:
    return Decimal(str(value))


def test_a_bracket_with_its_legs_is_protected_and_nothing_is_sent(exchange, active):
    position = bracket()
    exchange.control.clear_requests_log()

    (result,) = protection_audit()

    assert (result.protection, result.action) == (Protection.PROTECTED, "none")
    assert _writes(exchange) == []
    position.refresh_from_db()
    assert position.protection == Protection.PROTECTED and position.protection_checked_at is not None
    assert not RiskEvent.objects.filter(kind="unprotected").exists()


def test_a_stop_leg_cancelled_by_hand_is_found_and_reprotected_with_an_oco(exchange, active):
    position = bracket()
    _cancel_stop_by_hand(position)
    exchange.control.clear_requests_log()

    (result,) = protection_audit(policy="protect")

    assert result.action == "protected", result.detail
    (post,) = _posts(exchange)
    body = post["body"]
    assert body["order_class"] == "oco"
    assert body["side"] == "sell" and body["type"] == "limit" and body["time_in_force"] == "gtc"
    assert _price(body["qty"]) == 10
    assert _price(body["take_profit"]["limit_price"]) == Decimal("160.00")
    assert _price(body["stop_loss"]["stop_price"]) == Decimal("140.00")
    assert body["client_order_id"].startswith("catalyst-protect-")

    position.refresh_from_db()
    assert position.protection == Protection.PROTECTED
    oco = position.orders.get(order_class=OrderClass.OCO, parent=None)
    assert (oco.role, oco.limit_price, oco.broker_order_id) == (OrderRole.TAKE_PROFIT, Decimal("160.00"),
                                                                result.order.broker_order_id)
    stop_leg = oco.legs.get()
    assert stop_leg.role == OrderRole.STOP_LOSS and stop_leg.stop_price == Decimal("140.00")
    assert stop_leg.position_id == position.pk
    # the console shows what the broker did with the old legs
    assert set(position.entry_order.legs.values_list("status", flat=True)) == {OrderStatus.CANCELED}
    assert RiskEvent.objects.filter(kind="unprotected", position=position).count() == 1
    assert RiskEvent.objects.filter(kind="protected", position=position).count() == 1
    assert Alert.objects.filter(kind="unprotected", position=position).count() == 1

    exchange.control.clear_requests_log()
    (again,) = protection_audit(policy="protect")  # the OCO's stop leg counts now
    assert (again.protection, again.action) == (Protection.PROTECTED, "none")
    assert _writes(exchange) == []


def test_the_oco_stop_protects_until_it_fills_then_reconcile_closes_at_the_fill(exchange, active):
    position = bracket()
    _cancel_stop_by_hand(position)
    (result,) = protection_audit(policy="protect")
    stop_leg = result.order.legs.get()
    exchange.control.fill_order(stop_leg.broker_order_id, price="139.90")
    reconcile_run()
    position.refresh_from_db()
    assert (position.status, position.close_reason, position.exit_price) == (
        PositionStatus.CLOSED, CloseReason.STOP_LOSS_HIT, Decimal("139.90"))


def test_day_legs_expired_at_the_close_are_reprotected(exchange, active):
    position = bracket(time_in_force="day")
    expired = exchange.control.expire_day_orders()
    assert {leg(position, r).broker_order_id for r in (OrderRole.STOP_LOSS, OrderRole.TAKE_PROFIT)} <= set(expired)
    exchange.control.clear_requests_log()

    (result,) = protection_audit(policy="protect")

    assert result.action == "protected"
    (post,) = _posts(exchange)
    assert post["body"]["order_class"] == "oco" and post["body"]["time_in_force"] == "gtc"
    assert set(position.entry_order.legs.values_list("status", flat=True)) == {OrderStatus.EXPIRED}
    position.refresh_from_db()
    assert position.protection == Protection.PROTECTED


def test_an_adopted_position_is_protected_at_the_default_levels(exchange, settings):
    settings.PROTECTION_DEFAULT_STOP_PERCENT = Decimal("2")
    settings.PROTECTION_DEFAULT_TARGET_PERCENT = Decimal("4")
    exchange.control.set_position("MSFT", 5, "400.00")
    exchange.control.set_position("TSLA", -3, "250.00")
    reconcile_run()
    exchange.control.clear_requests_log()

    results = {r.position.symbol: r for r in protection_audit()}

    assert {r.action for r in results.values()} == {"protected"}
    bodies = {p["body"]["symbol"]: p["body"] for p in _posts(exchange)}
    msft, tsla = bodies["MSFT"], bodies["TSLA"]
    assert (msft["side"], _price(msft["stop_loss"]["stop_price"]), _price(msft["take_profit"]["limit_price"])) == (
        "sell", Decimal("392.00"), Decimal("416.00"))
    assert (tsla["side"], _price(tsla["stop_loss"]["stop_price"]), _price(tsla["take_profit"]["limit_price"])) == (
        "buy", Decimal("255.00"), Decimal("240.00"))
    adopted = Position.objects.get(symbol="MSFT")
    assert (adopted.stop_loss, adopted.take_profit) == (Decimal("392.00"), Decimal("416.00"))
    assert adopted.protection == Protection.PROTECTED


def test_default_levels_round_to_the_tick():
    position = Position(symbol="PENNY", side="long", quantity=1, entry_price=Decimal("0.5123"))
    stop, target = default_levels(position)
    assert stop == Decimal("0.5021") and target == Decimal("0.5328")


def test_policy_flatten_exits_and_closes_emergency_stop(exchange, active):
    position = bracket()
    _cancel_stop_by_hand(position)
    exchange.control.clear_requests_log()

    (result,) = protection_audit(policy="flatten")

    assert result.action == "flattened", result.detail
    (post,) = _posts(exchange)
    assert post["body"]["type"] == "market" and post["body"]["side"] == "sell"
    assert _price(post["body"]["qty"]) == 10
    position.refresh_from_db()
    assert (position.status, position.close_reason, position.exit_price) == (
        PositionStatus.CLOSED, CloseReason.EMERGENCY_STOP, Decimal("149.99"))


def test_a_position_already_through_its_stop_is_exited_not_reprotected(exchange, active):
    position = bracket()
    _cancel_stop_by_hand(position)
    exchange.control.set_quote("AAPL", "138.00", "138.02")
    exchange.control.clear_requests_log()

    (result,) = protection_audit(policy="protect")

    assert result.action == "exited", result.detail
    (post,) = _posts(exchange)
    assert post["body"]["type"] == "market" and post["body"].get("order_class") in (None, "simple")
    position.refresh_from_db()
    assert (position.status, position.close_reason, position.exit_price) == (
        PositionStatus.CLOSED, CloseReason.STOP_LOSS_HIT, Decimal("138.00"))


def test_policy_alert_records_and_alerts_without_trading(exchange, active):
    position = bracket()
    _cancel_stop_by_hand(position)
    exchange.control.clear_requests_log()

    (result,) = protection_audit(policy="alert")

    assert (result.protection, result.action) == (Protection.UNPROTECTED, "alerted")
    assert _writes(exchange) == []
    position.refresh_from_db()
    assert position.protection == Protection.UNPROTECTED and position.status == PositionStatus.OPEN
    assert RiskEvent.objects.filter(kind="unprotected", position=position).count() == 1
    assert Alert.objects.filter(kind="unprotected", position=position).count() == 1

    protection_audit(policy="alert")  # still unprotected: a new event, no repeated alert within the hour
    assert RiskEvent.objects.filter(kind="unprotected", position=position).count() == 2
    assert Alert.objects.filter(kind="unprotected", position=position).count() == 1


def test_a_dry_run_changes_nothing(exchange, active):
    position = bracket()
    _cancel_stop_by_hand(position)
    exchange.control.set_position("MSFT", 5, "400")
    reconcile_run()  # adopts MSFT
    before = (list(Position.objects.order_by("pk").values()), list(Order.objects.order_by("pk").values()),
              RiskEvent.objects.count(), Alert.objects.count())
    exchange.control.clear_requests_log()

    for policy in ("protect", "flatten", "alert"):
        results = protection_audit(policy=policy, dry_run=True)
        assert {r.position.symbol for r in results} == {"AAPL", "MSFT"}
        assert all(r.protection == Protection.UNPROTECTED and r.dry_run for r in results)

    after = (list(Position.objects.order_by("pk").values()), list(Order.objects.order_by("pk").values()),
             RiskEvent.objects.count(), Alert.objects.count())
    assert after == before
    assert _writes(exchange) == []
    line = protection_audit(policy="protect", dry_run=True)[0].line()
    assert "would protect (" in line and "OCO sell 10 stop 140.00 target 160.00" in line


def test_a_position_flagged_for_review_is_not_traded(exchange, active):
    position = bracket()
    _cancel_stop_by_hand(position)
    Position.objects.filter(pk=position.pk).update(needs_review=True, review_note="reconcile mismatch: test")
    exchange.control.clear_requests_log()

    (result,) = protection_audit(policy="protect")

    assert result.action == "skipped" and "needs review" in result.detail
    assert _writes(exchange) == []
    assert Alert.objects.filter(kind="unprotected", position=position).count() == 1


def test_a_standalone_stop_at_the_broker_counts(exchange):
    exchange.control.set_position("MSFT", 5, "400")
    reconcile_run()
    response = requests.post(f"{exchange.url}/v2/orders", timeout=5, json={
        "symbol": "MSFT", "qty": "5", "side": "sell", "type": "stop", "stop_price": "380",
        "time_in_force": "gtc"}, headers={"APCA-API-KEY-ID": "k", "APCA-API-SECRET-KEY": "s"})
    assert response.status_code == 200, response.text
    exchange.control.clear_requests_log()

    (result,) = protection_audit()

    assert (result.protection, result.action) == (Protection.PROTECTED, "none")
    assert _writes(exchange) == []


def test_a_refused_oco_is_recorded_and_alerted(exchange, active, settings):
    settings.BROKER_RETRY_ATTEMPTS = 0
    position = bracket()
    _cancel_stop_by_hand(position)
    exchange.control.add_fault("reject", method="POST", path="/v2/orders")

    (result,) = protection_audit(policy="protect")

    assert result.action == "failed" and "refused" in result.detail
    order = position.orders.get(order_class=OrderClass.OCO)
    assert order.status == OrderStatus.SUBMIT_FAILED and "rejected" in order.error
    position.refresh_from_db()
    assert position.protection == Protection.UNPROTECTED
    assert Alert.objects.filter(kind="unprotected", position=position).count() == 1


def test_only_the_selected_positions_are_audited(exchange, active):
    first = bracket()
    second = bracket(symbol="MSFT", quantity=1, stop_loss="390", take_profit="410")
    _cancel_stop_by_hand(first)
    _cancel_stop_by_hand(second)

    results = protection_audit(positions=Position.objects.filter(pk=second.pk), policy="alert")

    assert [r.position.pk for r in results] == [second.pk]


def test_a_bad_policy_is_refused(exchange):
    with pytest.raises(ProtectionPolicyError, match="unknown protection policy"):
        protection_audit(policy="yolo")


def test_the_command_prints_one_line_per_position(exchange, active):
    position = bracket()
    _cancel_stop_by_hand(position)
    out = StringIO()
    call_command("protect", "--dry-run", "--policy", "protect", stdout=out)
    text = out.getvalue()
    assert f"#{position.pk} long 10 AAPL: unprotected; would protect (OCO sell 10 stop 140.00" in text
    assert position.orders.filter(order_class=OrderClass.OCO).count() == 0

    out = StringIO()
    call_command("protect", stdout=out)
    assert "protected (OCO sell 10" in out.getvalue()
    assert position.orders.filter(order_class=OrderClass.OCO, parent=None).count() == 1


def test_the_command_refuses_a_bad_policy(exchange):
    with pytest.raises(CommandError, match="unknown --policy 'yolo'"):
        call_command("protect", "--policy", "yolo")


def test_an_entry_still_working_is_left_to_its_bracket(exchange, active):
    position = bracket(entry_price="145")  # rests below the ask: not a position until it fills
    exchange.control.clear_requests_log()
    assert protection_audit(policy="protect") == []
    assert _writes(exchange) == []
    assert not position.orders.filter(order_class=OrderClass.OCO).exists()


def test_two_positions_in_one_symbol_each_count_their_own_legs(exchange, active):
    first, second = two_brackets_in_one_symbol(exchange, {"quantity": 4}, {"quantity": 6})
    _cancel_stop_by_hand(first)
    exchange.control.clear_requests_log()

    results = {r.position.pk: r for r in protection_audit(policy="protect")}

    assert results[second.pk].action == "none" and results[second.pk].protection == Protection.PROTECTED
    assert results[first.pk].action == "protected", results[first.pk].detail
    (post,) = _posts(exchange)
    assert post["body"]["order_class"] == "oco" and _price(post["body"]["qty"]) == 4
