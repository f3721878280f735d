"""The whole paper exchange as one object: :class:`ExchangeState`.

Pure standard library: no Django, never alpaca.*.  The class is assembled from mixins,
one module per job (orders.py, rules.py, matching.py, account.py, history.py,
quotes.py, assets.py, faults.py, events.py, lifecycle.py, persistence.py).  Every public
method takes the single state lock (an RLock), and every mutating one writes the state
file atomically before returning.  Errors a client should see are raised as
:class:`ExchangeError` carrying the HTTP status and the JSON payload.
"""

from __future__ import annotations

import collections
import copy
import os
import threading
import uuid
from decimal import Decimal

from .account import AccountMixin
from .assets import AssetsMixin, DEMO_SYMBOLS, new_asset
from .events import EventHub, EventsMixin
from .faults import FAULT_KINDS, FaultsMixin
from .history import HistoryMixin
from .lifecycle import LifecycleMixin
from .matching import MatchingMixin
from .orders import OrdersMixin
from .persistence import DEFAULT_RULES, DEFAULT_STREAM_CONFIG, PersistenceMixin
from .quotes import QuotesMixin
from .ratelimit import RateLimiter
from .rules import RulesMixin
from .util import (
    FINAL_STATUSES, ExchangeError, format_ts, now_ts, parse_decimal, unprocessable,
)

__all__ = ["ExchangeError", "ExchangeState", "FAULT_KINDS", "FINAL_STATUSES", "DEFAULT_CASH",
           "format_ts", "now_ts", "parse_decimal"]

DEFAULT_CASH = Decimal("100000")
REQUEST_LOG_LIMIT = 10_000


class ExchangeState(PersistenceMixin, AssetsMixin, OrdersMixin, RulesMixin, MatchingMixin,
                    AccountMixin, HistoryMixin, QuotesMixin, FaultsMixin, EventsMixin, LifecycleMixin):
    """The whole paper exchange.  Thread-safe; persists to ``state_file``.

    ``cash`` is the starting cash of a new account (and of ``reset()``); an existing
    state file keeps its own cash.  ``rate_limit_per_minute`` / ``data_rate_limit_per_minute``
    set the request budgets (None or 0: off).
    """

    def __init__(self, state_file=None, cash=None, rate_limit_per_minute=None,
                 data_rate_limit_per_minute=None):
        self.state_file = os.fspath(state_file) if state_file else None
        self.lock = threading.RLock()
        self.requests_log: list[dict] = []  # in memory only
        self.recent_events = collections.deque(maxlen=1000)
        self.hub = EventHub()
        self.rate_limiter = RateLimiter(rate_limit_per_minute, data_rate_limit_per_minute)
        self.starting_cash = DEFAULT_CASH if cash is None else parse_decimal(cash, "cash")
        self._reset_data()
        if self.state_file and os.path.exists(self.state_file):
            self._load()
        if not self.equity_history:
            self._record_equity()

    def _reset_data(self) -> None:
        self.account_id = str(uuid.uuid4())
        self.cash = self.starting_cash
        self.is_open = True
        self.seq = 0
        self.orders: dict[str, dict] = {}
        self.positions: dict[str, dict] = {}
        self.quotes: dict[str, dict] = {}
        self.client_order_ids: set[str] = set()
        self.faults: list[dict] = []
        self.assets = {s: new_asset(s) for s in DEMO_SYMBOLS}
        self.equity_history: list = []
        self.rules = dict(DEFAULT_RULES)
        self.stream_config = dict(DEFAULT_STREAM_CONFIG)

    def reset(self) -> None:
        with self.lock:
            self._reset_data()
            self.requests_log.clear()
            self.recent_events.clear()
            self._record_equity()
            self._persist()

    def snapshot(self) -> dict:
        """Full state as JSON-able dict (GET /_paper/state)."""
        with self.lock:
            data = self._dump()
            data["positions_view"] = [self._position_json(s) for s in sorted(self.positions)]
            data["requests_log_size"] = len(self.requests_log)
            return data

    # ------------------------------------------------------------ settings

    def set_rules(self, spec) -> dict:
        """Control API: switch the wash-trade / buying-power rules on or off."""
        if not isinstance(spec, dict) or not set(spec) <= set(DEFAULT_RULES):
            raise unprocessable(f"expected an object with keys among {sorted(DEFAULT_RULES)}", 40010001)
        if not all(isinstance(v, bool) for v in spec.values()):
            raise unprocessable("rule values must be booleans", 40010001)
        with self.lock:
            self.rules.update(spec)
            self._persist()
            return dict(self.rules)

    def set_stream_config(self, spec) -> dict:
        """Control API: connection and symbol limits of the market-data stream."""
        if not isinstance(spec, dict) or not set(spec) <= set(DEFAULT_STREAM_CONFIG):
            raise unprocessable(f"expected an object with keys among {sorted(DEFAULT_STREAM_CONFIG)}", 40010001)
        for key, value in spec.items():
            ok = isinstance(value, bool) if key == "sip_entitled" else (
                value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1))
            if not ok:
                raise unprocessable(f"invalid value for {key}: {value!r}", 40010001)
        with self.lock:
            self.stream_config.update(spec)
            self._persist()
            return dict(self.stream_config)

    # ------------------------------------------------------------ request log

    def log_request(self, method, path, query, body) -> None:
        with self.lock:
            self.requests_log.append({"method": method, "path": path, "query": query, "body": body,
                                      "time": now_ts()})
            if len(self.requests_log) > REQUEST_LOG_LIMIT:
                del self.requests_log[: len(self.requests_log) - REQUEST_LOG_LIMIT]

    def get_requests_log(self) -> list:
        with self.lock:
            return copy.deepcopy(self.requests_log)

    def clear_requests_log(self) -> None:
        with self.lock:
            self.requests_log.clear()

    def streams_json(self) -> dict:
        sessions = self.hub.sessions()
        return {"connections": [s.describe() for s in sessions],
                "published": dict(self.hub.published), "config": dict(self.stream_config)}
