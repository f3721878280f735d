"""The broker module through the real alpaca-py client, over HTTP, against the paper exchange."""

import re
from decimal import Decimal
from pathlib import Path

import pytest

from risk.models import RiskEvent
from trading import broker
from trading.broker import BrokerError
from trading.models import Order, OrderRole, OrderStatus, Position, PositionStatus, Protection
from risk.entries import BracketNotProtected, TradingHalted, submit_bracket_order

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def exchange(paper_exchange):
    paper_exchange.control.set_quote("AAPL", "149.99", "150.01")
    paper_exchange.control.set_quote("PENNY", "0.5000", "0.5002")
    return paper_exchange


def _order_posts(exchange):
    return [r for r in exchange.control.requests_log() if r["method"] == "POST" and r["path"] == "/v2/orders"]


CASES = [
    # side, entry, stop (unrounded), target (unrounded), rounded stop, rounded target
    ("buy", None, "145.004", "160.006", Decimal("145.00"), Decimal("160.01")),
    ("long", "149.50", "145.005", "160", Decimal("145.01"), Decimal("160.00")),
    ("sell", None, "155.125", "140.001", Decimal("155.13"), Decimal("140.00")),
    ("SHORT", "150.50", "155", "140.50", Decimal("155.00"), Decimal("140.50")),
]


@pytest.mark.parametrize("side,entry,stop,target,want_stop,want_target", CASES)
def test_bracket_goes_over_the_wire_with_order_class_and_two_legs(
    exchange, active, side, entry, stop, target, want_stop, want_target
):
    position = submit_bracket_order(
        symbol="aapl", quantity=2, side=side, stop_loss=stop, take_profit=target, entry_price=entry
    )

    (post,) = _order_posts(exchange)
    body = post["body"]
    assert body["order_class"] == "bracket"
    assert body["type"] == ("market" if entry is None else "limit")
    assert body["side"] == ("buy" if side.lower() in ("buy", "long") else "sell")
    assert body["time_in_force"] == "gtc"
    assert Decimal(str(body["stop_loss"]["stop_price"])) == want_stop
    assert Decimal(str(body["take_profit"]["limit_price"])) == want_target
    assert body["client_order_id"] == position.entry_order.client_order_id

    position.refresh_from_db()
    if entry is None:  # filled at once: a position, protected by its legs
        assert position.status == PositionStatus.OPEN
        assert position.protection == Protection.PROTECTED
    else:  # a limit entry resting away from the price: not a position until it fills
        assert position.status == PositionStatus.PENDING
        assert position.protection == Protection.UNKNOWN
    assert position.side == ("long" if body["side"] == "buy" else "short")
    assert (position.stop_loss, position.take_profit) == (want_stop, want_target)
    legs = {leg.role: leg for leg in position.entry_order.legs.all()}
    assert set(legs) == {OrderRole.STOP_LOSS, OrderRole.TAKE_PROFIT}
    assert legs[OrderRole.STOP_LOSS].stop_price == want_stop
    assert legs[OrderRole.TAKE_PROFIT].limit_price == want_target
    assert all(leg.position_id == position.pk and leg.broker_order_id for leg in legs.values())
    exit_side = "sell" if body["side"] == "buy" else "buy"
    assert {leg.side for leg in legs.values()} == {exit_side}
    # the legs as the exchange holds them
    remote = broker.get_order(position.entry_order.broker_order_id)
    assert {leg.id for leg in remote.legs} == {leg.broker_order_id for leg in legs.values()}


def test_sub_dollar_prices_round_to_hundredths_of_a_cent(exchange, active):
    position = submit_bracket_order(
        symbol="PENNY", quantity=1, side="buy", stop_loss="0.45004", take_profit="0.60006", entry_price="0.50001"
    )
    body = _order_posts(exchange)[0]["body"]
    assert Decimal(str(body["limit_price"])) == Decimal("0.5000")
    assert Decimal(str(body["stop_loss"]["stop_price"])) == Decimal("0.4500")
    assert Decimal(str(body["take_profit"]["limit_price"])) == Decimal("0.6001")
    assert position.stop_loss == Decimal("0.4500")


def test_the_original_bug_legs_dropped_cancels_the_entry_and_records_it(exchange, active):
    exchange.control.add_fault("drop_legs")
    with pytest.raises(BracketNotProtected) as caught:
        submit_bracket_order(symbol="AAPL", quantity=1, side="buy", stop_loss=140, take_profit=160, entry_price="149.00")

    entry = caught.value.entry
    entry.refresh_from_db()
    assert entry.status == OrderStatus.CANCELED
    assert "0 legs" in entry.error or "not a bracket" in entry.error
    assert caught.value.position is None
    assert not Position.objects.exists()
    assert RiskEvent.objects.filter(kind="bracket_not_protected", symbol="AAPL").count() == 1
    cancels = [r for r in exchange.control.requests_log() if r["method"] == "DELETE"]
    assert cancels and cancels[0]["path"] == f"/v2/orders/{entry.broker_order_id}"


def test_legs_dropped_after_the_entry_filled_leaves_an_open_unprotected_position(exchange, active):
    exchange.control.add_fault("drop_legs")
    with pytest.raises(BracketNotProtected) as caught:
        submit_bracket_order(symbol="AAPL", quantity=1, side="buy", stop_loss=140, take_profit=160)

    position = caught.value.position
    assert position is not None
    assert position.status == PositionStatus.OPEN
    assert position.protection == Protection.UNPROTECTED
    assert (position.stop_loss, position.take_profit) == (Decimal("140.00"), Decimal("160.00"))
    assert position.entry_order.filled_qty == 1


def test_504_after_acceptance_is_resolved_by_client_order_id_not_resent(exchange, active):
    exchange.control.add_fault("accept_then_504", method="POST", path="/v2/orders", count=1)
    position = submit_bracket_order(symbol="AAPL", quantity=1, side="buy", stop_loss=140, take_profit=160)
    assert position.entry_order.broker_order_id
    assert len(exchange.control.state()["orders"]) == 3  # one entry + two legs, never two entries


def test_broker_refusal_is_recorded_and_raised(exchange, active):
    exchange.control.add_fault("reject", method="POST", path="/v2/orders")
    with pytest.raises(BrokerError, match="rejected"):
        submit_bracket_order(symbol="AAPL", quantity=1, side="buy", stop_loss=140, take_profit=160)
    entry = Order.objects.get()
    assert entry.status == OrderStatus.SUBMIT_FAILED
    assert "rejected" in entry.error
    assert not Position.objects.exists()


def test_a_hung_broker_times_out(exchange, active, settings):
    settings.BROKER_TIMEOUT_SECONDS = Decimal("0.3")
    settings.BROKER_RETRY_ATTEMPTS = 0
    exchange.control.add_fault("hang", method="GET", path="/v2/clock", delay=3)
    with pytest.raises(BrokerError, match="did not answer"):
        broker.clock()


def test_non_json_error_bodies_are_read_defensively(exchange):
    exchange.control.add_fault("non_json_error", method="GET", path="/v2/clock")
    with pytest.raises(BrokerError, match="non-JSON") as caught:
        broker.clock()
    assert caught.value.status == 500


def test_an_unknown_status_does_not_blind_the_order_list(exchange, active):
    submit_bracket_order(symbol="AAPL", quantity=1, side="buy", stop_loss=140, take_profit=160, entry_price="149")
    exchange.control.add_fault("unknown_status", method="GET", path="/v2/orders")
    orders = broker.list_orders(status="all")
    assert len(orders) == 1
    assert orders[0].status == OrderStatus.UNKNOWN
    assert len(orders[0].legs) == 2


def test_quotes_are_batched_and_zero_means_missing(exchange, settings):
    settings.BROKER_QUOTE_BATCH_SIZE = 2
    exchange.control.set_quote("MSFT", "0", "410.00")
    exchange.control.set_quote("TSLA", "250.00", "0")
    exchange.control.clear_requests_log()
    quotes = broker.latest_quotes(["AAPL", "MSFT", "TSLA", "PENNY", "NOQUOTE"])
    gets = [r for r in exchange.control.requests_log() if r["path"] == "/v2/stocks/quotes/latest"]
    assert len(gets) == 3
    assert "NOQUOTE" not in quotes
    assert quotes["MSFT"].bid is None and quotes["MSFT"].price == Decimal("410.00")
    assert quotes["TSLA"].ask is None and quotes["TSLA"].price == Decimal("250.00")
    assert quotes["AAPL"].price == Decimal("150.00")


def test_new_entries_are_refused_while_halted_but_test_orders_pass(exchange):
    with pytest.raises(TradingHalted):
        submit_bracket_order(symbol="AAPL", quantity=1, side="buy", stop_loss=140, take_profit=160)
    assert not Order.objects.exists()
    position = submit_bracket_order(symbol="AAPL", quantity=1, side="buy", stop_loss=140, take_profit=160, is_test=True)
    assert position.is_test


def test_test_orders_are_capped(exchange):
    from trading.validation import OrderValidationError

    with pytest.raises(OrderValidationError) as caught:
        submit_bracket_order(symbol="AAPL", quantity=2, side="buy", stop_loss=140, take_profit=160, is_test=True)
    assert "quantity" in caught.value.errors
    assert not Order.objects.exists()


def test_exactly_one_module_imports_alpaca_trading_or_data():
    pattern = re.compile(r"^\s*(from|import)\s+alpaca\.(trading|data)\b", re.M)
    importers = sorted(
        str(path.relative_to(ROOT))
        for path in ROOT.rglob("*.py")
        if ".venv" not in path.parts and "tests" not in path.parts and pattern.search(path.read_text())
    )
    assert importers == ["trading/broker.py"]
