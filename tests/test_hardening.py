"""What got through before (issue 11), each reproduced: broker keys echoed back, a naked
closing position shown as protected, stops that round to zero, a clock outage, gapped
quotes, NUL bytes, hostile and lenient input."""

import io
import json
import logging
import threading
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import cycle

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from risk.checklist import checklist_run
from risk.entries import submit_bracket_order
from risk.market import clock_forget
from risk.models import Alert, AlertKind, RiskEvent, RiskEventKind
from risk.monitor import monitor_cycle
from risk.trading_state import trading_state_set
from tests.helpers import exit_posts, leg
from trading.models import CloseReason, Order, OrderRole, OrderStatus, Position, PositionStatus, Protection
from trading.selectors import protection_summary
from trading.validation import OrderValidationError, normalize_symbol, to_decimal, validate_bracket

pytestmark = [pytest.mark.django_db, pytest.mark.reliability]

HTTPS = {"HTTP_X_FORWARDED_PROTO": "https"}
API_KEY = "PKECHOPROBE4Z8Y1QW7"
SECRET_KEY = "echo-probe-Hs7Kd2Lw9Qm4Xt6Vb1Nc"


def _api(user: User) -> APIClient:
    client = APIClient(**HTTPS)
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


# --- 1. A broker that echoes the request back ------------------------------------------------------


class EchoingBroker:
    """Answers every request with an error whose body repeats the request headers: as JSON,
    as an HTML error page and as plain text, with 401, 403 and 500 in turn."""

    def __init__(self):
        shapes = cycle([(401, "json"), (403, "html"), (500, "text"), (403, "json"), (500, "html"), (401, "text")])
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                with lock:
                    status, shape = next(shapes)
                headers = dict(self.headers.items())
                if shape == "json":
                    body = json.dumps({"code": 40110000, "message": f"request not authorized: {headers}",
                                       "request_headers": headers}).encode()
                    kind = "application/json"
                elif shape == "html":
                    rows = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in headers.items())
                    body = f"<html><body><h1>{status} Error</h1><table>{rows}</table></body></html>".encode()
                    kind = "text/html"
                else:
                    body = "\n".join(f"{k}: {v}" for k, v in headers.items()).encode()
                    kind = "text/plain"
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_DELETE = do_PATCH = _answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def echoing_broker(settings):
    broker = EchoingBroker()
    settings.ALPACA_TRADING_URL = settings.ALPACA_DATA_URL = broker.url
    settings.ALPACA_API_KEY, settings.ALPACA_SECRET_KEY = API_KEY, SECRET_KEY
    settings.BROKER_RETRY_ATTEMPTS = 0
    yield broker
    broker.stop()


def _leaks(text: str) -> list[str]:
    pieces = [s[i:i + 10] for s in (API_KEY, SECRET_KEY) for i in range(0, len(s) - 9, 4)]
    return sorted({piece for piece in pieces if piece in text})


def test_a_broker_echoing_the_request_leaks_no_key_anywhere(echoing_broker, caplog, capfd, figures):
    caplog.set_level(logging.DEBUG)
    trading_state_set(mode="ACTIVE", reason="test")
    admin = User.objects.create_superuser("admin", password="pw-for-tests-only-1")
    api = _api(admin)
    browser = Client(**HTTPS)
    browser.force_login(admin)
    seen = []
    for body in ({"symbol": "AAPL", "quantity": 1, "side": "buy", "stop_loss": "140", "take_profit": "160"},
                 {"symbol": "AAPL", "quantity": 1, "side": "buy", "stop_loss": "140", "take_profit": "160",
                  "entry_price": "150"}):
        for _ in range(3):  # each answer shape
            response = api.post("/api/v1/orders/test", body, format="json")
            figures.add("faults injected")
            assert response.status_code in (422, 502), response.content  # refused, or the keys refused
            seen.append(response.content.decode())
    failed = Order.objects.exclude(error="")
    assert failed.exists()
    for order in Order.objects.all():
        seen.append(api.get(f"/api/v1/orders/{order.pk}").content.decode())
    Position.objects.create(symbol="AAPL", side="long", quantity=1, entry_price=Decimal("150"),
                            stop_loss=Decimal("140"), take_profit=Decimal("160"), opened_at="2026-01-01T00:00:00Z")
    out = io.StringIO()
    for _ in range(3):
        try:
            call_command("runmonitor", "--once", stdout=out, stderr=out)
        except Exception as exc:  # --once exits non-zero on a failing cycle: its message counts too
            seen.append(str(exc))
    seen.append(out.getvalue())
    assert RiskEvent.objects.filter(kind=RiskEventKind.ERROR).exists()
    for url in ("/admin/risk/riskevent/", "/admin/trading/order/"):
        seen.append(browser.get(url).content.decode())
    for event in RiskEvent.objects.all():
        seen.append(browser.get(f"/admin/risk/riskevent/{event.pk}/change/").content.decode())
    dump = io.StringIO()
    call_command("dumpdata", "trading", "risk", stdout=dump)
    captured = capfd.readouterr()
    places = {"responses": "\n".join(seen), "rows": dump.getvalue(), "logs": caplog.text,
              "stdout": captured.out, "stderr": captured.err}
    assert "redacted" in places["rows"]  # the broker's echo did reach the records, scrubbed
    leaks = {where: _leaks(text) for where, text in places.items() if _leaks(text)}
    figures.add("faults survived", 6 if not leaks else 0)
    assert not leaks


# --- 2. A closing position whose exit is refused is naked -----------------------------------------


@pytest.fixture
def crossed(exchange, active, settings):
    settings.MONITOR_EXIT_ATTEMPTS = 2
    position = submit_bracket_order(symbol="AAPL", quantity=5, side="buy", stop_loss="140", take_profit="160")
    Position.objects.filter(pk=position.pk).update(stop_loss=Decimal("148"))  # the monitor's level, above the leg
    exchange.control.set_quote("AAPL", "147.00", "147.02")
    return position


def test_a_refused_exit_shows_the_position_unprotected_then_retries_then_reprotects(crossed, exchange, figures):
    exchange.control.add_fault("reject", method="POST", path="/v2/orders", count=2)  # both exits; not the OCO
    monitor_cycle()
    figures.add("faults injected")
    position = Position.objects.get(pk=crossed.pk)
    assert position.status == PositionStatus.CLOSING
    assert leg(position, OrderRole.STOP_LOSS).status == OrderStatus.CANCELED  # the legs went before the exit
    assert position.protection == Protection.UNPROTECTED and position.exit_refusals == 1
    assert protection_summary().unprotected == 1 and not protection_summary().protected
    protection_item = next(item for item in checklist_run().items if item.key == "all_protected")
    assert not protection_item.ok and f"#{position.pk}" in protection_item.detail
    assert Alert.objects.filter(kind=AlertKind.EXIT_REJECTED, position=position).exists()

    exchange.control.set_quote("AAPL", "149.99", "150.01")  # back above the stop: the OCO will rest
    monitor_cycle()  # the second refusal: give up, re-protect with an OCO at its levels, GTC
    position.refresh_from_db()
    assert position.status == PositionStatus.OPEN and position.exit_refused_at is not None
    assert position.protection == Protection.PROTECTED and position.needs_review
    oco = position.orders.get(order_class="oco", parent__isnull=True)
    assert (oco.time_in_force, oco.limit_price) == ("gtc", Decimal("160.00"))
    assert oco.legs.get().stop_price == Decimal("148.00")
    assert Alert.objects.filter(kind=AlertKind.EXIT_REFUSED, position=position).exists()
    assert protection_summary().unprotected == 0

    exchange.control.clear_faults()
    exchange.control.clear_requests_log()
    exchange.control.set_quote("AAPL", "147.00", "147.02")  # its OCO's stop at the broker fills
    monitor_cycle()  # left to the broker's OCO: the monitor sends nothing, and follows the OCO's fill
    assert exit_posts(exchange) == []
    position.refresh_from_db()
    assert (position.status, position.close_reason) == (PositionStatus.CLOSED, CloseReason.STOP_LOSS_HIT)
    figures.add("faults survived")


def test_a_refused_exit_that_goes_out_on_the_retry_closes_it(crossed, exchange):
    exchange.control.add_fault("reject", method="POST", path="/v2/orders", count=1)
    monitor_cycle()
    assert Position.objects.get(pk=crossed.pk).protection == Protection.UNPROTECTED
    monitor_cycle()
    position = Position.objects.get(pk=crossed.pk)
    assert position.status == PositionStatus.CLOSED and position.close_reason == CloseReason.STOP_LOSS_HIT
    assert len(exit_posts(exchange)) == 2  # the refused one and the one that filled


# --- 3. Prices that round to zero -----------------------------------------------------------------


@pytest.mark.parametrize("field,value", [("stop_loss", "0.00001"), ("stop_loss", 1e-30), ("take_profit", "0.00004")])
def test_a_price_that_rounds_to_zero_is_refused(field, value, figures):
    figures.add("bad inputs tried")
    order = dict(symbol="AAPL", quantity=1, side="sell" if field == "take_profit" else "buy", stop_loss="0.5",
                 take_profit="2", entry_price="1")
    if field == "take_profit":
        order["stop_loss"] = "2"
    order[field] = str(value)
    with pytest.raises(OrderValidationError) as refused:
        validate_bracket(**order)
    assert field in refused.value.errors and "0.0001" in refused.value.errors[field]


# --- 4. The clock ---------------------------------------------------------------------------------


def test_a_clock_outage_is_ignored_when_market_hours_do_not_matter(crossed, exchange, settings, figures):
    settings.MONITOR_MARKET_HOURS_ONLY = False
    exchange.control.add_fault("http_500", method="GET", path="/v2/clock")
    figures.add("faults injected")
    result = monitor_cycle()
    assert result.errors == 0 and result.market_open is None
    assert Position.objects.get(pk=crossed.pk).status == PositionStatus.CLOSED
    assert not [r for r in exchange.control.requests_log() if r["path"] == "/v2/clock"]
    figures.add("faults survived")


def test_a_clock_outage_never_stops_closings_under_way(crossed, exchange, figures):
    exchange.control.add_fault("no_fill", method="POST", path="/v2/orders", count=1)
    monitor_cycle()  # claimed, exit sent, not filled
    assert Position.objects.get(pk=crossed.pk).status == PositionStatus.CLOSING
    exit_order = Order.objects.get(position=crossed, role=OrderRole.EXIT)
    exchange.control.fill_order(exit_order.broker_order_id, price="147.00")
    Position.objects.create(symbol="MSFT", side="long", quantity=1, entry_price=400, stop_loss=390, take_profit=410,
                            opened_at=timezone.now())  # a position to check: the cycle asks the clock
    exchange.control.add_fault("http_500", method="GET", path="/v2/clock")
    clock_forget()  # the clock read before is due again
    figures.add("faults injected")
    result = monitor_cycle()
    assert result.errors == 1  # the clock, recorded
    position = Position.objects.get(pk=crossed.pk)
    assert position.status == PositionStatus.CLOSED and position.exit_price == Decimal("147.00")
    figures.add("faults survived")


# --- 5. Gapped quotes -----------------------------------------------------------------------------


@pytest.mark.parametrize("side,bid,ask", [
    ("long", "94", "131"),  # the midpoint (112.50) says target; a long sells at the bid: its stop
    ("short", "69", "106"),  # the midpoint (87.50) says target; a short buys back at the ask: its stop
])
def test_a_gapped_quote_is_decided_at_the_price_the_exit_trades(exchange, side, bid, ask):
    stop, target = ("95", "110") if side == "long" else ("105", "90")
    exchange.control.set_quote("GAP", bid, ask)
    exchange.control.set_position("GAP", 1 if side == "long" else -1, "100.02")
    position = Position.objects.create(symbol="GAP", side=side, quantity=1, entry_price=Decimal("100.02"),
                                       stop_loss=Decimal(stop), take_profit=Decimal(target),
                                       opened_at="2026-01-01T00:00:00Z")
    monitor_cycle()
    event = RiskEvent.objects.get(kind=RiskEventKind.TRIGGERED, position=position)
    assert event.reason == CloseReason.STOP_LOSS_HIT
    assert Decimal(event.data["bid"]) == Decimal(bid) and Decimal(event.data["ask"]) == Decimal(ask)
    assert Decimal(event.data["price_used"]) == Decimal(bid if side == "long" else ask)
    position.refresh_from_db()
    assert position.close_reason == CloseReason.STOP_LOSS_HIT and position.exit_price == Decimal(bid if side == "long" else ask)


# --- 6. NUL bytes ---------------------------------------------------------------------------------


def test_nul_bytes_are_refused_before_they_reach_the_database(exchange, figures):
    admin = User.objects.create_superuser("admin", password="pw-for-tests-only-1")
    anonymous = APIClient(**HTTPS)
    response = anonymous.get("/api/v1/positions", HTTP_AUTHORIZATION="Token abc\x00def")
    assert response.status_code in (400, 401) and response["Content-Type"].startswith("application/json")
    browser = Client(**HTTPS)
    browser.force_login(admin)
    assert browser.get("/admin/trading/position/?status__exact=%00").status_code == 400
    api = _api(admin)
    response = api.post("/api/v1/trading-state", {"mode": "HALTED", "reason": "a\x00b"}, format="json")
    assert response.status_code == 400
    figures.add("bad inputs tried", 3)


# --- 7. Look-alike symbols ------------------------------------------------------------------------


@pytest.mark.parametrize("symbol", ["ſpy", "ıbm", "ＡＡＰＬ", "SPY\u200b"])
def test_look_alike_symbols_are_refused_not_traded_as_the_real_ones(symbol, figures):
    figures.add("bad inputs tried")
    with pytest.raises(OrderValidationError) as refused:
        normalize_symbol(symbol)
    assert "symbol" in refused.value.errors


# --- 8. Hostile input from signed-in users ----------------------------------------------------------


@pytest.fixture
def admin_clients(db):
    admin = User.objects.create_superuser("admin", password="pw-for-tests-only-1")
    browser = Client(**HTTPS)
    browser.force_login(admin)
    return _api(admin), browser


def test_hostile_api_input_is_a_400(admin_clients, figures):
    api, _ = admin_clients
    deep = "[" * 50_000 + "]" * 50_000
    response = api.post("/api/v1/positions/flatten", deep, content_type="application/json")
    assert response.status_code == 400 and "nested" in response.json()["detail"]
    response = api.get("/api/v1/positions?cursor=abc")
    assert response.status_code == 400 and "cursor" in response.json()
    figures.add("bad inputs tried", 2)


@pytest.mark.parametrize("url", [
    "/admin/trading/position/close-reasons/?start=2026-01-01&end=9999-12-31",
    "/admin/trading/position/close-reasons/?start=0001-01-01&end=0001-01-01",
    "/admin/trading/position/?closed_at__year=9999",
    "/admin/trading/position/?closed_at__year=9999&closed_at__month=12",
    "/admin/trading/position/?closed_at__year=9999&closed_at__month=12&closed_at__day=31",
    "/admin/trading/position/?closed_at__year=2026&closed_at__month=13",
    "/admin/trading/position/?closed_at__year=2026&closed_at__month=2&closed_at__day=30",
])
def test_hostile_admin_input_is_never_a_500(admin_clients, url, figures):
    _, browser = admin_clients
    figures.add("bad inputs tried")
    response = browser.get(url)
    assert response.status_code < 500
    if response.status_code != 200:
        figures.add("5xx responses", 0)


# --- 9. Lenient parsing ---------------------------------------------------------------------------


def test_duplicate_json_keys_are_refused(admin_clients, exchange, figures):
    api, _ = admin_clients
    body = '{"symbol": "AAPL", "quantity": 1, "side": "buy", "stop_loss": "140", "take_profit": "160", "symbol": "MSFT"}'
    response = api.post("/api/v1/orders/test", body, content_type="application/json")
    assert response.status_code == 400 and "twice" in response.json()["detail"]
    assert not Order.objects.exists()
    figures.add("bad inputs tried")


@pytest.mark.parametrize("value", ["1_0", "１０", "١٠", "1 0", "0x10", "1e5_0"])
def test_numbers_are_plain_ascii_decimals(value, figures):
    figures.add("bad inputs tried")
    with pytest.raises(OrderValidationError):
        to_decimal(value, "quantity")
