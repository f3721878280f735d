"""Alpaca-compatible paper exchange for tests and demos.

Standard library plus msgpack; never imports alpaca.*, Django or the project.
Modules, one job each: util (errors, formats), orders (request parsing, order JSON),
rules (acceptance rules), matching (fills, legs, cancels), account (cash, positions,
buying power), history (equity snapshots, portfolio history), quotes (quotes, clock),
assets, faults, ratelimit, events (stream hub), lifecycle (submit, replace, close),
persistence (state file), state (ExchangeState), websocket (RFC 6455), streams
(trade_updates and market-data sessions), http_api / control_api (routes), server
(HTTP + websocket front end), control (client of the control API), cli (``python -m
paper_exchange``).  See docs/paper-exchange.md.
"""

from .state import ExchangeError, ExchangeState  # noqa: F401
from .server import PaperExchangeServer  # noqa: F401
from .control import PaperExchangeControl  # noqa: F401
from .cli import main, serve  # noqa: F401

__all__ = ["ExchangeError", "ExchangeState", "PaperExchangeServer", "PaperExchangeControl", "serve", "main"]
