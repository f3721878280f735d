"""The JSON state file: written atomically (temp file, fsync, rename) after every change,
read back at start.  Fields added after version 1 have defaults, so an old state file
still loads.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from decimal import Decimal

from .assets import DEMO_SYMBOLS, new_asset
from .orders import ORDER_DECIMAL_FIELDS, ORDER_DEFAULTS
from .util import plain

__all__ = ["PersistenceMixin", "STATE_VERSION", "DEFAULT_RULES", "DEFAULT_STREAM_CONFIG"]

STATE_VERSION = 2
DEFAULT_RULES = {"wash_trade": True, "buying_power": True}
DEFAULT_STREAM_CONFIG = {"max_connections": 1, "iex_symbol_limit": 30, "sip_symbol_limit": None,
                         "sip_entitled": True}
_QUOTE_DECIMALS = ("bid", "ask", "bid_size", "ask_size")


def _order_to_json(o: dict) -> dict:
    d = dict(o)
    for f in ORDER_DECIMAL_FIELDS:
        if d.get(f) is not None:
            d[f] = plain(d[f])
    d["legs"] = list(o["legs"])
    return d


def _order_from_json(d: dict) -> dict:
    for f in ORDER_DECIMAL_FIELDS:
        if d.get(f) is not None:
            d[f] = Decimal(d[f])
    for k, v in ORDER_DEFAULTS.items():
        d.setdefault(k, v)
    return d


def _with(d: dict, keys, fn) -> dict:
    return {**d, **{k: fn(d[k]) for k in keys}}


class PersistenceMixin:

    def _dump(self) -> dict:
        return {
            "version": STATE_VERSION,
            "account": {"id": self.account_id, "cash": plain(self.cash), "starting_cash": plain(self.starting_cash)},
            "clock": {"is_open": self.is_open},
            "seq": self.seq,
            "orders": [_order_to_json(o) for o in self.orders.values()],
            "positions": {s: _with(p, ("qty", "avg_entry_price"), plain) for s, p in self.positions.items()},
            "quotes": {s: _with(q, _QUOTE_DECIMALS, plain) for s, q in self.quotes.items()},
            "client_order_ids": sorted(self.client_order_ids),
            "faults": copy.deepcopy(self.faults),
            "assets": copy.deepcopy(self.assets),
            "equity_history": [[t, plain(e)] for t, e in self.equity_history],
            "rules": dict(self.rules),
            "streams": dict(self.stream_config),
        }

    def _load(self) -> None:
        with open(self.state_file, encoding="utf-8") as fh:
            data = json.load(fh)
        self.account_id = data["account"]["id"]
        self.cash = Decimal(data["account"]["cash"])
        self.starting_cash = Decimal(data["account"].get("starting_cash", str(self.starting_cash)))
        self.is_open = bool(data["clock"]["is_open"])
        self.seq = int(data["seq"])
        self.orders = {d["id"]: _order_from_json(d) for d in data["orders"]}
        self.positions = {s: _with(p, ("qty", "avg_entry_price"), Decimal) for s, p in data["positions"].items()}
        self.quotes = {s: _with(q, _QUOTE_DECIMALS, Decimal) for s, q in data["quotes"].items()}
        self.client_order_ids = set(data["client_order_ids"])
        self.faults = data.get("faults", [])
        self._load_v2(data)

    def _load_v2(self, data: dict) -> None:
        """Fields of version 2; a version-1 file gets them from what it holds."""
        self.assets = data.get("assets") or {s: new_asset(s) for s in DEMO_SYMBOLS}
        for symbol in list(self.quotes) + list(self.positions) + [o["symbol"] for o in self.orders.values()]:
            self._ensure_asset(symbol)
        self.equity_history = [[int(t), Decimal(e)] for t, e in data.get("equity_history", [])]
        self.rules = {**DEFAULT_RULES, **data.get("rules", {})}
        self.stream_config = {**DEFAULT_STREAM_CONFIG, **data.get("streams", {})}

    def _persist(self) -> None:
        if not self.state_file:
            return
        directory = os.path.dirname(os.path.abspath(self.state_file))
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".paper_exchange.", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(self._dump(), fh, indent=1, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.state_file)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
