"""`manage.py runmonitor`: the fallback monitor as a precise loop.

Each iteration is one small step (`monitor_tick`); SIGINT/SIGTERM only set a flag, and
the loop exits after the current cycle. Housekeeping (reconciliation and the protection
audit, seconds at thousands of positions) runs in a thread of this process beside the
cycles, one at a time, so detection never waits for it.
"""

import os
import signal
import socket
import threading
import time
import uuid

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import close_old_connections

from risk.lease import lease_release
from risk.models import MONITOR
from risk.monitor import monitor_tick
from trading.broker import describe


class Housekeeper:
    """Runs housekeeping in a background thread, at most one at a time."""

    def __init__(self, stderr):
        self.stderr = stderr
        self.thread: threading.Thread | None = None

    def __call__(self, job) -> None:
        if self.thread is not None and self.thread.is_alive():
            return

        def run():
            try:
                job()
            except Exception as exc:  # a thread must not die silently; the next run tries again
                self.stderr.write(f"housekeeping failed: {type(exc).__name__}: {exc}")
            finally:
                close_old_connections()

        self.thread = threading.Thread(target=run, name="housekeeping", daemon=True)
        self.thread.start()


class Command(BaseCommand):
    help = "Check open positions against their stops and targets, closing the ones crossed."

    def add_arguments(self, parser):
        parser.add_argument("--interval", type=float, default=None,
                            help=f"seconds between cycles (default MONITOR_INTERVAL_SECONDS={settings.MONITOR_INTERVAL_SECONDS})")
        parser.add_argument("--once", action="store_true", help="run one cycle and exit (non-zero if it had errors)")

    def handle(self, *args, interval, once, **options):
        interval = settings.MONITOR_INTERVAL_SECONDS if interval is None else interval
        if not 0.1 <= interval <= 3600:
            raise CommandError(f"--interval must be between 0.1 and 3600 seconds, got {interval}")
        holder = f"runmonitor:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.stdout.write(f"monitor {holder} on {describe()}, every {interval:g}s")
        if once:
            result = monitor_tick(holder=holder, housekeeping_now=True)
            if result is None:
                raise CommandError("another monitor holds the lease; nothing done")
            self.stdout.write(self._line(result))
            if result.errors:
                raise CommandError(f"cycle finished with {result.errors} error(s)")
            return

        stop = threading.Event()

        def request_stop(signum, frame):
            stop.set()

        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)
        first = True
        housekeeper = Housekeeper(self.stderr)
        try:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    result = monitor_tick(holder=holder, keep_lease=True, housekeeping_now=True if first else None,
                                          run_housekeeping=housekeeper)
                    first = first and result is None  # start-up housekeeping happens on the first cycle run
                except Exception as exc:  # the loop outlives any single failure
                    self.stderr.write(f"cycle failed: {type(exc).__name__}: {exc}")
                else:
                    self.stdout.write(self._line(result) if result else "another monitor holds the lease; waiting")
                stop.wait(max(0.0, interval - (time.monotonic() - started)))
        finally:
            lease_release(name=MONITOR, holder=holder)
            self.stdout.write("monitor stopped")

    @staticmethod
    def _line(result) -> str:
        return f"{result.finished_at:%Y-%m-%dT%H:%M:%SZ} cycle {result.summary()}"
