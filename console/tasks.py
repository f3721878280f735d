"""django-q2 entry point: the scheduled backstop for `runmonitor`."""

import os
import socket
import uuid

from risk.monitor import monitor_tick


def monitor_task() -> str:
    """One monitor cycle, unless another monitor holds the lease (then it does nothing)."""
    holder = f"q2:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    result = monitor_tick(holder=holder)
    return "skipped: another monitor holds the lease" if result is None else result.summary()
