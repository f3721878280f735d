"""What the stream commands (`runstream`, `runquotes`) share: a holder name for the lease, and a
run that stops cleanly on SIGINT/SIGTERM."""

import os
import signal
import socket
import threading
import uuid
from collections.abc import Callable

from risk.streaming import StreamRunner


def stream_process_run(*, command: str, make_runner: Callable[[str], StreamRunner],
                       say: Callable[[str], object]) -> None:
    """Build the runner for this process's holder name and run it until SIGINT/SIGTERM."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stop.set())
    holder = f"{command}:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    runner = make_runner(holder)
    say(f"{runner.name}: running as {holder}")
    runner.run(stop)
    say(f"{runner.name}: stopped")
