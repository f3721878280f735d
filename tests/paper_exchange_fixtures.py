"""Pytest fixtures for the paper exchange.

Use from tests/conftest.py with ``from tests.paper_exchange_fixtures import *``.

The ``paper_exchange`` fixture starts an exchange on a free port with
``PAPER_EXCHANGE_DEFAULTS``: generous cash (console tests open hundreds of positions) and
the rate limit off.  A test asks for something else either by overriding the
``paper_exchange_options`` fixture (in a module or class) or by indirect
parametrization::

    @pytest.fixture
    def paper_exchange_options():
        return {"cash": "100000", "rate_limit": 200}

    @pytest.mark.parametrize("paper_exchange", [{"rate_limit": 5}], indirect=True)
    def test_something(paper_exchange): ...

and at run time through the control API (``set_cash``, ``set_rate_limit``, ``set_rules``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from paper_exchange.control import PaperExchangeControl
from paper_exchange.server import PaperExchangeServer
from paper_exchange.state import ExchangeState

__all__ = ["PaperExchange", "paper_exchange", "paper_exchange_options", "PAPER_API_KEY",
           "PAPER_SECRET_KEY", "PAPER_EXCHANGE_DEFAULTS", "trading_client"]

PAPER_API_KEY = "test-key-id"
PAPER_SECRET_KEY = "test-secret-key"
PAPER_EXCHANGE_DEFAULTS = {"cash": "10000000", "rate_limit": None, "data_rate_limit": None}


def _start(state_file, options: dict) -> PaperExchangeServer:
    return PaperExchangeServer(state_file=state_file, cash=options["cash"],
                               rate_limit_per_minute=options["rate_limit"],
                               data_rate_limit_per_minute=options["data_rate_limit"]).start()


@dataclass
class PaperExchange:
    url: str
    control: PaperExchangeControl
    server: PaperExchangeServer
    state_file: Path
    api_key: str = PAPER_API_KEY
    secret_key: str = PAPER_SECRET_KEY
    options: dict = field(default_factory=lambda: dict(PAPER_EXCHANGE_DEFAULTS))

    @property
    def state(self) -> ExchangeState:
        """Direct access to the in-process exchange state (take state.lock to mutate)."""
        return self.server.state

    @property
    def ws_url(self) -> str:
        """``ws://127.0.0.1:PORT``: trade updates at ``/stream``, market data at ``/v2/iex``, ``/v2/sip``."""
        return self.server.ws_url

    @property
    def trade_stream_url(self) -> str:
        return self.ws_url + "/stream"

    @property
    def data_stream_url(self) -> str:
        return self.ws_url + "/v2/iex"

    def restart(self) -> "PaperExchange":
        """Stop the server and start a new one on the same state file (new port/url)."""
        self.server.stop()
        self.server = _start(self.state_file, self.options)
        self.url = self.server.url
        self.control = PaperExchangeControl(self.url)
        return self


def trading_client(exchange: "PaperExchange", raw: bool = False):
    """alpaca-py's TradingClient pointed at the exchange, with its retries off (alpaca-py
    retries 429/504 three times with 3 s sleeps and TradingClient does not expose the knob)."""
    from alpaca.trading.client import TradingClient

    client = TradingClient(exchange.api_key, exchange.secret_key, paper=True, url_override=exchange.url,
                           raw_data=raw)
    client._retry = 0
    return client


def _django_settings(request):
    try:
        return request.getfixturevalue("settings")
    except (pytest.FixtureLookupError, pytest.skip.Exception):
        return None
    except Exception:  # Django not importable / misconfigured
        return None


@pytest.fixture
def paper_exchange_options():
    """Override in a test module/class to start the exchange differently (keys of PAPER_EXCHANGE_DEFAULTS)."""
    return {}


@pytest.fixture
def paper_exchange(request, tmp_path, paper_exchange_options):
    options = {**PAPER_EXCHANGE_DEFAULTS, **paper_exchange_options, **getattr(request, "param", {})}
    unknown = set(options) - set(PAPER_EXCHANGE_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown paper_exchange options: {sorted(unknown)}")
    state_file = tmp_path / "paper_exchange.json"
    server = _start(state_file, options)
    exchange = PaperExchange(url=server.url, control=PaperExchangeControl(server.url),
                             server=server, state_file=state_file, options=options)
    settings = _django_settings(request)
    if settings is not None:
        settings.ALPACA_TRADING_URL = server.url
        settings.ALPACA_DATA_URL = server.url
        settings.ALPACA_TRADING_STREAM_URL = exchange.trade_stream_url
        settings.ALPACA_DATA_STREAM_URL = exchange.data_stream_url
        settings.ALPACA_API_KEY = PAPER_API_KEY
        settings.ALPACA_SECRET_KEY = PAPER_SECRET_KEY
    try:
        yield exchange
    finally:
        exchange.server.stop()
