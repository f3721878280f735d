"""The monitor process SIGKILLed at each step of a close, then restarted: every close
completes exactly once. And a database connection dropped mid-cycle is replaced."""

import os
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest
from django.db import connection

from risk.monitor import monitor_tick
from trading.models import OrderRole, OrderStatus, Position, PositionStatus
from risk.entries import submit_bracket_order
from risk.trading_state import trading_state_set

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.reliability]

ROOT = Path(__file__).resolve().parent.parent


def _database_url() -> str:
    db = connection.settings_dict
    if connection.vendor == "postgresql":
        return f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
    return f"sqlite:///{db['NAME']}"


def _monitor_once(exchange) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALPACA_", "DJANGO_", "DATABASE_URL"))}
    env.update(
        DJANGO_SETTINGS_MODULE="catalyst.settings", DJANGO_DEBUG="true", DATABASE_URL=_database_url(),
        PAPER_EXCHANGE_URL=exchange.url, MONITOR_LEASE_SECONDS="5", MONITOR_INTERVAL_SECONDS="2",
        MONITOR_EXIT_FILL_WAIT_SECONDS="1", BROKER_TIMEOUT_SECONDS="60",
    )
    return subprocess.Popen([sys.executable, "manage.py", "runmonitor", "--once"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_request(exchange, method: str, path: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(r["method"] == method and r["path"].startswith(path) for r in exchange.control.requests_log()):
            return
        time.sleep(0.05)
    pytest.fail(f"{method} {path} never reached the exchange")


def _exits_at_exchange(exchange) -> list[dict]:
    return [o for o in exchange.control.state()["orders"] if o["client_order_id"].startswith("catalyst-exit-")]


# step name -> (fault to hold the process at that step, the request that shows it is there)
STEPS = {
    "reading its orders": ("hang", "GET", "/v2/orders/"),
    "checking the broker's position": ("hang", "GET", "/v2/positions/"),
    "cancelling the legs": ("hang", "DELETE", "/v2/orders/"),
    "exit accepted, answer not yet read": ("accept_then_hang", "POST", "/v2/orders"),
}


@pytest.mark.parametrize("step", list(STEPS))
def test_killed_at_each_step_of_a_close_then_restarted_closes_exactly_once(paper_exchange, figures, step):
    fault, method, path = STEPS[step]
    trading_state_set(mode="ACTIVE", reason="tests trade")
    paper_exchange.control.set_quote("AAPL", "149.99", "150.01")
    position = submit_bracket_order(symbol="AAPL", quantity=5, side="buy", stop_loss="140", take_profit="160")
    Position.objects.filter(pk=position.pk).update(stop_loss=Decimal("148"))
    paper_exchange.control.set_quote("AAPL", "147.00", "147.02")
    paper_exchange.control.clear_requests_log()
    paper_exchange.control.add_fault(fault, method=method, path=path, delay=30)
    figures.add("faults injected")

    victim = _monitor_once(paper_exchange)
    _wait_for_request(paper_exchange, method, path)
    time.sleep(0.2)
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    paper_exchange.control.clear_faults()

    time.sleep(5.5)  # the dead process's lease and position lock run out
    survivor = _monitor_once(paper_exchange)
    out, _ = survivor.communicate(timeout=60)
    assert survivor.returncode == 0, out

    position.refresh_from_db()
    assert position.status == PositionStatus.CLOSED, out
    assert position.close_reason == "STOP_LOSS_HIT"
    assert position.exit_price == Decimal("147.00")
    assert len(_exits_at_exchange(paper_exchange)) == 1
    assert position.orders.filter(role=OrderRole.EXIT, status=OrderStatus.FILLED).count() == 1
    figures.add("faults survived")


@pytest.mark.skipif(connection.vendor != "postgresql", reason="SQLite has no server connection to drop")
def test_database_connection_dropped_mid_cycle_is_replaced_next_cycle(paper_exchange, figures, monkeypatch):
    trading_state_set(mode="ACTIVE", reason="tests trade")
    paper_exchange.control.set_quote("AAPL", "149.99", "150.01")
    position = submit_bracket_order(symbol="AAPL", quantity=5, side="buy", stop_loss="140", take_profit="160")
    Position.objects.filter(pk=position.pk).update(stop_loss=Decimal("148"))
    paper_exchange.control.set_quote("AAPL", "147.00", "147.02")
    figures.add("faults injected")

    from trading import broker

    real_quotes = broker.latest_quotes

    def quotes_then_drop(symbols):
        quotes = real_quotes(symbols)
        import psycopg

        pid = connection.connection.info.backend_pid
        with psycopg.connect(_database_url(), autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", [pid])
        return quotes

    monkeypatch.setattr(broker, "latest_quotes", quotes_then_drop)
    first = monitor_tick(holder="monitor-1")
    assert first.errors == 1
    monkeypatch.undo()

    second = monitor_tick(holder="monitor-1")
    assert second is not None and second.errors == 0
    position.refresh_from_db()
    assert position.status == PositionStatus.CLOSED
    assert len(_exits_at_exchange(paper_exchange)) == 1
    figures.add("faults survived")
