"""broker.portfolio_history through the real alpaca-py client over HTTP. This branch's paper
exchange has no /v2/account/portfolio/history yet, so a tiny local server answers Alpaca's
documented JSON shape; the console's equity chart draws what it parses."""

import json
import threading
from datetime import UTC, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client

from trading import broker
from trading.broker import BrokerDataError, BrokerError

ALPACA_SHAPE = {  # GET /v2/account/portfolio/history, as Alpaca documents it
    "timestamp": [1764547200, 1764633600, 1764720000],
    "equity": [100000.0, None, 100512.37],
    "profit_loss": [0, None, 512.37],
    "profit_loss_pct": [0, None, 0.0051237],
    "base_value": 100000.0,
    "timeframe": "1D",
    "base_value_asof": "2026-12-01",
}


@pytest.fixture
def alpaca(settings):
    """A local stand-in for Alpaca's trading API: answers each request with `server.body`."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            parts = urlsplit(self.path)
            server.requests.append((parts.path, parse_qs(parts.query)))
            status, body = server.answer
            payload = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.requests, server.answer = [], (200, ALPACA_SHAPE)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    settings.ALPACA_TRADING_URL = f"http://127.0.0.1:{server.server_address[1]}"
    yield server
    server.shutdown()
    server.server_close()


def test_equity_points_are_decimals_at_aware_times_and_days_without_data_are_left_out(alpaca):
    history = broker.portfolio_history(period="1M", timeframe="1D")
    assert alpaca.requests == [("/v2/account/portfolio/history", {"period": ["1M"], "timeframe": ["1D"]})]
    assert history.timeframe == "1D" and history.base_value == Decimal("100000.0")
    first, last = history.points
    assert first.time == datetime(2025, 12, 1, tzinfo=UTC) and first.equity == Decimal("100000.0")
    assert last.equity == Decimal("100512.37") and last.profit_loss == Decimal("512.37")
    assert last.profit_loss_pct == Decimal("0.0051237") and last.time.tzinfo is not None


@pytest.mark.parametrize("body", [
    {"timestamp": [1, 2], "equity": [1.0]},  # lists of different lengths
    {"timestamp": [1], "equity": ["lots"]},
    {"timestamp": ["yesterday"], "equity": [1.0]},
    [1, 2, 3],
    b"<html>not json</html>",
])
def test_malformed_answers_are_a_broker_data_error(alpaca, body):
    alpaca.answer = (200, body)
    with pytest.raises(BrokerDataError):
        broker.portfolio_history()


def test_a_refusal_is_a_broker_error_and_bad_arguments_never_reach_the_broker(alpaca):
    alpaca.answer = (403, {"code": 40310000, "message": "forbidden"})
    with pytest.raises(BrokerError, match="forbidden"):
        broker.portfolio_history()
    with pytest.raises(ValueError):
        broker.portfolio_history(period="forever")


@pytest.mark.django_db
def test_the_charts_page_draws_the_equity_curve(alpaca):
    user = User.objects.create_user("viewer", password="pw-for-tests-only", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_position"))
    client = Client(HTTP_X_FORWARDED_PROTO="https")
    client.force_login(user)
    page = client.get("/admin/trading/position/charts/?period=1M").content.decode()
    assert 'id="chart-equity"' in page and "100512.37" in page


@pytest.mark.django_db
def test_the_paper_exchanges_portfolio_history_is_read_too(paper_exchange):
    """The same parsing against the paper exchange's GET /v2/account/portfolio/history."""
    paper_exchange.control.set_quote("AAPL", "149.99", "150.01")
    history = broker.portfolio_history(period="1W", timeframe="1H")
    assert history.points, "the exchange records equity as quotes and fills move it"
    assert all(p.time.tzinfo is not None and isinstance(p.equity, Decimal) for p in history.points)
    assert history.base_value is None or isinstance(history.base_value, Decimal)
