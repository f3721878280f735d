"""Sub-second detection: alpaca-py's StockDataStream on the paper exchange's market-data
websocket, each quote decided by the quote watch (as `manage.py runquotes` runs it) through the
monitor's rules, claim and close; the monitor polling as the backstop."""

import threading
import time
from decimal import Decimal

import pytest

from risk.deciding import DecidedOn
from risk.heartbeats import heartbeats_stale_check
from risk.models import QUOTES, Alert, AlertKind, RiskEvent, RiskEventKind, StreamedSymbol
from risk.monitor import backstop_forget, monitor_cycle
from risk.quote_watch import quote_stream_runner
from risk.selectors import quote_stream_status, streamed_symbols
from risk.entries import BracketNotProtected, submit_bracket_order
from tests.helpers import StreamThread, eventually, exit_posts, staff_client, token_client
from trading.models import CloseReason, Position, PositionStatus

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("active")]

class Running(StreamThread):
    def __init__(self, holder: str = "test-quotes", **kwargs):
        runner, self.watch = quote_stream_runner(holder=holder, ping_seconds=1, **kwargs)
        runner.lease_seconds = 6
        super().__init__(runner)


@pytest.fixture(autouse=True)
def _backstop_afresh():
    backstop_forget()


@pytest.fixture
def quotes(exchange, settings):
    settings.STREAM_SILENCE_SECONDS = 30
    settings.STREAM_RERANK_SECONDS = 1
    running = Running()
    yield running
    running.close()


def unprotected(exchange, *, symbol="AAPL", side="buy", qty=10, stop="140", target="160") -> Position:
    """A position whose broker legs are missing: the moment the fallback exists for."""
    exchange.control.add_fault("drop_legs", count=1)
    with pytest.raises(BracketNotProtected) as caught:
        submit_bracket_order(symbol=symbol, quantity=qty, side=side, stop_loss=stop, take_profit=target)
    return caught.value.position


def streamed(exchange, *symbols: str) -> bool:
    """The paper exchange's session has these quote subscriptions and the watch saw them accepted."""
    sessions = exchange.control.streams().get("connections", [])
    on_exchange = {s for session in sessions if session.get("stream") == "market_data"
                   for s in session.get("subscriptions", {}).get("quotes", [])}
    return set(symbols) <= on_exchange and set(symbols) <= streamed_symbols()


def _position(pk: int) -> Position:
    return Position.objects.get(pk=pk)


def _closed_by_stream(position: Position, reason: str) -> bool:
    position = _position(position.pk)
    return position.status == PositionStatus.CLOSED and position.close_reason == reason


def _triggered_via(position: Position) -> list[str]:
    return [e.data.get("via") for e in RiskEvent.objects.filter(position=position, kind=RiskEventKind.TRIGGERED)]


@pytest.mark.parametrize("side,stop,target,bid,ask,reason", [
    ("buy", "140", "160", "139.50", "139.52", CloseReason.STOP_LOSS_HIT),
    ("buy", "140", "160", "160.10", "160.12", CloseReason.TAKE_PROFIT_HIT),
    ("sell", "160", "140", "160.00", "160.02", CloseReason.STOP_LOSS_HIT),
    ("sell", "160", "140", "139.80", "139.90", CloseReason.TAKE_PROFIT_HIT),
])
def test_a_streamed_quote_crossing_a_level_closes_at_once(quotes, exchange, side, stop, target, bid, ask, reason):
    position = unprotected(exchange, side=side, stop=stop, target=target)
    assert eventually(lambda: streamed(exchange, "AAPL")), "never subscribed"
    exchange.control.set_quote("AAPL", bid, ask)
    assert eventually(lambda: _closed_by_stream(position, reason))
    assert _triggered_via(position) == [DecidedOn.STREAM]
    assert len(exit_posts(exchange)) == 1


def test_a_crossing_before_the_subscription_is_decided_on_the_snapshot(exchange, settings):
    """A stream sends only changes: a symbol's quote from before it was subscribed (or while the
    stream was away) is read once the broker accepted it, and decided."""
    settings.STREAM_SILENCE_SECONDS = 30
    position = unprotected(exchange)
    exchange.control.set_quote("AAPL", "139.50", "139.52")  # crossed before any stream runs
    running = Running()
    try:
        assert eventually(lambda: _closed_by_stream(position, CloseReason.STOP_LOSS_HIT))
        assert _triggered_via(position) == [DecidedOn.STREAM] and len(exit_posts(exchange)) == 1
    finally:
        running.close()


def test_a_quote_inside_the_levels_does_nothing(quotes, exchange):
    position = unprotected(exchange)
    assert eventually(lambda: streamed(exchange, "AAPL"))
    exchange.control.set_quote("AAPL", "150.50", "150.52")
    assert eventually(lambda: StreamedSymbol.objects.filter(symbol="AAPL", bid=Decimal("150.50")).exists())
    assert _position(position.pk).status == PositionStatus.OPEN and exit_posts(exchange) == []


def test_crossed_zero_and_stale_quotes_are_skipped_and_recorded_never_acted_on(quotes, exchange):
    position = unprotected(exchange)
    assert eventually(lambda: streamed(exchange, "AAPL"))
    exchange.control.set_quote("AAPL", "139", "138")  # crossed: bid above ask, bid beyond the stop
    assert eventually(lambda: RiskEvent.objects.filter(position=position, kind=RiskEventKind.SKIPPED,
                                                       reason__startswith="crossed").exists())
    exchange.control.set_quote("AAPL", "0", "0")  # zero: no bid, no ask
    assert eventually(lambda: RiskEvent.objects.filter(position=position, kind=RiskEventKind.SKIPPED,
                                                       reason="no bid and no ask").exists())
    exchange.control.set_quote("AAPL", "130", "130.02", time="2020-01-02T15:00:00Z")  # stale
    assert eventually(lambda: RiskEvent.objects.filter(position=position, kind=RiskEventKind.SKIPPED,
                                                       reason__startswith="stale quote").exists())
    skipped = RiskEvent.objects.filter(position=position, kind=RiskEventKind.SKIPPED)
    assert {e.data.get("via") for e in skipped} == {DecidedOn.STREAM}
    assert eventually(lambda: StreamedSymbol.objects.get(symbol="AAPL").skipped >= 3)
    assert _position(position.pk).status == PositionStatus.OPEN and exit_posts(exchange) == []


def test_n_consecutive_quotes_beyond_the_level_when_asked(exchange, settings):
    settings.STREAM_SILENCE_SECONDS = 30
    settings.STREAM_CONFIRM_QUOTES = 3
    position = unprotected(exchange)
    running = Running()
    try:
        assert eventually(lambda: streamed(exchange, "AAPL"))
        exchange.control.set_quote("AAPL", "139.50", "139.52")
        exchange.control.set_quote("AAPL", "139.40", "139.42")
        exchange.control.set_quote("AAPL", "150", "150.02")  # back inside: the count starts again
        exchange.control.set_quote("AAPL", "139.30", "139.32")
        exchange.control.set_quote("AAPL", "139.20", "139.22")
        assert eventually(lambda: StreamedSymbol.objects.filter(symbol="AAPL", quotes__gte=5).exists())
        time.sleep(0.3)
        assert _position(position.pk).status == PositionStatus.OPEN
        exchange.control.set_quote("AAPL", "139.10", "139.12")  # the third in a row
        assert eventually(lambda: _closed_by_stream(position, CloseReason.STOP_LOSS_HIT))
    finally:
        running.close()


def test_the_stream_and_the_monitor_racing_send_one_exit(quotes, exchange):
    positions = [unprotected(exchange, qty=q) for q in (1, 2, 3)]
    assert eventually(lambda: streamed(exchange, "AAPL"))
    barrier = threading.Barrier(2)
    results = []

    def monitor():
        barrier.wait()
        try:
            results.append(monitor_cycle(owner="racing-monitor"))
        finally:
            from django.db import connection
            connection.close()

    thread = threading.Thread(target=monitor)
    thread.start()
    barrier.wait()
    exchange.control.set_quote("AAPL", "139.50", "139.52")
    thread.join(timeout=30)
    assert all(eventually(lambda p=p: _position(p.pk).status == PositionStatus.CLOSED) for p in positions)
    time.sleep(0.5)
    posts = exit_posts(exchange)
    # one exit per position, or one netted exit for the symbol: never two for a position
    assert sum(Decimal(str(p["body"]["qty"])) for p in posts) == 6
    for p in positions:
        assert RiskEvent.objects.filter(position=p, kind=RiskEventKind.TRIGGERED).count() == 1


def test_symbols_are_subscribed_as_positions_open_and_unsubscribed_as_they_close(quotes, exchange):
    aapl = unprotected(exchange)
    assert eventually(lambda: streamed(exchange, "AAPL"))
    msft = unprotected(exchange, symbol="MSFT", stop="390", target="410")
    assert eventually(lambda: streamed(exchange, "AAPL", "MSFT"))
    exchange.control.set_quote("AAPL", "139.50", "139.52")  # AAPL's stop: closed by the stream
    assert eventually(lambda: _closed_by_stream(aapl, CloseReason.STOP_LOSS_HIT))
    assert eventually(lambda: not streamed(exchange, "AAPL") and streamed(exchange, "MSFT"))
    assert set(StreamedSymbol.objects.values_list("symbol", flat=True)) == {"MSFT"}
    assert _position(msft.pk).status == PositionStatus.OPEN


def test_the_symbol_budget_streams_the_nearest_and_polls_the_rest(exchange, settings):
    """STREAM_MAX_SYMBOLS=2 of three symbols: the two nearest their levels; the third is
    polled. When the third comes nearest, it is swapped in at the next re-rank."""
    settings.STREAM_SILENCE_SECONDS = 30
    settings.STREAM_RERANK_SECONDS = 1
    unprotected(exchange, symbol="AAPL", stop="149", target="190")  # 0.7 % from its stop
    unprotected(exchange, symbol="MSFT", stop="396", target="440")  # 1 %
    unprotected(exchange, symbol="TSLA", stop="200", target="300")  # 20 %
    running = Running(max_symbols=2)
    try:
        assert eventually(lambda: streamed(exchange, "AAPL", "MSFT"))
        assert "TSLA" not in streamed_symbols()
        exchange.control.set_quote("TSLA", "200.40", "200.42")  # TSLA now 0.2 % from its stop
        assert eventually(lambda: streamed(exchange, "AAPL", "TSLA"), timeout=15)
        assert "MSFT" not in streamed_symbols()
        # the monitor polls MSFT (not streamed) and leaves the streamed symbols to the stream
        assert monitor_cycle().checked == 3  # the backstop's first poll of every symbol
        result = monitor_cycle()
        assert result.checked == 1
        assert any("left to the quote stream" in m for m in result.messages)
    finally:
        running.close()


def test_a_405_symbol_limit_is_read_and_the_refused_symbols_polled(exchange, settings):
    settings.STREAM_SILENCE_SECONDS = 30
    exchange.control.set_stream_config(iex_symbol_limit=1)
    unprotected(exchange, symbol="AAPL", stop="149", target="190")
    running = Running(max_symbols=5)
    try:
        assert eventually(lambda: streamed(exchange, "AAPL"))
        unprotected(exchange, symbol="MSFT", stop="396", target="440")
        assert eventually(lambda: RiskEvent.objects.filter(kind=RiskEventKind.ERROR,
                                                           reason__contains="405").exists())
        assert eventually(lambda: StreamedSymbol.objects.filter(symbol="MSFT", accepted=False,
                                                                last_problem__contains="405").exists())
        assert running.watch.state.limit == 1
        assert streamed_symbols() == {"AAPL"}
    finally:
        running.close()


def test_a_406_connection_limit_is_recorded_and_the_stream_stale(exchange, settings):
    settings.STREAM_SILENCE_SECONDS = 3
    exchange.control.add_fault("ws_406", path="/v2/iex")
    unprotected(exchange)
    running = Running()
    try:
        assert eventually(lambda: RiskEvent.objects.filter(kind=RiskEventKind.ERROR,
                                                           reason__contains="406").exists())
        assert streamed_symbols() == set()
        exchange.control.clear_faults()
        assert eventually(lambda: streamed(exchange, "AAPL"), timeout=40)  # alpaca-py's backoff reconnects
    finally:
        running.close()


def test_a_409_insufficient_subscription_is_recorded_once_and_the_symbols_polled(exchange, settings):
    settings.STREAM_SILENCE_SECONDS = 3
    exchange.control.add_fault("ws_409", path="/v2/iex")
    unprotected(exchange)
    running = Running()
    try:
        assert eventually(lambda: RiskEvent.objects.filter(kind=RiskEventKind.ERROR, reason__contains="409").exists())
        time.sleep(6)  # alpaca-py gives up on a 409; the runner starts it again after a pause
        assert RiskEvent.objects.filter(kind=RiskEventKind.ERROR, reason__contains="409").count() == 1
        assert streamed_symbols() == set()
        assert monitor_cycle().checked == 1  # polled
    finally:
        running.close()
        exchange.control.clear_faults()


def test_a_silent_stream_is_alerted_and_every_symbol_polled_again(quotes, exchange, settings):
    settings.STREAM_SILENCE_SECONDS = 2
    settings.MONITOR_STREAMED_INTERVAL_SECONDS = 3600
    position = unprotected(exchange)
    assert eventually(lambda: streamed(exchange, "AAPL"))
    exchange.control.set_quote("AAPL", "150.10", "150.12")
    assert eventually(lambda: streamed(exchange, "AAPL"))
    assert monitor_cycle().checked == 1  # the backstop's first poll
    assert monitor_cycle().checked == 0  # then left to the stream
    exchange.control.add_fault("ws_silence", path="/v2/iex")
    exchange.control.set_quote("AAPL", "150.20", "150.22")  # never delivered
    assert eventually(lambda: quote_stream_status().heartbeat.stale, timeout=10)
    assert heartbeats_stale_check() == [f"{AlertKind.HEARTBEAT_STALE} {QUOTES}"]
    assert "polls every symbol" in Alert.objects.get(kind=AlertKind.HEARTBEAT_STALE).message
    exchange.control.set_quote("AAPL", "139.50", "139.52")  # the stop, seen by the monitor now
    result = monitor_cycle()
    assert result.checked == 1 and result.actions == 1
    assert _triggered_via(position) == [DecidedOn.POLL]
    exchange.control.clear_faults()


def test_a_dropped_stream_reconnects_resubscribes_and_decides_again(quotes, exchange):
    position = unprotected(exchange)
    assert eventually(lambda: streamed(exchange, "AAPL"))
    exchange.control.add_fault("ws_drop", path="/v2/iex", count=1)
    assert eventually(lambda: quote_stream_status().heartbeat.heartbeat.started_at is not None)
    time.sleep(1.5)
    assert eventually(lambda: streamed(exchange, "AAPL"), timeout=30)
    exchange.control.set_quote("AAPL", "139.50", "139.52")
    assert eventually(lambda: _closed_by_stream(position, CloseReason.STOP_LOSS_HIT), timeout=20)
    assert _triggered_via(position) == [DecidedOn.STREAM]


def test_stream_health_per_symbol_in_the_api_and_on_the_admin_index(quotes, exchange):
    unprotected(exchange)
    unprotected(exchange, symbol="MSFT", stop="390", target="410")
    assert eventually(lambda: streamed(exchange, "AAPL", "MSFT"))
    exchange.control.set_quote("AAPL", "150.10", "150.12")
    assert eventually(lambda: StreamedSymbol.objects.filter(symbol="AAPL", quotes__gte=1).exists())
    body = token_client("viewer", ["risk.view_heartbeat"]).get("/api/v1/stream/quotes").json()
    assert body["healthy"] is True and body["polled"] == []
    rows = {row["symbol"]: row for row in body["symbols"]}
    assert rows["AAPL"]["streamed"] is True and rows["AAPL"]["bid"] == "150.1000" and rows["AAPL"]["quotes"] >= 1
    assert rows["MSFT"]["streamed"] is True
    page = staff_client("ops", ["trading.view_position"]).get("/admin/").content.decode()
    assert 'id="quote-stream-box"' in page and "HEALTHY" in page and "AAPL" in page


# --- alpaca-py 0.44: what the quote stream relies on, pinned ----------------------------------


def test_alpaca_py_only_logs_subscription_and_error_messages_ours_hands_them_on():
    import asyncio

    from alpaca.data.live import StockDataStream

    from trading import broker

    seen = []

    async def handler(message):
        seen.append(message)

    plain = StockDataStream("k", "s", raw_data=True, url_override="ws://127.0.0.1:9/v2/iex")
    plain.subscribe_quotes(handler, "*")  # before it runs: only records the handler
    for message in ({"T": "subscription", "quotes": ["AAPL"]}, {"T": "error", "code": 405, "msg": "symbol limit exceeded"}):
        asyncio.run(plain._dispatch(message))
    assert seen == []  # alpaca-py's _dispatch logs them and returns
    ours = broker.quote_stream(handler, ping_seconds=1)
    asyncio.run(ours._dispatch({"T": "error", "code": 405, "msg": "symbol limit exceeded"}))
    asyncio.run(ours._dispatch({"T": "subscription", "quotes": ["AAPL"], "trades": []}))
    assert [broker.parse_stream_notice(m) for m in seen] == [
        broker.StreamNotice(kind="error", code=405, message="symbol limit exceeded"),
        broker.StreamNotice(kind="subscription", accepted=("AAPL",))]


def test_alpaca_py_subscribe_blocks_on_its_own_loop_and_spins_before_the_first_symbol():
    """What `quotes_change` and the wait before `_run_forever` design around: `_subscribe` waits
    on a future of the stream's own loop (a deadlock when called from it); `_run_forever` polls
    for a first handler with `asyncio.sleep(0)` (a busy loop); the handlers of the quotes
    channel are what it subscribes again after a reconnection."""
    import inspect

    from alpaca.data.live.websocket import DataStream

    assert "run_coroutine_threadsafe" in inspect.getsource(DataStream._subscribe)
    assert ".result()" in inspect.getsource(DataStream._subscribe)
    spin = inspect.getsource(DataStream._run_forever)
    assert "await asyncio.sleep(0)" in spin.split("started")[0]
    assert "_send_subscribe_msg()" in spin and "self._handlers" in inspect.getsource(DataStream._send_subscribe_msg)


def test_the_quote_stream_does_not_spin_while_nothing_is_subscribed():
    import asyncio

    from trading import broker

    async def handler(message):
        pass

    stream = broker.quote_stream(handler, ping_seconds=1)
    used = []

    def run():
        started = time.thread_time()

        async def main():
            runner = asyncio.create_task(broker.stream_run(stream))
            await asyncio.sleep(1.0)
            await broker.stream_stop(stream)
            await asyncio.wait_for(runner, 5)

        asyncio.run(main())
        used.append(time.thread_time() - started)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=10)
    assert used and used[0] < 0.5  # a busy loop would use the whole second


def test_streamed_quotes_are_read_like_rest_quotes():
    import datetime as dt

    import msgpack

    from trading import broker

    stamp = msgpack.Timestamp.from_datetime(dt.datetime(2026, 12, 1, 15, 0, tzinfo=dt.UTC))
    quote = broker.parse_stream_quote({"T": "q", "S": "AAPL", "bp": 149.99, "ap": 0, "t": stamp})
    assert (quote.bid, quote.ask, quote.time) == (Decimal("149.99"), None, dt.datetime(2026, 12, 1, 15, 0, tzinfo=dt.UTC))
    assert broker.parse_stream_notice({"T": "q", "S": "AAPL"}) is None
