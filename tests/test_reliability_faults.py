"""Broker faults on every call the monitor and the broker module make: nothing crashes,
nothing is lost, each failure is a risk event, the next cycle recovers, one exit only."""

from decimal import Decimal

import pytest

from risk.models import RiskEvent
from risk.monitor import monitor_cycle
from trading.broker import BrokerError
from trading.models import Order, OrderRole, OrderStatus, Position, PositionStatus
from risk.entries import submit_bracket_order
from risk.trading_state import trading_state_set

pytestmark = [pytest.mark.django_db, pytest.mark.reliability]

MONITOR_CALLS = [
    ("GET", "/v2/clock"),
    ("GET", "/v2/stocks/quotes/latest"),
    ("GET", "/v2/orders/"),
    ("GET", "/v2/positions/"),
    ("DELETE", "/v2/orders/"),
    ("POST", "/v2/orders"),
]
FAULTS = ["http_500", "http_429", "hang"]


@pytest.fixture
def exchange(paper_exchange, settings):
    settings.BROKER_TIMEOUT_SECONDS = Decimal("0.3")
    settings.MONITOR_EXIT_FILL_WAIT_SECONDS = Decimal("0.5")
    trading_state_set(mode="ACTIVE", reason="tests trade")
    paper_exchange.control.set_quote("AAPL", "149.99", "150.01")
    return paper_exchange


def _exit_orders_at_exchange(exchange) -> list[dict]:
    return [o for o in exchange.control.state()["orders"] if o["client_order_id"].startswith("catalyst-exit-")]


def _crossing_position(exchange) -> Position:
    """A protected bracket whose stop we tightened above the broker's leg, so the monitor
    must walk the whole path: read orders, check the position, cancel legs, exit."""
    position = submit_bracket_order(symbol="AAPL", quantity=5, side="buy", stop_loss="140", take_profit="160")
    Position.objects.filter(pk=position.pk).update(stop_loss=Decimal("148"))
    exchange.control.set_quote("AAPL", "147.00", "147.02")
    return position


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("method,path", MONITOR_CALLS)
def test_monitor_survives_a_broker_fault_on_each_call(exchange, figures, method, path, fault):
    position = _crossing_position(exchange)
    exchange.control.add_fault(fault, method=method, path=path, delay=1)
    figures.add("faults injected")

    first = monitor_cycle()  # must not raise, whatever the broker does

    assert first.errors >= 1
    assert RiskEvent.objects.filter(kind__in=["error", "exit_rejected"]).exists()
    position.refresh_from_db()
    assert position.status in (PositionStatus.OPEN, PositionStatus.CLOSING, PositionStatus.CLOSED)

    exchange.control.clear_faults()
    for _ in range(3):
        monitor_cycle()
        position.refresh_from_db()
        if position.status == PositionStatus.CLOSED:
            break

    assert position.status == PositionStatus.CLOSED
    assert position.close_reason == "STOP_LOSS_HIT"
    assert position.exit_price is not None
    live_exits = [o for o in _exit_orders_at_exchange(exchange) if o["status"] not in ("rejected", "canceled")]
    assert len(live_exits) == 1, live_exits
    assert position.orders.filter(role=OrderRole.EXIT, status=OrderStatus.FILLED).count() == 1
    figures.add("faults survived")


BRACKET_CALLS = [
    ("GET", "/v2/stocks/quotes/latest"),
    ("POST", "/v2/orders"),
    ("GET", "/v2/orders/"),
]


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("method,path", BRACKET_CALLS)
def test_bracket_submission_fault_is_raised_recorded_and_never_unguarded(exchange, figures, method, path, fault):
    exchange.control.add_fault(fault, method=method, path=path, delay=1)
    figures.add("faults injected")

    with pytest.raises(BrokerError):
        submit_bracket_order(symbol="AAPL", quantity=1, side="buy", stop_loss="140", take_profit="160")

    exchange.control.clear_faults()
    at_exchange = [o for o in exchange.control.state()["orders"] if o.get("parent_id") is None]
    for entry in Order.objects.filter(role=OrderRole.ENTRY):
        assert entry.error  # the failure is on the record
    if at_exchange:  # the broker took it (or will): it is in the database and guarded
        (row,) = Order.objects.filter(role=OrderRole.ENTRY)
        assert row.client_order_id == at_exchange[0]["client_order_id"]
        if row.broker_order_id:
            assert row.position is not None and row.position.stop_loss == Decimal("140.00")
    figures.add("faults survived")


def test_exit_partially_filled_then_cancelled_sends_only_the_remainder(exchange, figures):
    figures.add("faults injected")
    position = _crossing_position(exchange)
    exchange.control.add_fault("partial_fill", method="POST", path="/v2/orders", count=1)

    monitor_cycle()
    position.refresh_from_db()
    assert position.status == PositionStatus.CLOSING
    first_exit = position.orders.get(role=OrderRole.EXIT)
    assert first_exit.filled_qty == 2 and first_exit.status == OrderStatus.PARTIALLY_FILLED

    monitor_cycle()  # still working at the broker: nothing more is sent
    assert len(_exit_orders_at_exchange(exchange)) == 1

    from trading import broker

    broker.cancel_order(first_exit.broker_order_id)  # e.g. expired at the close
    monitor_cycle()

    position.refresh_from_db()
    exits = list(position.orders.filter(role=OrderRole.EXIT).order_by("id"))
    assert [e.qty for e in exits] == [Decimal("5"), Decimal("3")]
    assert position.status == PositionStatus.CLOSED
    assert position.exit_price == Decimal("147.00")
    figures.add("faults survived")


def test_malformed_order_answers_are_recorded_and_never_traded_on(exchange, figures):
    figures.add("faults injected")
    position = _crossing_position(exchange)
    exchange.control.add_fault("malformed", method="GET", path="/v2/orders/")

    result = monitor_cycle()

    assert result.errors >= 1
    assert _exit_orders_at_exchange(exchange) == []  # nothing sent on an order it couldn't read
    assert RiskEvent.objects.filter(kind="error", message__icontains="broker").exists()
    exchange.control.clear_faults()
    monitor_cycle()
    position.refresh_from_db()
    assert position.status == PositionStatus.CLOSED
    assert len(_exit_orders_at_exchange(exchange)) == 1
    figures.add("faults survived")


def test_malformed_answer_to_a_bracket_is_looked_up_not_resent(exchange, figures):
    figures.add("faults injected")
    exchange.control.add_fault("malformed", method="POST", path="/v2/orders", count=1)

    position = submit_bracket_order(symbol="AAPL", quantity=1, side="buy", stop_loss="140", take_profit="160")

    assert position.entry_order.broker_order_id
    assert len([o for o in exchange.control.state()["orders"] if o.get("parent_id") is None]) == 1
    figures.add("faults survived")
