"""django-q2 entry point: the scheduled backstop for `runmonitor`."""

import os
import socket
import uuid

from risk.heartbeats import heartbeats_stale_check
from risk.monitor import monitor_tick


def monitor_task() -> str:
    """Alert a stale heartbeat (a dead `runmonitor` still holding the lease, a stopped stream),
    then one monitor cycle, unless another monitor holds the lease (then no cycle)."""
    alerts = heartbeats_stale_check()
    holder = f"q2:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    result = monitor_tick(holder=holder)
    done = "skipped: another monitor holds the lease" if result is None else result.summary()
    return f"{done}; alerted: {', '.join(alerts)}" if alerts else done
