"""Order requests: parsing and validating a POST /v2/orders body, creating order records,
and rendering an order as the REST API shows it.

``parse_order_request`` is pure (no exchange state): it turns a JSON body into a spec
dict or raises the 422 Alpaca answers for a malformed request.  The checks that need
the account (positions, working orders, buying power) live in rules.py.
"""

from __future__ import annotations

import uuid

from .util import (
    FINAL_STATUSES, ZERO, asset_id_for, check_increment, fmt_price, not_found, parse_decimal,
    parse_ts, plain, unprocessable,
)

__all__ = ["OrdersMixin", "parse_order_request", "ORDER_TYPES", "SIDES", "TIME_IN_FORCE",
           "ORDER_CLASSES", "ORDER_DECIMAL_FIELDS"]

ORDER_TYPES = ("market", "limit", "stop", "stop_limit")
SIDES = ("buy", "sell")
TIME_IN_FORCE = ("day", "gtc", "opg", "cls", "ioc", "fok")
ORDER_CLASSES = ("simple", "bracket", "oco", "oto")
MAX_CLIENT_ORDER_ID = 128
# Decimal-valued order fields (persisted as strings).
ORDER_DECIMAL_FIELDS = ("qty", "filled_qty", "filled_avg_price", "limit_price", "stop_price", "auto_fill_cap")
# Fields added after the first state-file version, with their defaults (old files still load).
ORDER_DEFAULTS = {"replaces": None, "replaced_by": None, "replaced_at": None, "failed_at": None}


def _bad(message: str):
    return unprocessable(message, 40010001)


def _price(container: dict, key: str, field: str):
    raw = container.get(key)
    if raw in (None, ""):
        return None
    value = parse_decimal(raw, field)
    if value <= 0:
        raise _bad(f"{field} must be > 0")
    check_increment(value, field, raw)
    return value


def _parse_basics(body: dict) -> dict:
    symbol = body.get("symbol")
    if not isinstance(symbol, str) or not symbol.strip():
        raise _bad("symbol is required")
    if body.get("notional") not in (None, ""):
        raise _bad("notional orders are not supported by the paper exchange")
    if body.get("qty") in (None, ""):
        raise _bad("qty is required")
    qty = parse_decimal(body["qty"], "qty")
    if qty <= 0:
        raise _bad("qty must be > 0")
    side = body.get("side")
    if side not in SIDES:
        raise _bad(f"invalid side {side!r}")
    otype = body.get("type") or body.get("order_type")
    if otype not in ORDER_TYPES:
        raise _bad(f"invalid order type {otype!r}")
    tif = body.get("time_in_force")
    if tif not in TIME_IN_FORCE:
        raise _bad(f"invalid time_in_force {tif!r}")
    order_class = body.get("order_class") or "simple"
    if order_class not in ORDER_CLASSES:
        raise _bad(f"invalid order_class {order_class!r}")
    return {"symbol": symbol.strip().upper(), "qty": qty, "side": side, "type": otype,
            "time_in_force": tif, "order_class": order_class,
            "extended_hours": bool(body.get("extended_hours") or False)}


def _parse_client_order_id(body: dict) -> str:
    client_order_id = body.get("client_order_id")
    if client_order_id in (None, ""):
        return str(uuid.uuid4())
    if not isinstance(client_order_id, str):
        raise _bad("client_order_id must be a string")
    if len(client_order_id) > MAX_CLIENT_ORDER_ID:
        raise _bad(f"client_order_id must be no more than {MAX_CLIENT_ORDER_ID} characters")
    return client_order_id


def _parse_prices(body: dict, spec: dict) -> None:
    otype = spec["type"]
    limit_price = _price(body, "limit_price", "limit_price")
    stop_price = _price(body, "stop_price", "stop_price")
    if otype == "limit" and limit_price is None and spec["order_class"] == "oco":
        # Alpaca's documented OCO body carries the take-profit price only in take_profit.
        limit_price = _price(body.get("take_profit") or {}, "limit_price", "take_profit.limit_price")
    if otype in ("limit", "stop_limit") and limit_price is None:
        raise _bad("limit_price is required for limit orders")
    if otype in ("stop", "stop_limit") and stop_price is None:
        raise _bad("stop_price is required for stop orders")
    spec["limit_price"] = limit_price if otype in ("limit", "stop_limit") else None
    spec["stop_price"] = stop_price if otype in ("stop", "stop_limit") else None


def _parse_legs(body: dict, spec: dict) -> None:
    """take_profit/stop_loss are only honoured for advanced order classes."""
    spec["take_profit"] = spec["stop_loss"] = None
    if spec["order_class"] == "simple":
        return
    tp_raw, sl_raw = body.get("take_profit") or None, body.get("stop_loss") or None
    if tp_raw is not None:
        if not isinstance(tp_raw, dict):
            raise _bad("take_profit must be an object")
        spec["take_profit"] = {"limit_price": _price(tp_raw, "limit_price", "take_profit.limit_price")}
        if spec["take_profit"]["limit_price"] is None:
            raise _bad("take_profit.limit_price is required")
    if sl_raw is not None:
        if not isinstance(sl_raw, dict):
            raise _bad("stop_loss must be an object")
        spec["stop_loss"] = {"stop_price": _price(sl_raw, "stop_price", "stop_loss.stop_price"),
                             "limit_price": _price(sl_raw, "limit_price", "stop_loss.limit_price")}
        if spec["stop_loss"]["stop_price"] is None:
            raise _bad("stop_loss.stop_price is required")


def _check_class_shape(spec: dict) -> None:
    """Alpaca's rules for advanced orders that need no account state."""
    order_class, tp, sl = spec["order_class"], spec["take_profit"], spec["stop_loss"]
    if order_class in ("bracket", "oco") and (tp is None or sl is None):
        raise unprocessable(f"{order_class} orders require both take_profit and stop_loss")
    if order_class == "oto" and tp is None and sl is None:
        raise unprocessable("oto orders require take_profit or stop_loss")
    if order_class == "oco" and spec["type"] != "limit":
        raise unprocessable("oco orders must be limit orders")
    if order_class in ("bracket", "oto", "oco") and spec["time_in_force"] not in ("day", "gtc"):
        raise unprocessable(f"{order_class} orders must be day or gtc orders")


def _check_extended_hours(spec: dict) -> None:
    if not spec["extended_hours"]:
        return
    if spec["type"] != "limit" or spec["time_in_force"] != "day":
        raise unprocessable("extended hours order must be DAY limit orders")
    if spec["order_class"] != "simple":
        raise unprocessable("extended hours orders must be simple orders")


def _check_fractional(spec: dict) -> None:
    """Fractional quantities: DAY orders only, simple orders only (order of Alpaca's checks)."""
    qty = spec["qty"]
    if qty == qty.to_integral_value():
        return
    if spec["time_in_force"] != "day":
        raise unprocessable("fractional orders must be DAY orders")
    if spec["order_class"] != "simple":
        raise unprocessable("fractional orders must be simple orders")


def parse_order_request(body, drop_order_class: bool = False) -> dict:
    """A POST /v2/orders body -> order spec, or the 422 Alpaca answers."""
    if not isinstance(body, dict):
        raise _bad("request body must be a JSON object")
    body = dict(body)
    if drop_order_class:
        body.pop("order_class", None)  # the original bug: order_class went missing
    spec = _parse_basics(body)
    spec["client_order_id"] = _parse_client_order_id(body)
    _parse_prices(body, spec)
    _parse_legs(body, spec)
    _check_class_shape(spec)
    _check_extended_hours(spec)
    _check_fractional(spec)
    return spec


def order_out(o: dict, legs=None) -> dict:
    """One order as Alpaca's REST API renders it (``legs``: rendered leg list or None)."""
    return {
        "id": o["id"], "client_order_id": o["client_order_id"],
        "created_at": o["created_at"], "updated_at": o["updated_at"], "submitted_at": o["submitted_at"],
        "filled_at": o["filled_at"], "expired_at": o["expired_at"], "expires_at": None,
        "canceled_at": o["canceled_at"], "failed_at": o.get("failed_at"),
        "replaced_at": o.get("replaced_at"), "replaced_by": o.get("replaced_by"), "replaces": o.get("replaces"),
        "asset_id": asset_id_for(o["symbol"]), "symbol": o["symbol"], "asset_class": "us_equity",
        "notional": None, "qty": plain(o["qty"]), "filled_qty": plain(o["filled_qty"]),
        "filled_avg_price": fmt_price(o["filled_avg_price"]), "order_class": o["order_class"],
        "order_type": o["type"], "type": o["type"], "side": o["side"], "position_intent": None,
        "time_in_force": o["time_in_force"], "limit_price": fmt_price(o["limit_price"]),
        "stop_price": fmt_price(o["stop_price"]), "status": o["status"],
        "extended_hours": o["extended_hours"], "legs": legs, "trail_percent": None,
        "trail_price": None, "hwm": None, "subtag": None, "source": None,
    }


class OrdersMixin:
    """Order records and their JSON.  Needs ``self.orders``, ``self.seq``, ``self.client_order_ids``."""

    def _new_order(self, spec: dict, ts: str, status: str) -> dict:
        self.seq += 1
        o = {
            "id": str(uuid.uuid4()), "seq": self.seq, "client_order_id": spec["client_order_id"],
            "symbol": spec["symbol"], "qty": spec["qty"], "filled_qty": ZERO, "filled_avg_price": None,
            "side": spec["side"], "type": spec["type"], "time_in_force": spec["time_in_force"],
            "limit_price": spec.get("limit_price"), "stop_price": spec.get("stop_price"),
            "order_class": spec["order_class"], "status": status,
            "extended_hours": spec["extended_hours"], "created_at": ts, "updated_at": ts,
            "submitted_at": ts, "filled_at": None, "canceled_at": None, "expired_at": None,
            "parent_id": None, "leg_role": None, "legs": [], "no_fill": False, "auto_fill_cap": None,
            **ORDER_DEFAULTS,
        }
        self.orders[o["id"]] = o
        self.client_order_ids.add(o["client_order_id"])
        return o

    def _add_leg(self, parent: dict, role: str, side: str, otype: str, limit_price, stop_price, ts: str) -> dict:
        spec = {"client_order_id": str(uuid.uuid4()), "symbol": parent["symbol"], "qty": parent["qty"],
                "side": side, "type": otype, "time_in_force": parent["time_in_force"],
                "limit_price": limit_price, "stop_price": stop_price,
                "order_class": parent["order_class"], "extended_hours": parent["extended_hours"]}
        leg = self._new_order(spec, ts, status="held")
        leg["parent_id"] = parent["id"]
        leg["leg_role"] = role
        parent["legs"].append(leg["id"])
        return leg

    def _order_out(self, o: dict, nested: bool) -> dict:
        legs = None
        if nested and o["legs"]:
            legs = [order_out(self.orders[i]) for i in o["legs"]]
        return order_out(o, legs)

    def _sorted_orders(self):
        return sorted(self.orders.values(), key=lambda o: o["seq"])

    def _get_order(self, order_id: str) -> dict:
        o = self.orders.get(str(order_id).lower())
        if o is None:
            raise _order_not_found()
        return o

    def order_json(self, order_id: str, nested: bool = False) -> dict:
        with self.lock:
            return self._order_out(self._get_order(order_id), nested)

    def order_by_client_id_json(self, client_order_id: str, nested: bool = False) -> dict:
        with self.lock:
            for o in self.orders.values():
                if o["client_order_id"] == client_order_id:
                    return self._order_out(o, nested)
            raise _order_not_found()

    def list_orders(self, status="open", limit=50, after=None, until=None, direction="desc",
                    nested=False, symbols=None, side=None) -> list:
        query = _list_query(status, limit, after, until, direction, symbols, side)
        with self.lock:
            out = [o for o in self._sorted_orders()
                   if not (nested and o.get("parent_id")) and _listed(o, query)]
            if query["direction"] == "desc":
                out.reverse()
            return [self._order_out(o, nested) for o in out[: query["limit"]]]


def _order_not_found():
    return not_found("order not found")


def _list_query(status, limit, after, until, direction, symbols, side) -> dict:
    status = status or "open"
    if status not in ("open", "closed", "all"):
        raise _bad(f"invalid status {status!r}")
    direction = direction or "desc"
    if direction not in ("asc", "desc"):
        raise _bad(f"invalid direction {direction!r}")
    if side not in (None, "", "buy", "sell"):
        raise _bad(f"invalid side {side!r}")
    try:
        limit = 50 if limit in (None, "") else int(limit)
    except ValueError:
        raise _bad(f"invalid limit {limit!r}") from None
    if limit < 1:
        raise _bad("limit must be >= 1")
    try:
        after_dt = parse_ts(after) if after else None
        until_dt = parse_ts(until) if until else None
    except ValueError:
        raise _bad("invalid after/until timestamp") from None
    wanted = {s.strip().upper() for s in symbols if s.strip()} if symbols else None
    return {"status": status, "direction": direction, "limit": min(limit, 500), "after": after_dt,
            "until": until_dt, "symbols": wanted, "side": side or None}


def _listed(o: dict, q: dict) -> bool:
    final = o["status"] in FINAL_STATUSES
    if q["status"] == "open" and final or q["status"] == "closed" and not final:
        return False
    if q["symbols"] is not None and o["symbol"] not in q["symbols"]:
        return False
    if q["side"] is not None and o["side"] != q["side"]:
        return False
    submitted = parse_ts(o["submitted_at"])
    if q["after"] and not submitted > q["after"]:
        return False
    return not (q["until"] and not submitted < q["until"])
