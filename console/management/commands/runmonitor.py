"""`manage.py runmonitor`: the fallback monitor as a precise loop.

Each iteration is one small step (`monitor_tick`); SIGINT/SIGTERM only set a flag, and
the loop exits after the current cycle. Housekeeping (reconciliation and the protection
audit, seconds at thousands of positions) runs in a thread of this process beside the
cycles, one at a time, so detection never waits for it. Every line it prints is one JSON
object (the cycle's own line is the journal's `cycle` event).
"""

import logging
import os
import signal
import socket
import threading
import time
import uuid

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError, close_old_connections

from risk.heartbeats import heartbeats_stale_check
from risk.journal import log_line
from risk.lease import lease_release
from risk.models import MONITOR
from risk.monitor import broker_await, monitor_tick
from trading.broker import describe


class Housekeeper:
    """Runs housekeeping in a background thread, at most one at a time."""

    def __init__(self):
        self.thread: threading.Thread | None = None

    def __call__(self, job) -> None:
        if self.thread is not None and self.thread.is_alive():
            return

        def run():
            try:
                job()
            except Exception as exc:  # a thread must not die silently; the next run tries again
                log_line({"event": "error", "reason": "housekeeping failed", "message": f"{type(exc).__name__}: {exc}"},
                         level=logging.ERROR)
            finally:
                close_old_connections()

        self.thread = threading.Thread(target=run, name="housekeeping", daemon=True)
        self.thread.start()


def _stale_check() -> None:
    """Other heartbeats (the stream's) stale or back: alerted once each (risk.heartbeats)."""
    try:
        heartbeats_stale_check()
    except DatabaseError as exc:
        log_line({"event": "error", "reason": "heartbeat check failed", "message": f"{type(exc).__name__}: {exc}"},
                 level=logging.ERROR)


class Command(BaseCommand):
    help = "Check open positions against their stops and targets, closing the ones crossed."

    def add_arguments(self, parser):
        parser.add_argument("--interval", type=float, default=None,
                            help=f"seconds between cycles (default MONITOR_INTERVAL_SECONDS={settings.MONITOR_INTERVAL_SECONDS})")
        parser.add_argument("--once", action="store_true", help="run one cycle and exit (non-zero if it had errors)")
        parser.add_argument("--wait-for-broker", type=float, default=0, metavar="SECONDS",
                            help="before the first cycle, wait up to SECONDS for the broker to answer "
                                 "(make run: the paper exchange starts beside the monitor)")

    def handle(self, *args, interval, once, wait_for_broker, **options):
        interval = settings.MONITOR_INTERVAL_SECONDS if interval is None else interval
        if not 0.1 <= interval <= 3600:
            raise CommandError(f"--interval must be between 0.1 and 3600 seconds, got {interval}")
        if not 0 <= wait_for_broker <= 3600:
            raise CommandError(f"--wait-for-broker must be between 0 and 3600 seconds, got {wait_for_broker}")
        holder = f"runmonitor:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        started = {"event": "monitor_started", "holder": holder, "broker": describe()}
        log_line(started if once else {**started, "interval_seconds": interval})

        stop = threading.Event()
        if not once:
            def request_stop(signum, frame):
                stop.set()

            signal.signal(signal.SIGINT, request_stop)
            signal.signal(signal.SIGTERM, request_stop)
        if wait_for_broker:
            waited = time.monotonic()
            answered = broker_await(timeout=wait_for_broker, stop=stop.is_set)
            log_line({"event": "broker_answered" if answered else "broker_not_answering",
                      "waited_seconds": round(time.monotonic() - waited, 1)},
                     level=logging.INFO if answered else logging.WARNING)

        if once:
            result = monitor_tick(holder=holder, housekeeping_now=True)
            if result is None:
                raise CommandError("another monitor holds the lease; nothing done")
            if result.errors:
                raise CommandError(f"cycle finished with {result.errors} error(s)")
            return

        first = True
        housekeeper = Housekeeper()
        try:
            while not stop.is_set():
                started_at = time.monotonic()
                try:
                    result = monitor_tick(holder=holder, keep_lease=True, housekeeping_now=True if first else None,
                                          run_housekeeping=housekeeper)
                    first = first and result is None  # start-up housekeeping happens on the first cycle run
                except Exception as exc:  # the loop outlives any single failure
                    log_line({"event": "error", "reason": "cycle failed", "message": f"{type(exc).__name__}: {exc}"},
                             level=logging.ERROR)
                else:
                    if result is None:
                        log_line({"event": "lease_held", "message": "another monitor holds the lease; waiting"})
                _stale_check()
                stop.wait(max(0.0, interval - (time.monotonic() - started_at)))
        finally:
            lease_release(name=MONITOR, holder=holder)
            log_line({"event": "monitor_stopped", "holder": holder})
