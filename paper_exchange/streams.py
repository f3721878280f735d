"""The two websocket streams, served on the HTTP port (``Upgrade: websocket``).

* ``/stream`` -- Alpaca's ``trade_updates`` stream (https://docs.alpaca.markets/docs/websocket-streaming),
  as alpaca-py's ``TradingStream`` speaks it: auth ``{"action": "authenticate", "data":
  {"key_id", "secret_key"}}`` (or ``{"action": "auth", "key", "secret"}``), then ``listen``;
  answers come in binary frames (JSON, or msgpack when the client asked for
  ``Content-Type: application/msgpack``).
* ``/v2/iex``, ``/v2/sip`` (and ``/v2/test``, ``/v2/delayed_sip``) -- the stock market-data
  stream (https://docs.alpaca.markets/docs/real-time-stock-pricing-data) as alpaca-py's
  ``StockDataStream`` speaks it: msgpack frames when asked for, JSON text frames otherwise.

Each connection is a session: the HTTP handler thread reads client messages, a writer
thread sends what the exchange publishes (in order, through one queue) and applies the
``ws_*`` faults.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from datetime import datetime

import msgpack

from .events import MARKET_DATA, TRADE_UPDATES
from .util import format_ts
from .websocket import ConnectionClosed, WebSocket

__all__ = ["TradeStreamSession", "DataStreamSession", "session_class", "STREAM_PATHS"]

TRADE_PATH = "/stream"
DATA_FEEDS = ("iex", "sip", "delayed_sip", "test")
STREAM_PATHS = (TRADE_PATH,) + tuple(f"/v2/{feed}" for feed in DATA_FEEDS)
DATA_CHANNELS = ("trades", "quotes", "bars", "updatedBars", "dailyBars", "statuses", "lulds",
                 "corrections", "cancelErrors")
LIMITED_CHANNELS = ("trades", "quotes")  # Alpaca's per-plan symbol limit counts these
QUEUE_LIMIT = 10_000
AUTH_TIMEOUT = 10.0
_STOP = object()   # the session ended: the writer stops
_CLOSE = object()  # the server closes: the writer sends what came before, then a close frame


def _json_default(value):
    if isinstance(value, datetime):
        return format_ts(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


def _credentials_ok(key, secret) -> bool:
    return isinstance(key, str) and bool(key) and isinstance(secret, str) and bool(secret)


class StreamSession:
    kind = ""
    json_frames_binary = True

    def __init__(self, state, ws: WebSocket, path: str, msgpack_codec: bool):
        self.state, self.ws, self.path, self.msgpack = state, ws, path, msgpack_codec
        self.outbox: queue.Queue = queue.Queue(maxsize=QUEUE_LIMIT)
        self.authenticated = False
        self.silent = False
        self.opened = time.monotonic()
        self._writer = threading.Thread(target=self._write_loop, daemon=True, name=f"ws-writer{path}")

    # ---------------------------------------------------------------- plumbing

    def describe(self) -> dict:
        return {"stream": self.kind, "path": self.path, "authenticated": self.authenticated,
                "silent": self.silent, "codec": "msgpack" if self.msgpack else "json"}

    def encode(self, message) -> tuple[bool, bytes]:
        """(binary?, payload) for one message."""
        if self.msgpack:
            return True, msgpack.packb(message, datetime=True)
        text = json.dumps(message, default=_json_default, separators=(",", ":"))
        return self.json_frames_binary, text.encode("utf-8")

    def decode(self, opcode: int, payload: bytes):
        if opcode == 0x2:
            try:
                return msgpack.unpackb(payload)
            except Exception:  # noqa: BLE001 - not msgpack: maybe JSON in a binary frame
                pass
        return json.loads(payload)

    def send(self, message) -> None:
        """Queue a message for the writer (keeps the order of replies and events)."""
        try:
            self.outbox.put_nowait(message)
        except queue.Full:
            self.abort()  # a slow client is disconnected, as Alpaca does

    def deliver(self, message) -> None:
        """Called by the hub (under the exchange lock): queue it if this session wants it."""
        if self.wants(message):
            self.send(message)

    def wants(self, message) -> bool:
        return False

    def abort(self) -> None:
        self.ws.abort()

    def _write_one(self, message) -> None:
        if self.silent:
            return
        binary, payload = self.encode(message)
        copies = 2 if self.duplicable(message) and self.state.fire_stream_fault("ws_duplicate", self.path) else 1
        for _ in range(copies):
            self.ws.send_message(payload, binary)

    def duplicable(self, message) -> bool:
        return True

    def _check_faults(self) -> bool:
        """Apply drop/silence faults; False when the connection was dropped."""
        if self.state.fire_stream_fault("ws_drop", self.path):
            self.abort()
            return False
        if not self.silent and self.state.fire_stream_fault("ws_silence", self.path, peek=True):
            self.silent = True  # stays mute until the client goes away, like a half-dead link
            self.ws.answer_pings = False
        return True

    def _write_loop(self) -> None:
        while True:
            try:
                message = self.outbox.get(timeout=0.05)
            except queue.Empty:
                message = None
            if message is _STOP or self.ws.closed or not self._check_faults() or not self._tick():
                return
            if message is _CLOSE:
                self.ws.close(1000)
                return
            if message is not None:
                try:
                    self._write_one(message)
                except ConnectionClosed:
                    return

    def _tick(self) -> bool:
        return True

    def run(self) -> None:
        """Serve the connection until it closes (called in the HTTP handler thread)."""
        self.state.hub.register(self)
        self._writer.start()
        try:
            self.on_open()
            while True:
                opcode, payload = self.ws.recv()
                try:
                    message = self.decode(opcode, payload)
                except ValueError:
                    self.on_invalid()
                    continue
                if not self.silent:
                    self.on_message(message)
        except ConnectionClosed:
            pass
        finally:
            self.state.hub.unregister(self)
            self.outbox.put(_STOP)
            self._writer.join(timeout=2)
            self.ws.close()

    def on_open(self) -> None:
        pass

    def on_invalid(self) -> None:
        pass

    def on_message(self, message) -> None:
        pass


class TradeStreamSession(StreamSession):
    kind = TRADE_UPDATES

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.listening: list = []

    def wants(self, message) -> bool:
        return self.authenticated and TRADE_UPDATES in self.listening

    def duplicable(self, message) -> bool:
        return message.get("stream") == TRADE_UPDATES

    def describe(self) -> dict:
        return {**super().describe(), "listening": list(self.listening)}

    def _auth(self, message: dict) -> None:
        if message.get("action") == "authenticate":
            data = message.get("data") if isinstance(message.get("data"), dict) else {}
            key, secret = data.get("key_id"), data.get("secret_key")
        else:
            key, secret = message.get("key"), message.get("secret")
        ok = _credentials_ok(key, secret) and not self.state.fire_stream_fault("ws_auth_fail", self.path)
        self.authenticated = self.authenticated or ok
        self.send({"stream": "authorization",
                   "data": {"status": "authorized" if ok else "unauthorized", "action": "authenticate"}})

    def _listen(self, message: dict) -> None:
        if not self.authenticated:
            self.send({"stream": "authorization", "data": {"status": "unauthorized", "action": "listen"}})
            return
        data = message.get("data") if isinstance(message.get("data"), dict) else {}
        streams = data.get("streams") if isinstance(data.get("streams"), list) else []
        self.listening = [s for s in streams if s == TRADE_UPDATES]
        self.send({"stream": "listening", "data": {"streams": list(self.listening)}})

    def on_message(self, message) -> None:
        if not isinstance(message, dict):
            return
        action = message.get("action")
        if action in ("authenticate", "auth"):
            self._auth(message)
        elif action == "listen":
            self._listen(message)


class DataStreamSession(StreamSession):
    kind = MARKET_DATA
    json_frames_binary = False  # the data stream speaks text frames (JSON)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.subscriptions = {channel: [] for channel in DATA_CHANNELS}
        self.feed = self.path.rsplit("/", 1)[-1]

    def describe(self) -> dict:
        return {**super().describe(), "subscriptions": {c: list(v) for c, v in self.subscriptions.items() if v}}

    def error(self, code: int, msg: str) -> None:
        self.send([{"T": "error", "code": code, "msg": msg}])

    def wants(self, message) -> bool:
        quotes = self.subscriptions["quotes"]
        return self.authenticated and message.get("T") == "q" and (message["S"] in quotes or "*" in quotes)

    def deliver(self, message) -> None:
        if self.wants(message):
            self.send([message])  # data points arrive in arrays

    def duplicable(self, message) -> bool:
        return isinstance(message, list) and bool(message) and message[0].get("T") == "q"

    def on_open(self) -> None:
        self.send([{"T": "success", "msg": "connected"}])

    def on_invalid(self) -> None:
        self.error(400, "invalid syntax")

    def _tick(self) -> bool:
        if not self.authenticated and time.monotonic() - self.opened > AUTH_TIMEOUT:
            self._write_one([{"T": "error", "code": 404, "msg": "auth timeout"}])
            self.ws.close(1000, "auth timeout")
            return False
        return True

    def _refusal(self, key, secret):
        """The error (code, msg) Alpaca answers to this auth message, or None."""
        fault = self.state.fire_stream_fault
        if self.authenticated:
            return 403, "already authenticated"
        if not _credentials_ok(key, secret) or fault("ws_auth_fail", self.path):
            return 402, "auth failed"
        if fault("ws_409", self.path) or (self.feed == "sip" and not self.state.stream_config["sip_entitled"]):
            return 409, "insufficient subscription"
        others = [s for s in self.state.hub.sessions(MARKET_DATA, self.path) if s is not self and s.authenticated]
        limit = self.state.stream_config["max_connections"]
        if fault("ws_406", self.path) or (limit and len(others) >= limit) or (
                others and fault("ws_refuse_second", self.path)):
            return 406, "connection limit exceeded"
        return None

    def _auth(self, message: dict) -> None:
        refusal = self._refusal(message.get("key"), message.get("secret"))
        if refusal is None:
            self.authenticated = True
            self.send([{"T": "success", "msg": "authenticated"}])
            return
        self.error(*refusal)
        if refusal[0] != 403:
            self.send(_CLOSE)  # Alpaca closes the connection after these errors

    def _symbol_limit(self):
        key = "iex_symbol_limit" if self.feed == "iex" else "sip_symbol_limit"
        return self.state.stream_config[key]

    def _subscription_message(self) -> list:
        return [{"T": "subscription", **{c: list(v) for c, v in self.subscriptions.items()}}]

    def _change(self, message: dict, subscribe: bool) -> None:
        if not self.authenticated:
            self.error(401, "not authenticated")
            return
        wanted = {c: message.get(c) for c in DATA_CHANNELS if c in message}
        if not all(isinstance(v, list) and all(isinstance(s, str) for s in v) for v in wanted.values()):
            self.error(400, "invalid syntax")
            return
        updated = {c: list(v) for c, v in self.subscriptions.items()}
        for channel, symbols in wanted.items():
            for symbol in (s.strip().upper() if s != "*" else s for s in symbols):
                if subscribe and symbol not in updated[channel]:
                    updated[channel].append(symbol)
                elif not subscribe and symbol in updated[channel]:
                    updated[channel].remove(symbol)
        if subscribe and self._over_limit(updated):
            self.error(405, "symbol limit exceeded")  # subscriptions stay as they were
            return
        self.subscriptions = updated
        self.send(self._subscription_message())

    def _over_limit(self, updated: dict) -> bool:
        if self.state.fire_stream_fault("ws_405", self.path):
            return True
        limit = self._symbol_limit()
        symbols = {s for c in LIMITED_CHANNELS for s in updated[c]}
        return bool(limit) and len(symbols) > limit

    def on_message(self, message) -> None:
        if not isinstance(message, dict):
            self.error(400, "invalid syntax")
            return
        action = message.get("action")
        if action == "auth":
            self._auth(message)
        elif action in ("subscribe", "unsubscribe"):
            self._change(message, subscribe=action == "subscribe")
        else:
            self.error(400, "invalid syntax")


def session_class(path: str):
    if path == TRADE_PATH:
        return TradeStreamSession
    if path in STREAM_PATHS:
        return DataStreamSession
    return None
