"""`manage.py runworker`: django-q2's qcluster, stoppable by a whole-group SIGTERM.

qcluster stops cleanly on Ctrl-C or on SIGTERM to its main process, but hangs when
SIGTERM reaches its whole process group, which is what honcho and many process
managers send. This runs qcluster in its own session and hands it one SIGTERM.
"""

import os
import signal
import subprocess
import sys
import threading

from django.core.management.base import BaseCommand, CommandError

from risk.monitor import broker_await

GRACE_SECONDS = 30


class Command(BaseCommand):
    help = "Run the django-q2 cluster (the monitor's scheduled backstop) so that it stops cleanly on SIGTERM/SIGINT."

    def add_arguments(self, parser):
        parser.add_argument("--wait-for-broker", type=float, default=0, metavar="SECONDS",
                            help="first wait up to SECONDS for the broker to answer (make run: the paper exchange "
                                 "starts beside the worker, and its first scheduled cycle must not fail on it)")

    def handle(self, *args, wait_for_broker, **options):
        if not 0 <= wait_for_broker <= 3600:
            raise CommandError(f"--wait-for-broker must be between 0 and 3600 seconds, got {wait_for_broker}")
        if wait_for_broker and not broker_await(timeout=wait_for_broker):
            self.stderr.write(f"the broker did not answer within {wait_for_broker:g}s; starting anyway")
        manage = os.path.join(os.getcwd(), "manage.py") if os.path.exists("manage.py") else sys.argv[0]
        child = subprocess.Popen([sys.executable, manage, "qcluster"], start_new_session=True)
        stopping = threading.Event()

        def forward(signum, frame):
            if not stopping.is_set():
                stopping.set()
                child.send_signal(signal.SIGTERM)

        signal.signal(signal.SIGINT, forward)
        signal.signal(signal.SIGTERM, forward)
        while True:
            try:
                code = child.wait(timeout=GRACE_SECONDS if stopping.is_set() else None)
                break
            except subprocess.TimeoutExpired:
                self.stderr.write(f"qcluster did not stop within {GRACE_SECONDS}s; killing it")
                os.killpg(child.pid, signal.SIGKILL)
        self.stdout.write(f"worker stopped (qcluster exit code {code})")
        if code not in (0, -signal.SIGTERM):
            sys.exit(code if code > 0 else 1)
