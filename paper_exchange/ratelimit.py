"""Per-account request budget, like Alpaca's trading API (200 requests a minute per account).

Fixed window: the first request after a window ended opens a new 60-second window;
``X-RateLimit-Reset`` is its end as unix epoch seconds.  Market-data requests
(``/v2/stocks/...``) are counted in a budget of their own, as Alpaca's data API has its
own limit.  A limit of 0 or None switches that budget off (no headers, never 429).
"""

from __future__ import annotations

import math
import threading
import time

__all__ = ["RateLimiter", "Budget", "RATE_LIMITED", "WINDOW_SECONDS"]

WINDOW_SECONDS = 60
RATE_LIMITED = {"code": 42910000, "message": "rate limit exceeded"}


class Budget:
    def __init__(self, per_minute=None):
        self.per_minute = per_minute or None
        self.window_end = 0.0
        self.used = 0
        self.requests = 0
        self.throttled = 0

    def take(self, now: float) -> tuple[bool, dict]:
        """Count one request; (allowed, headers)."""
        self.requests += 1
        if not self.per_minute:
            return True, {}
        if now >= self.window_end:
            self.window_end, self.used = now + WINDOW_SECONDS, 0
        allowed = self.used < self.per_minute
        if allowed:
            self.used += 1
        else:
            self.throttled += 1
        return allowed, {
            "X-RateLimit-Limit": str(self.per_minute),
            "X-RateLimit-Remaining": str(max(0, self.per_minute - self.used)),
            "X-RateLimit-Reset": str(math.ceil(self.window_end)),
        }

    def json(self, now: float) -> dict:
        open_window = self.per_minute and now < self.window_end
        return {"per_minute": self.per_minute,
                "remaining": (self.per_minute - self.used) if open_window else self.per_minute,
                "reset": math.ceil(self.window_end) if open_window else None,
                "requests": self.requests, "throttled": self.throttled}


class RateLimiter:
    """The trading and market-data budgets.  Thread-safe; ``clock`` is replaceable in tests."""

    def __init__(self, per_minute=None, data_per_minute=None, clock=time.time):
        self._lock = threading.Lock()
        self.clock = clock
        self.trading = Budget(per_minute)
        self.data = Budget(data_per_minute)

    def take(self, path: str) -> tuple[bool, dict]:
        budget = self.data if path.startswith("/v2/stocks/") else self.trading
        with self._lock:
            return budget.take(self.clock())

    def configure(self, spec: dict) -> dict:
        """``{"per_minute": N, "data_per_minute": M}`` (either may be omitted; 0/null = off)."""
        with self._lock:
            for key, budget in (("per_minute", self.trading), ("data_per_minute", self.data)):
                if key in spec:
                    value = spec[key]
                    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                        raise ValueError(f"{key} must be a non-negative integer or null")
                    budget.per_minute = value or None
                    budget.window_end, budget.used = 0.0, 0
        return self.json()

    def reset_counts(self) -> None:
        with self._lock:
            for budget in (self.trading, self.data):
                budget.requests = budget.throttled = budget.used = 0
                budget.window_end = 0.0

    def json(self) -> dict:
        with self._lock:
            now = self.clock()
            return {**self.trading.json(now), "data": self.data.json(now)}
