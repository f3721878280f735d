"""The REST API over HTTP (DRF test client) against the paper exchange: auth, permissions,
bad input, success, and the broker failures."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission, User
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from risk.models import Heartbeat
from tests.helpers import exit_posts, open_bracket
from trading.models import (
    Order,
    OrderRole,
    Position,
    PositionStatus,
    Protection,
    TradingMode,
    TradingStateChange,
)
from trading.selectors import trading_state

pytestmark = pytest.mark.django_db

ENDPOINTS = [
    ("post", "/api/v1/orders/test", "trading.add_order"),
    ("get", "/api/v1/orders/1", "trading.view_order"),
    ("get", "/api/v1/positions", "trading.view_position"),
    ("post", "/api/v1/positions/flatten", "trading.flatten_positions"),
    ("get", "/api/v1/trading-state", "trading.view_tradingstatechange"),
    ("post", "/api/v1/trading-state", "trading.change_trading_mode"),
    ("get", "/api/v1/monitor", "risk.view_heartbeat"),
    ("get", "/api/v1/stream/quotes", "risk.view_heartbeat"),
    ("get", "/api/v1/positions/1/timeline", "trading.view_position"),
]
ALL_PERMS = [perm for _, _, perm in ENDPOINTS]
GOOD_ORDER = {"symbol": "AAPL", "quantity": 1, "side": "buy", "stop_loss": "140", "take_profit": "160"}


def _user(username: str, perms: list[str]) -> User:
    user = User.objects.create_user(username, password="pw-for-tests-only")
    for perm in perms:
        app_label, codename = perm.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    return user


def _https_client() -> APIClient:
    """Production settings redirect plain HTTP to HTTPS: the tests speak HTTPS."""
    return APIClient(HTTP_X_FORWARDED_PROTO="https")


def _client(user: User | None) -> APIClient:
    client = _https_client()
    if user is not None:
        client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


@pytest.fixture
def exchange(paper_exchange):
    paper_exchange.control.set_quote("AAPL", "149.99", "150.01")
    paper_exchange.control.set_quote("MSFT", "399.99", "400.01")
    paper_exchange.control.set_quote("TSLA", "249.99", "250.01")
    return paper_exchange


@pytest.fixture
def api():
    return _client(_user("operator", ALL_PERMS))


# --- Authentication and permissions ------------------------------------------------------------


@pytest.mark.parametrize("method,url,perm", ENDPOINTS + [("get", "/api/schema/", None)])
def test_every_endpoint_needs_authentication(method, url, perm):
    response = getattr(_https_client(), method)(url, {}, format="json")
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Token")


def test_a_bad_token_is_401():
    client = _https_client()
    client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
    assert client.get("/api/v1/positions").status_code == 401


@pytest.mark.parametrize("method,url,perm", ENDPOINTS)
def test_every_endpoint_needs_its_permission(method, url, perm):
    others = [p for p in ALL_PERMS if p != perm]
    response = getattr(_client(_user("nobody", others)), method)(url, {}, format="json")
    assert response.status_code == 403
    assert perm in response.json()["detail"]


def test_a_session_works_too(exchange):
    user = _user("browser", ALL_PERMS)
    client = _https_client()
    client.force_login(user)
    assert client.get("/api/v1/monitor").status_code == 200


def test_schema_is_served_to_authenticated_users(api):
    response = api.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    schema = response.json()
    paths = schema["paths"]
    for url in ["/api/v1/orders/test", "/api/v1/orders/{id}", "/api/v1/positions", "/api/v1/positions/flatten",
                "/api/v1/trading-state", "/api/v1/monitor", "/api/v1/stream/quotes"]:
        assert url in paths, url
    test_order = paths["/api/v1/orders/test"]["post"]
    assert {"201", "400", "401", "403", "502"} <= set(test_order["responses"])
    assert set(paths["/api/v1/trading-state"]) >= {"get", "post"}
    assert "400" in paths["/api/v1/trading-state"]["post"]["responses"]


# --- POST /api/v1/orders/test --------------------------------------------------------------------


def test_test_order_returns_the_entry_and_both_legs(exchange, api):
    response = api.post("/api/v1/orders/test", GOOD_ORDER, format="json")

    assert response.status_code == 201, response.json()
    body = response.json()
    position = Position.objects.get(pk=body["position_id"])
    assert position.is_test and position.protection == Protection.PROTECTED
    order = body["order"]
    assert order["role"] == "entry" and order["id"] == position.entry_order_id
    assert order["client_order_id"].startswith("catalyst-test-") and order["broker_order_id"]
    assert order["status"] == "filled" and Decimal(order["filled_qty"]) == 1
    legs = {leg["role"]: leg for leg in order["legs"]}
    assert set(legs) == {"stop_loss", "take_profit"}
    assert Decimal(legs["stop_loss"]["stop_price"]) == Decimal("140")
    assert Decimal(legs["take_profit"]["limit_price"]) == Decimal("160")
    for leg in legs.values():
        assert leg["side"] == "sell" and leg["broker_order_id"] and leg["status"] in ("new", "held")
        assert set(leg) >= {"id", "client_order_id", "type", "qty", "filled_qty", "filled_avg_price"}
    # trading stays HALTED: a test order is allowed anyway
    assert trading_state().mode == TradingMode.HALTED


def test_test_order_with_a_limit_entry_and_json_numbers(exchange, api):
    body = {**GOOD_ORDER, "side": "sell", "entry_price": 150.5, "stop_loss": 155.25, "take_profit": 140}
    response = api.post("/api/v1/orders/test", body, format="json")
    assert response.status_code == 201, response.json()
    assert Decimal(response.json()["order"]["limit_price"]) == Decimal("150.5")


def test_test_order_bad_input_names_every_field(exchange, api):
    response = api.post("/api/v1/orders/test",
                        {"symbol": "not a symbol", "quantity": "0", "side": "up", "stop_loss": "abc",
                         "take_profit": "-1"}, format="json")
    assert response.status_code == 400
    assert set(response.json()) == {"symbol", "quantity", "side", "stop_loss", "take_profit"}
    assert not exchange.control.requests_log() or not any(
        r["path"] == "/v2/orders" for r in exchange.control.requests_log())


def test_test_order_missing_fields(exchange, api):
    response = api.post("/api/v1/orders/test", {"symbol": "AAPL"}, format="json")
    assert response.status_code == 400
    assert set(response.json()) == {"quantity", "side", "stop_loss", "take_profit"}


def test_test_order_prices_on_the_wrong_side(exchange, api):
    response = api.post("/api/v1/orders/test", {**GOOD_ORDER, "stop_loss": "151", "take_profit": "149"},
                        format="json")
    assert response.status_code == 400
    assert set(response.json()) == {"stop_loss", "take_profit"}


def test_test_order_above_the_test_limit_is_a_400_on_quantity(exchange, api, settings):
    response = api.post("/api/v1/orders/test", {**GOOD_ORDER, "quantity": 2}, format="json")
    assert response.status_code == 400
    assert list(response.json()) == ["quantity"]
    assert "limited to" in response.json()["quantity"][0]
    assert not Order.objects.exists()


def test_test_order_with_legs_dropped_is_a_502_with_the_recorded_failure(exchange, api):
    exchange.control.add_fault("drop_legs", count=1)

    response = api.post("/api/v1/orders/test", GOOD_ORDER, format="json")

    assert response.status_code == 502
    body = response.json()
    assert "BRACKET NOT PROTECTED" in body["detail"]
    assert body["order"]["error"] == body["detail"]
    assert body["order"]["role"] == "entry" and body["order"]["legs"] == []
    entry = Order.objects.get(pk=body["order"]["id"])
    assert entry.error == body["detail"] and entry.status == body["order"]["status"]
    if body["position_id"] is not None:  # the market entry had filled: recorded as unprotected
        assert Position.objects.get(pk=body["position_id"]).protection == Protection.UNPROTECTED


def test_test_order_refused_by_the_broker_is_a_422_without_secrets(exchange, api):
    exchange.control.add_fault("reject", method="POST", path="/v2/orders", count=1)
    response = api.post("/api/v1/orders/test", GOOD_ORDER, format="json")
    assert response.status_code == 422
    body = response.json()
    assert body["detail"].startswith("the broker refused the order:") and "rejected" in body["detail"]
    assert body["broker_status"] == 403
    assert exchange.api_key not in body["detail"] and exchange.secret_key not in body["detail"]
    assert Order.objects.get().status == "submit_failed"


def test_test_order_the_broker_failing_is_a_502(exchange, api):
    exchange.control.add_fault("http_500", method="POST", path="/v2/orders")
    response = api.post("/api/v1/orders/test", GOOD_ORDER, format="json")
    assert response.status_code == 502
    assert response.json()["detail"].startswith("broker error:")
    assert Position.objects.count() == 0


# --- GET /api/v1/positions, /api/v1/orders/{id} -------------------------------------------------------


def test_positions_list_filters_and_shows_pnl(exchange, api):
    aapl = open_bracket("AAPL")
    msft = open_bracket("MSFT", side="sell")
    api.post("/api/v1/positions/flatten", {"confirm": "FLATTEN", "positions": [msft.pk]}, format="json")

    everything = api.get("/api/v1/positions").json()
    assert [p["id"] for p in everything["results"]] == [msft.pk, aapl.pk]
    assert "next" in everything and "previous" in everything

    closed = api.get("/api/v1/positions", {"status": "closed"}).json()["results"]
    assert [p["id"] for p in closed] == [msft.pk]
    msft.refresh_from_db()
    assert Decimal(closed[0]["realised_pnl"]) == msft.realised_pnl
    assert closed[0]["close_reason"] == "EMERGENCY_STOP" and closed[0]["protection"] == "protected"

    opened = api.get("/api/v1/positions", {"status": "open", "symbol": "aapl"}).json()["results"]
    assert [p["id"] for p in opened] == [aapl.pk] and opened[0]["realised_pnl"] is None


def test_positions_list_pages_with_a_cursor(exchange, api):
    for symbol in ("AAPL", "MSFT", "TSLA"):  # one each: Alpaca refuses a second bracket while the first's legs work
        open_bracket(symbol, quantity=1)
    first = api.get("/api/v1/positions", {"page_size": 2}).json()
    assert len(first["results"]) == 2 and first["next"]
    second = api.get(first["next"]).json()
    assert len(second["results"]) == 1 and second["next"] is None


def test_positions_list_bad_status_is_a_400(api):
    response = api.get("/api/v1/positions", {"status": "sideways"})
    assert response.status_code == 400 and list(response.json()) == ["status"]


def test_order_detail_with_legs(exchange, api):
    position = open_bracket("AAPL")
    response = api.get(f"/api/v1/orders/{position.entry_order_id}")
    assert response.status_code == 200
    assert {leg["role"] for leg in response.json()["legs"]} == {"stop_loss", "take_profit"}
    assert api.get("/api/v1/orders/999999").status_code == 404


# --- POST /api/v1/positions/flatten ----------------------------------------------------------


def test_flatten_needs_the_confirmation(exchange, api):
    position = open_bracket("AAPL")
    for body in ({}, {"confirm": "flatten"}, {"confirm": "yes"}):
        response = api.post("/api/v1/positions/flatten", body, format="json")
        assert response.status_code == 400 and "confirm" in response.json()
    response = api.post("/api/v1/positions/flatten", {"confirm": "FLATTEN", "positions": [999999]}, format="json")
    assert response.status_code == 400 and "positions" in response.json()
    position.refresh_from_db()
    assert position.status == PositionStatus.OPEN
    assert not exit_posts(exchange)


def test_flatten_everything_twice_sends_each_exit_once(exchange, api):
    long, short = open_bracket("AAPL"), open_bracket("MSFT", side="sell")

    first = api.post("/api/v1/positions/flatten", {"confirm": "FLATTEN"}, format="json")

    assert first.status_code == 200, first.json()
    body = first.json()
    assert body["halted"] is True and body["halted_now"] is True
    assert body["cancelled_orders"] == 4 and body["errors"] == []
    results = {r["position"]: r for r in body["results"]}
    assert set(results) == {long.pk, short.pk}
    assert all(r["state"] == "closed" and r["close_reason"] == "EMERGENCY_STOP" for r in results.values())
    assert Decimal(results[long.pk]["exit_price"]) == Decimal("149.99")  # sold at the bid
    assert Decimal(results[short.pk]["exit_price"]) == Decimal("400.01")  # bought at the ask
    state = trading_state()
    assert state.mode == TradingMode.HALTED and state.reason == "emergency flatten by operator"

    second = api.post("/api/v1/positions/flatten", {"confirm": "FLATTEN"}, format="json")
    assert second.status_code == 200
    # still halted (not by this call), nothing left open
    assert second.json()["halted"] is True and second.json()["halted_now"] is False
    assert second.json()["results"] == []

    again = api.post("/api/v1/positions/flatten", {"confirm": "FLATTEN", "positions": [long.pk]}, format="json")
    (result,) = again.json()["results"]
    assert result["state"] == "skipped" and "already closed" in result["summary"]

    exits = exit_posts(exchange)
    assert sorted(r["body"]["client_order_id"] for r in exits) == sorted(
        [f"catalyst-exit-{long.pk}-0", f"catalyst-exit-{short.pk}-0"])
    assert {r["body"]["side"] for r in exits} == {"sell", "buy"}
    assert TradingStateChange.objects.filter(mode=TradingMode.HALTED).count() == 1
    # the admin's History of each position, and the halt, say who did it through the API
    history = {(e.object_id, e.change_message) for e in LogEntry.objects.filter(user__username="operator")}
    assert (str(long.pk), "Emergency flatten (EMERGENCY_STOP): closed at 149.9900 (EMERGENCY_STOP)") in history
    assert (str(state.pk), "Trading set to HALTED: emergency flatten by operator") in history


def test_flatten_selected_leaves_the_othersopen_bracket(exchange, api):
    keep, close = open_bracket("AAPL"), open_bracket("MSFT")
    response = api.post("/api/v1/positions/flatten", {"confirm": "FLATTEN", "positions": [close.pk]}, format="json")
    assert response.status_code == 200
    assert [r["position"] for r in response.json()["results"]] == [close.pk]
    keep.refresh_from_db()
    close.refresh_from_db()
    assert keep.status == PositionStatus.OPEN and keep.orders.live().filter(role=OrderRole.STOP_LOSS).exists()
    assert close.status == PositionStatus.CLOSED and close.close_reason == "EMERGENCY_STOP"
    assert not close.orders.live().exists()


# --- /api/v1/trading-state --------------------------------------------------------------------------


def _fresh_heartbeat(age_seconds: int = 1) -> Heartbeat:
    finished = timezone.now() - timedelta(seconds=age_seconds)
    return Heartbeat.objects.create(name="monitor", started_at=finished - timedelta(seconds=1), finished_at=finished,
                                    positions_checked=3, actions=1, cycles=7)


def test_trading_state_shows_the_checklist(api, exchange):
    body = api.get("/api/v1/trading-state").json()
    assert body["state"]["mode"] == "HALTED"
    items = {item["key"]: item for item in body["checklist"]["items"]}
    assert set(items) == {"test_bracket", "monitor_fresh", "all_protected", "no_old_positions", "daily_loss",
                          "stop_loss_cooldown"}
    assert body["checklist"]["passed"] is False
    assert not items["test_bracket"]["ok"] and not items["monitor_fresh"]["ok"]
    assert items["all_protected"]["ok"] and items["no_old_positions"]["ok"]


def test_resuming_with_a_failing_checklist_needs_an_override(api, exchange):
    refused = api.post("/api/v1/trading-state", {"mode": "ACTIVE", "reason": "back to work"}, format="json")
    assert refused.status_code == 400
    assert "override" in refused.json() and refused.json()["checklist"]["passed"] is False
    assert trading_state().mode == TradingMode.HALTED

    forced = api.post("/api/v1/trading-state", {"mode": "ACTIVE", "reason": "monitor restarting", "override": True},
                      format="json")
    assert forced.status_code == 200, forced.json()
    change = TradingStateChange.objects.latest("id")
    assert change.mode == "ACTIVE" and change.overrode_checklist and change.changed_by_name == "operator"
    assert "monitor restarting" in change.reason and "test_bracket" in change.reason
    assert forced.json()["state"]["overrode_checklist"] is True


def test_resuming_when_the_checklist_passes(api, exchange):
    assert api.post("/api/v1/orders/test", GOOD_ORDER, format="json").status_code == 201
    _fresh_heartbeat()
    checklist = api.get("/api/v1/trading-state").json()["checklist"]
    assert checklist["passed"] is True, checklist

    response = api.post("/api/v1/trading-state", {"mode": "ACTIVE", "reason": "all checked"}, format="json")
    assert response.status_code == 200
    assert trading_state().mode == "ACTIVE" and not trading_state().overrode_checklist


def test_checklist_fails_on_a_test_bracket_without_legs_and_unprotected_or_old_positions(api, exchange, settings):
    _fresh_heartbeat()
    exchange.control.add_fault("drop_legs", count=1)
    assert api.post("/api/v1/orders/test", GOOD_ORDER, format="json").status_code == 502
    old = open_bracket("MSFT")
    Position.objects.filter(pk=old.pk).update(opened_at=timezone.now() - timedelta(hours=100))
    items = {i["key"]: i for i in api.get("/api/v1/trading-state").json()["checklist"]["items"]}
    assert not items["test_bracket"]["ok"] and "0 legs" in items["test_bracket"]["detail"]
    assert not items["no_old_positions"]["ok"] and f"#{old.pk}" in items["no_old_positions"]["detail"]
    assert items["monitor_fresh"]["ok"]
    # the test entry had filled: an unprotected position, which fails the protection item
    unprotected = Position.objects.filter(protection=Protection.UNPROTECTED).first()
    if unprotected is not None:
        assert not items["all_protected"]["ok"] and f"#{unprotected.pk}" in items["all_protected"]["detail"]
    # a cancelled stop leg fails it too
    Order.objects.filter(position=old, role=OrderRole.STOP_LOSS).update(status="canceled")
    items = {i["key"]: i for i in api.get("/api/v1/trading-state").json()["checklist"]["items"]}
    assert not items["all_protected"]["ok"] and f"#{old.pk}" in items["all_protected"]["detail"]


def test_trading_state_halt_and_bad_input(api):
    assert api.post("/api/v1/trading-state", {"mode": "REDUCING", "reason": "exits only"},
                    format="json").status_code == 200
    assert trading_state().mode == "REDUCING"
    response = api.post("/api/v1/trading-state", {"mode": "PANIC", "reason": ""}, format="json")
    assert response.status_code == 400 and set(response.json()) == {"mode", "reason"}


# --- GET /api/v1/monitor ------------------------------------------------------------------------------


def test_monitor_without_a_heartbeat_is_stale(api):
    body = api.get("/api/v1/monitor").json()
    assert body["stale"] is True and body["finished_at"] is None and body["age_seconds"] is None


def test_monitor_heartbeat_age_and_staleness(api, settings):
    settings.MONITOR_INTERVAL_SECONDS = 30
    heartbeat = _fresh_heartbeat(age_seconds=5)
    body = api.get("/api/v1/monitor").json()
    assert body["stale"] is False and 5 <= body["age_seconds"] <= 7 and body["stale_after_seconds"] == 60
    assert body["positions_checked"] == 3 and body["cycles"] == 7
    Heartbeat.objects.filter(pk=heartbeat.pk).update(finished_at=timezone.now() - timedelta(seconds=61))
    assert api.get("/api/v1/monitor").json()["stale"] is True


def test_swagger_ui_is_served_to_authenticated_users(api):
    assert api.get("/api/docs/").status_code == 200
    assert _https_client().get("/api/docs/").status_code == 401


def test_swagger_ui_is_served_without_a_cdn(api):
    response = api.get("/api/docs/")
    assert response.status_code == 200
    page = response.content.decode()
    assert "drf_spectacular_sidecar/swagger-ui-dist" in page
    assert "cdn." not in page and "unpkg" not in page


# --- Paths and modes as callers type them ---------------------------------------------------------


def test_a_trailing_slash_or_an_unknown_path_is_a_json_404(api):
    response = api.get("/api/v1/positions/")
    assert response.status_code == 404 and response["Content-Type"] == "application/json"
    assert response.json() == {"detail": "No such API endpoint. The endpoint is /api/v1/positions (no trailing slash)."}
    for path in ("/api/v1/nothing-here", "/api/v2/positions", "/api/v1/positions/flatten/", "/api/"):
        response = api.post(path, {}, format="json")
        assert response.status_code == 404 and "detail" in response.json(), path
    assert _client(None).get("/api/v1/positions/").status_code == 401  # no probing without credentials


def test_the_mode_is_taken_in_any_case_and_a_bad_one_lists_the_valid_ones(api):
    response = api.post("/api/v1/trading-state", {"mode": "halted", "reason": "lunch"}, format="json")
    assert response.status_code == 200 and response.json()["state"]["mode"] == "HALTED"
    assert api.post("/api/v1/trading-state", {"mode": "Reducing", "reason": "x"}, format="json").status_code == 200
    response = api.post("/api/v1/trading-state", {"mode": "PANIC", "reason": "x"}, format="json")
    assert response.status_code == 400
    assert response.json() == {"mode": ["'PANIC' is not a trading mode; give one of ACTIVE, HALTED, REDUCING."]}
    assert TradingStateChange.objects.filter(mode=TradingMode.HALTED).exists()
