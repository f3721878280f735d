"""The paper exchange's websocket streams, on the same port as its HTTP API:

* trade_updates at ``/stream`` (https://docs.alpaca.markets/docs/websocket-streaming), driven
  with alpaca-py's ``TradingStream`` and with a raw ``websockets`` client;
* stock market data at ``/v2/iex`` and ``/v2/sip``
  (https://docs.alpaca.markets/docs/real-time-stock-pricing-data), driven with alpaca-py's
  ``StockDataStream`` and a raw client.

alpaca-py's ``run()`` calls ``asyncio.run``; these tests run the streams' ``_run_forever()``
coroutine on a loop of their own in a thread (``StreamRunner``) and stop them through
``stop_ws()`` + ``close()``.  Every wait has a timeout.
"""

import asyncio
import json
import queue
import threading
import time
from datetime import datetime

import msgpack
import pytest
import websockets
from alpaca.data.live.stock import StockDataStream
from alpaca.trading.enums import OrderClass, OrderSide, TimeInForce
from alpaca.trading.requests import (
    LimitOrderRequest,
    MarketOrderRequest,
    ReplaceOrderRequest,
    StopLossRequest,
    TakeProfitRequest,
)
from alpaca.trading.stream import TradingStream

from tests.paper_exchange_fixtures import (  # noqa: F401
    PAPER_API_KEY,
    PAPER_SECRET_KEY,
    paper_exchange,
    paper_exchange_options,
    trading_client,
)

TIMEOUT = 10.0
AUTH = {"action": "authenticate", "data": {"key_id": PAPER_API_KEY, "secret_key": PAPER_SECRET_KEY}}
LISTEN = {"action": "listen", "data": {"streams": ["trade_updates"]}}


@pytest.fixture
def ex(paper_exchange):  # noqa: F811
    paper_exchange.control.set_quote("AAPL", "149.99", "150.01")
    return paper_exchange


@pytest.fixture
def tc(ex):
    return trading_client(ex)


def wait_for(predicate, timeout=TIMEOUT, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _bracket(qty=10, tp=155.0, sl=145.0):
    return MarketOrderRequest(symbol="AAPL", qty=qty, side=OrderSide.BUY, time_in_force=TimeInForce.DAY,
                              order_class=OrderClass.BRACKET, take_profit=TakeProfitRequest(limit_price=tp),
                              stop_loss=StopLossRequest(stop_price=sl))


class StreamRunner:
    """Runs an alpaca-py stream's ``_run_forever()`` on its own loop in a thread."""

    def __init__(self, stream):
        self.stream = stream
        self.loop = asyncio.new_event_loop()
        self.received: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(stream._run_forever(),),
                                       daemon=True)

    async def handler(self, item):
        self.received.put(item)

    def start(self) -> "StreamRunner":
        self.thread.start()
        return self

    def next(self, timeout=TIMEOUT):
        return self.received.get(timeout=timeout)

    def stop(self) -> None:
        if self.thread.is_alive():
            asyncio.run_coroutine_threadsafe(self.stream.stop_ws(), self.loop).result(timeout=TIMEOUT)
            asyncio.run_coroutine_threadsafe(self.stream.close(), self.loop).result(timeout=TIMEOUT)
            self.thread.join(timeout=TIMEOUT)
        assert not self.thread.is_alive()
        self.loop.close()


def _sessions(ex, stream, **match):
    return [s for s in ex.control.streams()["connections"]
            if s["stream"] == stream and all(s.get(k) == v for k, v in match.items())]


@pytest.fixture
def trading_stream(ex):
    stream = TradingStream(ex.api_key, ex.secret_key, url_override=ex.trade_stream_url)
    runner = StreamRunner(stream)
    stream.subscribe_trade_updates(runner.handler)
    runner.start()
    wait_for(lambda: _sessions(ex, "trade_updates", listening=["trade_updates"]), what="a listening session")
    yield runner
    runner.stop()


# ---------------------------------------------------------------- trade_updates with alpaca-py


def test_trading_stream_reports_each_order_change(ex, tc, trading_stream):
    """https://docs.alpaca.markets/docs/websocket-streaming#trade-updates -- new, fill (with
    price, qty, position_qty), and no canceled event for the sibling leg a fill cancels."""
    order = tc.submit_order(_bracket())
    events = [trading_stream.next() for _ in range(3)]
    assert [(u.event, str(u.order.id)) for u in events] == [
        ("new", str(order.id)), ("fill", str(order.id)), ("new", str(order.legs[0].id))]
    fill = events[1]
    assert (fill.price, fill.qty, fill.position_qty) == (150.01, 10, 10)
    assert fill.order.status == "filled" and len(fill.order.legs) == 2
    assert isinstance(fill.timestamp, datetime) and fill.timestamp.tzinfo is not None
    ex.control.set_quote("AAPL", "144.80", "144.90")  # the stop leg fills, the take-profit is canceled
    stop_fill = trading_stream.next()
    assert (stop_fill.event, str(stop_fill.order.id), stop_fill.position_qty) == ("fill", str(order.legs[1].id), 0)
    assert tc.get_order_by_id(order.legs[0].id).status == "canceled"
    tc.submit_order(LimitOrderRequest(symbol="AAPL", qty=1, side=OrderSide.BUY,
                                      time_in_force=TimeInForce.DAY, limit_price=100.0))
    nxt = trading_stream.next()
    assert (nxt.event, nxt.order.limit_price) == ("new", "100.00")  # nothing for the canceled leg came first
    assert len({u.execution_id for u in events + [stop_fill, nxt]}) == 5


def test_trading_stream_reconnects_after_a_dropped_connection(ex, tc, trading_stream):
    ex.control.add_fault("ws_drop", path="/stream", count=1)
    wait_for(lambda: ex.control.faults() == [], what="the drop")
    wait_for(lambda: _sessions(ex, "trade_updates", listening=["trade_updates"]), what="the reconnection")
    order = tc.submit_order(MarketOrderRequest(symbol="AAPL", qty=1, side=OrderSide.BUY,
                                               time_in_force=TimeInForce.DAY))
    assert [trading_stream.next().event for _ in range(2)] == ["new", "fill"]
    assert str(tc.get_order_by_id(order.id).id) == str(order.id)


# ---------------------------------------------------------------- trade_updates, raw client


async def _recv_json(ws, timeout=TIMEOUT):
    message = await asyncio.wait_for(ws.recv(), timeout)
    assert isinstance(message, bytes)  # Alpaca's paper trade stream answers in binary frames
    return json.loads(message)


async def _listening(url, auth=AUTH):
    ws = await websockets.connect(url, open_timeout=TIMEOUT)
    await ws.send(json.dumps(auth))
    assert (await _recv_json(ws))["data"]["status"] == "authorized"
    await ws.send(json.dumps(LISTEN))
    assert await _recv_json(ws) == {"stream": "listening", "data": {"streams": ["trade_updates"]}}
    return ws


def test_trade_stream_protocol(ex):
    """https://docs.alpaca.markets/docs/websocket-streaming -- authentication answers, listen
    before auth, the "auth" form of the message, and msgpack when asked for."""

    async def scenario():
        async with websockets.connect(ex.trade_stream_url, open_timeout=TIMEOUT) as ws:
            await ws.send(json.dumps(LISTEN))
            assert await _recv_json(ws) == {"stream": "authorization",
                                            "data": {"status": "unauthorized", "action": "listen"}}
            await ws.send(json.dumps({"action": "authenticate", "data": {"key_id": "", "secret_key": "x"}}))
            assert (await _recv_json(ws))["data"] == {"status": "unauthorized", "action": "authenticate"}
            await ws.send(json.dumps({"action": "auth", "key": "k", "secret": "s"}))
            assert (await _recv_json(ws))["data"] == {"status": "authorized", "action": "authenticate"}
        async with websockets.connect(ex.trade_stream_url, open_timeout=TIMEOUT,
                                      additional_headers={"Content-Type": "application/msgpack"}) as ws:
            await ws.send(msgpack.packb(AUTH))
            reply = msgpack.unpackb(await asyncio.wait_for(ws.recv(), TIMEOUT))
            assert reply == {"stream": "authorization", "data": {"status": "authorized", "action": "authenticate"}}

    asyncio.run(scenario())


def test_trade_stream_events_for_cancel_replace_expire_partial_and_reject(ex, tc):
    """https://docs.alpaca.markets/docs/websocket-streaming#common-events -- canceled, replaced,
    expired, partial_fill, rejected (the reject_after_accept fault)."""

    async def scenario():
        ws = await _listening(ex.trade_stream_url)
        try:
            limit = LimitOrderRequest(symbol="AAPL", qty=10, side=OrderSide.BUY, time_in_force=TimeInForce.DAY,
                                      limit_price=100.0)
            first = await asyncio.to_thread(tc.submit_order, limit)
            new = await asyncio.to_thread(tc.replace_order_by_id, first.id, ReplaceOrderRequest(limit_price=101.0))
            await asyncio.to_thread(ex.control.fill_order, new.id, 4)
            await asyncio.to_thread(ex.control.expire_day_orders)
            ex.control.add_fault("reject_after_accept", count=1)
            rejected = await asyncio.to_thread(tc.submit_order, limit)
            second = await asyncio.to_thread(tc.submit_order, LimitOrderRequest(
                symbol="AAPL", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.GTC, limit_price=99.0))
            await asyncio.to_thread(tc.cancel_order_by_id, second.id)
            got = [(await _recv_json(ws))["data"] for _ in range(9)]
            return first, new, rejected, second, got
        finally:
            await ws.close()

    first, new, rejected, second, got = asyncio.run(scenario())
    assert [(d["event"], d["order"]["id"]) for d in got] == [
        ("new", str(first.id)), ("replaced", str(first.id)), ("new", str(new.id)),
        ("partial_fill", str(new.id)), ("expired", str(new.id)),
        ("new", str(rejected.id)), ("rejected", str(rejected.id)),
        ("new", str(second.id)), ("canceled", str(second.id))]
    partial = got[3]
    assert (partial["price"], partial["qty"], partial["position_qty"]) == ("101", "4", "4")
    assert got[2]["order"]["replaces"] == str(first.id) and got[1]["order"]["replaced_by"] == str(new.id)


def test_trade_stream_faults_duplicate_silence_refuse_drop(ex, tc):
    """Faults for the console's stream handling: an event sent twice (same execution_id), a
    connection gone silent (no data, no pong), a second concurrent connection refused (HTTP 429
    at the handshake, as alpaca-py's comments describe Alpaca's single-connection slot), and a
    dropped connection."""

    async def scenario():
        ws = await _listening(ex.trade_stream_url)
        ex.control.add_fault("ws_duplicate", path="/stream", count=1)
        await asyncio.to_thread(tc.submit_order, LimitOrderRequest(
            symbol="AAPL", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.DAY, limit_price=100.0))
        a, b = await _recv_json(ws), await _recv_json(ws)
        assert a == b and a["data"]["event"] == "new"
        ex.control.add_fault("ws_refuse_second", path="/stream")
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(ex.trade_stream_url, open_timeout=TIMEOUT)
        assert refused.value.response.status_code == 429
        ex.control.clear_faults()
        ex.control.add_fault("ws_silence", path="/stream")
        await asyncio.to_thread(wait_for, lambda: _sessions(ex, "trade_updates", silent=True))
        await asyncio.to_thread(tc.submit_order, LimitOrderRequest(
            symbol="AAPL", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.DAY, limit_price=99.0))
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(ws.recv(), 0.5)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(await ws.ping(), 0.5)
        ex.control.clear_faults()
        ws2 = await _listening(ex.trade_stream_url)  # a new connection is not silent
        ex.control.add_fault("ws_drop", path="/stream")
        with pytest.raises(websockets.ConnectionClosedError):
            await asyncio.wait_for(ws2.recv(), TIMEOUT)
        ex.control.clear_faults()
        ws.transport.abort()

    asyncio.run(scenario())


# ---------------------------------------------------------------- market data with alpaca-py


def test_stock_data_stream_receives_quotes_as_alpaca_py_parses_them(ex):
    """https://docs.alpaca.markets/docs/real-time-stock-pricing-data -- msgpack frames (alpaca-py
    sends Content-Type: application/msgpack); ``t`` is a msgpack Timestamp, which alpaca-py
    turns into a datetime."""
    stream = StockDataStream(ex.api_key, ex.secret_key, url_override=ex.data_stream_url)
    runner = StreamRunner(stream)
    stream.subscribe_quotes(runner.handler, "AAPL", "MSFT")
    runner.start()
    try:
        wait_for(lambda: _sessions(ex, "market_data", subscriptions={"quotes": ["AAPL", "MSFT"]}),
                 what="the subscription")
        ex.control.set_quote("MSFT", "399.99", "400.01")
        ex.control.set_quote("TSLA", "249.99", "250.01")  # not subscribed
        ex.control.set_quote("AAPL", "150.99", "151.01")
        first, second = runner.next(), runner.next()
        assert (first.symbol, first.bid_price, first.ask_price, first.bid_size) == ("MSFT", 399.99, 400.01, 100)
        assert second.symbol == "AAPL" and isinstance(second.timestamp, datetime)
        assert second.timestamp.tzinfo is not None and abs(second.timestamp.timestamp() - time.time()) < 60
        assert _sessions(ex, "market_data")[0]["codec"] == "msgpack"
    finally:
        runner.stop()


# ---------------------------------------------------------------- market data, raw client


async def _data_recv(ws, timeout=TIMEOUT):
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def _data_connect(url, auth=True):
    ws = await websockets.connect(url, open_timeout=TIMEOUT)
    assert await _data_recv(ws) == [{"T": "success", "msg": "connected"}]
    if auth:
        await ws.send(json.dumps({"action": "auth", "key": "k", "secret": "s"}))
        assert await _data_recv(ws) == [{"T": "success", "msg": "authenticated"}]
    return ws


def test_market_data_protocol_json(ex):
    """https://docs.alpaca.markets/docs/real-time-stock-pricing-data -- JSON text frames without
    the msgpack header; subscription answers list every channel; errors 400/401/402/403."""

    async def scenario():
        ws = await _data_connect(ex.data_stream_url, auth=False)
        await ws.send(json.dumps({"action": "subscribe", "quotes": ["AAPL"]}))
        assert await _data_recv(ws) == [{"T": "error", "code": 401, "msg": "not authenticated"}]
        await ws.send("not json")
        assert await _data_recv(ws) == [{"T": "error", "code": 400, "msg": "invalid syntax"}]
        await ws.send(json.dumps({"action": "auth", "key": "", "secret": "s"}))
        assert await _data_recv(ws) == [{"T": "error", "code": 402, "msg": "auth failed"}]
        ws = await _data_connect(ex.data_stream_url)
        await ws.send(json.dumps({"action": "auth", "key": "k", "secret": "s"}))
        assert await _data_recv(ws) == [{"T": "error", "code": 403, "msg": "already authenticated"}]
        await ws.send(json.dumps({"action": "subscribe", "trades": ["AAPL"], "quotes": ["aapl", "MSFT"]}))
        sub = (await _data_recv(ws))[0]
        assert (sub["T"], sub["trades"], sub["quotes"], sub["bars"]) == ("subscription", ["AAPL"], ["AAPL", "MSFT"], [])
        await ws.send(json.dumps({"action": "unsubscribe", "quotes": ["MSFT"]}))
        assert (await _data_recv(ws))[0]["quotes"] == ["AAPL"]
        message = await asyncio.wait_for(asyncio.gather(
            asyncio.to_thread(ex.control.set_quote, "AAPL", "150.99", "151.01"), ws.recv()), TIMEOUT)
        assert isinstance(message[1], str)  # text frames for JSON
        (quote,) = json.loads(message[1])
        assert {k: quote[k] for k in ("T", "S", "bp", "ap", "bs", "as", "c", "z")} == {
            "T": "q", "S": "AAPL", "bp": 150.99, "ap": 151.01, "bs": 100, "as": 100, "c": ["R"], "z": "C"}
        assert quote["t"].endswith("Z")
        await ws.close()

    asyncio.run(scenario())


def test_market_data_limits_and_entitlements(ex):
    """Alpaca's documented errors: 405 symbol limit exceeded (30 trades+quotes symbols on IEX;
    subscriptions stay as they were), 406 connection limit exceeded (one connection per
    endpoint), 409 insufficient subscription (SIP without the plan); SIP has no symbol limit."""
    ex.control.set_stream_config(iex_symbol_limit=3)

    async def scenario():
        ws = await _data_connect(ex.data_stream_url)
        await ws.send(json.dumps({"action": "subscribe", "quotes": ["A", "B", "C", "D"], "bars": ["*"]}))
        assert await _data_recv(ws) == [{"T": "error", "code": 405, "msg": "symbol limit exceeded"}]
        await ws.send(json.dumps({"action": "subscribe", "quotes": ["A", "B"], "trades": ["A", "C"]}))
        assert (await _data_recv(ws))[0]["quotes"] == ["A", "B"]
        second = await _data_connect(ex.data_stream_url, auth=False)
        await second.send(json.dumps({"action": "auth", "key": "k", "secret": "s"}))
        assert await _data_recv(second) == [{"T": "error", "code": 406, "msg": "connection limit exceeded"}]
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(second.recv(), TIMEOUT)  # and the server closes it
        sip = await _data_connect(ex.ws_url + "/v2/sip")  # another endpoint: its own connection
        await sip.send(json.dumps({"action": "subscribe", "quotes": [f"S{i}" for i in range(100)]}))
        assert len((await _data_recv(sip))[0]["quotes"]) == 100
        await sip.close()
        await ws.close()
        ex.control.set_stream_config(sip_entitled=False)
        sip = await _data_connect(ex.ws_url + "/v2/sip", auth=False)
        await sip.send(json.dumps({"action": "auth", "key": "k", "secret": "s"}))
        assert await _data_recv(sip) == [{"T": "error", "code": 409, "msg": "insufficient subscription"}]
        await sip.close()

    asyncio.run(scenario())


def test_market_data_faults(ex):
    """The stream faults of the control API: ws_405, ws_406, ws_duplicate, ws_silence, ws_drop."""

    async def scenario():
        ex.control.add_fault("ws_406", path="/v2/iex", count=1)
        ws = await _data_connect(ex.data_stream_url, auth=False)
        await ws.send(json.dumps({"action": "auth", "key": "k", "secret": "s"}))
        assert await _data_recv(ws) == [{"T": "error", "code": 406, "msg": "connection limit exceeded"}]
        await ws.close()
        ws = await _data_connect(ex.data_stream_url)
        ex.control.add_fault("ws_405", count=1)
        await ws.send(json.dumps({"action": "subscribe", "quotes": ["AAPL"]}))
        assert await _data_recv(ws) == [{"T": "error", "code": 405, "msg": "symbol limit exceeded"}]
        await ws.send(json.dumps({"action": "subscribe", "quotes": ["AAPL"]}))
        assert (await _data_recv(ws))[0]["quotes"] == ["AAPL"]
        ex.control.add_fault("ws_duplicate", count=1)
        await asyncio.to_thread(ex.control.set_quote, "AAPL", "150.99", "151.01")
        assert await _data_recv(ws) == await _data_recv(ws)
        ex.control.add_fault("ws_silence", path="/v2/iex")
        await asyncio.to_thread(wait_for, lambda: _sessions(ex, "market_data", silent=True))
        await asyncio.to_thread(ex.control.set_quote, "AAPL", "151.99", "152.01")
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(ws.recv(), 0.5)
        ex.control.clear_faults()
        ex.control.add_fault("ws_drop", path="/v2/iex", count=1)
        with pytest.raises(websockets.ConnectionClosedError):
            await asyncio.wait_for(ws.recv(), TIMEOUT)

    asyncio.run(scenario())


def test_server_stop_closes_open_streams(ex):
    async def scenario():
        ws = await _listening(ex.trade_stream_url)
        data = await _data_connect(ex.data_stream_url)
        await asyncio.to_thread(ex.server.stop)
        for conn in (ws, data):
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(conn.recv(), TIMEOUT)

    asyncio.run(scenario())
