"""The real processes: settings refusal, deploy checks, and clean stops on SIGTERM."""

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from paper_exchange.server import PaperExchangeServer

ROOT = Path(__file__).resolve().parent.parent
MANAGE = [sys.executable, str(ROOT / "manage.py")]


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "ALPACA_", "DATABASE_URL"))}
    env.update(DJANGO_SETTINGS_MODULE="catalyst.settings", **extra)
    return env


def _run(*args, env, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run([*MANAGE, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_refuses_to_start_without_a_secret_key_when_debug_is_off():
    result = _run("check", env=_env())
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY must be set" in result.stderr


def test_a_local_env_file_is_read_and_the_environment_wins(tmp_path):
    """make run's .env lets commands run from any terminal; a variable set in the environment
    still wins over the file."""
    env_file = tmp_path / ".env"
    env_file.write_text("# local\nDJANGO_DEBUG=true\nMONITOR_INTERVAL_SECONDS=15\n")
    env = _env(CATALYST_ENV_FILE=str(env_file))
    result = _run("shell", "-c", "from django.conf import settings; print(settings.DEBUG, settings.MONITOR_INTERVAL_SECONDS)",
                  env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "True 15"
    result = _run("check", env={**env, "DJANGO_DEBUG": "false"})  # the environment wins: no key, refused
    assert result.returncode != 0 and "DJANGO_SECRET_KEY must be set" in result.stderr
    result = _run("check", env=_env(CATALYST_ENV_FILE=str(tmp_path / "missing")))
    assert "CATALYST_ENV_FILE names" in result.stderr


def test_a_bad_setting_is_named_without_a_traceback():
    result = _run("runmonitor", "--once", env=_env(DJANGO_DEBUG="true", MONITOR_INTERVAL_SECONDS="soon"))
    assert result.returncode != 0
    assert result.stderr.strip() == "Configuration error: MONITOR_INTERVAL_SECONDS must be an integer, got 'soon'"


def test_deploy_check_is_clean_with_production_settings():
    env = _env(DJANGO_SECRET_KEY="k" * 20 + "-production-like-secret-key-0123456789-abcdefghij",
               DJANGO_ALLOWED_HOSTS="ops.example.com")
    result = _run("check", "--deploy", "--fail-level", "WARNING", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_migrations_are_checked_in():
    result = _run("makemigrations", "--check", "--dry-run", env=_env(DJANGO_DEBUG="true"))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def sqlite_env(tmp_path, paper_exchange):
    env = _env(DJANGO_DEBUG="true", DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
               PAPER_EXCHANGE_URL=paper_exchange.url)
    migrate = _run("migrate", "--noinput", env=env, timeout=120)
    assert migrate.returncode == 0, migrate.stderr
    return env


def _start(args, env) -> subprocess.Popen:
    return subprocess.Popen([*MANAGE, *args], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _wait_for(proc: subprocess.Popen, text: str, timeout: float) -> list[str]:
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if text in line:
            return lines
    proc.kill()
    pytest.fail(f"{text!r} not seen in time; output:\n{''.join(lines)}")


def test_runmonitor_stops_after_the_current_cycle_on_sigterm(sqlite_env, tmp_path):
    proc = _start(["runmonitor", "--interval", "1"], sqlite_env)
    _wait_for(proc, '"event": "cycle"', 60)
    os.killpg(proc.pid, signal.SIGTERM)  # as a process manager would: the whole group
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out
    lines = [json.loads(line) for line in out.splitlines()]  # one JSON object per line, nothing else
    assert "monitor_stopped" in [line.get("event") for line in lines]
    # SQLite is shared by several processes: it runs in WAL mode
    with sqlite3.connect(tmp_path / "db.sqlite3") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_runmonitor_waits_for_the_broker_then_logs_one_json_line_per_event(tmp_path):
    """As under make run: the monitor starts before the exchange listens, and its first cycle
    must not fail on an unreachable broker. Every line is JSON; each cycle is printed once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # free: nothing listens there yet
    env = _env(DJANGO_DEBUG="true", DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
               PAPER_EXCHANGE_URL=f"http://127.0.0.1:{port}")
    assert _run("migrate", "--noinput", env=env, timeout=120).returncode == 0
    proc = _start(["runmonitor", "--interval", "1", "--wait-for-broker", "60"], env)
    try:
        time.sleep(2)  # the monitor waits...
        late = PaperExchangeServer(state_file=tmp_path / "late.json", port=port).start()  # ...for the exchange
        try:
            lines = _wait_for(proc, '"event": "cycle"', 60)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            out, _ = proc.communicate(timeout=20)
            late.stop()
    finally:
        if proc.poll() is None:
            proc.kill()
    events = [json.loads(line) for line in [*lines, *out.splitlines()]]
    names = [e.get("event") for e in events]
    assert names.index("monitor_started") < names.index("broker_answered") < names.index("cycle")
    assert not [e for e in events if e.get("event") == "error" or e.get("level") == "ERROR"], events
    first_cycle = next(e for e in events if e.get("event") == "cycle")
    assert first_cycle["logger"] == "risk.monitor" and "errors=0" in first_cycle["message"]


def test_runmonitor_once_says_no_interval(sqlite_env):
    result = _run("runmonitor", "--once", env=sqlite_env)
    assert result.returncode == 0, result.stdout + result.stderr
    started = next(json.loads(line) for line in result.stdout.splitlines() if "monitor_started" in line)
    assert "interval_seconds" not in started and "every" not in result.stdout


def test_runworker_stops_qcluster_cleanly_on_a_group_sigterm(sqlite_env):
    proc = _start(["runworker"], sqlite_env)
    _wait_for(proc, "running.", 60)
    os.killpg(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=45)
    assert "has stopped" in out, out
    assert proc.returncode == 0, out
