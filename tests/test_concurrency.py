"""Monitors, the flatten endpoint and the admin flatten racing each other on PostgreSQL:
every position gets exactly one exit, one reason, and all its risk events."""

import re
import string
import threading
from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.db import connection, connections
from django.utils import timezone

from risk.models import RiskEvent
from risk.monitor import monitor_cycle
from trading.models import CloseReason, Order, OrderRole, Position, PositionStatus, Side

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.reliability,
    pytest.mark.skipif(connection.vendor != "postgresql", reason="row locking races need PostgreSQL"),
]


def _seed(exchange, count: int) -> list[Position]:
    symbols = [f"Z{a}{b}{c}" for a in string.ascii_uppercase for b in string.ascii_uppercase
               for c in string.ascii_uppercase][:count]
    exchange.control.set_quotes([{"symbol": s, "bid": "90.00", "ask": "90.02"} for s in symbols])
    for symbol in symbols:
        exchange.control.set_position(symbol, 5, "100.00")
    return Position.objects.bulk_create(
        Position(symbol=symbol, side=Side.LONG, quantity=Decimal("5"), entry_price=Decimal("100"),
                 stop_loss=Decimal("95"), take_profit=Decimal("120"), opened_at=timezone.now())
        for symbol in symbols
    )


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


def _api_flatten():
    from rest_framework.test import APIClient

    client = APIClient(HTTP_X_FORWARDED_PROTO="https")
    client.force_authenticate(User.objects.get(username="api-operator"))
    response = client.post("/api/v1/positions/flatten", {"confirm": "FLATTEN"}, format="json")
    assert response.status_code == 200, response.content


def _admin_flatten():
    from django.test import Client

    client = Client(HTTP_X_FORWARDED_PROTO="https")
    client.force_login(User.objects.get(username="admin-operator"))
    ids = [str(pk) for pk in Position.objects.order_by("id").values_list("pk", flat=True)]
    page = client.post("/admin/trading/position/", {"action": "flatten_selected", "_selected_action": ids})
    token = re.search(r'name="token" value="([^"]+)"', page.content.decode()).group(1)
    done = client.post("/admin/trading/position/", {"action": "flatten_selected", "_selected_action": ids,
                                                    "confirmed": "yes", "token": token})
    assert done.status_code == 302, done.content[:500]


def _operators():
    from django.contrib.auth.models import Permission

    perms = Permission.objects.filter(codename__in=["flatten_positions", "view_position"])
    for name in ("api-operator", "admin-operator"):
        user = User.objects.create_user(name, is_staff=True)
        user.user_permissions.add(*perms)


def test_three_monitors_and_both_flattens_at_once_send_one_exit_per_position(paper_exchange, figures):
    positions = _seed(paper_exchange, 500)
    _operators()
    actors = [
        lambda: monitor_cycle(owner="monitor-a"),
        lambda: monitor_cycle(owner="monitor-b"),
        lambda: monitor_cycle(owner="monitor-c"),
        _api_flatten,
        _admin_flatten,
    ]
    figures.add("concurrent actors", len(actors))
    errors = _race(actors)
    assert errors == []
    # finish anything a racer left half-way (it would be the next cycle's job)
    monitor_cycle(owner="cleanup")

    counts = _exit_orders_at_exchange(paper_exchange)
    figures.add("duplicate exits", sum(n - 1 for n in counts.values()))
    assert counts == {p.symbol: 1 for p in positions}
    closed = Position.objects.filter(status=PositionStatus.CLOSED)
    assert closed.count() == 500
    assert set(closed.values_list("close_reason", flat=True)) <= {CloseReason.STOP_LOSS_HIT, CloseReason.EMERGENCY_STOP}
    assert set(closed.values_list("exit_price", flat=True)) == {Decimal("90.00")}
    assert Order.objects.filter(role=OrderRole.EXIT).count() == 500
    # no lost risk event: each position has its claim (or trigger), its exit and its close on record
    for kind in ("exit_sent", "closed"):
        assert RiskEvent.objects.filter(kind=kind).values("position").distinct().count() == 500, kind
    assert RiskEvent.objects.filter(kind__in=["claimed", "triggered"]).values("position").distinct().count() == 500


def test_many_positions_in_one_symbol_closed_side_by_side_never_oversell(paper_exchange, settings):
    """Twenty positions share each symbol; the monitor's workers close them at once. Each
    position must get exactly its own shares out, none closed on another's shares."""
    settings.MONITOR_CLOSE_WORKERS = 4
    symbols = ["ZA", "ZB", "ZC"]
    paper_exchange.control.set_quotes([{"symbol": s, "bid": "90.00", "ask": "90.02"} for s in symbols])
    for symbol in symbols:
        paper_exchange.control.set_position(symbol, 100, "100.00")
    Position.objects.bulk_create(
        Position(symbol=symbol, side=Side.LONG, quantity=Decimal("5"), entry_price=Decimal("100"),
                 stop_loss=Decimal("95"), take_profit=Decimal("120"), opened_at=timezone.now())
        for symbol in symbols for _ in range(20)
    )

    for _ in range(3):  # what a race leaves "waiting" is finished by the next cycles
        monitor_cycle(owner="monitor")
        if not Position.objects.active().exists():
            break

    assert Position.objects.filter(status=PositionStatus.CLOSED, needs_review=False).count() == 60
    assert set(Position.objects.values_list("exit_price", flat=True)) == {Decimal("90.00")}
    for symbol in symbols:
        sold = sum(Decimal(o["filled_qty"]) for o in paper_exchange.control.state()["orders"]
                   if o["symbol"] == symbol and o["client_order_id"].startswith("catalyst-exit-"))
        assert sold == 100
    assert paper_exchange.control.state()["positions"] in ({}, [])
