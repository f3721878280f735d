"""Alpaca-compatible paper exchange for tests and demos (stdlib only).

Never imports alpaca.* and nothing from Django: see state.py / server.py.
"""

from .state import ExchangeError, ExchangeState  # noqa: F401
from .server import PaperExchangeServer, serve  # noqa: F401

__all__ = ["ExchangeError", "ExchangeState", "PaperExchangeServer", "serve"]
