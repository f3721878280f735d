"""Routes of the Alpaca-compatible API (``/v2/...``): trading API v2 and the market-data
latest-quote endpoints.  Each route takes a :class:`Request` and returns (status, payload).

An unknown path answers 404 ``{"message": "endpoint not found"}`` (no code), so that a
client can tell it from a missing order (404 ``{"code": 40410000, "message": "order not
found"}``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .util import is_truthy

__all__ = ["Request", "route_api", "ENDPOINT_NOT_FOUND"]

ENDPOINT_NOT_FOUND = {"message": "endpoint not found"}


@dataclass
class Request:
    method: str
    path: str
    query: dict
    query_lists: dict
    body: object
    fired: dict = field(default_factory=dict)
    params: tuple = ()

    def many(self, name: str, upper: bool = False) -> list:
        """A comma-separated or repeated query parameter as a list."""
        out = []
        for value in self.query_lists.get(name, []):
            out.extend(x.strip().upper() if upper else x.strip() for x in value.split(",") if x.strip())
        return out


def _account(state, r):
    return 200, state.account_json()


def _clock(state, r):
    return 200, state.clock_json()


def _portfolio_history(state, r):
    return 200, state.portfolio_history(r.query.get("period"), r.query.get("timeframe"), r.query.get("end"))


def _submit(state, r):
    return 200, state.submit_order(r.body, fault_kinds=set(r.fired))


def _list_orders(state, r):
    q = r.query
    return 200, state.list_orders(
        status=q.get("status"), limit=q.get("limit"), after=q.get("after"), until=q.get("until"),
        direction=q.get("direction"), nested=is_truthy(q.get("nested")),
        symbols=r.many("symbols") or None, side=q.get("side"))


def _cancel_all(state, r):
    return 207, state.cancel_all()


def _order_by_client_id(state, r):
    cid = r.query.get("client_order_id")
    if not cid or not isinstance(cid, str):
        return 422, {"code": 40010001, "message": "client_order_id is required"}
    return 200, state.order_by_client_id_json(cid, nested=is_truthy(r.query.get("nested")))


def _get_order(state, r):
    return 200, state.order_json(r.params[0], nested=is_truthy(r.query.get("nested")))


def _cancel_order(state, r):
    state.cancel_order(r.params[0])
    return 204, None


def _replace_order(state, r):
    return 200, state.replace_order(r.params[0], r.body)


def _positions(state, r):
    return 200, state.positions_json()


def _position(state, r):
    return 200, state.position_json(r.params[0])


def _close_all(state, r):
    return 207, state.close_all_positions(cancel_orders=is_truthy(r.query.get("cancel_orders")))


def _close_position(state, r):
    return 200, state.close_position(r.params[0], r.query.get("qty"), r.query.get("percentage"))


def _assets(state, r):
    return 200, state.assets_json(r.query.get("status"))


def _asset(state, r):
    return 200, state.asset_json(r.params[0])


def _latest_quotes(state, r):
    symbols = r.many("symbols", upper=True)
    if not symbols:
        return 400, {"code": 40010000, "message": "missing symbols"}
    return 200, {"quotes": state.latest_quotes(symbols)}


def _latest_quote(state, r):
    symbol = r.params[0].upper()
    quotes = state.latest_quotes([symbol])
    if symbol not in quotes:
        return 404, {"code": 40410000, "message": f"no quote found for {symbol}"}
    return 200, {"symbol": symbol, "quote": quotes[symbol]}


_SEG = r"([^/]+)"
ROUTES = [
    ("GET", r"/v2/account", _account),
    ("GET", r"/v2/clock", _clock),
    ("GET", r"/v2/account/portfolio/history", _portfolio_history),
    ("POST", r"/v2/orders", _submit),
    ("GET", r"/v2/orders", _list_orders),
    ("DELETE", r"/v2/orders", _cancel_all),
    ("GET", r"/v2/orders:by_client_order_id", _order_by_client_id),
    ("GET", rf"/v2/orders/{_SEG}", _get_order),
    ("DELETE", rf"/v2/orders/{_SEG}", _cancel_order),
    ("PATCH", rf"/v2/orders/{_SEG}", _replace_order),
    ("GET", r"/v2/positions", _positions),
    ("DELETE", r"/v2/positions", _close_all),
    ("GET", rf"/v2/positions/{_SEG}", _position),
    ("DELETE", rf"/v2/positions/{_SEG}", _close_position),
    ("GET", r"/v2/assets", _assets),
    ("GET", rf"/v2/assets/{_SEG}", _asset),
    ("GET", r"/v2/stocks/quotes/latest", _latest_quotes),
    ("GET", rf"/v2/stocks/{_SEG}/quotes/latest", _latest_quote),
]
_COMPILED = [(m, re.compile(p + r"/?$"), fn) for m, p, fn in ROUTES]


def route_api(state, request: Request):
    """(status, payload) for a /v2 request; 404 endpoint-not-found when no route matches."""
    for method, pattern, fn in _COMPILED:
        match = pattern.match(request.path)
        if match and method == request.method:
            request.params = match.groups()
            return fn(state, request)
    return 404, dict(ENDPOINT_NOT_FOUND)
