"""Quotes and the market clock.

Quotes are set through the control API (``POST /_paper/quotes``, which ``manage.py
paperquote`` uses); each new quote adds its symbol to the asset list, fills whatever it
makes marketable, and is pushed to market-data stream subscribers.  A quote set without
a time is "live": it is re-stamped "now" whenever it is read.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from .util import format_ts, now_ts, parse_decimal, parse_ts, unprocessable

__all__ = ["QuotesMixin", "parse_quote_items"]


def _parse_quote(item) -> dict:
    if not isinstance(item, dict):
        raise unprocessable("each quote must be an object", 40010001)
    symbol = item.get("symbol")
    if not isinstance(symbol, str) or not symbol.strip():
        raise unprocessable("symbol is required", 40010001)
    bid, ask = parse_decimal(item.get("bid"), "bid"), parse_decimal(item.get("ask"), "ask")
    if bid < 0 or ask < 0:
        raise unprocessable("bid and ask must be >= 0", 40010001)
    # A crossed quote (bid > ask) is accepted: real feeds produce them, and the
    # monitor must be shown one to prove it refuses to act on it.
    ts = item.get("time")
    live = not ts
    if ts:
        try:
            ts = format_ts(parse_ts(str(ts)))
        except ValueError:
            raise unprocessable(f"invalid time {ts!r}", 40010001) from None
    else:
        ts = now_ts()
    return {"symbol": symbol.strip().upper(), "bid": bid, "ask": ask,
            "bid_size": parse_decimal(item.get("bid_size", 100), "bid_size"),
            "ask_size": parse_decimal(item.get("ask_size", 100), "ask_size"), "time": ts, "live": live}


def parse_quote_items(items) -> list:
    if isinstance(items, dict):
        items = [items]
    if not isinstance(items, list) or not items:
        raise unprocessable("expected a quote object or a list of them", 40010001)
    return [_parse_quote(item) for item in items]


class QuotesMixin:

    def set_quotes(self, items) -> dict:
        parsed = parse_quote_items(items)
        with self.lock:
            for q in parsed:
                self.quotes[q["symbol"]] = q
                self._ensure_asset(q["symbol"])
                self._publish_quote(q)
            self._match()
            self._record_equity()
            self._persist()
            return {q["symbol"]: self._quote_json(q["symbol"]) for q in parsed}

    def _quote_time(self, symbol: str) -> str:
        q = self.quotes[symbol]
        return now_ts() if q.get("live") else q["time"]

    def _quote_json(self, symbol: str) -> dict:
        q = self.quotes[symbol]
        return {"ap": float(q["ask"]), "as": float(q["ask_size"]), "ax": "V",
                "bp": float(q["bid"]), "bs": float(q["bid_size"]), "bx": "V",
                "c": ["R"], "t": self._quote_time(symbol), "z": "C"}

    def latest_quotes(self, symbols) -> dict:
        with self.lock:
            return {s: self._quote_json(s) for s in symbols if s in self.quotes}

    # ------------------------------------------------------------ clock

    def set_clock(self, is_open) -> dict:
        if not isinstance(is_open, bool):
            raise unprocessable("is_open must be a boolean", 40010001)
        with self.lock:
            self.is_open = is_open
            self._match()
            self._persist()
            return self.clock_json()

    def clock_json(self) -> dict:
        with self.lock:
            now = datetime.now(timezone.utc).replace(microsecond=0)
            if self.is_open:
                next_close, next_open = now + timedelta(hours=6), now + timedelta(hours=24)
            else:
                next_open = now + timedelta(hours=12)
                next_close = next_open + timedelta(hours=6, minutes=30)
            return {"timestamp": now_ts(), "is_open": self.is_open,
                    "next_open": format_ts(next_open), "next_close": format_ts(next_close)}
