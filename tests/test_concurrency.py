"""Monitors racing each other on PostgreSQL: every position gets exactly one exit."""

import string
import threading
from decimal import Decimal

import pytest
from django.db import connection, connections
from django.utils import timezone

from risk.services import monitor_cycle, positions_close
from trading.models import CloseReason, OrderRole, Position, PositionStatus, Side

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "postgresql", reason="row locking races need PostgreSQL"),
]


def _seed(exchange, count: int) -> list[Position]:
    symbols = [f"Z{a}{b}" for a in string.ascii_uppercase for b in string.ascii_uppercase][:count]
    exchange.control.set_quotes([{"symbol": s, "bid": "90.00", "ask": "90.02"} for s in symbols])
    positions = []
    for symbol in symbols:
        exchange.control.set_position(symbol, 5, "100.00")
        positions.append(Position.objects.create(
            symbol=symbol, side=Side.LONG, quantity=Decimal("5"), entry_price=Decimal("100"),
            stop_loss=Decimal("95"), take_profit=Decimal("120"), opened_at=timezone.now(),
        ))
    return positions


def _race(workers):
    errors = []
    barrier = threading.Barrier(len(workers))

    def run(work):
        try:
            barrier.wait()
            work()
        except Exception as exc:  # collected and asserted below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(w,)) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return errors


def _exit_orders_at_exchange(exchange) -> dict[str, int]:
    counts: dict[str, int] = {}
    for order in exchange.control.state()["orders"]:
        if order["client_order_id"].startswith("catalyst-exit-"):
            counts[order["symbol"]] = counts.get(order["symbol"], 0) + 1
    return counts


def test_three_monitors_and_a_flatten_at_once_send_one_exit_per_position(paper_exchange):
    positions = _seed(paper_exchange, 40)
    errors = _race([
        lambda: monitor_cycle(owner="monitor-a"),
        lambda: monitor_cycle(owner="monitor-b"),
        lambda: monitor_cycle(owner="monitor-c"),
        lambda: positions_close(positions=list(Position.objects.all()), reason=CloseReason.EMERGENCY_STOP, owner="flatten"),
    ])
    assert errors == []
    # finish anything a racer left half-way (it would be the next cycle's job)
    monitor_cycle(owner="cleanup")

    counts = _exit_orders_at_exchange(paper_exchange)
    assert counts == {p.symbol: 1 for p in positions}
    for position in Position.objects.all():
        assert position.status == PositionStatus.CLOSED
        assert position.close_reason in (CloseReason.STOP_LOSS_HIT, CloseReason.EMERGENCY_STOP)
        assert position.orders.filter(role=OrderRole.EXIT).count() == 1
        assert position.exit_price == Decimal("90.00")
