"""Routes of the control API (``/_paper/...``): what tests, demos and ``manage.py
paperquote`` use to move the market and inject faults.  No authentication (it only
listens on the loopback interface by default).  Every endpoint is listed with an example
in docs/paper-exchange.md.
"""

from __future__ import annotations

import re

from .util import unprocessable

__all__ = ["route_control"]

OK = {"ok": True}


def _body(r) -> dict:
    return r.body if isinstance(r.body, dict) else {}


def _rate_limit_post(state, r):
    try:
        return 200, state.rate_limiter.configure(_body(r))
    except ValueError as exc:
        raise unprocessable(str(exc), 40010001) from None


def _rate_limit_delete(state, r):
    state.rate_limiter.reset_counts()
    return 200, state.rate_limiter.json()


def _clear_faults(state, r):
    state.clear_faults()
    return 200, OK


def _clear_requests(state, r):
    state.clear_requests_log()
    return 200, OK


def _reset(state, r):
    state.reset()
    return 200, OK


def _clear_events(state, r):
    with state.lock:
        state.recent_events.clear()
    return 200, OK


_SEG = r"([^/]+)"
ROUTES = [
    ("POST", "/_paper/quotes", lambda s, r: (200, {"quotes": s.set_quotes(r.body)})),
    ("GET", "/_paper/quotes", lambda s, r: (200, {"quotes": s.latest_quotes(sorted(s.quotes))})),
    ("POST", "/_paper/clock", lambda s, r: (200, s.set_clock(_body(r).get("is_open")))),
    ("GET", "/_paper/clock", lambda s, r: (200, s.clock_json())),
    ("POST", "/_paper/faults", lambda s, r: (200, s.add_fault(r.body))),
    ("DELETE", "/_paper/faults", _clear_faults),
    ("GET", "/_paper/faults", lambda s, r: (200, s.list_faults())),
    ("GET", "/_paper/requests", lambda s, r: (200, s.get_requests_log())),
    ("DELETE", "/_paper/requests", _clear_requests),
    ("POST", rf"/_paper/orders/{_SEG}/fill", lambda s, r: (200, s.control_fill(r.params[0], r.body))),
    ("POST", "/_paper/positions", lambda s, r: (200, {"position": s.set_position(r.body)})),
    ("POST", "/_paper/expire_day", lambda s, r: (200, {"expired": s.expire_day_orders()})),
    ("POST", "/_paper/reset", _reset),
    ("GET", "/_paper/state", lambda s, r: (200, s.snapshot())),
    ("POST", "/_paper/account", lambda s, r: (200, s.set_cash(r.body))),
    ("GET", "/_paper/account", lambda s, r: (200, s.account_json())),
    ("POST", "/_paper/assets", lambda s, r: (200, s.set_asset(r.body))),
    ("GET", "/_paper/assets", lambda s, r: (200, s.assets_json())),
    ("POST", "/_paper/rate_limit", _rate_limit_post),
    ("GET", "/_paper/rate_limit", lambda s, r: (200, s.rate_limiter.json())),
    ("DELETE", "/_paper/rate_limit", _rate_limit_delete),
    ("POST", "/_paper/rules", lambda s, r: (200, s.set_rules(r.body))),
    ("GET", "/_paper/rules", lambda s, r: (200, dict(s.rules))),
    ("POST", "/_paper/streams", lambda s, r: (200, s.set_stream_config(r.body))),
    ("GET", "/_paper/streams", lambda s, r: (200, s.streams_json())),
    ("GET", "/_paper/events", lambda s, r: (200, s.recent_events_json())),
    ("DELETE", "/_paper/events", _clear_events),
    ("GET", "/_paper/equity_history", lambda s, r: (200, s.equity_history_json())),
]
_COMPILED = [(m, re.compile(p + r"/?$"), fn) for m, p, fn in ROUTES]


def route_control(state, request):
    for method, pattern, fn in _COMPILED:
        match = pattern.match(request.path)
        if match and method == request.method:
            request.params = match.groups()
            return fn(state, request)
    return 404, {"message": "endpoint not found"}
