"""Pytest fixtures for the paper exchange.

Use from tests/conftest.py with ``from tests.paper_exchange_fixtures import *``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from paper_exchange.control import PaperExchangeControl
from paper_exchange.server import PaperExchangeServer
from paper_exchange.state import ExchangeState

__all__ = ["PaperExchange", "paper_exchange", "PAPER_API_KEY", "PAPER_SECRET_KEY"]

PAPER_API_KEY = "test-key-id"
PAPER_SECRET_KEY = "test-secret-key"


@dataclass
class PaperExchange:
    url: str
    control: PaperExchangeControl
    server: PaperExchangeServer
    state_file: Path
    api_key: str = PAPER_API_KEY
    secret_key: str = PAPER_SECRET_KEY

    @property
    def state(self) -> ExchangeState:
        """Direct access to the in-process exchange state (take state.lock to mutate)."""
        return self.server.state

    def restart(self) -> "PaperExchange":
        """Stop the server and start a new one on the same state file (new port/url)."""
        self.server.stop()
        self.server = PaperExchangeServer(state_file=self.state_file).start()
        self.url = self.server.url
        self.control = PaperExchangeControl(self.url)
        return self


def _django_settings(request):
    try:
        return request.getfixturevalue("settings")
    except (pytest.FixtureLookupError, pytest.skip.Exception):
        return None
    except Exception:  # Django not importable / misconfigured
        return None


@pytest.fixture
def paper_exchange(request, tmp_path):
    state_file = tmp_path / "paper_exchange.json"
    server = PaperExchangeServer(state_file=state_file).start()
    exchange = PaperExchange(url=server.url, control=PaperExchangeControl(server.url),
                             server=server, state_file=state_file)
    settings = _django_settings(request)
    if settings is not None:
        settings.ALPACA_TRADING_URL = server.url
        settings.ALPACA_DATA_URL = server.url
        settings.ALPACA_API_KEY = PAPER_API_KEY
        settings.ALPACA_SECRET_KEY = PAPER_SECRET_KEY
    try:
        yield exchange
    finally:
        exchange.server.stop()
