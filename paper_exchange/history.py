"""Equity snapshots and GET /v2/account/portfolio/history.

The exchange keeps at most one equity point per minute (the latest value seen in that
minute), recorded whenever equity may have moved: a fill, a quote, a position or cash
change.  Portfolio history follows https://docs.alpaca.markets/reference/getaccountportfoliohistory-1:
``period`` (``<n>D|W|M|A``, default 1M), ``timeframe`` (1Min, 5Min, 15Min, 1H, 1D; default
1Min below 7 days, 15Min below 30 days, else 1D) and optional ``end``; the answer holds
left-labelled ``timestamp`` (epoch seconds), ``equity``, ``profit_loss`` and
``profit_loss_pct`` series against ``base_value`` (the equity at the start of the period).
"""

from __future__ import annotations

import re
import time
from bisect import bisect_right
from decimal import Decimal

from .util import ZERO, parse_ts, plain, unprocessable

__all__ = ["HistoryMixin", "MAX_POINTS"]

MAX_POINTS = 50_000          # equity points kept (about a month of minutes)
MAX_BUCKETS = 20_000         # buckets one answer may hold
TIMEFRAMES = {"1Min": 60, "5Min": 300, "15Min": 900, "1H": 3600, "1D": 86400}
PERIOD_UNITS = {"D": 86400, "W": 7 * 86400, "M": 30 * 86400, "A": 365 * 86400}
_PERIOD = re.compile(r"^(\d+)([DWMA])$")


def _period_seconds(period: str) -> int:
    m = _PERIOD.match(period or "1M")
    if not m or int(m.group(1)) < 1:
        raise unprocessable(f"invalid period {period!r}", 40010001)
    return int(m.group(1)) * PERIOD_UNITS[m.group(2)]


def _default_timeframe(seconds: int) -> str:
    return "1Min" if seconds < 7 * 86400 else "15Min" if seconds < 30 * 86400 else "1D"


def _float(d: Decimal) -> float:
    return float(d.quantize(Decimal("0.0001")))


class HistoryMixin:
    """Needs ``self.equity_history``: list of [epoch_seconds:int, equity:Decimal]."""

    clock_time = staticmethod(time.time)  # tests may replace it

    def _record_equity(self) -> None:
        now = int(self.clock_time())
        equity = self._equity()
        history = self.equity_history
        if history and history[-1][0] // 60 == now // 60:
            history[-1] = [now, equity]
        else:
            history.append([now, equity])
            if len(history) > MAX_POINTS:
                del history[: len(history) - MAX_POINTS]

    def _equity_at(self, times: list, t: float):
        i = bisect_right(times, t)
        return self.equity_history[i - 1][1] if i else None

    def portfolio_history(self, period=None, timeframe=None, end=None) -> dict:
        seconds = _period_seconds(period or "1M")
        timeframe = timeframe or _default_timeframe(seconds)
        if timeframe not in TIMEFRAMES:
            raise unprocessable(f"invalid timeframe {timeframe!r}", 40010001)
        step = TIMEFRAMES[timeframe]
        try:
            end_t = parse_ts(end).timestamp() if end else self.clock_time()
        except ValueError:
            raise unprocessable(f"invalid end {end!r}", 40010001) from None
        with self.lock:
            self._record_equity()
            return self._history_series(end_t - seconds, end_t, step, timeframe)

    def _history_series(self, start_t: float, end_t: float, step: int, timeframe: str) -> dict:
        times = [t for t, _ in self.equity_history]
        first = max(start_t, times[0]) if times else end_t
        bucket = int(first // step) * step
        if (end_t - bucket) / step > MAX_BUCKETS:
            raise unprocessable("timeframe too small for the period: too many data points", 40010001)
        base = self._equity_at(times, start_t) or (self.equity_history[0][1] if times else self._equity())
        stamps, equity = [], []
        while bucket <= end_t:
            value = self._equity_at(times, min(bucket + step - 1e-6, end_t))
            if value is not None:
                stamps.append(bucket)
                equity.append(value)
            bucket += step
        pl = [e - base for e in equity]
        pct = [(p / base) if base else ZERO for p in pl]
        return {"timestamp": stamps, "equity": [_float(e) for e in equity],
                "profit_loss": [_float(p) for p in pl],
                "profit_loss_pct": [float(p.quantize(Decimal("0.000001"))) for p in pct],
                "base_value": _float(base), "timeframe": timeframe,
                "cashflow": {}}

    def equity_history_json(self) -> list:
        with self.lock:
            return [[t, plain(e)] for t, e in self.equity_history]
