"""Tiny ``requests`` client for the paper exchange's control API (/_paper/...)."""

from __future__ import annotations

from decimal import Decimal

import requests

__all__ = ["PaperExchangeControl", "PaperExchangeControlError", "DEFAULT_URL"]

DEFAULT_URL = "http://127.0.0.1:5099"


class PaperExchangeControlError(RuntimeError):
    def __init__(self, status: int, message: str, payload=None):
        super().__init__(f"paper exchange answered {status}: {message}")
        self.status = status
        self.payload = payload


def _num(value):
    """Decimal/float/int/str -> string for JSON (exact, never a float)."""
    if value is None:
        return None
    if isinstance(value, float):
        return repr(value)
    return str(value) if isinstance(value, (Decimal, int)) else value


class PaperExchangeControl:
    def __init__(self, url: str = DEFAULT_URL, timeout: float = 10.0, session=None):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = session or requests.Session()

    def _call(self, method: str, path: str, json=None):
        try:
            resp = self.session.request(
                method, f"{self.url}/_paper{path}", json=json, timeout=self.timeout
            )
        except requests.RequestException as exc:
            raise PaperExchangeControlError(0, f"cannot reach {self.url}: {exc}") from exc
        try:
            payload = resp.json()
        except ValueError:
            payload = None
        if resp.status_code >= 400:
            message = payload.get("message") if isinstance(payload, dict) else resp.text[:200]
            raise PaperExchangeControlError(resp.status_code, message, payload)
        return payload

    # quotes / clock
    def set_quote(self, symbol: str, bid, ask, time: str | None = None, bid_size=None, ask_size=None) -> dict:
        item = {"symbol": symbol, "bid": _num(bid), "ask": _num(ask)}
        if time:
            item["time"] = time
        if bid_size is not None:
            item["bid_size"] = _num(bid_size)
        if ask_size is not None:
            item["ask_size"] = _num(ask_size)
        return self._call("POST", "/quotes", item)["quotes"][symbol.strip().upper()]

    def set_quotes(self, quotes: list[dict]) -> dict:
        items = [{k: _num(v) if k in ("bid", "ask", "bid_size", "ask_size") else v
                  for k, v in q.items()} for q in quotes]
        return self._call("POST", "/quotes", items)["quotes"]

    def set_clock(self, is_open: bool) -> dict:
        return self._call("POST", "/clock", {"is_open": bool(is_open)})

    # faults
    def add_fault(self, kind: str, method: str | None = None, path: str | None = None,
                  count: int | None = None, delay: float | None = None) -> dict:
        return self._call("POST", "/faults", {
            "kind": kind, "method": method, "path": path, "count": count, "delay": delay,
        })

    def clear_faults(self) -> None:
        self._call("DELETE", "/faults")

    def faults(self) -> list:
        return self._call("GET", "/faults")

    # request log
    def requests_log(self) -> list:
        return self._call("GET", "/requests")

    def clear_requests_log(self) -> None:
        self._call("DELETE", "/requests")

    # orders / positions
    def fill_order(self, order_id, qty=None, price=None) -> dict:
        body = {}
        if qty is not None:
            body["qty"] = _num(qty)
        if price is not None:
            body["price"] = _num(price)
        return self._call("POST", f"/orders/{order_id}/fill", body)

    def set_position(self, symbol: str, qty, avg_entry_price=None) -> dict | None:
        return self._call("POST", "/positions", {
            "symbol": symbol, "qty": _num(qty), "avg_entry_price": _num(avg_entry_price),
        })["position"]

    def expire_day_orders(self) -> list:
        return self._call("POST", "/expire_day")["expired"]

    def reset(self) -> None:
        self._call("POST", "/reset")

    def state(self) -> dict:
        return self._call("GET", "/state")
