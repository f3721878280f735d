"""Tiny ``requests`` client for the paper exchange's control API (/_paper/...).

One method per control endpoint; see docs/paper-exchange.md for what each does.
"""

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
        """HTTP faults match /v2 requests; ``ws_*`` faults match stream paths (/stream, /v2/iex)."""
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

    # account, assets, rules
    def set_cash(self, cash) -> dict:
        return self._call("POST", "/account", {"cash": _num(cash)})

    def account(self) -> dict:
        return self._call("GET", "/account")

    def set_asset(self, symbol: str, **flags) -> dict:
        """flags: tradable, shortable, fractionable, marginable, easy_to_borrow (bool), status, name."""
        return self._call("POST", "/assets", {"symbol": symbol, **flags})

    def assets(self) -> list:
        return self._call("GET", "/assets")

    def set_rules(self, wash_trade: bool | None = None, buying_power: bool | None = None) -> dict:
        body = {k: v for k, v in (("wash_trade", wash_trade), ("buying_power", buying_power)) if v is not None}
        return self._call("POST", "/rules", body)

    # rate limit
    def set_rate_limit(self, per_minute: int | None, data_per_minute: int | None = None) -> dict:
        body = {"per_minute": per_minute}
        if data_per_minute is not None:
            body["data_per_minute"] = data_per_minute
        return self._call("POST", "/rate_limit", body)

    def rate_limit(self) -> dict:
        return self._call("GET", "/rate_limit")

    def reset_rate_limit_counts(self) -> dict:
        return self._call("DELETE", "/rate_limit")

    # streams
    def set_stream_config(self, **config) -> dict:
        """max_connections, iex_symbol_limit, sip_symbol_limit (int or None), sip_entitled (bool)."""
        return self._call("POST", "/streams", config)

    def streams(self) -> dict:
        return self._call("GET", "/streams")

    def events(self) -> list:
        """The last trade_updates events the exchange published (newest last)."""
        return self._call("GET", "/events")

    def clear_events(self) -> None:
        self._call("DELETE", "/events")

    def equity_history(self) -> list:
        return self._call("GET", "/equity_history")
