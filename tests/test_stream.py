"""The broker's truth within a second: alpaca-py's TradingStream on the paper exchange's
trade_updates websocket, applied by the stream runner (as `manage.py runstream` runs it)."""

import time
from decimal import Decimal

import pytest

from risk.broker_events import trade_update_apply
from risk.broker_sync import broker_sync
from risk.heartbeats import heartbeats_stale_check
from risk.models import STREAM, Alert, AlertKind, Lease
from risk.monitor import monitor_cycle
from risk.selectors import stream_status
from risk.streaming import StreamRunner
from tests.helpers import StreamThread, bracket, eventually, leg
from trading import broker
from trading.models import BrokerEvent, CloseReason, OrderClass, OrderRole, OrderStatus, Position, PositionStatus, Protection

pytestmark = pytest.mark.django_db(transaction=True)

class Running(StreamThread):
    def __init__(self, holder: str):
        super().__init__(StreamRunner(
            name=STREAM, holder=holder, lease_seconds=6,
            make_stream=lambda handler: broker.trade_updates_stream(handler, ping_seconds=1),
            apply=lambda message: trade_update_apply(message=message), on_connect=lambda: broker_sync(by=STREAM)))


def _connected() -> bool:
    return not stream_status().stale


@pytest.fixture
def stream(exchange, active, settings):
    settings.STREAM_HEALTHY_SECONDS = 3
    running = Running("test-stream")
    assert eventually(_connected), "the stream never connected"
    yield running
    running.close()


def _position(pk: int) -> Position:
    return Position.objects.get(pk=pk)


def test_a_stop_leg_fill_closes_the_position_with_the_fill(stream, exchange):
    position = bracket(quantity=3)
    exchange.control.fill_order(leg(position, OrderRole.STOP_LOSS).broker_order_id, price="139.50")
    assert eventually(lambda: _position(position.pk).status == PositionStatus.CLOSED)
    closed = _position(position.pk)
    assert (closed.close_reason, closed.exit_price) == (CloseReason.STOP_LOSS_HIT, Decimal("139.50"))
    # the sibling's cancel is not reported by Alpaca: it was read back over REST
    assert leg(closed, OrderRole.TAKE_PROFIT).status == OrderStatus.CANCELED


def test_a_target_leg_fill_closes_a_short_as_take_profit(stream, exchange):
    position = bracket(side="sell", stop_loss="160", take_profit="140", quantity=2)
    exchange.control.fill_order(leg(position, OrderRole.TAKE_PROFIT).broker_order_id, price="140")
    assert eventually(lambda: _position(position.pk).status == PositionStatus.CLOSED)
    assert _position(position.pk).close_reason == CloseReason.TAKE_PROFIT_HIT


def test_a_stop_cancelled_at_the_broker_is_unprotected_at_once_then_reprotected(stream, exchange, settings):
    settings.PROTECTION_POLICY = "protect"
    position = bracket(quantity=4)
    broker.cancel_order(leg(position, OrderRole.STOP_LOSS).broker_order_id)  # someone, at the broker
    # the policy places an OCO at the position's own levels (not made-up defaults), GTC
    assert eventually(lambda: position.orders.filter(order_class=OrderClass.OCO, parent__isnull=False).exists())
    oco = position.orders.get(order_class=OrderClass.OCO, parent__isnull=True)
    assert (oco.limit_price, oco.legs.get().stop_price, oco.time_in_force) == (Decimal("160"), Decimal("140"), "gtc")
    assert eventually(lambda: _position(position.pk).protection == Protection.PROTECTED)


def test_a_resting_entry_becomes_a_position_when_it_fills(stream, exchange):
    position = bracket(entry_price="149", quantity=5)
    assert position.status == PositionStatus.PENDING
    exchange.control.set_quote("AAPL", "148.90", "148.95")  # the ask comes down through the limit
    assert eventually(lambda: _position(position.pk).status == PositionStatus.OPEN)
    opened = _position(position.pk)
    assert opened.quantity == 5 and opened.entry_price == Decimal("149") and opened.protection == Protection.PROTECTED


def test_a_resting_entry_cancelled_is_recorded_as_cancelled(stream, exchange):
    position = bracket(entry_price="145", quantity=5)
    broker.cancel_order(position.entry_order.broker_order_id)
    assert eventually(lambda: _position(position.pk).status == PositionStatus.CANCELLED)
    assert _position(position.pk).close_reason is None


def test_a_repeated_event_changes_nothing(stream, exchange):
    exchange.control.add_fault("ws_duplicate", path="/stream")
    position = bracket(quantity=3)
    exchange.control.fill_order(leg(position, OrderRole.STOP_LOSS).broker_order_id, price="139")
    assert eventually(lambda: _position(position.pk).status == PositionStatus.CLOSED)
    time.sleep(0.5)
    fills = BrokerEvent.objects.filter(event="fill", broker_order_id=leg(position, OrderRole.STOP_LOSS).broker_order_id)
    assert fills.count() == 1


def test_a_dropped_connection_reconnects_and_misses_nothing_after(stream, exchange):
    exchange.control.add_fault("ws_drop", path="/stream", count=1)
    time.sleep(0.5)
    assert eventually(_connected, timeout=20)
    position = bracket(quantity=1)
    exchange.control.fill_order(leg(position, OrderRole.STOP_LOSS).broker_order_id, price="139")
    assert eventually(lambda: _position(position.pk).status == PositionStatus.CLOSED, timeout=20)


def test_a_silent_connection_is_noticed_and_replaced(stream, exchange):
    exchange.control.add_fault("ws_silence", path="/stream")
    assert eventually(lambda: not _connected(), timeout=20)  # pings unanswered: closed, reconnecting
    exchange.control.clear_faults()  # the broker speaks again
    assert eventually(_connected, timeout=40)


def test_a_second_stream_process_waits_for_the_first(stream, exchange):
    second = Running("second-stream")
    try:
        time.sleep(2)
        assert Lease.objects.get(name="stream:stream").holder == "test-stream"
        assert len(exchange.control.streams().get("trade_updates", exchange.control.streams().get("stream", []))) <= 1 \
            if isinstance(exchange.control.streams(), dict) else True
    finally:
        second.close()


def test_a_stream_down_is_alerted_once_and_the_monitor_syncs_meanwhile(stream, exchange):
    exchange.control.add_fault("ws_silence", path="/stream")
    assert eventually(lambda: not _connected(), timeout=20)
    assert heartbeats_stale_check() == [f"{AlertKind.HEARTBEAT_STALE} {STREAM}"]
    assert heartbeats_stale_check() == []  # one alert per episode
    assert Alert.objects.filter(kind=AlertKind.HEARTBEAT_STALE).count() == 1
    position = bracket(quantity=1)
    exchange.control.fill_order(leg(position, OrderRole.STOP_LOSS).broker_order_id, price="139")
    monitor_cycle()  # without a healthy stream, the cycle catches up with the broker itself
    assert _position(position.pk).status == PositionStatus.CLOSED


def test_an_event_name_we_do_not_know_is_recorded_not_fatal(exchange, active):
    position = bracket(quantity=1)
    order = broker.get_order(position.entry_order.broker_order_id)
    applied = trade_update_apply(message={"stream": "trade_updates", "data": {
        "event": "frobnicated", "execution_id": "x-1", "timestamp": "2026-12-01T15:00:00Z", "order": order.raw}})
    assert applied.event == "frobnicated" and not applied.duplicate
    assert BrokerEvent.objects.get(key="x-1").event == "frobnicated"
    assert trade_update_apply(message={"stream": "trade_updates", "data": {"nothing": 1}}).event == "unreadable"


def test_a_connection_counts_only_once_the_broker_confirms_the_listen(settings):
    """alpaca-py marks a connection running once it has sent the listen; events the broker sends
    before reading it are lost. Connected (and caught up on) only after the broker's "listening"."""
    import asyncio
    from types import SimpleNamespace

    async def handler(message):
        return None

    stream = broker.trade_updates_stream(handler, ping_seconds=1)
    stream._ws, stream._running = SimpleNamespace(closed=False), True  # authenticated, the listen sent
    assert broker.stream_connection(stream) is None
    asyncio.run(stream._dispatch({"stream": "listening", "data": {"streams": []}}))
    assert broker.stream_connection(stream) is None
    asyncio.run(stream._dispatch({"stream": "listening", "data": {"streams": ["trade_updates"]}}))
    assert broker.stream_connection(stream) == id(stream._ws)
    stream._ws = SimpleNamespace(closed=False)  # reconnected: not until confirmed again
    assert broker.stream_connection(stream) is None
