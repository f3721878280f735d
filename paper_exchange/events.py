"""The event hub between the exchange and its websocket streams.

The exchange calls ``_emit`` on every order state change (the trade_updates stream) and
``_publish_quote`` on every quote change (the market-data stream), under its lock; the hub
only drops the message into each connected session's queue, so publishing never blocks.
The last events are also kept in memory for ``GET /_paper/events``.
"""

from __future__ import annotations

import collections
import threading
import uuid

from .util import now_ts, parse_ts, plain

__all__ = ["EventHub", "EventsMixin", "TRADE_UPDATES", "MARKET_DATA"]

TRADE_UPDATES = "trade_updates"
MARKET_DATA = "market_data"
RECENT_EVENTS = 1000


class EventHub:
    """Connected stream sessions, by stream kind.  Thread-safe (its own small lock)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._sessions: set = set()
        self.published = collections.Counter()

    def register(self, session) -> None:
        with self._lock:
            self._sessions.add(session)

    def unregister(self, session) -> None:
        with self._lock:
            self._sessions.discard(session)

    def sessions(self, kind: str | None = None, path: str | None = None) -> list:
        with self._lock:
            return [s for s in self._sessions
                    if (kind is None or s.kind == kind) and (path is None or s.path == path)]

    def publish(self, kind: str, message: dict) -> None:
        self.published[kind] += 1
        for session in self.sessions(kind):
            session.deliver(message)

    def close_all(self) -> None:
        for session in self.sessions():
            session.abort()


class EventsMixin:
    """Needs ``self.hub`` (EventHub) and ``self.recent_events`` (deque)."""

    def _emit(self, event: str, o: dict, ts: str | None = None, price=None, qty=None) -> None:
        data = {"event": event, "execution_id": str(uuid.uuid4()),
                "order": self._order_out(o, nested=True), "timestamp": ts or now_ts()}
        if event in ("fill", "partial_fill"):
            pos = self.positions.get(o["symbol"])
            data.update(price=plain(price), qty=plain(qty), position_qty=plain(pos["qty"]) if pos else "0")
        message = {"stream": TRADE_UPDATES, "data": data}
        self.recent_events.append(message)
        self.hub.publish(TRADE_UPDATES, message)

    def _publish_quote(self, q: dict) -> None:
        """A quote for market-data subscribers; ``t`` stays a datetime (each codec encodes it)."""
        self.hub.publish(MARKET_DATA, {
            "T": "q", "S": q["symbol"], "bx": "V", "bp": float(q["bid"]), "bs": int(q["bid_size"]),
            "ax": "V", "ap": float(q["ask"]), "as": int(q["ask_size"]), "c": ["R"], "z": "C",
            "t": parse_ts(q["time"]),
        })

    def recent_events_json(self) -> list:
        with self.lock:
            return list(self.recent_events)
