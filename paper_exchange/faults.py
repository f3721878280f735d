"""Fault injection: faults are added through ``POST /_paper/faults`` and fire on the
requests (or websocket connections) they match, ``count`` times or until cleared.

HTTP faults match a /v2 request by method and path prefix.  Websocket faults (``ws_*``)
match a stream by path prefix (``/stream`` for trade_updates, ``/v2/iex`` / ``/v2/sip``
for market data; no path = every stream).  See docs/paper-exchange.md for each kind.
"""

from __future__ import annotations

import copy
import uuid

from .util import parse_decimal, unprocessable

__all__ = ["FaultsMixin", "FAULT_KINDS", "STREAM_FAULT_KINDS", "transform_orders"]

HTTP_FAULT_KINDS = (
    "http_500", "http_429", "accept_then_504", "accept_then_hang", "hang", "non_json_error",
    "drop_legs", "unknown_status", "malformed", "reject", "reject_after_accept", "no_fill",
    "partial_fill",
)
STREAM_FAULT_KINDS = (
    "ws_drop",               # close the TCP connection (no close frame)
    "ws_silence",            # stay connected but send nothing, not even pongs
    "ws_duplicate",          # send the next message twice (same execution_id)
    "ws_refuse_second",      # refuse a second concurrent connection
    "ws_auth_fail",          # answer the auth message as failed (unauthorized / 402)
    "ws_405",                # market data: next subscribe answers 405 symbol limit exceeded
    "ws_406",                # market data: auth answers 406 connection limit exceeded
    "ws_409",                # market data: auth answers 409 insufficient subscription
)
FAULT_KINDS = HTTP_FAULT_KINDS + STREAM_FAULT_KINDS
# Faults that act on any /v2 request matching the fault's method/path filter.
_TRANSPORT_FAULTS = frozenset(
    {"http_500", "http_429", "accept_then_504", "accept_then_hang", "hang", "non_json_error"}
)
_ORDER_POST_FAULTS = frozenset({"reject", "reject_after_accept"})


def _check_spec(spec) -> dict:
    if not isinstance(spec, dict):
        raise unprocessable("fault must be an object", 40010001)
    kind = spec.get("kind")
    if kind not in FAULT_KINDS:
        raise unprocessable(f"unknown fault kind {kind!r}; expected one of {', '.join(FAULT_KINDS)}", 40010001)
    method = spec.get("method")
    if method is not None and not isinstance(method, str):
        raise unprocessable("method must be a string or null", 40010001)
    path = spec.get("path")
    if path is not None and not isinstance(path, str):
        raise unprocessable("path must be a string or null", 40010001)
    count = spec.get("count")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise unprocessable("count must be a positive integer or null", 40010001)
    delay = spec.get("delay")
    delay = 30.0 if delay is None else float(parse_decimal(delay, "delay"))
    return {"id": str(uuid.uuid4()), "kind": kind, "method": method.upper() if method else None,
            "path": path, "count": count, "delay": delay}


def _applicable(kind: str, method: str, path: str, body: dict) -> bool:
    is_order_post = method == "POST" and path.rstrip("/") == "/v2/orders"
    if kind in _TRANSPORT_FAULTS:
        return True
    if kind in _ORDER_POST_FAULTS:
        return is_order_post
    if kind == "drop_legs":
        return is_order_post and body.get("order_class") in ("bracket", "oco", "oto")
    if kind in ("no_fill", "partial_fill"):
        return is_order_post and body.get("type") == "market"
    if kind in ("unknown_status", "malformed"):  # responses carrying orders
        return path.startswith("/v2/orders") and not (method == "DELETE" and path.rstrip("/") != "/v2/orders")
    return False  # ws_* never fire on HTTP requests


class FaultsMixin:
    """Needs ``self.faults`` (list) and the lock; faults are persisted with the state."""

    def add_fault(self, spec) -> dict:
        fault = _check_spec(spec)
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

    def _consume(self, fault: dict) -> bool:
        """Count one firing; True when the fault list changed."""
        if fault["count"] is None:
            return False
        fault["count"] -= 1
        if fault["count"] <= 0:
            self.faults.remove(fault)
        return True

    def fire_faults(self, method: str, path: str, body) -> dict:
        """Faults firing for this /v2 request, as {kind: fault}; decrements counts."""
        method = method.upper()
        body = body if isinstance(body, dict) else {}
        fired: dict[str, dict] = {}
        changed = False
        with self.lock:
            for fault in list(self.faults):
                kind = fault["kind"]
                if kind in fired or (fault["method"] and fault["method"] != method):
                    continue
                if fault["path"] and not path.startswith(fault["path"]):
                    continue
                if _applicable(kind, method, path, body):
                    fired[kind] = dict(fault)
                    changed |= self._consume(fault)
            if changed:
                self._persist()
        return fired

    def fire_stream_fault(self, kind: str, path: str, peek: bool = False) -> bool:
        """Does a ``ws_*`` fault of ``kind`` match this stream path?  Consumes one count
        unless ``peek``."""
        with self.lock:
            for fault in self.faults:
                if fault["kind"] == kind and (not fault["path"] or path.startswith(fault["path"])):
                    if not peek and self._consume(fault):
                        self._persist()
                    return True
            return False


def transform_orders(payload, fired: dict):
    """Apply the unknown_status / malformed faults to the order objects of a response."""

    def fix(order):
        if not isinstance(order, dict):
            return order
        if "unknown_status" in fired:
            order["status"] = "pending_frobnicated"
        if "malformed" in fired:
            order.pop("id", None)
            order["qty"] = {"value": order.get("qty")}
        for leg in order.get("legs") or []:
            fix(leg)
        return order

    items = payload if isinstance(payload, list) else [payload]
    for item in items:
        if isinstance(item, dict) and "body" in item and "status" in item:
            fix(item["body"])  # DELETE /v2/orders multi-status entries
        else:
            fix(item)
    return payload
