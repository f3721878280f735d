"""Command line: ``python -m paper_exchange --port 5099 --state-file var/paper_exchange.json
--demo-quotes --rate-limit 200 [--cash N]``.

``main(argv)`` is what ``manage.py runpaperexchange`` can delegate to; ``run_until_signal``
serves a started exchange until SIGINT/SIGTERM and stops it cleanly.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

__all__ = ["main", "serve", "build_parser", "run_until_signal", "DEMO_QUOTES", "seed_demo_quotes"]

DEMO_QUOTES = [
    ("AAPL", "189.98", "190.02"),
    ("MSFT", "414.95", "415.05"),
    ("NVDA", "131.97", "132.03"),
    ("SPY", "583.99", "584.01"),
    ("TSLA", "251.90", "252.10"),
]


def seed_demo_quotes(state) -> bool:
    """A few quotes when the exchange has none (what ``--demo-quotes`` does); True if seeded."""
    if state.snapshot().get("quotes"):
        return False
    state.set_quotes([{"symbol": s, "bid": bid, "ask": ask} for s, bid, ask in DEMO_QUOTES])
    return True


def run_until_signal(server, ready=None, demo_quotes: bool = False) -> None:
    """Start ``server``, call ``ready(server)``, serve until SIGINT/SIGTERM, then stop.

    Signal handlers are only installed when called from the main thread.
    """
    stop_event = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda signum, frame: stop_event.set())
    try:
        server.start()
        if demo_quotes:
            seed_demo_quotes(server.state)
        if ready is not None:
            ready(server)
        while not stop_event.wait(0.5):
            pass
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def serve(host: str = "127.0.0.1", port: int = 5099, state_file=None, verbose: bool = False, ready=None,
          cash=None, rate_limit_per_minute=None, data_rate_limit_per_minute=None,
          demo_quotes: bool = False) -> None:
    """Run the exchange until SIGINT/SIGTERM (blocking)."""
    from .server import PaperExchangeServer

    server = PaperExchangeServer(state_file=state_file, host=host, port=port, verbose=verbose, cash=cash,
                                 rate_limit_per_minute=rate_limit_per_minute,
                                 data_rate_limit_per_minute=data_rate_limit_per_minute)
    run_until_signal(server, ready=ready, demo_quotes=demo_quotes)


def _limit(value: str) -> int | None:
    n = int(value)
    if n < 0:
        raise argparse.ArgumentTypeError("must be >= 0 (0 switches the limit off)")
    return n or None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m paper_exchange",
                                     description="Run the Alpaca-compatible paper exchange until SIGINT/SIGTERM.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5099, help="0 picks a free port")
    parser.add_argument("--state-file", default=None,
                        help="JSON file the state is persisted to (loaded at start if present)")
    parser.add_argument("--demo-quotes", action="store_true",
                        help="start with quotes for AAPL, MSFT, NVDA, SPY, TSLA when the exchange has none")
    parser.add_argument("--rate-limit", type=_limit, default=200,
                        help="trading API requests per minute (Alpaca: 200); 0 = off")
    parser.add_argument("--data-rate-limit", type=_limit, default=None,
                        help="market-data requests per minute (own budget); 0 = off (default)")
    parser.add_argument("--cash", default=None, help="starting cash of a new account (default 100000)")
    parser.add_argument("--verbose-http", action="store_true", help="log every HTTP request")
    return parser


def main(argv=None) -> int:
    from .server import PaperExchangeServer

    args = build_parser().parse_args(argv)
    try:
        server = PaperExchangeServer(state_file=args.state_file, host=args.host, port=args.port,
                                     verbose=args.verbose_http, cash=args.cash,
                                     rate_limit_per_minute=args.rate_limit,
                                     data_rate_limit_per_minute=args.data_rate_limit)
    except OSError as exc:
        print(f"cannot serve on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # unreadable state file
        print(f"cannot load state file {args.state_file}: {exc}", file=sys.stderr)
        return 2

    def ready(srv):
        print(f"Paper exchange listening on {srv.url} (state file: {args.state_file}); "
              f"streams: {srv.ws_url}/stream {srv.ws_url}/v2/iex; Ctrl-C to stop.", flush=True)

    run_until_signal(server, ready=ready, demo_quotes=args.demo_quotes)
    print("Paper exchange stopped.", flush=True)
    return 0
