"""HTTP front end of the paper exchange (stdlib only; never imports alpaca.*).

Serves the Alpaca trading API v2 and market-data API v2 subset used by the
broker module under ``/v2/...`` and a control API under ``/_paper/...``.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

from .state import ExchangeError, ExchangeState

__all__ = ["PaperExchangeServer", "serve", "make_handler"]

MAX_QUERY_LENGTH = 8000
UNAUTHORIZED = {"code": 40110000, "message": "request is not authorized"}
NOT_FOUND = {"code": 40410000, "message": "endpoint not found"}


def _truthy(value) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


class _Reply(Exception):
    """Short-circuit with a ready response."""

    def __init__(self, status, payload=None, raw=None, content_type="application/json"):
        super().__init__(status)
        self.status = status
        self.payload = payload
        self.raw = raw
        self.content_type = content_type


def _transform_orders(payload, fired: dict):
    """Apply the unknown_status / malformed faults to order objects in a response."""

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

    if isinstance(payload, list):
        for item in payload:
            if isinstance(item, dict) and "body" in item and "status" in item:
                fix(item["body"])  # DELETE /v2/orders multi-status entries
            else:
                fix(item)
    elif isinstance(payload, dict):
        fix(payload)
    return payload


class PaperExchangeHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "PaperExchange/1.0"
    disable_nagle_algorithm = True  # headers and body are separate writes
    state: ExchangeState = None  # set by make_handler
    verbose = False

    # ------------------------------------------------------------ plumbing

    def log_message(self, format, *args):  # noqa: A002
        if self.verbose:
            sys.stderr.write("paper-exchange: " + (format % args) + "\n")

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def do_PATCH(self):
        self._dispatch("PATCH")

    def do_PUT(self):
        self._dispatch("PUT")

    def _send(self, status, payload=None, raw=None, content_type="application/json"):
        if raw is None and payload is not None:
            raw = json.dumps(payload).encode("utf-8")
        body = raw or b""
        self.send_response(status)
        if status != 204:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if status != 204 else 0))
        self.end_headers()
        if status != 204 and body:
            self.wfile.write(body)

    def _read_body(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise _Reply(400, {"code": 40010000, "message": "request body format is invalid"})

    def _dispatch(self, method):
        try:
            split = urlsplit(self.path)
            path = unquote(split.path)
            if len(split.query) > MAX_QUERY_LENGTH:
                # still drain the body so the connection stays usable
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                raise _Reply(414, {"code": 41400000, "message": "request URI too long"})
            query_lists = parse_qs(split.query, keep_blank_values=True)
            query = {k: (v[0] if len(v) == 1 else v) for k, v in query_lists.items()}
            body = self._read_body()
            if path.startswith("/_paper/") or path == "/_paper":
                status, payload = self._control(method, path, query, body)
                self._send(status, payload)
            elif path.startswith("/v2/"):
                self._api(method, path, query, query_lists, body)
            else:
                raise _Reply(404, NOT_FOUND)
        except _Reply as r:
            self._send(r.status, r.payload, r.raw, r.content_type)
        except ExchangeError as e:
            self._send(e.status, e.payload)
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as exc:  # pragma: no cover - defensive
            traceback.print_exc()
            try:
                self._send(500, {"code": 50010000, "message": f"internal error: {exc}"})
            except Exception:
                pass

    # ------------------------------------------------------------ trading/data API

    def _api(self, method, path, query, query_lists, body):
        state = self.state
        # The request log never contains headers (so never the secret key).
        state.log_request(method, path, query, body)
        if not self.headers.get("APCA-API-KEY-ID") or not self.headers.get("APCA-API-SECRET-KEY"):
            raise _Reply(401, UNAUTHORIZED)

        fired = state.fire_faults(method, path, body)
        if "hang" in fired:
            time.sleep(float(fired["hang"].get("delay") or 30))
        if "http_500" in fired:
            raise _Reply(500, {"code": 50010000, "message": "internal server error (paper exchange fault)"})
        if "http_429" in fired:
            raise _Reply(429, {"code": 42910000, "message": "rate limit exceeded"})
        if "non_json_error" in fired:
            raise _Reply(
                500,
                raw=b"<html><head><title>500 Internal Server Error</title></head>"
                b"<body><h1>500 Internal Server Error</h1></body></html>",
                content_type="text/html",
            )
        if "reject" in fired:
            raise _Reply(403, {"code": 40310000, "message": "order rejected by paper exchange fault"})

        try:
            status, payload = self._route(method, path, query, query_lists, body, fired)
        except ExchangeError as e:
            status, payload = e.status, e.payload
        if status < 300 and payload is not None:
            _transform_orders_if_orders(path, payload, fired)
        if "accept_then_hang" in fired:  # carried out, then the answer never comes in time
            time.sleep(float(fired["accept_then_hang"].get("delay") or 30))
        if "accept_then_504" in fired:
            raise _Reply(504, {"code": 50400000, "message": "gateway timeout (paper exchange fault)"})
        self._send(status, payload)

    def _route(self, method, path, query, query_lists, body, fired):
        state = self.state
        parts = [p for p in path.split("/") if p][1:]  # drop "v2"
        nested = _truthy(query.get("nested", "false"))

        if parts == ["account"] and method == "GET":
            return 200, state.account_json()
        if parts == ["clock"] and method == "GET":
            return 200, state.clock_json()

        if parts == ["orders"]:
            if method == "POST":
                return 200, state.submit_order(body, fault_kinds=set(fired))
            if method == "GET":
                symbols = []
                for s in query_lists.get("symbols", []):
                    symbols.extend(x for x in s.split(",") if x.strip())
                return 200, state.list_orders(
                    status=query.get("status"), limit=query.get("limit"),
                    after=query.get("after"), until=query.get("until"),
                    direction=query.get("direction"), nested=nested,
                    symbols=symbols or None,
                )
            if method == "DELETE":
                return 207, state.cancel_all()
        if parts == ["orders:by_client_order_id"] and method == "GET":
            cid = query.get("client_order_id")
            if not cid or not isinstance(cid, str):
                return 422, {"code": 40010001, "message": "client_order_id is required"}
            return 200, state.order_by_client_id_json(cid, nested=nested)
        if len(parts) == 2 and parts[0] == "orders":
            if method == "GET":
                return 200, state.order_json(parts[1], nested=nested)
            if method == "DELETE":
                state.cancel_order(parts[1])
                return 204, None

        if parts == ["positions"] and method == "GET":
            return 200, state.positions_json()
        if len(parts) == 2 and parts[0] == "positions" and method == "GET":
            return 200, state.position_json(parts[1])

        if parts == ["stocks", "quotes", "latest"] and method == "GET":
            symbols = []
            for s in query_lists.get("symbols", []):
                symbols.extend(x.strip().upper() for x in s.split(",") if x.strip())
            if not symbols:
                return 400, {"code": 40010000, "message": "missing symbols"}
            return 200, {"quotes": state.latest_quotes(symbols)}
        if len(parts) == 4 and parts[0] == "stocks" and parts[2:] == ["quotes", "latest"] and method == "GET":
            symbol = parts[1].upper()
            quotes = state.latest_quotes([symbol])
            if symbol not in quotes:
                return 404, {"code": 40410000, "message": f"no quote found for {symbol}"}
            return 200, {"symbol": symbol, "quote": quotes[symbol]}

        return 404, NOT_FOUND

    # ------------------------------------------------------------ control API

    def _control(self, method, path, query, body):
        state = self.state
        parts = [p for p in path.split("/") if p][1:]  # drop "_paper"
        ok = {"ok": True}
        if parts == ["quotes"] and method == "POST":
            return 200, {"quotes": state.set_quotes(body)}
        if parts == ["quotes"] and method == "GET":
            return 200, {"quotes": state.latest_quotes(sorted(state.quotes))}
        if parts == ["clock"] and method == "POST":
            body = body if isinstance(body, dict) else {}
            return 200, state.set_clock(body.get("is_open"))
        if parts == ["clock"] and method == "GET":
            return 200, state.clock_json()
        if parts == ["faults"]:
            if method == "POST":
                return 200, state.add_fault(body)
            if method == "DELETE":
                state.clear_faults()
                return 200, ok
            if method == "GET":
                return 200, state.list_faults()
        if parts == ["requests"]:
            if method == "GET":
                return 200, state.get_requests_log()
            if method == "DELETE":
                state.clear_requests_log()
                return 200, ok
        if len(parts) == 3 and parts[0] == "orders" and parts[2] == "fill" and method == "POST":
            return 200, state.control_fill(parts[1], body)
        if parts == ["positions"] and method == "POST":
            pos = state.set_position(body)
            return 200, {"position": pos}
        if parts == ["expire_day"] and method == "POST":
            return 200, {"expired": state.expire_day_orders()}
        if parts == ["reset"] and method == "POST":
            state.reset()
            return 200, ok
        if parts == ["state"] and method == "GET":
            return 200, state.snapshot()
        return 404, NOT_FOUND


def _transform_orders_if_orders(path, payload, fired):
    if ("unknown_status" in fired or "malformed" in fired) and path.startswith("/v2/orders"):
        _transform_orders(payload, fired)


def make_handler(state: ExchangeState, verbose: bool = False):
    return type("BoundPaperExchangeHandler", (PaperExchangeHandler,),
                {"state": state, "verbose": verbose})


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # many clients at once (load tests, benchmarks) must queue, not be reset


class PaperExchangeServer:
    """The paper exchange bound to a socket.

    >>> server = PaperExchangeServer(state_file="var/paper.json", port=0).start()
    >>> server.url  # e.g. "http://127.0.0.1:54321"
    >>> server.stop()
    """

    def __init__(self, state_file=None, host: str = "127.0.0.1", port: int = 0,
                 verbose: bool = False, state: ExchangeState | None = None):
        self.state = state if state is not None else ExchangeState(state_file)
        self.httpd = _HTTPServer((host, port), make_handler(self.state, verbose))
        self.host, self.port = self.httpd.server_address[:2]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = self.host if ":" not in self.host else f"[{self.host}]"
        return f"http://{host}:{self.port}"

    def start(self) -> "PaperExchangeServer":
        """Serve in a daemon thread; returns self."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02},
                name=f"paper-exchange-{self.port}", daemon=True,
            )
            self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever(poll_interval=0.1)

    def stop(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self.httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def serve(host: str = "127.0.0.1", port: int = 5099, state_file=None,
          verbose: bool = False, ready=None) -> None:
    """Run the exchange until SIGINT/SIGTERM (blocking).

    ``ready`` (optional callable) receives the started PaperExchangeServer.
    Signal handlers are only installed when called from the main thread.
    """
    server = PaperExchangeServer(state_file=state_file, host=host, port=port, verbose=verbose)
    stop_event = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda signum, frame: stop_event.set())
    try:
        server.start()
        if ready is not None:
            ready(server)
        while not stop_event.wait(0.5):
            pass
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
