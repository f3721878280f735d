"""The broker is the truth (issue 12), without the stream: each finding reproduced over HTTP
against the paper exchange, with the trading service placing its own orders through
alpaca-py as it does at Alpaca."""

from decimal import Decimal

import pytest
from alpaca.trading.enums import OrderClass as AlpacaOrderClass
from alpaca.trading.enums import OrderSide, TimeInForce
from alpaca.trading.requests import MarketOrderRequest, StopLossRequest, TakeProfitRequest

from risk.checklist import checklist_run
from risk.entries import submit_bracket_order
from risk.flatten import flatten_preview
from risk.follow import Change, position_follow
from risk.market import clock_forget
from risk.models import RiskEvent
from risk.monitor import monitor_cycle
from risk.protection import protection_audit
from risk.reconcile import reconcile_run
from risk.selectors import monitor_status, protection_as_of, stream_status
from tests.helpers import bracket, exit_posts, leg
from tests.paper_exchange_fixtures import trading_client
from trading import broker
from trading.models import (
    CloseReason,
    LevelsSource,
    Order,
    OrderClass,
    OrderRole,
    Position,
    PositionStatus,
    Protection,
)
from trading.orders import order_apply
from trading.selectors import protection_summary
from trading.validation import OrderValidationError

pytestmark = pytest.mark.django_db


def _trading_service_bracket(exchange, *, symbol: str, side: str, qty: int, stop: str, target: str):
    """What the trading service does on its own, at the broker, past the console."""
    exchange.control.set_quote(symbol, "49.99", "50.01")
    client = trading_client(exchange, raw=True)
    client.submit_order(MarketOrderRequest(
        symbol=symbol, qty=qty, side=OrderSide.BUY if side == "long" else OrderSide.SELL,
        time_in_force=TimeInForce.GTC, order_class=AlpacaOrderClass.BRACKET,
        stop_loss=StopLossRequest(stop_price=float(stop)), take_profit=TakeProfitRequest(limit_price=float(target))))


@pytest.mark.parametrize("side,stop,target", [("long", "48", "55"), ("short", "52", "45")])
def test_an_adopted_position_takes_the_broker_s_stop_and_target(exchange, active, side, stop, target):
    _trading_service_bracket(exchange, symbol="ZZZ", side=side, qty=10, stop=stop, target=target)
    reconcile_run()
    position = Position.objects.get(symbol="ZZZ")
    assert position.adopted and position.side == side
    assert (position.stop_loss, position.take_profit) == (Decimal(stop), Decimal(target))
    assert position.levels_source == LevelsSource.BROKER and position.protection == Protection.PROTECTED
    assert set(position.orders.values_list("role", flat=True)) == {OrderRole.STOP_LOSS, OrderRole.TAKE_PROFIT}
    assert monitor_cycle().checked == 1  # watched by every cycle, not only by housekeeping


@pytest.mark.parametrize("side,stop,target,crossing", [("long", "48", "55", ("48.40", "48.60")),
                                                        ("short", "52", "45", ("51.40", "51.60"))])
def test_legs_gone_re_protect_at_the_real_levels_and_exit_on_nothing_made_up(exchange, active, side, stop, target,
                                                                             crossing):
    _trading_service_bracket(exchange, symbol="ZZZ", side=side, qty=10, stop=stop, target=target)
    reconcile_run()
    position = Position.objects.get(symbol="ZZZ")
    for order in position.orders.all():
        broker.cancel_order(order.broker_order_id)  # the legs go (cancelled, or DAY legs expired)
    exchange.control.set_quote("ZZZ", *crossing)  # past a 2% default stop (49.00 / 51.00), not past the real one
    monitor_cycle()  # the quick sync sees the stop gone; the policy re-protects
    position.refresh_from_db()
    assert position.status == PositionStatus.OPEN and exit_posts(exchange) == []
    oco = position.orders.get(order_class=OrderClass.OCO, parent__isnull=True)
    assert (oco.limit_price, oco.legs.get().stop_price, oco.time_in_force) == (Decimal(target), Decimal(stop), "gtc")


def test_a_position_with_no_level_anywhere_gets_default_protection_and_never_an_exit_on_it(exchange, active):
    exchange.control.set_quote("ZZZ", "49.99", "50.01")
    exchange.control.set_position("ZZZ", 10, "50")
    reconcile_run()
    position = Position.objects.get(symbol="ZZZ")
    assert position.stop_loss is None and position.protection == Protection.UNPROTECTED
    protection_audit()
    position.refresh_from_db()
    assert position.levels_source == LevelsSource.DEFAULT and position.stop_loss == Decimal("49.00")
    for order in position.orders.all():
        broker.cancel_order(order.broker_order_id)
    exchange.control.set_quote("ZZZ", "48.00", "48.02")  # through the default stop
    monitor_cycle()
    monitor_cycle()
    assert exit_posts(exchange) == []  # re-protected again, never exited on a level nobody set
    assert Position.objects.get(pk=position.pk).status == PositionStatus.OPEN


def test_a_resting_limit_entry_is_not_an_open_protected_position(exchange, active):
    position = bracket(entry_price="145", quantity=1)  # rests below the ask
    assert position.status == PositionStatus.PENDING
    summary = protection_summary()
    assert summary.open == 0 and summary.protected
    (row,) = flatten_preview().rows
    assert row.cancel_entry and not row.will_close
    exchange.control.set_quote("AAPL", "160.00", "160.02")  # past its target: still nothing to close
    monitor_cycle()
    position.refresh_from_db()
    assert position.status == PositionStatus.PENDING and position.close_reason is None
    assert exit_posts(exchange) == []


def test_an_event_applied_to_a_row_read_before_its_link_keeps_the_link(exchange, active):
    """The trade_updates stream can read an entry's row before the submitting process ties it to
    its position; applying the event to that stale row must not untie it (which made a resting
    entry look like an adopted, filled position)."""
    position = bracket(entry_price="145", quantity=5)  # rests below the ask
    stale = Order.objects.get(pk=position.entry_order_id)
    stale.position = None  # as read before the submitter linked it
    order_apply(order=stale, remote=broker.get_order(stale.broker_order_id))
    assert Order.objects.get(pk=stale.pk).position_id == position.pk
    assert position_follow(position=Position.objects.get(pk=position.pk)) == Change.NONE
    assert Position.objects.get(pk=position.pk).status == PositionStatus.PENDING


def test_a_pending_position_whose_entry_is_not_linked_yet_stays_pending(exchange, active):
    position = bracket(entry_price="145", quantity=5)
    Order.objects.filter(pk=position.entry_order_id).update(position=None)  # mid-record
    assert position_follow(position=Position.objects.get(pk=position.pk)) == Change.NONE
    assert Position.objects.get(pk=position.pk).status == PositionStatus.PENDING


def test_broker_side_changes_are_seen_at_the_next_cycle_without_the_stream(exchange, active, settings):
    settings.PROTECTION_POLICY = "alert"
    cancelled, filled = bracket(quantity=2), submit_bracket_order(symbol="MSFT", quantity=1, side="buy",
                                                                  stop_loss="390", take_profit="410")
    broker.cancel_order(leg(cancelled, OrderRole.STOP_LOSS).broker_order_id)
    exchange.control.fill_order(leg(filled, OrderRole.STOP_LOSS).broker_order_id, price="389.50")
    assert stream_status().stale
    monitor_cycle()
    assert Position.objects.get(pk=cancelled.pk).protection == Protection.UNPROTECTED
    assert not protection_summary().protected
    closed = Position.objects.get(pk=filled.pk)
    assert (closed.status, closed.close_reason, closed.exit_price) == (
        PositionStatus.CLOSED, CloseReason.STOP_LOSS_HIT, Decimal("389.50"))
    as_of = protection_as_of(monitor=monitor_status(), stream=stream_status())
    assert as_of.at is not None and not as_of.stale


def test_the_checklist_fails_a_test_bracket_whose_legs_were_both_cancelled(exchange):
    position = submit_bracket_order(symbol="AAPL", quantity=1, side="buy", stop_loss="140", take_profit="160",
                                    is_test=True)
    item = next(i for i in checklist_run().items if i.key == "test_bracket")
    assert item.ok, item.detail
    for order in position.entry_order.legs.all():
        broker.cancel_order(order.broker_order_id)
    item = next(i for i in checklist_run().items if i.key == "test_bracket")
    assert not item.ok and "canceled" in item.detail


def test_the_checklist_passes_a_test_bracket_closed_by_its_stop(exchange):
    position = submit_bracket_order(symbol="AAPL", quantity=1, side="buy", stop_loss="140", take_profit="160",
                                    is_test=True)
    exchange.control.fill_order(leg(position, OrderRole.STOP_LOSS).broker_order_id, price="139.90")
    item = next(i for i in checklist_run().items if i.key == "test_bracket")
    assert item.ok, item.detail


@pytest.mark.parametrize("side,stop,target,field", [
    ("buy", "149.99", "160", "stop_loss"),  # at the bid: inside the spread, it would fill at once
    ("buy", "140", "150.01", "take_profit"),  # at the ask
    ("sell", "150.01", "140", "stop_loss"),
    ("sell", "160", "149.99", "take_profit"),
])
def test_a_market_entry_s_levels_are_judged_against_the_bid_and_ask(exchange, active, side, stop, target, field):
    with pytest.raises(OrderValidationError) as refused:
        submit_bracket_order(symbol="AAPL", quantity=1, side=side, stop_loss=stop, take_profit=target)
    assert set(refused.value.errors) == {field}


def test_no_exit_while_the_market_is_closed_only_protection(exchange, active):
    position = bracket(quantity=2)
    for order in position.entry_order.legs.all():
        broker.cancel_order(order.broker_order_id)
    exchange.control.set_clock(False)
    clock_forget()  # moved by hand: not at a turn the last read announced
    exchange.control.set_quote("AAPL", "130.00", "130.02")  # through its stop, after the close
    results = protection_audit()
    assert [r.action for r in results] == ["protected"] and exit_posts(exchange) == []
    position.refresh_from_db()
    assert position.status == PositionStatus.OPEN


@pytest.mark.parametrize("side, stop, target, moved_stop, moved_target", [
    ("buy", "140", "160", "145", "158"), ("sell", "160", "140", "155", "142")])
def test_a_stop_and_target_moved_at_the_broker_move_the_positions_levels(exchange, active, side, stop, target,
                                                                         moved_stop, moved_target):
    """The trading service replaces the legs (PATCH): the position follows the levels the broker
    holds (the levels the fallback decides on), still protected by the replacements, nothing
    placed twice."""
    from alpaca.trading.requests import ReplaceOrderRequest

    position = submit_bracket_order(symbol="AAPL", quantity=2, side=side, stop_loss=stop, take_profit=target)
    client = trading_client(exchange)
    client.replace_order_by_id(leg(position, OrderRole.STOP_LOSS).broker_order_id,
                               ReplaceOrderRequest(stop_price=float(moved_stop)))
    client.replace_order_by_id(leg(position, OrderRole.TAKE_PROFIT).broker_order_id,
                               ReplaceOrderRequest(limit_price=float(moved_target)))
    assert stream_status().stale
    monitor_cycle()
    position.refresh_from_db()
    assert (position.stop_loss, position.take_profit) == (Decimal(moved_stop), Decimal(moved_target))
    assert position.levels_source == LevelsSource.BROKER and position.protection == Protection.PROTECTED
    live = [o for o in exchange.control.state()["orders"] if o["status"] in ("new", "held", "accepted")]
    assert len(live) == 2  # the two replacements, nothing added
    assert RiskEvent.objects.filter(kind="order_synced", position=position, reason="levels moved at the broker").exists()
