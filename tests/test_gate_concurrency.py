"""The order gate under concurrent requests on PostgreSQL: retries of one client_order_id racing
each other send one order and are answered alike; orders racing a limit can't slip past it."""

from decimal import Decimal

import pytest
from django.db import connection
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from risk.limits import limits_update
from risk.models import OrderRequest, OrderRequestState
from risk.trading_state import trading_state_set
from tests.helpers import order_posts, token_client
from tests.test_concurrency import _race
from trading.models import Position

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.reliability,
    pytest.mark.skipif(connection.vendor != "postgresql", reason="row locking races need PostgreSQL"),
]

ORDER = {"client_order_id": "retry-me", "symbol": "AAPL", "side": "buy", "quantity": 5, "stop_loss": "145",
         "take_profit": "160"}
THREADS = 8


def _poster(token: str, body: dict, answers: list):
    def post():
        client = APIClient(HTTP_X_FORWARDED_PROTO="https")
        client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
        response = client.post("/api/v1/orders", body, format="json")
        answers.append((response.status_code, response.json()))
    return post


@pytest.fixture
def token(exchange):
    trading_state_set(mode="ACTIVE", reason="tests trade")
    token_client("trader", ["trading.submit_order"])
    return Token.objects.get(user__username="trader").key


def test_concurrent_retries_of_one_id_send_one_order_and_get_one_answer(exchange, token, figures):
    answers: list = []
    errors = _race([_poster(token, ORDER, answers) for _ in range(THREADS)])
    figures.add("concurrent actors", THREADS)

    assert errors == []
    statuses = sorted(status for status, _ in answers)
    assert statuses == [200] * (THREADS - 1) + [201], answers
    assert len({body["order"]["id"] for _, body in answers}) == 1
    assert len({body["position_id"] for _, body in answers}) == 1
    assert all(len(body["order"]["legs"]) == 2 for _, body in answers)
    at_exchange = [o for o in exchange.control.state()["orders"] if o["client_order_id"] == "retry-me"]
    figures.add("duplicate exits", len(at_exchange) - 1)  # duplicate orders sent, like duplicate exits: none
    assert len(at_exchange) == 1 and len(order_posts(exchange, "retry-me")) == 1
    assert Position.objects.count() == 1
    assert OrderRequest.objects.get().state == OrderRequestState.DONE


def _symbols(exchange) -> list[str]:
    """One symbol a racer: Alpaca refuses a second bracket in a symbol while the first's legs work."""
    symbols = [f"RACE{chr(ord('A') + n)}" for n in range(THREADS)]
    exchange.control.set_quotes([{"symbol": s, "bid": "149.99", "ask": "150.01"} for s in symbols])
    return symbols


def test_orders_racing_a_limit_cannot_slip_past_it(exchange, token):
    limits_update(values={"max_open_positions": 3, "max_orders_per_minute": None}, reason="race")
    answers: list = []
    errors = _race([_poster(token, {**ORDER, "client_order_id": f"racer-{n}", "symbol": symbol, "quantity": 1},
                            answers) for n, symbol in enumerate(_symbols(exchange))])

    assert errors == []
    statuses = sorted(status for status, _ in answers)
    assert statuses == [201] * 3 + [422] * (THREADS - 3), answers
    refused = [body for status, body in answers if status == 422]
    assert all(body["limits"][0] == {"limit": "max_open_positions", "value": "3", "requested": "4"}
               for body in refused)
    assert Position.objects.count() == 3 and len(order_posts(exchange)) == 3


def test_orders_racing_the_exposure_limit_cannot_slip_past_it(exchange, token):
    limits_update(values={"max_total_exposure": Decimal("3000"), "max_orders_per_minute": None}, reason="race")
    answers: list = []
    body = {**ORDER, "entry_price": "150", "quantity": 10}  # 1500 each: two fit
    errors = _race([_poster(token, {**body, "client_order_id": f"racer-{n}", "symbol": symbol}, answers)
                    for n, symbol in enumerate(_symbols(exchange))])

    assert errors == []
    assert sorted(status for status, _ in answers) == [201] * 2 + [422] * (THREADS - 2), answers
    assert all(body["code"] == "limit_exceeded" for status, body in answers if status == 422)
    assert len(order_posts(exchange)) == 2
