"""Subprocesses the bench starts, and stops again whatever happens."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

_started: list[subprocess.Popen] = []


def start(args: list[str], *, env: dict, stdout=None, stderr=None, **kwargs) -> subprocess.Popen:
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=stdout, stderr=stderr, **kwargs)
    _started.append(proc)
    return proc


def stop(proc: subprocess.Popen, *, sig=signal.SIGTERM, timeout: float = 15) -> int | None:
    """Ask one process we started to stop, then kill it if it doesn't. Returns its exit code."""
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        except ProcessLookupError:
            pass
    if proc in _started:
        _started.remove(proc)
    return proc.returncode


def stop_all() -> None:
    for proc in list(reversed(_started)):
        stop(proc)


def wait_rusage(proc: subprocess.Popen, timeout: float) -> tuple[int, object]:
    """Wait for one child and return (exit code, its own rusage) via wait4: the peak memory of
    that process alone, not the maximum over every child so far."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            if proc in _started:
                _started.remove(proc)
            return proc.returncode, usage
        if time.monotonic() > deadline:
            stop(proc)
            raise TimeoutError(f"{proc.args} did not finish within {timeout}s")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float = 30, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:4]} exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def start_exchange(env: dict, log_path: Path, rate_limit: int) -> tuple[subprocess.Popen, str]:
    log = open(log_path, "ab")
    proc = start([PYTHON, "-m", "bench.exchange", "--rate-limit", str(rate_limit)], env=env, stdout=subprocess.PIPE,
                 stderr=log)
    log.close()
    line = proc.stdout.readline().decode().strip()
    if not line.startswith("http://127.0.0.1:"):
        stop(proc)
        raise RuntimeError(f"paper exchange did not start (said {line!r}); see {log_path}")
    return proc, line
