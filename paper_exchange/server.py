"""HTTP front end of the paper exchange (stdlib only; never imports alpaca.*).

One port serves the Alpaca trading API v2 and market-data latest quotes under
``/v2/...`` (http_api.py), the control API under ``/_paper/...`` (control_api.py), and
the two websocket streams (``/stream``, ``/v2/iex``, ``/v2/sip``; streams.py) on
``Upgrade: websocket`` requests.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

from .control_api import route_control
from .faults import transform_orders
from .http_api import ENDPOINT_NOT_FOUND, Request, route_api
from .ratelimit import RATE_LIMITED
from .state import ExchangeError, ExchangeState
from .streams import TRADE_PATH, session_class
from .websocket import WebSocket, accept_key, is_upgrade

__all__ = ["PaperExchangeServer", "make_handler"]

MAX_QUERY_LENGTH = 8000
UNAUTHORIZED = {"code": 40110000, "message": "request is not authorized"}
HTML_500 = (b"<html><head><title>500 Internal Server Error</title></head>"
            b"<body><h1>500 Internal Server Error</h1></body></html>")


class _Reply(Exception):
    """Short-circuit with a ready response."""

    def __init__(self, status, payload=None, raw=None, content_type="application/json"):
        super().__init__(status)
        self.status, self.payload, self.raw, self.content_type = status, payload, raw, content_type


def _parse_target(path: str):
    split = urlsplit(path)
    query_lists = parse_qs(split.query, keep_blank_values=True)
    query = {k: (v[0] if len(v) == 1 else v) for k, v in query_lists.items()}
    return unquote(split.path), split.query, query, query_lists


def _fault_reply_before(fired: dict) -> None:
    """Faults that answer instead of the exchange (after an optional hang)."""
    if "hang" in fired:
        time.sleep(float(fired["hang"].get("delay") or 30))
    if "http_500" in fired:
        raise _Reply(500, {"code": 50010000, "message": "internal server error (paper exchange fault)"})
    if "http_429" in fired:
        raise _Reply(429, dict(RATE_LIMITED))
    if "non_json_error" in fired:
        raise _Reply(500, raw=HTML_500, content_type="text/html")
    if "reject" in fired:
        raise _Reply(403, {"code": 40310000, "message": "order rejected by paper exchange fault"})


def _fault_reply_after(fired: dict) -> None:
    """Faults that act after the exchange carried the request out."""
    if "accept_then_hang" in fired:  # carried out, then the answer never comes in time
        time.sleep(float(fired["accept_then_hang"].get("delay") or 30))
    if "accept_then_504" in fired:
        raise _Reply(504, {"code": 50400000, "message": "gateway timeout (paper exchange fault)"})


class PaperExchangeHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "PaperExchange/2.0"
    disable_nagle_algorithm = True  # headers and body are separate writes
    state: ExchangeState = None  # set by make_handler
    verbose = False

    def log_message(self, format, *args):  # noqa: A002
        if self.verbose:
            sys.stderr.write("paper-exchange: " + (format % args) + "\n")

    def do_GET(self):
        if is_upgrade(self.headers):
            self._websocket()
        else:
            self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def do_PATCH(self):
        self._dispatch("PATCH")

    def do_PUT(self):
        self._dispatch("PUT")

    # ------------------------------------------------------------ plumbing

    def _send(self, status, payload=None, raw=None, content_type="application/json", headers=None):
        if raw is None and payload is not None:
            raw = json.dumps(payload).encode("utf-8")
        body = b"" if status == 204 else (raw or b"")
        self.send_response(status)
        if status != 204:
            self.send_header("Content-Type", content_type)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def _read_body(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise _Reply(400, {"code": 40010000, "message": "request body format is invalid"}) from None

    def _dispatch(self, method):
        self._rate_headers = {}
        try:
            path, raw_query, query, query_lists = _parse_target(self.path)
            if len(raw_query) > MAX_QUERY_LENGTH:
                self._read_body()  # still drain the body so the connection stays usable
                raise _Reply(414, {"code": 41400000, "message": "request URI too long"})
            request = Request(method, path, query, query_lists, self._read_body())
            if path == "/_paper" or path.startswith("/_paper/"):
                self._send(*route_control(self.state, request))
            elif path.startswith("/v2/"):
                self._api(request)
            else:
                raise _Reply(404, dict(ENDPOINT_NOT_FOUND))
        except _Reply as r:
            self._send(r.status, r.payload, r.raw, r.content_type, self._rate_headers)
        except ExchangeError as e:
            self._send(e.status, e.payload, headers=self._rate_headers)
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as exc:  # pragma: no cover - defensive
            traceback.print_exc()
            try:
                self._send(500, {"code": 50010000, "message": f"internal error: {exc}"})
            except Exception:  # noqa: BLE001
                pass

    # ------------------------------------------------------------ trading/data API

    def _api(self, r: Request):
        state = self.state
        # The request log never contains headers (so never the secret key).
        state.log_request(r.method, r.path, r.query, r.body)
        if not self.headers.get("APCA-API-KEY-ID") or not self.headers.get("APCA-API-SECRET-KEY"):
            raise _Reply(401, UNAUTHORIZED)
        allowed, self._rate_headers = state.rate_limiter.take(r.path)
        if not allowed:
            raise _Reply(429, dict(RATE_LIMITED))
        r.fired = state.fire_faults(r.method, r.path, r.body)
        _fault_reply_before(r.fired)
        try:
            status, payload = route_api(state, r)
        except ExchangeError as e:
            status, payload = e.status, e.payload
        if status < 300 and payload is not None and r.path.startswith("/v2/orders") and (
                "unknown_status" in r.fired or "malformed" in r.fired):
            transform_orders(payload, r.fired)
        _fault_reply_after(r.fired)
        self._send(status, payload, headers=self._rate_headers)

    # ------------------------------------------------------------ websockets

    def _websocket(self):
        path = _parse_target(self.path)[0].rstrip("/") or "/"
        session_cls = session_class(path)
        key = self.headers.get("Sec-WebSocket-Key")
        if session_cls is None or not key:
            self._send(404 if session_cls is None else 400, dict(ENDPOINT_NOT_FOUND))
            return
        if path == TRADE_PATH and self.state.hub.sessions(path=path) and \
                self.state.fire_stream_fault("ws_refuse_second", path):
            self._send(429, dict(RATE_LIMITED))  # a second concurrent connection is refused
            return
        self.send_response(101, "Switching Protocols")
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept_key(key))
        self.end_headers()
        self.close_connection = True
        codec = self.headers.get("Content-Type", "").lower().startswith("application/msgpack")
        session_cls(self.state, WebSocket(self.rfile, self.connection), path, codec).run()


def make_handler(state: ExchangeState, verbose: bool = False):
    return type("BoundPaperExchangeHandler", (PaperExchangeHandler,), {"state": state, "verbose": verbose})


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # many clients at once (load tests, benchmarks) must queue, not be reset


class PaperExchangeServer:
    """The paper exchange bound to a socket.

    >>> server = PaperExchangeServer(state_file="var/paper.json", port=0).start()
    >>> server.url  # e.g. "http://127.0.0.1:54321"
    >>> server.stop()

    ``cash`` (starting cash of a new account), ``rate_limit_per_minute`` and
    ``data_rate_limit_per_minute`` are passed to :class:`ExchangeState`.
    """

    def __init__(self, state_file=None, host: str = "127.0.0.1", port: int = 0, verbose: bool = False,
                 state: ExchangeState | None = None, cash=None, rate_limit_per_minute=None,
                 data_rate_limit_per_minute=None):
        self.state = state if state is not None else ExchangeState(
            state_file, cash=cash, rate_limit_per_minute=rate_limit_per_minute,
            data_rate_limit_per_minute=data_rate_limit_per_minute)
        self.httpd = _HTTPServer((host, port), make_handler(self.state, verbose))
        self.host, self.port = self.httpd.server_address[:2]
        self._thread = None

    @property
    def url(self) -> str:
        host = self.host if ":" not in self.host else f"[{self.host}]"
        return f"http://{host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return "ws" + self.url[len("http"):]

    def start(self) -> "PaperExchangeServer":
        """Serve in a daemon thread; returns self."""
        if self._thread is None:
            self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                            name=f"paper-exchange-{self.port}", daemon=True)
            self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever(poll_interval=0.1)

    def stop(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self.state.hub.close_all()  # websocket sessions end with their connections
        self.httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
