"""`manage.py runquotes`: sub-second detection. Streams quotes for the symbols of the watched
positions (the STREAM_MAX_SYMBOLS nearest their stop or target) and decides each quote as the
monitor would, through the same claim and close. One per account (a second process waits);
the monitor keeps polling as the backstop. Stops cleanly on SIGINT/SIGTERM."""

import os
import signal
import socket
import threading
import uuid

from django.conf import settings
from django.core.management.base import BaseCommand

from risk.quote_watch import quote_stream_runner
from trading.broker import describe


class Command(BaseCommand):
    help = "Decide stops and targets on streamed quotes, within a second of the quote."

    def handle(self, *args, **options):
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda signum, frame: stop.set())
        holder = f"runquotes:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.stdout.write(f"quote stream {holder} on {describe()}, at most {settings.STREAM_MAX_SYMBOLS or 'any'} "
                          f"symbols")
        runner, _ = quote_stream_runner(holder=holder)
        runner.run(stop)
        self.stdout.write("quote stream stopped")

