"""In-memory paper exchange with JSON-file persistence.

Pure standard library: no Django, and never alpaca.* (only the broker module
imports alpaca).  All money and quantities are ``decimal.Decimal``; they are
serialised as strings, like Alpaca's trading API does.

The public entry point is :class:`ExchangeState`.  Every public method takes the
single state lock, and every mutating method writes the state file atomically
before returning.  Errors a client should see are raised as
:class:`ExchangeError` carrying the HTTP status and the JSON payload.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import threading
import uuid
from datetime import datetime, timedelta, timezone
from decimal import ROUND_DOWN, Decimal, InvalidOperation

__all__ = [
    "ExchangeError",
    "ExchangeState",
    "FAULT_KINDS",
    "FINAL_STATUSES",
    "format_ts",
    "now_ts",
    "parse_decimal",
]

FINAL_STATUSES = frozenset(
    {"filled", "canceled", "expired", "rejected", "replaced", "done_for_day"}
)
ORDER_TYPES = ("market", "limit", "stop", "stop_limit")
SIDES = ("buy", "sell")
TIME_IN_FORCE = ("day", "gtc", "opg", "cls", "ioc", "fok")
ORDER_CLASSES = ("simple", "bracket", "oco", "oto")

FAULT_KINDS = (
    "http_500",
    "http_429",
    "accept_then_504",
    "accept_then_hang",
    "hang",
    "non_json_error",
    "drop_legs",
    "unknown_status",
    "malformed",
    "reject",
    "no_fill",
    "partial_fill",
)
# Faults that act on any /v2 request matching the fault's method/path filter.
_TRANSPORT_FAULTS = frozenset(
    {"http_500", "http_429", "accept_then_504", "accept_then_hang", "hang", "non_json_error"}
)

# Decimal-valued order fields (persisted as strings).
_ORDER_DECIMAL_FIELDS = (
    "qty",
    "filled_qty",
    "filled_avg_price",
    "limit_price",
    "stop_price",
    "auto_fill_cap",
)

CENT = Decimal("0.01")
ZERO = Decimal("0")
MAX_CLIENT_ORDER_ID = 128
REQUEST_LOG_LIMIT = 10_000
DEFAULT_CASH = Decimal("100000")
ASSET_NAMESPACE = uuid.UUID("6f1f7d2e-2b6c-4c39-9a51-3f2d5c0e8a11")


class ExchangeError(Exception):
    """An error answered to the client as JSON ``payload`` with ``status``."""

    def __init__(self, status: int, code: int, message: str, **extra):
        super().__init__(message)
        self.status = status
        self.payload = {"code": code, "message": message, **extra}


def _unprocessable(message: str, code: int = 42210000) -> ExchangeError:
    return ExchangeError(422, code, message)


# --------------------------------------------------------------------------
# formatting helpers


def format_ts(dt: datetime) -> str:
    """RFC3339 UTC with microseconds and 'Z'."""
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def now_ts() -> str:
    return format_ts(datetime.now(timezone.utc))


def parse_ts(value: str) -> datetime:
    dt = datetime.fromisoformat(value.strip().replace("z", "Z").replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt


def parse_decimal(value, field: str) -> Decimal:
    """Decimal from a JSON string/number (floats via str(), never binary)."""
    if isinstance(value, bool) or value is None or isinstance(value, (dict, list)):
        raise _unprocessable(f"invalid {field}", 40010001)
    try:
        d = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        raise _unprocessable(f"invalid {field}", 40010001) from None
    if not d.is_finite():
        raise _unprocessable(f"invalid {field}", 40010001)
    return d


def _plain(d: Decimal) -> str:
    """Decimal as plain string without exponent ("10", "1.5", "0.1234")."""
    if d == 0:
        return "0"
    s = format(d.normalize(), "f")
    return s


def fmt_qty(d):
    return None if d is None else _plain(d)


def fmt_price(d):
    """Price with at least two decimals ("150.00", "0.1234")."""
    if d is None:
        return None
    if d.as_tuple().exponent > -2:
        d = d.quantize(CENT)
    return format(d, "f")


def fmt_money(d: Decimal) -> str:
    return format(d.quantize(CENT), "f")


def fmt_ratio(d: Decimal) -> str:
    return _plain(d.quantize(Decimal("0.000001")))


def _decimals(d: Decimal) -> int:
    exp = d.normalize().as_tuple().exponent
    return -exp if exp < 0 else 0


def _check_increment(value: Decimal, field: str, raw) -> None:
    allowed = 2 if value >= 1 else 4
    if _decimals(value) > allowed:
        shown = raw if isinstance(raw, str) else _plain(value)
        raise _unprocessable(
            f"invalid {field} {shown}. sub-penny increment does not fulfill "
            "minimum pricing criteria"
        )


def _is_truthy(value) -> bool:
    if isinstance(value, bool):
        return value
    if value is None:
        return False
    return str(value).strip().lower() in ("1", "true", "yes", "on")


# --------------------------------------------------------------------------


class ExchangeState:
    """The whole paper exchange.  Thread-safe; persists to ``state_file``."""

    def __init__(self, state_file=None):
        self.state_file = os.fspath(state_file) if state_file else None
        self.lock = threading.RLock()
        self.requests_log: list[dict] = []  # in memory only
        self._reset_data()
        if self.state_file and os.path.exists(self.state_file):
            self._load()

    # ------------------------------------------------------------------ data

    def _reset_data(self, keep_account_id: str | None = None) -> None:
        self.account_id = keep_account_id or str(uuid.uuid4())
        self.cash = DEFAULT_CASH
        self.is_open = True
        self.seq = 0
        self.orders: dict[str, dict] = {}
        self.positions: dict[str, dict] = {}
        self.quotes: dict[str, dict] = {}
        self.client_order_ids: set[str] = set()
        self.faults: list[dict] = []

    def _dump(self) -> dict:
        orders = []
        for o in self.orders.values():
            d = dict(o)
            for f in _ORDER_DECIMAL_FIELDS:
                if d.get(f) is not None:
                    d[f] = _plain(d[f])
            d["legs"] = list(o["legs"])
            orders.append(d)
        return {
            "version": 1,
            "account": {"id": self.account_id, "cash": _plain(self.cash)},
            "clock": {"is_open": self.is_open},
            "seq": self.seq,
            "orders": orders,
            "positions": {
                s: {**p, "qty": _plain(p["qty"]), "avg_entry_price": _plain(p["avg_entry_price"])}
                for s, p in self.positions.items()
            },
            "quotes": {
                s: {**q, "bid": _plain(q["bid"]), "ask": _plain(q["ask"]),
                    "bid_size": _plain(q["bid_size"]), "ask_size": _plain(q["ask_size"])}
                for s, q in self.quotes.items()
            },
            "client_order_ids": sorted(self.client_order_ids),
            "faults": copy.deepcopy(self.faults),
        }

    def _load(self) -> None:
        with open(self.state_file, encoding="utf-8") as fh:
            data = json.load(fh)
        self.account_id = data["account"]["id"]
        self.cash = Decimal(data["account"]["cash"])
        self.is_open = bool(data["clock"]["is_open"])
        self.seq = int(data["seq"])
        self.orders = {}
        for d in data["orders"]:
            for f in _ORDER_DECIMAL_FIELDS:
                if d.get(f) is not None:
                    d[f] = Decimal(d[f])
            self.orders[d["id"]] = d
        self.positions = {
            s: {**p, "qty": Decimal(p["qty"]), "avg_entry_price": Decimal(p["avg_entry_price"])}
            for s, p in data["positions"].items()
        }
        self.quotes = {
            s: {**q, "bid": Decimal(q["bid"]), "ask": Decimal(q["ask"]),
                "bid_size": Decimal(q["bid_size"]), "ask_size": Decimal(q["ask_size"])}
            for s, q in data["quotes"].items()
        }
        self.client_order_ids = set(data["client_order_ids"])
        self.faults = data.get("faults", [])

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

    def snapshot(self) -> dict:
        """Full state as JSON-able dict (GET /_paper/state)."""
        with self.lock:
            data = self._dump()
            data["positions_view"] = [self._position_json(s) for s in sorted(self.positions)]
            data["requests_log_size"] = len(self.requests_log)
            return data

    # ---------------------------------------------------------- control: misc

    def reset(self) -> None:
        with self.lock:
            self._reset_data()
            self.requests_log.clear()
            self._persist()

    def set_clock(self, is_open) -> dict:
        if not isinstance(is_open, bool):
            raise _unprocessable("is_open must be a boolean", 40010001)
        with self.lock:
            self.is_open = is_open
            self._match()
            self._persist()
            return self.clock_json()

    def set_quotes(self, items) -> dict:
        if isinstance(items, dict):
            items = [items]
        if not isinstance(items, list) or not items:
            raise _unprocessable("expected a quote object or a list of them", 40010001)
        parsed = []
        for item in items:
            if not isinstance(item, dict):
                raise _unprocessable("each quote must be an object", 40010001)
            symbol = item.get("symbol")
            if not isinstance(symbol, str) or not symbol.strip():
                raise _unprocessable("symbol is required", 40010001)
            bid = parse_decimal(item.get("bid"), "bid")
            ask = parse_decimal(item.get("ask"), "ask")
            if bid < 0 or ask < 0:
                raise _unprocessable("bid and ask must be >= 0", 40010001)
            # A crossed quote (bid > ask) is accepted: real feeds produce them, and the
            # monitor must be shown one to prove it refuses to act on it.
            ts = item.get("time")
            live = not ts  # no time given: a live quote, re-stamped "now" whenever read
            if ts:
                try:
                    ts = format_ts(parse_ts(str(ts)))
                except ValueError:
                    raise _unprocessable(f"invalid time {ts!r}", 40010001) from None
            else:
                ts = now_ts()
            size = lambda k: parse_decimal(item.get(k, 100), k)  # noqa: E731
            parsed.append({
                "symbol": symbol.strip().upper(), "bid": bid, "ask": ask,
                "bid_size": size("bid_size"), "ask_size": size("ask_size"), "time": ts, "live": live,
            })
        with self.lock:
            for q in parsed:
                self.quotes[q["symbol"]] = q
            self._match()
            self._persist()
            return {q["symbol"]: self._quote_json(q["symbol"]) for q in parsed}

    def add_fault(self, spec: dict) -> dict:
        if not isinstance(spec, dict):
            raise _unprocessable("fault must be an object", 40010001)
        kind = spec.get("kind")
        if kind not in FAULT_KINDS:
            raise _unprocessable(
                f"unknown fault kind {kind!r}; expected one of {', '.join(FAULT_KINDS)}", 40010001
            )
        method = spec.get("method")
        if method is not None:
            if not isinstance(method, str):
                raise _unprocessable("method must be a string or null", 40010001)
            method = method.upper()
        path = spec.get("path")
        if path is not None and not isinstance(path, str):
            raise _unprocessable("path must be a string or null", 40010001)
        count = spec.get("count")
        if count is not None:
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise _unprocessable("count must be a positive integer or null", 40010001)
        delay = spec.get("delay")
        delay = 30.0 if delay is None else float(parse_decimal(delay, "delay"))
        fault = {"id": str(uuid.uuid4()), "kind": kind, "method": method, "path": path,
                 "count": count, "delay": delay}
        with self.lock:
            self.faults.append(fault)
            self._persist()
            return dict(fault)

    def clear_faults(self) -> None:
        with self.lock:
            self.faults = []
            self._persist()

    def list_faults(self) -> list:
        with self.lock:
            return copy.deepcopy(self.faults)

    def fire_faults(self, method: str, path: str, body) -> dict:
        """Faults firing for this /v2 request, as {kind: fault}; decrements counts."""
        method = method.upper()
        is_order_post = method == "POST" and path.rstrip("/") == "/v2/orders"
        body = body if isinstance(body, dict) else {}
        fired: dict[str, dict] = {}
        with self.lock:
            changed = False
            for fault in list(self.faults):
                kind = fault["kind"]
                if kind in fired:
                    continue
                if fault["method"] and fault["method"] != method:
                    continue
                if fault["path"] and not path.startswith(fault["path"]):
                    continue
                if kind in _TRANSPORT_FAULTS:
                    applicable = True
                elif kind == "reject":
                    applicable = is_order_post
                elif kind == "drop_legs":
                    applicable = is_order_post and body.get("order_class") in ("bracket", "oco", "oto")
                elif kind in ("no_fill", "partial_fill"):
                    applicable = is_order_post and body.get("type") == "market"
                else:  # unknown_status / malformed: responses carrying orders
                    applicable = path.startswith("/v2/orders") and not (
                        method == "DELETE" and path.rstrip("/") != "/v2/orders"
                    )
                if not applicable:
                    continue
                fired[kind] = dict(fault)
                if fault["count"] is not None:
                    fault["count"] -= 1
                    changed = True
                    if fault["count"] <= 0:
                        self.faults.remove(fault)
            if changed:
                self._persist()
        return fired

    def log_request(self, method, path, query, body) -> None:
        with self.lock:
            self.requests_log.append(
                {"method": method, "path": path, "query": query, "body": body, "time": now_ts()}
            )
            if len(self.requests_log) > REQUEST_LOG_LIMIT:
                del self.requests_log[: len(self.requests_log) - REQUEST_LOG_LIMIT]

    def get_requests_log(self) -> list:
        with self.lock:
            return copy.deepcopy(self.requests_log)

    def clear_requests_log(self) -> None:
        with self.lock:
            self.requests_log.clear()

    def set_position(self, spec: dict) -> dict | None:
        if not isinstance(spec, dict):
            raise _unprocessable("position must be an object", 40010001)
        symbol = spec.get("symbol")
        if not isinstance(symbol, str) or not symbol.strip():
            raise _unprocessable("symbol is required", 40010001)
        symbol = symbol.strip().upper()
        qty = parse_decimal(spec.get("qty"), "qty")
        with self.lock:
            if qty == 0:
                self.positions.pop(symbol, None)
                self._persist()
                return None
            price = parse_decimal(spec.get("avg_entry_price"), "avg_entry_price")
            if price <= 0:
                raise _unprocessable("avg_entry_price must be > 0", 40010001)
            self.positions[symbol] = {"symbol": symbol, "qty": qty, "avg_entry_price": price}
            self._persist()
            return self._position_json(symbol)

    def expire_day_orders(self) -> list:
        with self.lock:
            ts = now_ts()
            expired = []
            for o in self._sorted_orders():
                if o["status"] not in FINAL_STATUSES and o["time_in_force"] == "day":
                    o["status"] = "expired"
                    o["expired_at"] = ts
                    o["updated_at"] = ts
                    expired.append(o["id"])
            self._persist()
            return expired

    def control_fill(self, order_id: str, spec: dict) -> dict:
        spec = spec if isinstance(spec, dict) else {}
        with self.lock:
            o = self._get_order(order_id)
            if o["status"] in FINAL_STATUSES:
                raise _unprocessable(f"order is {o['status']}, cannot fill")
            if not self._is_live(o):
                raise _unprocessable("order is a leg whose entry has not filled completely")
            remaining = o["qty"] - o["filled_qty"]
            qty = remaining if spec.get("qty") is None else parse_decimal(spec["qty"], "qty")
            if qty <= 0 or qty > remaining:
                raise _unprocessable(f"fill qty must be > 0 and <= remaining {_plain(remaining)}")
            if spec.get("price") is not None:
                price = parse_decimal(spec["price"], "price")
            elif o["type"] == "limit":
                price = o["limit_price"]
            else:
                q = self.quotes.get(o["symbol"])
                price = None
                if q:
                    price = q["ask"] if o["side"] == "buy" else q["bid"]
                if not price or price <= 0:
                    raise _unprocessable(f"no quote for {o['symbol']}; give a price")
            if price <= 0:
                raise _unprocessable("price must be > 0")
            self._fill(o, qty, price)
            self._match()
            self._persist()
            return self.order_json(o["id"], nested=True)

    # ------------------------------------------------------------ account/clock

    def account_json(self) -> dict:
        with self.lock:
            long_mv = short_mv = ZERO
            for s, p in self.positions.items():
                mv = p["qty"] * self._current_price(s, p)
                if mv >= 0:
                    long_mv += mv
                else:
                    short_mv += mv
            equity = self.cash + long_mv + short_mv
            buying_power = max(ZERO, equity * 2 - long_mv + short_mv)
            m = fmt_money
            return {
                "id": self.account_id,
                "account_number": "PA" + self.account_id.replace("-", "")[:10].upper(),
                "status": "ACTIVE",
                "crypto_status": "ACTIVE",
                "currency": "USD",
                "cash": m(self.cash),
                "buying_power": m(buying_power),
                "regt_buying_power": m(buying_power),
                "daytrading_buying_power": m(buying_power),
                "non_marginable_buying_power": m(max(ZERO, self.cash)),
                "effective_buying_power": m(buying_power),
                "options_buying_power": m(max(ZERO, self.cash)),
                "accrued_fees": "0",
                "pending_transfer_in": "0",
                "pending_transfer_out": "0",
                "portfolio_value": m(equity),
                "equity": m(equity),
                "last_equity": m(equity),
                "long_market_value": m(long_mv),
                "short_market_value": m(short_mv),
                "position_market_value": m(long_mv - short_mv),
                "initial_margin": m((long_mv - short_mv) / 2),
                "maintenance_margin": m((long_mv - short_mv) * Decimal("0.3")),
                "last_maintenance_margin": "0",
                "sma": m(equity),
                "multiplier": "2",
                "daytrade_count": 0,
                "pattern_day_trader": False,
                "trading_blocked": False,
                "transfers_blocked": False,
                "account_blocked": False,
                "trade_suspended_by_user": False,
                "shorting_enabled": True,
                "created_at": "2024-01-02T14:30:00.000000Z",
                "options_approved_level": 0,
                "options_trading_level": 0,
            }

    def clock_json(self) -> dict:
        with self.lock:
            now = datetime.now(timezone.utc).replace(microsecond=0)
            if self.is_open:
                next_close = now + timedelta(hours=6)
                next_open = now + timedelta(hours=24)
            else:
                next_open = now + timedelta(hours=12)
                next_close = next_open + timedelta(hours=6, minutes=30)
            return {
                "timestamp": now_ts(),
                "is_open": self.is_open,
                "next_open": format_ts(next_open),
                "next_close": format_ts(next_close),
            }

    # ----------------------------------------------------------------- quotes

    def _quote_json(self, symbol: str) -> dict:
        q = self.quotes[symbol]
        return {
            "ap": float(q["ask"]), "as": float(q["ask_size"]), "ax": "V",
            "bp": float(q["bid"]), "bs": float(q["bid_size"]), "bx": "V",
            "c": ["R"], "t": now_ts() if q.get("live") else q["time"], "z": "C",
        }

    def latest_quotes(self, symbols) -> dict:
        with self.lock:
            return {s: self._quote_json(s) for s in symbols if s in self.quotes}

    # --------------------------------------------------------------- positions

    def _current_price(self, symbol: str, pos: dict) -> Decimal:
        q = self.quotes.get(symbol)
        if q:
            bid, ask = q["bid"], q["ask"]
            if bid > 0 and ask > 0:
                return (bid + ask) / 2
            if bid > 0:
                return bid
            if ask > 0:
                return ask
        return pos["avg_entry_price"]

    def _held_for_orders(self, symbol: str, side: str) -> Decimal:
        """Qty held by open live orders on ``side``; a leg group counts once."""
        groups: dict[str, Decimal] = {}
        for o in self.orders.values():
            if o["symbol"] != symbol or o["side"] != side or not self._is_live(o):
                continue
            remaining = o["qty"] - o["filled_qty"]
            # bracket/oto legs group under their entry, an oco stop under its parent
            key = o.get("parent_id") or o["id"]
            groups[key] = max(groups.get(key, ZERO), remaining)
        return sum(groups.values(), ZERO)

    def _position_json(self, symbol: str) -> dict:
        p = self.positions[symbol]
        qty = p["qty"]
        avg = p["avg_entry_price"]
        side = "long" if qty > 0 else "short"
        closing_side = "sell" if qty > 0 else "buy"
        available = max(ZERO, abs(qty) - self._held_for_orders(symbol, closing_side))
        price = self._current_price(symbol, p)
        market_value = qty * price
        cost_basis = qty * avg
        pl = market_value - cost_basis
        plpc = pl / abs(cost_basis) if cost_basis else ZERO
        return {
            "asset_id": str(uuid.uuid5(ASSET_NAMESPACE, symbol)),
            "symbol": symbol,
            "exchange": "NASDAQ",
            "asset_class": "us_equity",
            "asset_marginable": True,
            "avg_entry_price": fmt_price(avg),
            "qty": _plain(qty),
            "side": side,
            "market_value": fmt_money(market_value),
            "cost_basis": fmt_money(cost_basis),
            "unrealized_pl": fmt_money(pl),
            "unrealized_plpc": fmt_ratio(plpc),
            "unrealized_intraday_pl": fmt_money(pl),
            "unrealized_intraday_plpc": fmt_ratio(plpc),
            "current_price": fmt_price(price.quantize(Decimal("0.0001")).normalize()),
            "lastday_price": fmt_price(price.quantize(Decimal("0.0001")).normalize()),
            "change_today": "0",
            "qty_available": _plain(available if qty > 0 else -available),
        }

    def positions_json(self) -> list:
        with self.lock:
            return [self._position_json(s) for s in sorted(self.positions)]

    def position_json(self, symbol: str) -> dict:
        with self.lock:
            symbol = symbol.upper()
            if symbol not in self.positions:
                raise ExchangeError(404, 40410000, "position does not exist")
            return self._position_json(symbol)

    # ------------------------------------------------------------------ orders

    def _sorted_orders(self):
        return sorted(self.orders.values(), key=lambda o: o["seq"])

    def _get_order(self, order_id: str) -> dict:
        o = self.orders.get(str(order_id).lower())
        if o is None:
            raise ExchangeError(404, 40410000, "order not found")
        return o

    def _is_live(self, o: dict) -> bool:
        if o["status"] in FINAL_STATUSES:
            return False
        parent_id = o.get("parent_id")
        if not parent_id:
            return True
        parent = self.orders[parent_id]
        if parent["order_class"] == "oco":
            return True
        return parent["status"] == "filled"

    def _siblings(self, o: dict) -> list:
        if o.get("parent_id"):
            parent = self.orders[o["parent_id"]]
            others = [self.orders[i] for i in parent["legs"] if i != o["id"]]
            if parent["order_class"] == "oco":
                return [parent] + others
            if parent["order_class"] == "bracket":
                return others
            return []
        if o["order_class"] == "oco":
            return [self.orders[i] for i in o["legs"]]
        return []

    def _order_out(self, o: dict, nested: bool) -> dict:
        legs = None
        if nested and o["legs"]:
            legs = [self._order_out(self.orders[i], nested=False) for i in o["legs"]]
        filled_qty = o["filled_qty"]
        return {
            "id": o["id"],
            "client_order_id": o["client_order_id"],
            "created_at": o["created_at"],
            "updated_at": o["updated_at"],
            "submitted_at": o["submitted_at"],
            "filled_at": o["filled_at"],
            "expired_at": o["expired_at"],
            "expires_at": None,
            "canceled_at": o["canceled_at"],
            "failed_at": None,
            "replaced_at": None,
            "replaced_by": None,
            "replaces": None,
            "asset_id": str(uuid.uuid5(ASSET_NAMESPACE, o["symbol"])),
            "symbol": o["symbol"],
            "asset_class": "us_equity",
            "notional": None,
            "qty": _plain(o["qty"]),
            "filled_qty": _plain(filled_qty),
            "filled_avg_price": fmt_price(o["filled_avg_price"]),
            "order_class": o["order_class"],
            "order_type": o["type"],
            "type": o["type"],
            "side": o["side"],
            "position_intent": None,
            "time_in_force": o["time_in_force"],
            "limit_price": fmt_price(o["limit_price"]),
            "stop_price": fmt_price(o["stop_price"]),
            "status": o["status"],
            "extended_hours": o["extended_hours"],
            "legs": legs,
            "trail_percent": None,
            "trail_price": None,
            "hwm": None,
            "subtag": None,
            "source": None,
        }

    def order_json(self, order_id: str, nested: bool = False) -> dict:
        with self.lock:
            return self._order_out(self._get_order(order_id), nested)

    def order_by_client_id_json(self, client_order_id: str, nested: bool = False) -> dict:
        with self.lock:
            for o in self.orders.values():
                if o["client_order_id"] == client_order_id:
                    return self._order_out(o, nested)
            raise ExchangeError(404, 40410000, "order not found")

    def list_orders(self, status="open", limit=50, after=None, until=None,
                    direction="desc", nested=False, symbols=None) -> list:
        status = status or "open"
        if status not in ("open", "closed", "all"):
            raise _unprocessable(f"invalid status {status!r}", 40010001)
        direction = direction or "desc"
        if direction not in ("asc", "desc"):
            raise _unprocessable(f"invalid direction {direction!r}", 40010001)
        try:
            limit = 50 if limit in (None, "") else int(limit)
        except ValueError:
            raise _unprocessable(f"invalid limit {limit!r}", 40010001) from None
        if limit < 1:
            raise _unprocessable("limit must be >= 1", 40010001)
        limit = min(limit, 500)
        try:
            after_dt = parse_ts(after) if after else None
            until_dt = parse_ts(until) if until else None
        except ValueError:
            raise _unprocessable("invalid after/until timestamp", 40010001) from None
        wanted = {s.strip().upper() for s in symbols if s.strip()} if symbols else None
        with self.lock:
            out = []
            for o in self._sorted_orders():
                if nested and o.get("parent_id"):
                    continue
                final = o["status"] in FINAL_STATUSES
                if status == "open" and final or status == "closed" and not final:
                    continue
                if wanted is not None and o["symbol"] not in wanted:
                    continue
                submitted = parse_ts(o["submitted_at"])
                if after_dt and not submitted > after_dt:
                    continue
                if until_dt and not submitted < until_dt:
                    continue
                out.append(o)
            if direction == "desc":
                out.reverse()
            return [self._order_out(o, nested) for o in out[:limit]]

    # -- submission

    def submit_order(self, body, fault_kinds=()) -> dict:
        if not isinstance(body, dict):
            raise _unprocessable("request body must be a JSON object", 40010001)
        body = dict(body)
        if "drop_legs" in fault_kinds:
            body.pop("order_class", None)  # the original bug: order_class went missing
        symbol = body.get("symbol")
        if not isinstance(symbol, str) or not symbol.strip():
            raise _unprocessable("symbol is required", 40010001)
        symbol = symbol.strip().upper()
        if body.get("notional") not in (None, ""):
            raise _unprocessable("notional orders are not supported by the paper exchange", 40010001)
        if body.get("qty") in (None, ""):
            raise _unprocessable("qty is required", 40010001)
        qty = parse_decimal(body["qty"], "qty")
        if qty <= 0:
            raise _unprocessable("qty must be > 0", 40010001)
        side = body.get("side")
        if side not in SIDES:
            raise _unprocessable(f"invalid side {side!r}", 40010001)
        otype = body.get("type") or body.get("order_type")
        if otype not in ORDER_TYPES:
            raise _unprocessable(f"invalid order type {otype!r}", 40010001)
        tif = body.get("time_in_force")
        if tif not in TIME_IN_FORCE:
            raise _unprocessable(f"invalid time_in_force {tif!r}", 40010001)
        order_class = body.get("order_class") or "simple"
        if order_class not in ORDER_CLASSES:
            raise _unprocessable(f"invalid order_class {order_class!r}", 40010001)
        client_order_id = body.get("client_order_id")
        if client_order_id in (None, ""):
            client_order_id = str(uuid.uuid4())
        if not isinstance(client_order_id, str):
            raise _unprocessable("client_order_id must be a string", 40010001)
        if len(client_order_id) > MAX_CLIENT_ORDER_ID:
            raise _unprocessable(
                f"client_order_id must be no more than {MAX_CLIENT_ORDER_ID} characters", 40010001
            )
        extended_hours = bool(body.get("extended_hours") or False)

        def price(container, key, field):
            raw = container.get(key)
            if raw in (None, ""):
                return None
            value = parse_decimal(raw, field)
            if value <= 0:
                raise _unprocessable(f"{field} must be > 0", 40010001)
            _check_increment(value, field, raw)
            return value

        limit_price = price(body, "limit_price", "limit_price")
        stop_price = price(body, "stop_price", "stop_price")
        if otype in ("limit", "stop_limit") and limit_price is None:
            raise _unprocessable("limit_price is required for limit orders", 40010001)
        if otype in ("stop", "stop_limit") and stop_price is None:
            raise _unprocessable("stop_price is required for stop orders", 40010001)
        if otype == "market":
            limit_price = stop_price = None
        elif otype == "limit":
            stop_price = None
        elif otype == "stop":
            limit_price = None

        tp = sl = None
        if order_class != "simple":
            # take_profit/stop_loss are only honoured for advanced order classes
            tp_raw = body.get("take_profit") or None
            sl_raw = body.get("stop_loss") or None
            if tp_raw is not None:
                if not isinstance(tp_raw, dict):
                    raise _unprocessable("take_profit must be an object", 40010001)
                tp = {"limit_price": price(tp_raw, "limit_price", "take_profit.limit_price")}
                if tp["limit_price"] is None:
                    raise _unprocessable("take_profit.limit_price is required", 40010001)
            if sl_raw is not None:
                if not isinstance(sl_raw, dict):
                    raise _unprocessable("stop_loss must be an object", 40010001)
                sl = {
                    "stop_price": price(sl_raw, "stop_price", "stop_loss.stop_price"),
                    "limit_price": price(sl_raw, "limit_price", "stop_loss.limit_price"),
                }
                if sl["stop_price"] is None:
                    raise _unprocessable("stop_loss.stop_price is required", 40010001)

        with self.lock:
            if order_class in ("bracket", "oco") and (tp is None or sl is None):
                raise _unprocessable(
                    f"{order_class} orders require both take_profit and stop_loss"
                )
            if order_class == "oto" and tp is None and sl is None:
                raise _unprocessable("oto orders require take_profit or stop_loss")
            if order_class == "oco":
                pos = self.positions.get(symbol)
                exits = pos is not None and (pos["qty"] > 0) == (side == "sell")
                if not exits:
                    raise _unprocessable("oco orders must exit an existing position")
                if otype != "limit":
                    raise _unprocessable("oco orders must be limit orders")
                if limit_price is None:
                    limit_price = tp["limit_price"]
                if side == "sell" and not tp["limit_price"] > sl["stop_price"]:
                    raise _unprocessable(
                        "take_profit.limit_price must be > stop_loss.stop_price for sell oco orders")
                if side == "buy" and not tp["limit_price"] < sl["stop_price"]:
                    raise _unprocessable(
                        "take_profit.limit_price must be < stop_loss.stop_price for buy oco orders")
            elif order_class in ("bracket", "oto"):
                self._validate_exit_prices(symbol, side, otype, limit_price, tp, sl)

            if client_order_id in self.client_order_ids:
                raise ExchangeError(422, 40010001, "client_order_id must be unique")
            self._check_qty_available(symbol, side, qty)

            ts = now_ts()
            parent = self._new_order(
                symbol=symbol, qty=qty, side=side, otype=otype, tif=tif,
                limit_price=limit_price, stop_price=stop_price, order_class=order_class,
                client_order_id=client_order_id, extended_hours=extended_hours, ts=ts,
                status="new",
            )
            if "no_fill" in fault_kinds:
                parent["no_fill"] = True
            if "partial_fill" in fault_kinds:
                half = qty / 2
                if qty == qty.to_integral_value():
                    half = half.to_integral_value(rounding=ROUND_DOWN)
                parent["auto_fill_cap"] = half
            if order_class in ("bracket", "oto"):
                exit_side = "sell" if side == "buy" else "buy"
                if tp is not None:
                    self._add_leg(parent, "take_profit", exit_side, "limit", tp["limit_price"], None, ts)
                if sl is not None:
                    self._add_leg(parent, "stop_loss", exit_side,
                                  "stop_limit" if sl["limit_price"] is not None else "stop",
                                  sl["limit_price"], sl["stop_price"], ts)
            elif order_class == "oco":
                parent["leg_role"] = "take_profit"
                self._add_leg(parent, "stop_loss", side,
                              "stop_limit" if sl["limit_price"] is not None else "stop",
                              sl["limit_price"], sl["stop_price"], ts)
            self._match()
            self._persist()
            return self._order_out(parent, nested=True)

    def _validate_exit_prices(self, symbol, side, otype, limit_price, tp, sl) -> None:
        if otype in ("limit", "stop_limit"):
            base = limit_price
        else:
            q = self.quotes.get(symbol)
            base = None
            if q:
                base = q["ask"] if side == "buy" else q["bid"]
            if not base or base <= 0:
                raise _unprocessable(
                    f"unable to determine base price for {symbol}: no quote available"
                )
        if side == "buy":
            if tp and not tp["limit_price"] >= base + CENT:
                raise _unprocessable("take_profit.limit_price must be >= base_price + 0.01")
            if sl and not sl["stop_price"] <= base - CENT:
                raise _unprocessable("stop_loss.stop_price must be <= base_price - 0.01")
        else:
            if tp and not tp["limit_price"] <= base - CENT:
                raise _unprocessable("take_profit.limit_price must be <= base_price - 0.01")
            if sl and not sl["stop_price"] >= base + CENT:
                raise _unprocessable("stop_loss.stop_price must be >= base_price + 0.01")

    def _check_qty_available(self, symbol, side, qty) -> None:
        pos = self.positions.get(symbol)
        if not pos:
            return
        closing = (pos["qty"] > 0 and side == "sell") or (pos["qty"] < 0 and side == "buy")
        if not closing:
            return
        existing = abs(pos["qty"])
        held = self._held_for_orders(symbol, side)
        available = max(ZERO, existing - held)
        if qty > available:
            raise ExchangeError(
                403, 40310000,
                f"insufficient qty available for order (requested: {_plain(qty)}, "
                f"available: {_plain(available)})",
                symbol=symbol, requested=_plain(qty), available=_plain(available),
                existing_qty=_plain(existing), held_for_orders=_plain(held),
            )

    def _new_order(self, *, symbol, qty, side, otype, tif, limit_price, stop_price,
                   order_class, client_order_id, extended_hours, ts, status) -> dict:
        self.seq += 1
        o = {
            "id": str(uuid.uuid4()),
            "seq": self.seq,
            "client_order_id": client_order_id,
            "symbol": symbol,
            "qty": qty,
            "filled_qty": ZERO,
            "filled_avg_price": None,
            "side": side,
            "type": otype,
            "time_in_force": tif,
            "limit_price": limit_price,
            "stop_price": stop_price,
            "order_class": order_class,
            "status": status,
            "extended_hours": extended_hours,
            "created_at": ts,
            "updated_at": ts,
            "submitted_at": ts,
            "filled_at": None,
            "canceled_at": None,
            "expired_at": None,
            "parent_id": None,
            "leg_role": None,
            "legs": [],
            "no_fill": False,
            "auto_fill_cap": None,
        }
        self.orders[o["id"]] = o
        self.client_order_ids.add(client_order_id)
        return o

    def _add_leg(self, parent, role, side, otype, limit_price, stop_price, ts) -> dict:
        leg = self._new_order(
            symbol=parent["symbol"], qty=parent["qty"], side=side, otype=otype,
            tif=parent["time_in_force"], limit_price=limit_price, stop_price=stop_price,
            order_class=parent["order_class"], client_order_id=str(uuid.uuid4()),
            extended_hours=parent["extended_hours"], ts=ts, status="held",
        )
        leg["parent_id"] = parent["id"]
        leg["leg_role"] = role
        parent["legs"].append(leg["id"])
        return leg

    # -- cancel

    def _cancel(self, o: dict, ts: str) -> None:
        if o["status"] in FINAL_STATUSES:
            return
        o["status"] = "canceled"
        o["canceled_at"] = ts
        o["updated_at"] = ts
        for leg_id in o["legs"]:
            self._cancel(self.orders[leg_id], ts)
        for sib in self._siblings(o):
            self._cancel(sib, ts)

    def cancel_order(self, order_id: str) -> None:
        with self.lock:
            o = self._get_order(order_id)
            if o["status"] in FINAL_STATUSES:
                raise _unprocessable("order is not cancelable")
            self._cancel(o, now_ts())
            self._persist()

    def cancel_all(self) -> list:
        with self.lock:
            ts = now_ts()
            open_ids = [o["id"] for o in self._sorted_orders() if o["status"] not in FINAL_STATUSES]
            for oid in open_ids:
                self._cancel(self.orders[oid], ts)
            self._persist()
            return [
                {"id": oid, "status": 200, "body": self._order_out(self.orders[oid], nested=False)}
                for oid in open_ids
            ]

    # -- matching / fills

    def _match_price(self, o: dict):
        q = self.quotes.get(o["symbol"])
        if not q:
            return None
        if o["side"] == "buy":
            ask = q["ask"]
            if ask <= 0:
                return None
            t = o["type"]
            if t == "market":
                return ask
            if t == "limit":
                return o["limit_price"] if ask <= o["limit_price"] else None
            if t == "stop":
                return ask if ask >= o["stop_price"] else None
            if t == "stop_limit":
                return ask if o["stop_price"] <= ask <= o["limit_price"] else None
        else:
            bid = q["bid"]
            if bid <= 0:
                return None
            t = o["type"]
            if t == "market":
                return bid
            if t == "limit":
                return o["limit_price"] if bid >= o["limit_price"] else None
            if t == "stop":
                return bid if bid <= o["stop_price"] else None
            if t == "stop_limit":
                return bid if o["limit_price"] <= bid <= o["stop_price"] else None
        return None

    def _match(self) -> None:
        if not self.is_open:
            return
        for _ in range(10_000):
            filled_something = False
            for o in self._sorted_orders():
                if not self._is_live(o) or o.get("no_fill"):
                    continue
                remaining = o["qty"] - o["filled_qty"]
                cap = o.get("auto_fill_cap")
                if cap is not None:
                    remaining = min(remaining, cap - o["filled_qty"])
                if remaining <= 0:
                    continue
                px = self._match_price(o)
                if px is None:
                    continue
                self._fill(o, remaining, px)
                filled_something = True
                break
            if not filled_something:
                return

    def _fill(self, o: dict, qty: Decimal, price: Decimal) -> None:
        ts = now_ts()
        prev = o["filled_qty"]
        new_filled = prev + qty
        prev_avg = o["filled_avg_price"] or ZERO
        avg = (prev * prev_avg + qty * price) / new_filled
        if _decimals(avg) > 6:
            avg = avg.quantize(Decimal("0.000001"))
        o["filled_qty"] = new_filled
        o["filled_avg_price"] = avg
        o["filled_at"] = ts
        o["updated_at"] = ts
        o["status"] = "filled" if new_filled >= o["qty"] else "partially_filled"
        self._apply_position(o["symbol"], qty if o["side"] == "buy" else -qty, price)
        if o["side"] == "buy":
            self.cash -= qty * price
        else:
            self.cash += qty * price
        if o["status"] != "filled":
            return
        if o["order_class"] in ("bracket", "oto") and not o.get("parent_id"):
            for leg_id in o["legs"]:
                leg = self.orders[leg_id]
                if leg["status"] == "held" and leg["leg_role"] == "take_profit":
                    leg["status"] = "new"
                    leg["updated_at"] = ts
                # the stop leg stays "held" (as Alpaca shows it) but is now live
        for sib in self._siblings(o):
            self._cancel(sib, ts)

    def _apply_position(self, symbol: str, delta: Decimal, price: Decimal) -> None:
        pos = self.positions.get(symbol)
        old = pos["qty"] if pos else ZERO
        avg = pos["avg_entry_price"] if pos else ZERO
        new = old + delta
        if new == 0:
            self.positions.pop(symbol, None)
            return
        if old == 0 or (old > 0) == (delta > 0):
            avg = (abs(old) * avg + abs(delta) * price) / abs(new)
            if _decimals(avg) > 6:
                avg = avg.quantize(Decimal("0.000001"))
        elif (old > 0) != (new > 0):
            avg = price  # flipped through zero
        self.positions[symbol] = {"symbol": symbol, "qty": new, "avg_entry_price": avg}
