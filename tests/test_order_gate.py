"""POST /api/v1/orders: the trading service's real brackets through the order gate, over HTTP
against the paper exchange: sent once per client_order_id, refused while halted, broker
refusals as a clear 4xx naming what they are about, never a half-recorded position."""

from decimal import Decimal

import pytest

from risk.models import OrderRequest, OrderRequestState, RiskEvent
from risk.trading_state import trading_state_set
from tests.helpers import order_posts, token_client
from trading.models import Order, OrderStatus, Position, PositionStatus, Protection

pytestmark = pytest.mark.django_db

ORDER = {"client_order_id": "strategy-0001", "symbol": "AAPL", "side": "buy", "quantity": 10,
         "stop_loss": "145", "take_profit": "160"}


@pytest.fixture
def trader():
    return token_client("trader", ["trading.submit_order"])


def _exchange_orders(exchange, client_order_id: str) -> list[dict]:
    return [o for o in exchange.control.state()["orders"] if o["client_order_id"] == client_order_id]


def test_a_market_long_is_sent_under_the_callers_id_and_answered_with_both_legs(exchange, active, trader):
    response = trader.post("/api/v1/orders", {**ORDER, "intraday": True}, format="json")

    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["client_order_id"] == "strategy-0001" and body["replayed"] is False
    order = body["order"]
    assert order["client_order_id"] == "strategy-0001" and order["role"] == "entry" and order["type"] == "market"
    assert order["order_class"] == "bracket" and order["status"] == "filled"
    legs = {leg["role"]: leg for leg in order["legs"]}
    assert Decimal(legs["stop_loss"]["stop_price"]) == 145 and Decimal(legs["take_profit"]["limit_price"]) == 160
    position = Position.objects.get(pk=body["position_id"])
    assert position.intraday is True and not position.is_test and position.protection == Protection.PROTECTED
    assert [o["order_class"] for o in _exchange_orders(exchange, "strategy-0001")] == ["bracket"]
    request = OrderRequest.objects.get(client_order_id="strategy-0001")
    assert request.state == OrderRequestState.DONE and request.requested_by_name == "trader"
    assert request.position == position and request.notional == Decimal("1500.10")  # 10 x the ask it buys at


def test_a_limit_short_held_overnight_gets_gtc_legs_even_when_brackets_are_day_orders(exchange, active, trader,
                                                                                     settings):
    settings.BRACKET_TIME_IN_FORCE = "day"
    body = {**ORDER, "client_order_id": "short-1", "symbol": "MSFT", "side": "short", "quantity": 3,
            "entry_price": "401.5", "stop_loss": "410", "take_profit": 385.25, "intraday": False}
    response = trader.post("/api/v1/orders", body, format="json")
    assert response.status_code == 201, response.json()
    order = response.json()["order"]
    assert order["side"] == "sell" and order["type"] == "limit" and Decimal(order["limit_price"]) == Decimal("401.5")
    assert order["time_in_force"] == "gtc"
    intraday = trader.post("/api/v1/orders", {**ORDER, "client_order_id": "day-1", "intraday": True}, format="json")
    assert intraday.json()["order"]["time_in_force"] == "day"  # closed before the close anyway


def test_the_same_id_again_returns_the_same_order_and_sends_nothing(exchange, active, trader):
    first = trader.post("/api/v1/orders", ORDER, format="json")
    # the same order, written differently: a side synonym, a string quantity, prices to the cent
    again = trader.post("/api/v1/orders", {**ORDER, "side": "long", "quantity": "10", "stop_loss": "145.00"},
                        format="json")

    assert first.status_code == 201 and again.status_code == 200, again.json()
    assert again.json()["replayed"] is True
    assert again.json()["order"]["id"] == first.json()["order"]["id"]
    assert again.json()["position_id"] == first.json()["position_id"]
    assert len(order_posts(exchange, "strategy-0001")) == 1
    assert Position.objects.count() == 1


def test_a_different_order_under_a_used_id_is_a_409_naming_what_differs(exchange, active, trader):
    trader.post("/api/v1/orders", ORDER, format="json")
    response = trader.post("/api/v1/orders", {**ORDER, "quantity": 11, "take_profit": "161"}, format="json")

    assert response.status_code == 409
    body = response.json()
    assert body["code"] == "idempotency_conflict" and body["client_order_id"] == "strategy-0001"
    assert body["conflicting_fields"] == ["quantity", "take_profit"]
    assert len(order_posts(exchange)) == 1


def test_an_id_of_the_consoles_own_orders_is_refused(exchange, active, trader):
    test_order = token_client("tester", ["trading.add_order"]).post(
        "/api/v1/orders/test", {k: v for k, v in ORDER.items() if k != "client_order_id"} | {"quantity": 1},
        format="json")
    leg_id = test_order.json()["order"]["legs"][0]["client_order_id"]  # the broker's id for a leg
    response = trader.post("/api/v1/orders", {**ORDER, "client_order_id": leg_id}, format="json")
    assert response.status_code == 409 and response.json()["code"] == "idempotency_conflict"
    assert "already order #" in response.json()["detail"]


@pytest.mark.parametrize("client_order_id", ["", "x" * 49, "catalyst-exit-1-0", "Catalyst-mine", "has space",
                                             "caf\u00e9", "-starts-with-a-dash", 12, None])
def test_a_bad_client_order_id_is_a_400_on_it(exchange, active, trader, client_order_id):
    response = trader.post("/api/v1/orders", {**ORDER, "client_order_id": client_order_id}, format="json")
    assert response.status_code == 400, response.json()
    assert list(response.json()) == ["client_order_id"]
    assert not order_posts(exchange)


def test_the_longest_client_order_id_is_taken(exchange, active, trader):
    longest = "A" + "b.c_d:e-" * 5 + "x" * 7
    assert len(longest) == 48
    response = trader.post("/api/v1/orders", {**ORDER, "client_order_id": longest}, format="json")
    assert response.status_code == 201 and _exchange_orders(exchange, longest)


def test_bad_fields_are_a_400_each_named_and_leave_the_id_free(exchange, active, trader):
    response = trader.post("/api/v1/orders", {**ORDER, "side": "up", "stop_loss": "170", "quantity": "1.5"},
                           format="json")
    assert response.status_code == 400
    assert set(response.json()) == {"side", "quantity"}
    assert not OrderRequest.objects.exists() and not order_posts(exchange)
    assert trader.post("/api/v1/orders", ORDER, format="json").status_code == 201


def test_refused_while_halted_and_reducing_and_the_id_stays_free(exchange, db, trader):
    halted = trader.post("/api/v1/orders", ORDER, format="json")  # a fresh install is HALTED
    assert halted.status_code == 409 and halted.json()["code"] == "trading_halted"
    assert "HALTED" in halted.json()["detail"]
    trading_state_set(mode="REDUCING", reason="exits only")
    reducing = trader.post("/api/v1/orders", ORDER, format="json")
    assert reducing.status_code == 409 and "REDUCING" in reducing.json()["detail"]
    assert not order_posts(exchange) and not OrderRequest.objects.exists()

    trading_state_set(mode="ACTIVE", reason="back")
    assert trader.post("/api/v1/orders", ORDER, format="json").status_code == 201


def test_its_own_permission_not_the_test_orders(exchange, active):
    tester = token_client("tester", ["trading.add_order", "trading.view_order"])
    response = tester.post("/api/v1/orders", ORDER, format="json")
    assert response.status_code == 403 and "trading.submit_order" in response.json()["detail"]


def test_its_own_throttle_scope(exchange, active, trader, settings):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK,
                               "DEFAULT_THROTTLE_RATES": {**settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"],
                                                          "order_gate": "2/min"}}
    for n, (symbol, stop, target) in enumerate([("AAPL", "145", "160"), ("MSFT", "390", "410")]):
        body = {**ORDER, "client_order_id": f"t-{n}", "symbol": symbol, "stop_loss": stop, "take_profit": target}
        assert trader.post("/api/v1/orders", body, format="json").status_code == 201
    throttled = trader.post("/api/v1/orders", {**ORDER, "client_order_id": "t-2", "symbol": "TSLA",
                                               "stop_loss": "240", "take_profit": "260"}, format="json")
    assert throttled.status_code == 429 and "Retry-After" in throttled
    # the test orders have their own allowance
    tester = token_client("tester", ["trading.add_order"])
    body = {"symbol": "TSLA", "side": "buy", "quantity": 1, "stop_loss": "240", "take_profit": "260"}
    assert tester.post("/api/v1/orders/test", body, format="json").status_code == 201


# --- Broker refusals and failures --------------------------------------------------------------


def test_a_broker_refusal_is_a_422_with_nothing_held_and_answers_the_same_again(exchange, active, trader):
    exchange.control.add_fault("reject", method="POST", path="/v2/orders", count=1)

    response = trader.post("/api/v1/orders", ORDER, format="json")

    assert response.status_code == 422, response.json()
    body = response.json()
    assert body["code"] == "broker_refused" and body["broker_status"] == 403
    assert "rejected by paper exchange fault" in body["detail"]
    assert body["order"]["status"] == OrderStatus.SUBMIT_FAILED and body["position_id"] is None
    assert not Position.objects.exists()
    event = RiskEvent.objects.get(kind="order_refused")
    assert event.symbol == "AAPL" and event.data["client_order_id"] == "strategy-0001"
    again = trader.post("/api/v1/orders", ORDER, format="json")
    assert again.status_code == 422 and again.json()["detail"] == body["detail"]
    assert len(order_posts(exchange)) == 1


def test_a_bracket_against_an_open_position_is_refused_naming_its_working_orders_and_the_position(
        exchange, active, trader):
    """Selling short into a long whose legs hold every share: the broker refuses (today "insufficient
    qty available"; at Alpaca "potential wash trade" or "bracket orders must be entry orders")."""
    long = trader.post("/api/v1/orders", ORDER, format="json").json()
    legs = {leg["broker_order_id"]: leg for leg in long["order"]["legs"]}

    response = trader.post("/api/v1/orders", {**ORDER, "client_order_id": "short-into-long", "side": "sell",
                                              "quantity": 5, "stop_loss": "160", "take_profit": "140"},
                           format="json")

    assert response.status_code == 422, response.json()
    body = response.json()
    assert body["code"] == "broker_refused" and body["broker_status"] in (403, 422)
    assert body["positions"] == [{"symbol": "AAPL", "side": "long", "qty": "10", "position_ids": [long["position_id"]]}]
    named = {o["broker_order_id"]: o for o in body["working_orders"]}
    assert set(named) >= set(legs) - {None}
    for broker_id in legs:
        assert named[broker_id]["position_id"] == long["position_id"] and named[broker_id]["order_id"]
    assert f"position #{long['position_id']}" in body["detail"]
    assert Position.objects.count() == 1


def test_an_unknown_outcome_is_settled_by_the_retry_with_one_order_at_the_broker(exchange, active, trader):
    # The broker takes the order but every answer is lost, and so is the look-up by id.
    exchange.control.add_fault("accept_then_504", method="POST", path="/v2/orders", count=5)
    exchange.control.add_fault("http_500", method="GET", path="/v2/orders:by_client_order_id", count=1)

    lost = trader.post("/api/v1/orders", ORDER, format="json")

    assert lost.status_code == 502, lost.json()
    assert lost.json()["code"] == "broker_failed" and "same client_order_id" in lost.json()["detail"]
    assert OrderRequest.objects.get().state == OrderRequestState.UNKNOWN
    assert not Position.objects.exists()

    exchange.control.clear_faults()
    settled = trader.post("/api/v1/orders", ORDER, format="json")

    assert settled.status_code == 200, settled.json()
    assert settled.json()["order"]["broker_order_id"] and len(settled.json()["order"]["legs"]) == 2
    assert len(_exchange_orders(exchange, "strategy-0001")) == 1
    position = Position.objects.get()
    assert position.pk == settled.json()["position_id"] and position.protection == Protection.PROTECTED
    assert OrderRequest.objects.get().state == OrderRequestState.DONE


def test_an_order_that_never_reached_the_broker_is_sent_by_the_retry(exchange, active, trader):
    exchange.control.add_fault("http_500", method="POST", path="/v2/orders", count=1)
    assert trader.post("/api/v1/orders", ORDER, format="json").status_code == 502
    assert not _exchange_orders(exchange, "strategy-0001")

    settled = trader.post("/api/v1/orders", ORDER, format="json")

    assert settled.status_code == 200, settled.json()
    assert len(_exchange_orders(exchange, "strategy-0001")) == 1
    assert Order.objects.filter(client_order_id="strategy-0001").count() == 1


def test_an_unsent_order_is_not_sent_by_a_retry_once_trading_halted(exchange, active, trader):
    exchange.control.add_fault("http_500", method="POST", path="/v2/orders", count=1)
    trader.post("/api/v1/orders", ORDER, format="json")
    trading_state_set(mode="HALTED", reason="stop")

    response = trader.post("/api/v1/orders", ORDER, format="json")

    assert response.status_code == 409 and response.json()["code"] == "trading_halted"
    assert not _exchange_orders(exchange, "strategy-0001")
    assert Order.objects.get(client_order_id="strategy-0001").status == OrderStatus.SUBMIT_FAILED


def test_a_bracket_without_legs_is_a_502_and_stays_one(exchange, active, trader):
    exchange.control.add_fault("drop_legs", count=1)
    response = trader.post("/api/v1/orders", ORDER, format="json")
    assert response.status_code == 502
    body = response.json()
    assert body["code"] == "bracket_not_protected" and "BRACKET NOT PROTECTED" in body["detail"]
    assert body["order"]["legs"] == []
    if body["position_id"] is not None:  # the market entry had filled: an unprotected position the monitor guards
        assert Position.objects.get(pk=body["position_id"]).protection == Protection.UNPROTECTED
    assert trader.post("/api/v1/orders", ORDER, format="json").json() == body
    assert len(order_posts(exchange)) == 1


def test_the_broker_failing_before_anything_is_recorded_is_a_502_and_leaves_the_id_free(exchange, active, trader):
    exchange.control.add_fault("http_500", method="GET", path="/v2/stocks", count=1)  # the last price
    response = trader.post("/api/v1/orders", ORDER, format="json")
    assert response.status_code == 502 and response.json()["code"] == "broker_failed"
    assert not OrderRequest.objects.exists() and not order_posts(exchange)
    assert trader.post("/api/v1/orders", ORDER, format="json").status_code == 201


def test_positions_open_through_the_gate_are_closed_by_the_monitor_like_any_other(exchange, active, trader):
    from risk.monitor import monitor_cycle

    position_id = trader.post("/api/v1/orders", ORDER, format="json").json()["position_id"]
    exchange.control.set_quote("AAPL", "144.00", "144.02")
    monitor_cycle(owner="test")
    position = Position.objects.get(pk=position_id)
    assert position.status == PositionStatus.CLOSED and position.close_reason == "STOP_LOSS_HIT"


def test_the_schema_documents_the_gate_with_examples(db):
    client = token_client("reader", [])
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    orders = schema["paths"]["/api/v1/orders"]["post"]
    assert {"200", "201", "400", "401", "403", "409", "422", "429", "502"} <= set(orders["responses"])
    examples = orders["requestBody"]["content"]["application/json"]["examples"]
    assert {"MarketLong", "LimitShortHeldOvernight"} <= set(examples)
    assert "examples" in orders["responses"]["422"]["content"]["application/json"]
    reduce = schema["paths"]["/api/v1/positions/{id}/reduce"]["post"]
    assert {"200", "201", "400", "404", "409"} <= set(reduce["responses"])
    assert "trading.submit_order" in orders["description"] and "trading.submit_order" in reduce["description"]
