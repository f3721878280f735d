"""The operator's console beyond the lists: the live positions board, one timeline per
position, the charts, CSV export, the admin's History of operators' actions, and the
wording and times an operator reads."""

import csv
import io
import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.admin.models import LogEntry
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from risk.models import RiskEvent
from tests.helpers import open_bracket, staff_client
from trading.board import positions_board
from trading.charts import closes_by_day
from trading.models import CloseReason, Position, PositionStatus, Protection
from trading.selectors import close_reason_summary

pytestmark = pytest.mark.django_db

VIEW = ["trading.view_position", "trading.view_order", "risk.view_riskevent", "risk.view_alert"]
OPERATOR = VIEW + ["trading.flatten_positions", "trading.close_positions", "trading.change_trading_mode",
                   "trading.view_tradingstatechange", "risk.view_heartbeat"]


_client = staff_client


@pytest.fixture
def operator():
    return _client("operator", OPERATOR)


def _quote_requests(exchange) -> int:
    return sum(1 for r in exchange.control.requests_log() if "/quotes/latest" in r["path"])


def _closed(symbol: str, reason: str | None, exit_price: str | None, days_ago: int = 1, entry: str = "100") -> Position:
    now = timezone.now()
    return Position.objects.create(symbol=symbol, side="long", quantity=Decimal("10"), entry_price=Decimal(entry),
                                   status=PositionStatus.CLOSED, opened_at=now - timedelta(days=days_ago, hours=2),
                                   closed_at=now - timedelta(days=days_ago), close_reason=reason,
                                   exit_price=Decimal(exit_price) if exit_price else None,
                                   protection=Protection.PROTECTED)


# --- The live board --------------------------------------------------------------------------------


def test_board_rows_distances_in_dollars_percent_and_r_and_totals(exchange):
    long = open_bracket("AAPL", quantity=10)  # stop 140, target 160; the quote's midpoint is 150.00
    short = open_bracket("MSFT", quantity=2, side="sell")  # stop 410, target 390, midpoint 400.00
    board = positions_board()
    rows = {row.position.pk: row for row in board.rows}

    row = rows[long.pk]
    risk = long.entry_price - Decimal("140")
    assert row.price == Decimal("150.00")
    assert (row.to_stop.dollars, row.to_stop.percent) == (Decimal("10.00"), Decimal("6.67"))
    assert row.to_stop.r == (Decimal("10") / risk).quantize(Decimal("0.01"))
    assert (row.to_target.dollars, row.to_target.percent) == (Decimal("10.00"), Decimal("6.67"))
    assert row.unrealised_pnl == ((Decimal("150") - long.entry_price) * 10).quantize(Decimal("0.01"))
    assert row.protected

    row = rows[short.pk]  # a short's stop is above: room = stop - price
    assert (row.to_stop.dollars, row.to_target.dollars) == (Decimal("10.00"), Decimal("10.00"))
    assert row.unrealised_pnl == ((short.entry_price - Decimal("400")) * 2).quantize(Decimal("0.01"))

    totals = {s.symbol: s for s in board.symbols}
    assert totals["AAPL"].net_quantity == 10 and totals["MSFT"].net_quantity == -2
    assert board.positions == 2 and board.unrealised_pnl == sum(r.unrealised_pnl for r in board.rows)

    exchange.control.set_quote("AAPL", "138.99", "139.01")  # through the stop: negative room
    positions_board.__globals__["cache"].clear()
    crossed = {row.position.pk: row for row in positions_board().rows}[long.pk]
    assert crossed.to_stop.dollars == Decimal("-1.00") and crossed.to_stop.r < 0
    assert positions_board().rows[0].position.pk == long.pk  # nearest its stop first


def test_board_quotes_come_in_one_request_and_are_cached_for_several_operators(exchange, settings):
    settings.BOARD_QUOTE_CACHE_SECONDS = 60
    for symbol in ("AAPL", "MSFT"):
        open_bracket(symbol)
    exchange.control.clear_requests_log()
    for _ in range(5):  # five operators' refreshes
        positions_board()
    assert _quote_requests(exchange) == 1


def test_board_page_refreshes_in_place_with_a_fixed_number_of_queries(operator, exchange):
    open_bracket("AAPL")
    page = operator.get("/admin/trading/position/board/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'id="board"' in html and 'hx-trigger="every 3s"' in html and "htmx" in html and "<html" in html

    partial = operator.get("/admin/trading/position/board/", HTTP_HX_REQUEST="true")
    body = partial.content.decode()
    assert body.lstrip().startswith("<div id=\"board\"") and "<html" not in body and "AAPL" in body

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert operator.get("/admin/trading/position/board/", HTTP_HX_REQUEST="true").status_code == 200
        return len(captured)

    few = queries()
    for symbol in ("MSFT", "TSLA", "NVDA", "AMD", "META", "AMZN"):  # straight into the database
        exchange.control.set_quote(symbol, "99.99", "100.01")
        Position.objects.create(symbol=symbol, side="long", quantity=Decimal(5), entry_price=Decimal(100),
                                stop_loss=Decimal(95), take_profit=Decimal(110), opened_at=timezone.now())
    assert queries() == few


def test_board_needs_the_view_permission(exchange):
    nobody = _client("nobody", ["trading.view_order"])
    assert nobody.get("/admin/trading/position/board/").status_code == 403


def test_board_says_when_the_broker_fails(operator, exchange):
    open_bracket("AAPL")
    exchange.control.add_fault("http_500", path="/v2/stocks/quotes/latest")
    body = operator.get("/admin/trading/position/board/", HTTP_HX_REQUEST="true").content.decode()
    assert "Quotes unavailable" in body and "AAPL" in body


# --- One timeline per position ------------------------------------------------------------------------


def test_timeline_tells_a_flattened_positions_story_in_order(operator, exchange):
    position = open_bracket("AAPL")
    api = _client("api-operator", OPERATOR)
    api.post("/api/v1/positions/flatten", {"confirm": "FLATTEN", "positions": [position.pk]},
             content_type="application/json")

    page = operator.get(f"/admin/trading/position/{position.pk}/timeline/")
    assert page.status_code == 200
    titles = [entry.title for entry in page.context["timeline"]]
    for expected in ("Position opened", "Entry sent", "Entry filled", "Stop-loss leg sent", "Stop-loss leg canceled",
                     "Exit sent", "Exit filled", "Alert: Emergency flatten: exit sent", "Trading set to HALTED",
                     "Position closed"):
        assert expected in titles, (expected, titles)
    assert any(t.startswith("api-operator: Emergency flatten (EMERGENCY_STOP): closed at") for t in titles)
    assert titles.index("Entry filled") < titles.index("Exit sent") < titles.index("Position closed")
    times = [entry.at for entry in page.context["timeline"]]
    assert times == sorted(times)
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", page.content.decode())  # to the second
    change = operator.get(f"/admin/trading/position/{position.pk}/change/").content.decode()
    assert f'href="/admin/trading/position/{position.pk}/timeline/"' in change

    body = api.get(f"/api/v1/positions/{position.pk}/timeline").json()
    assert body["position"] == position.pk and [e["title"] for e in body["entries"]] == titles
    assert api.get("/api/v1/positions/999999/timeline").json() == {"detail": "No such position."}


def test_timeline_costs_a_fixed_number_of_queries(operator, exchange):
    position = open_bracket("AAPL")

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert operator.get(f"/admin/trading/position/{position.pk}/timeline/").status_code == 200
        return len(captured)

    queries()  # warm the content-type cache
    few = queries()
    for _ in range(40):
        RiskEvent.objects.create(kind="skipped", position=position, symbol="AAPL", reason="stale quote")
    assert queries() == few


# --- Charts ---------------------------------------------------------------------------------------


def test_closes_by_day_counts_exits_and_sums_pnl_per_reason():
    _closed("NVDA", CloseReason.STOP_LOSS_HIT, "95", days_ago=2)
    _closed("NVDA", CloseReason.STOP_LOSS_HIT, "97", days_ago=2)
    _closed("AMD", CloseReason.TAKE_PROFIT_HIT, "110", days_ago=1)
    _closed("AMD", CloseReason.MANUAL, None, days_ago=1)  # no exit price: an exit, no P&L
    today = timezone.localdate()
    data = closes_by_day(start=today - timedelta(days=3), end=today)
    assert data.reasons == [CloseReason.STOP_LOSS_HIT, CloseReason.TAKE_PROFIT_HIT, CloseReason.MANUAL]
    assert data.exits[CloseReason.STOP_LOSS_HIT] == [0, 2, 0, 0]
    assert data.pnl[CloseReason.STOP_LOSS_HIT] == [0, Decimal("-80.00"), 0, 0]
    assert data.cumulative_pnl[CloseReason.TAKE_PROFIT_HIT] == [0, 0, Decimal("100.00"), Decimal("100.00")]
    assert data.exits[CloseReason.MANUAL] == [0, 0, 1, 0]


def test_charts_page_carries_its_data_and_says_why_equity_is_missing(operator, exchange):
    _closed("NVDA", CloseReason.STOP_LOSS_HIT, "95")
    page = operator.get("/admin/trading/position/charts/").content.decode()
    assert 'id="chart-pnl"' in page and 'id="chart-exits"' in page and "console/chart.umd.min.js" in page
    assert '"label": "Stop-loss hit"' in page
    # the paper exchange (this branch's) has no portfolio history: the page says so, no 500
    assert 'id="equity-error"' in page or 'id="chart-equity"' in page


# --- CSV export ---------------------------------------------------------------------------------------


def test_positions_export_as_csv_streamed_with_the_changelists_filters(operator):
    _closed("NVDA", CloseReason.STOP_LOSS_HIT, "95")
    Position.objects.create(symbol="AMD", side="short", quantity=Decimal("3"), entry_price=Decimal("50"),
                            opened_at=timezone.now())
    response = operator.get("/admin/trading/position/export/?status__exact=closed")
    assert response.status_code == 200 and response.streaming
    assert response["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    header, *data = rows
    assert header[:3] == ["id", "symbol", "side"] and "realised_pnl" in header and "closed_by" in header
    assert [row[1] for row in data] == ["NVDA"]
    assert Decimal(data[0][header.index("realised_pnl")]) == Decimal("-50")
    page = operator.get("/admin/trading/position/").content.decode()  # the button, beside the console's links
    assert re.search(r"href=\"/admin/trading/position/export/\??\"", page) and 'href="/admin/trading/position/board/"' in page


def test_orders_export_needs_the_view_permission(exchange):
    open_bracket("AAPL")
    viewer = _client("viewer", VIEW)
    rows = list(csv.reader(io.StringIO(b"".join(viewer.get("/admin/trading/order/export/").streaming_content).decode())))
    assert rows[0][0] == "id" and len(rows) == 4  # the entry and its two legs
    blind = _client("blind", ["trading.view_position"])
    assert blind.get("/admin/trading/order/export/").status_code == 403
    assert "/import/" not in viewer.get("/admin/trading/order/").content.decode()  # export only


# --- The admin's History, wording and times ----------------------------------------------------------


def test_flatten_close_and_resume_show_in_history_and_recent_actions(operator, exchange):
    one, two = open_bracket("AAPL"), open_bracket("MSFT")
    changelist = "/admin/trading/position/"
    page = operator.post(changelist, {"action": "close_selected", "_selected_action": [one.pk]})
    token = re.search(r'name="token" value="([^"]+)"', page.content.decode()).group(1)
    operator.post(changelist, {"action": "close_selected", "_selected_action": [one.pk], "confirmed": "yes",
                               "token": token})
    page = operator.post(changelist, {"action": "flatten_selected", "_selected_action": [two.pk]})
    token = re.search(r'name="token" value="([^"]+)"', page.content.decode()).group(1)
    operator.post(changelist, {"action": "flatten_selected", "_selected_action": [two.pk], "confirmed": "yes",
                               "token": token})

    history = operator.get(f"/admin/trading/position/{one.pk}/history/").content.decode()
    assert "Manual close (MANUAL): closed at" in history
    history = operator.get(f"/admin/trading/position/{two.pk}/history/").content.decode()
    assert "Emergency flatten (EMERGENCY_STOP): closed at" in history
    messages = set(LogEntry.objects.values_list("change_message", flat=True))
    assert any(m.startswith("Trading set to HALTED: emergency flatten by operator") for m in messages)
    index = operator.get("/admin/").content.decode()
    assert "Recent actions" in index and f"{two}" in index


def test_a_closed_position_is_not_called_protected_and_times_have_seconds(operator):
    position = _closed("NVDA", CloseReason.STOP_LOSS_HIT, "95")
    page = operator.get("/admin/trading/position/?status__exact=closed").content.decode()
    table = page.split('id="result_list"')[1]
    row = re.search(r"<tr[^>]*>(?:(?!</tr>).)*NVDA(?:(?!</tr>).)*</tr>", table, re.S).group(0)
    assert "protected" not in row
    assert f"{timezone.localtime(position.closed_at):%Y-%m-%d %H:%M:%S}" in row


def test_the_close_reason_average_is_over_the_positions_with_a_pnl():
    _closed("AMD", CloseReason.MANUAL, "90")  # -100
    _closed("AMD", CloseReason.MANUAL, None)  # closed without an exit price: no P&L
    today = timezone.localdate()
    (row,) = close_reason_summary(start=today - timedelta(days=5), end=today)
    assert (row.count, row.priced, row.total_pnl, row.average_pnl) == (2, 1, Decimal("-100.00"), Decimal("-100.00"))


def test_one_of_everything_is_said_in_the_singular(operator, exchange):
    position = open_bracket("AAPL")
    page = operator.post("/admin/trading/position/", {"action": "close_selected", "_selected_action": [position.pk]})
    html = page.content.decode()
    assert "Yes, close 1 position\"" in html and "1 positions" not in html
    assert "stop stop" not in html and re.search(r"stop_loss: sell 10 stop 140\.\d+ \(", html)
    assert "1 shares" not in str(_test_order_refusal())


def _test_order_refusal():
    from risk.entries import submit_bracket_order
    from trading.validation import OrderValidationError

    try:
        submit_bracket_order(symbol="AAPL", quantity=2, side="buy", stop_loss="140", take_profit="160", is_test=True)
    except OrderValidationError as exc:
        return exc.errors
    return {}


# --- Commands ---------------------------------------------------------------------------------------


def test_paperquote_refuses_a_zero_price(exchange):
    with pytest.raises(CommandError, match="--price must be a finite number above 0"):
        call_command("paperquote", "AAPL", "--price", "0", "--url", exchange.url)
    with pytest.raises(CommandError, match="can't both be 0"):
        call_command("paperquote", "AAPL", "--bid", "0", "--ask", "0", "--url", exchange.url)


def test_every_change_through_a_queryset_update_moves_updated_at():
    """update() skips auto_now: the monitor's claim, lock and close all go through it."""
    from risk.claims import position_claim
    from trading.models import Closer

    position = Position.objects.create(symbol="AAPL", side="long", quantity=Decimal(1), entry_price=Decimal(100),
                                       opened_at=timezone.now())
    old = timezone.now() - timedelta(days=1)
    Position.objects.filter(pk=position.pk).update(updated_at=old)
    assert position_claim(position_id=position.pk, reason=CloseReason.STOP_LOSS_HIT, owner="test", by=Closer.MONITOR)
    position.refresh_from_db()
    assert position.updated_at > old + timedelta(hours=23) and position.closed_by == Closer.MONITOR
