"""POST /api/v1/positions/{id}/reduce: the trading service's exits through the safe close path,
over HTTP against the paper exchange. Never more than the position holds; what stays open is
re-protected at once; the only orders accepted while REDUCING; once per client_order_id."""

from decimal import Decimal

import pytest

from risk.flatten import flatten
from risk.models import RiskEvent
from risk.monitor import monitor_cycle
from risk.trading_state import trading_state_set
from tests.helpers import exit_posts, token_client
from trading.models import CloseReason, OrderRole, Position, PositionStatus, Protection

pytestmark = pytest.mark.django_db

ENTRY = {"symbol": "AAPL", "side": "buy", "quantity": 10, "stop_loss": "145", "take_profit": "160"}


@pytest.fixture
def trader(exchange, active):
    return token_client("trader", ["trading.submit_order"])


def _open(trader, client_order_id: str = "entry-1", **fields) -> Position:
    response = trader.post("/api/v1/orders", {**ENTRY, "client_order_id": client_order_id, **fields}, format="json")
    assert response.status_code == 201, response.json()
    return Position.objects.get(pk=response.json()["position_id"])


def _reduce(trader, position: Position, quantity, client_order_id: str = "reduce-1"):
    return trader.post(f"/api/v1/positions/{position.pk}/reduce",
                       {"client_order_id": client_order_id, "quantity": quantity}, format="json")


def _exits(exchange) -> list[tuple[str, Decimal]]:
    return [(e["body"]["side"], Decimal(str(e["body"]["qty"]))) for e in exit_posts(exchange)]


def _live_orders(exchange, symbol: str = "AAPL") -> list[dict]:
    final = {"filled", "canceled", "expired", "rejected", "replaced", "done_for_day"}
    return [o for o in exchange.control.state()["orders"] if o["symbol"] == symbol and o["status"] not in final]


def test_a_partial_reduce_sells_that_much_once_and_reprotects_the_rest(exchange, trader):
    position = _open(trader)

    response = _reduce(trader, position, 4)

    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["outcome"] == "reduced" and Decimal(body["held"]) == 6 and body["replayed"] is False
    position.refresh_from_db()
    assert position.status == PositionStatus.OPEN and position.keep_quantity is None
    assert position.protection == Protection.PROTECTED and body["position"]["protection"] == "protected"
    assert _exits(exchange) == [("sell", Decimal("4"))]
    # the bracket's legs are gone; an OCO covers the 6 left, at the position's own stop and target
    live = _live_orders(exchange)
    assert {(o["order_class"], o["qty"]) for o in live} == {("oco", "6")}
    oco = live[0]
    assert Decimal(oco["limit_price"]) == 160
    assert [Decimal(exchange.state.orders[leg]["stop_price"]) for leg in oco["legs"]] == [145]
    assert RiskEvent.objects.filter(kind="reduced", position=position).exists()
    assert RiskEvent.objects.filter(kind="protected", position=position).exists()


def test_reducing_by_all_it_holds_closes_it(exchange, trader):
    position = _open(trader)
    response = _reduce(trader, position, 10)
    assert response.status_code == 201 and response.json()["outcome"] == "closed"
    position.refresh_from_db()
    assert position.status == PositionStatus.CLOSED and position.close_reason == CloseReason.REDUCED
    assert position.exit_price == Decimal("149.99") and not _live_orders(exchange)


def test_two_reduces_then_a_stop_close_the_position_at_the_average_of_every_exit(exchange, trader):
    position = _open(trader)  # bought 10 at 150.01
    assert _reduce(trader, position, 4, "r-1").json()["outcome"] == "reduced"  # 4 at 149.99
    exchange.control.set_quote("AAPL", "151.99", "152.01")
    assert _reduce(trader, position, 2, "r-2").json()["outcome"] == "reduced"  # 2 at 151.99
    exchange.control.set_quote("AAPL", "144.00", "144.02")  # through the OCO's stop: 4 at 144.00
    monitor_cycle(owner="test")
    position.refresh_from_db()
    assert position.status == PositionStatus.CLOSED and position.close_reason == CloseReason.STOP_LOSS_HIT
    assert position.quantity == 10
    assert position.exit_price == ((4 * Decimal("149.99") + 2 * Decimal("151.99") + 4 * Decimal("144")) / 10)


def test_a_short_is_reduced_by_buying_back(exchange, trader):
    position = _open(trader, side="sell", stop_loss="160", take_profit="140")
    response = _reduce(trader, position, 3)
    assert response.status_code == 201 and response.json()["outcome"] == "reduced"
    assert _exits(exchange) == [("buy", Decimal("3"))]
    assert {(o["side"], o["order_class"], o["qty"]) for o in _live_orders(exchange)} == {("buy", "oco", "7")}


def test_never_more_than_it_holds(exchange, trader):
    position = _open(trader)
    response = _reduce(trader, position, "10.5")
    assert response.status_code == 400
    assert "more than the 10 AAPL position" in response.json()["quantity"][0]
    assert _reduce(trader, position, 0, "r-0").status_code == 400
    assert not exit_posts(exchange)


def test_never_more_than_the_broker_holds_for_it(exchange, trader):
    """Our records say 10, the broker holds 3 (its other shares went elsewhere): a reduce by 5,
    keeping 5, has nothing to sell, and sells nothing."""
    position = _open(trader)
    exchange.control.set_position("AAPL", 3, "150.01")
    response = _reduce(trader, position, 5)
    assert response.status_code == 201, response.json()
    assert not exit_posts(exchange)


def test_the_same_id_again_answers_the_same_and_sells_nothing_more(exchange, trader):
    position = _open(trader)
    first = _reduce(trader, position, 4)
    again = _reduce(trader, position, "4.0")
    assert again.status_code == 200 and again.json()["replayed"] is True
    assert again.json()["outcome"] == first.json()["outcome"] == "reduced"
    assert len(exit_posts(exchange)) == 1
    conflict = _reduce(trader, position, 5)
    assert conflict.status_code == 409 and conflict.json()["conflicting_fields"] == ["quantity"]


def test_the_only_orders_taken_while_reducing_and_none_while_halted(exchange, trader):
    position = _open(trader)
    trading_state_set(mode="REDUCING", reason="exits only")
    assert trader.post("/api/v1/orders", {**ENTRY, "client_order_id": "entry-2"}, format="json").status_code == 409
    assert _reduce(trader, position, 2, "while-reducing").status_code == 201

    trading_state_set(mode="HALTED", reason="stop everything")
    halted = _reduce(trader, position, 2, "while-halted")
    assert halted.status_code == 409 and halted.json()["code"] == "trading_halted"
    assert len(exit_posts(exchange)) == 1


def test_a_position_not_open_or_missing(exchange, trader):
    position = _open(trader)
    _reduce(trader, position, 10)
    closed = _reduce(trader, position, 1, "r-2")
    assert closed.status_code == 409 and closed.json()["code"] == "position_not_open"
    for missing in ("999999", "abc", "-1", str(10**30)):
        response = trader.post(f"/api/v1/positions/{missing}/reduce", {"client_order_id": "r-3", "quantity": 1},
                               format="json")
        assert response.status_code == 404, missing


def test_an_exit_still_pending_is_finished_and_reprotected_by_the_monitor(exchange, trader):
    position = _open(trader)
    exchange.control.add_fault("no_fill", method="POST", path="/v2/orders", count=1)

    response = _reduce(trader, position, 4)

    assert response.status_code == 201 and response.json()["outcome"] == "exit_pending"
    position.refresh_from_db()
    assert position.status == PositionStatus.CLOSING and position.keep_quantity == 6
    exit_order = position.orders.get(role=OrderRole.EXIT)
    exchange.control.fill_order(exit_order.broker_order_id)

    monitor_cycle(owner="test")

    position.refresh_from_db()
    assert position.status == PositionStatus.OPEN and position.protection == Protection.PROTECTED
    assert {(o["order_class"], o["qty"]) for o in _live_orders(exchange)} == {("oco", "6")}


def test_a_flatten_takes_over_a_reduce_in_progress_and_leaves_no_rest(exchange, trader):
    position = _open(trader)
    exchange.control.add_fault("no_fill", method="POST", path="/v2/orders", count=1)
    _reduce(trader, position, 4)
    exit_order = position.orders.get(role=OrderRole.EXIT)

    exchange.control.fill_order(exit_order.broker_order_id)
    result = flatten(user=None)

    position.refresh_from_db()
    assert [o.state for o in result.outcomes] == ["closed"]
    assert position.status == PositionStatus.CLOSED and position.close_reason == CloseReason.EMERGENCY_STOP
    assert not exchange.control.state()["positions"]
    assert sum(qty for _, qty in _exits(exchange)) == 10
