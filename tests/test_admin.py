"""The operator's console in the admin: pages load with a fixed number of queries, the
confirmation pages list what will happen, flattening needs its permission and happens once."""

import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from risk.models import Alert, Heartbeat, RiskEvent
from tests.helpers import exit_posts, open_bracket, staff_client
from trading.models import (
    CloseReason,
    Order,
    OrderRole,
    Position,
    PositionStatus,
    Protection,
    TradingMode,
    TradingStateChange,
)
from risk.entries import submit_bracket_order
from risk.trading_state import trading_state_set
from trading.selectors import trading_state

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/trading/position/"
VIEW_PERMS = ["trading.view_position", "trading.view_order", "trading.view_tradingstatechange",
              "risk.view_riskevent", "risk.view_alert", "risk.view_heartbeat"]
OPERATOR_PERMS = VIEW_PERMS + ["trading.flatten_positions", "trading.close_positions",
                               "trading.change_trading_mode", "trading.change_position"]


@pytest.fixture
def operator():
    return staff_client("operator", OPERATOR_PERMS)


@pytest.fixture
def viewer():
    return staff_client("viewer", VIEW_PERMS)


@pytest.fixture
def exchange(paper_exchange):
    paper_exchange.control.set_quote("AAPL", "149.99", "150.01")
    paper_exchange.control.set_quote("MSFT", "399.99", "400.01")
    paper_exchange.control.set_quote("TSLA", "249.99", "250.01")
    return paper_exchange


_seq = iter(range(1, 10**9))


def _rows(count: int, *, reason: str = CloseReason.STOP_LOSS_HIT, closed: bool = True, days_ago: int = 1) -> None:
    """Positions straight into the database (no broker): each with an entry, two legs and events."""
    now = timezone.now()
    for _ in range(count):
        n = next(_seq)
        position = Position.objects.create(
            symbol="AAPL", side="long", quantity=Decimal("10"), entry_price=Decimal("150"),
            stop_loss=Decimal("140"), take_profit=Decimal("160"),
            status=PositionStatus.CLOSED if closed else PositionStatus.OPEN,
            opened_at=now - timedelta(days=days_ago, hours=1),
            closed_at=now - timedelta(days=days_ago) if closed else None,
            exit_price=Decimal("140") if closed else None, close_reason=reason if closed else None,
            protection=Protection.PROTECTED,
        )
        entry = Order.objects.create(position=position, client_order_id=f"catalyst-entry-bulk-{n}", role="entry",
                                     symbol="AAPL", side="buy", qty=10, type="market", order_class="bracket",
                                     time_in_force="gtc", status="filled", raw={"id": f"e{n}", "legs": []})
        for role, kind in (("stop_loss", "stop"), ("take_profit", "limit")):
            Order.objects.create(position=position, parent=entry, client_order_id=f"catalyst-{role}-bulk-{n}",
                                 role=role, symbol="AAPL", side="sell", qty=10, type=kind, time_in_force="gtc",
                                 status="canceled" if closed else "new", stop_price=Decimal("140"))
        Position.objects.filter(pk=position.pk).update(entry_order=entry)
        for kind in ("claimed", "closed"):
            RiskEvent.objects.create(kind=kind, position=position, symbol="AAPL", reason=reason, message="bulk")
        Alert.objects.create(kind="exit_sent", message="bulk", position=position)


def _queries(client: Client, url: str) -> int:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    assert response.status_code == 200, (url, response.status_code)
    return len(captured)


# --- Pages load, with a fixed number of queries --------------------------------------------------


PAGES = [
    "/admin/",
    CHANGELIST,
    CHANGELIST + "?status__exact=closed&close_reason__exact=STOP_LOSS_HIT",
    CHANGELIST + "?q=aapl",
    CHANGELIST + "close-reasons/",
    "/admin/trading/order/",
    "/admin/risk/riskevent/",
    "/admin/risk/alert/",
    "/admin/risk/heartbeat/",
    "/admin/trading/tradingstatechange/",
]


@pytest.mark.parametrize("url", PAGES)
def test_pages_cost_the_same_number_of_queries_however_many_rows(operator, url, django_assert_max_num_queries):
    Heartbeat.objects.create(name="monitor", finished_at=timezone.now())
    _rows(3)
    few = _queries(operator, url)
    _rows(40)
    _rows(5, closed=False)
    _rows(5, reason=CloseReason.TAKE_PROFIT_HIT)
    many = _queries(operator, url)
    assert many == few, f"{url}: {few} queries with 3 rows, {many} with 53"
    with django_assert_max_num_queries(25):
        operator.get(url)


def test_position_and_order_pages_cost_a_fixed_number_of_queries(operator):
    _rows(1)
    position = Position.objects.get()
    operator.get(f"{CHANGELIST}{position.pk}/change/")  # warm the per-process caches (content types)
    one = _queries(operator, f"{CHANGELIST}{position.pk}/change/")
    for kind in ["skipped"] * 80:
        RiskEvent.objects.create(kind=kind, position=position, symbol="AAPL", reason="stale quote")
    assert _queries(operator, f"{CHANGELIST}{position.pk}/change/") == one
    response = operator.get(f"{CHANGELIST}{position.pk}/change/")
    assert "Risk events (newest 50)" in response.content.decode()
    inlines = {f.opts.verbose_name_plural: f.formset for f in response.context["inline_admin_formsets"]}
    assert len(inlines["Risk events (newest 50)"].forms) == 50
    assert len(inlines["Orders (newest 50)"].forms) == 3

    entry = position.entry_order
    page = operator.get(f"/admin/trading/order/{entry.pk}/change/").content.decode()
    assert "Raw broker payload" in page and "&quot;legs&quot;: []" in page  # pretty JSON, escaped
    assert "stop_loss" in page and "take_profit" in page  # the legs inline


def test_positions_changelist_shows_pnl_protection_and_the_status(operator, exchange):
    Heartbeat.objects.create(name="monitor", finished_at=timezone.now(), positions_checked=7)
    _rows(2)
    open_position = open_bracket("AAPL")
    page = operator.get(CHANGELIST).content.decode()
    assert "-100.00" in page  # realised P&L of (140 - 150) x 10
    assert "Are we protected?" in page and "YES" in page
    Order.objects.filter(position=open_position, role=OrderRole.STOP_LOSS).update(status="canceled")
    page = operator.get(CHANGELIST).content.decode()
    assert "NO LIVE STOP" in page and "NO — 1 without a live stop" in page


def test_the_count_is_capped_on_huge_tables(operator, monkeypatch):
    from console.admin.base import CappedCountPaginator

    monkeypatch.setattr(CappedCountPaginator, "cap", 5)
    _rows(8)
    page = operator.get(CHANGELIST).content.decode()
    assert "More than 5 positions" in page
    with CaptureQueriesContext(connection) as captured:
        operator.get(CHANGELIST)
    counts = [q["sql"] for q in captured if "COUNT(" in q["sql"].upper() and "trading_position" in q["sql"]]
    assert counts and all("LIMIT" in sql.upper() for sql in counts), counts


def test_index_shows_the_monitor_the_trading_state_and_the_broker(operator, exchange):
    finished = timezone.now() - timedelta(seconds=12)
    heartbeat = Heartbeat.objects.create(name="monitor", finished_at=finished, positions_checked=4, actions=2, errors=1,
                                         last_error="quote feed hiccup", last_error_at=finished, cycles=9)
    trading_state_set(mode="REDUCING", reason="earnings week")
    page = operator.get("/admin/").content.decode()
    assert 'id="monitor-box"' in page and "Positions checked: 4" in page and "errors: 1" in page
    assert "quote feed hiccup" in page and re.search(r"\(1[2-4]s ago", page)
    assert f"Last error at {timezone.localtime(finished):%Y-%m-%d %H:%M:%S}" in page
    Heartbeat.objects.filter(pk=heartbeat.pk).update(last_error_at=finished - timedelta(hours=1))
    assert "quote feed hiccup" not in operator.get("/admin/").content.decode()  # an old error is not news
    assert "REDUCING" in page and "earnings week" in page
    assert "PAPER" in page and exchange.url in page  # broker description, header and box


def test_index_says_when_the_monitor_never_ran(operator):
    page = operator.get("/admin/").content.decode()
    assert "NOT RUNNING" in page and "HALTED" in page


# --- Close-reason review -------------------------------------------------------------------------------


def test_close_reason_review_counts_totals_and_links(operator):
    _rows(3, reason=CloseReason.STOP_LOSS_HIT)
    _rows(2, reason=CloseReason.MANUAL)
    _rows(4, reason=CloseReason.MANUAL, days_ago=60)  # outside the default 30 days
    with CaptureQueriesContext(connection) as captured:
        response = operator.get(CHANGELIST + "close-reasons/")
    aggregates = [q for q in captured if "GROUP BY" in q["sql"].upper()]
    assert len(aggregates) == 1
    page = response.content.decode()
    rows = dict(re.findall(r'<a href="([^"]+)">(Stop-loss hit|Closed by an operator)</a>', page))
    assert set(rows.values()) == {"Stop-loss hit", "Closed by an operator"}
    reasons = response.context["rows"]
    summary = {item["row"].close_reason: item["row"] for item in reasons}
    assert summary["STOP_LOSS_HIT"].count == 3 and summary["STOP_LOSS_HIT"].total_pnl == Decimal("-300.00")
    assert summary["MANUAL"].count == 2 and summary["MANUAL"].average_pnl == Decimal("-100.00")

    link = next(url for url, label in rows.items() if label == "Closed by an operator").replace("&amp;", "&")
    listed = operator.get(link)
    assert listed.status_code == 200
    assert listed.context["cl"].result_count == 2

    wider = operator.get(CHANGELIST + "close-reasons/", {"start": (timezone.localdate() - timedelta(days=90)),
                                                           "end": timezone.localdate()})
    summary = {item["row"].close_reason: item["row"] for item in wider.context["rows"]}
    assert summary["MANUAL"].count == 6
    bad = operator.get(CHANGELIST + "close-reasons/", {"start": "2025-02-01", "end": "2025-01-01"})
    assert bad.status_code == 200 and "From must not be after To" in bad.content.decode()


# --- Flattening -------------------------------------------------------------------------------------


def _action(client: Client, action: str, ids: list[int], **extra):
    data = {"action": action, "_selected_action": [str(pk) for pk in ids], **extra}
    return client.post(CHANGELIST, data)


def _token(response) -> str:
    return re.search(r'name="token" value="([^"]+)"', response.content.decode()).group(1)


def test_flatten_confirmation_lists_what_will_happen(operator, exchange):
    long, short, other = open_bracket("AAPL"), open_bracket("MSFT", side="sell"), open_bracket("TSLA", quantity=3)

    response = _action(operator, "flatten_selected", [long.pk, short.pk])

    assert response.status_code == 200
    page = response.content.decode()
    preview = response.context["preview"]
    assert {row.position.pk for row in preview.rows} == {long.pk, short.pk}
    assert f"#{other.pk}<" not in page
    assert "SELL 10</strong> at market" in page and "BUY 10</strong> at market" in page
    assert all({o.role for o in row.orders_to_cancel} == {"stop_loss", "take_profit"} for row in preview.rows)
    assert "stop 140.0000" in page and "@ 160.0000" in page  # the long's legs to cancel
    assert "HALTED" in page and "EMERGENCY_STOP" in page
    # nothing happened yet
    assert Position.objects.filter(status=PositionStatus.OPEN).count() == 3
    assert not exit_posts(exchange) and trading_state().mode == TradingMode.ACTIVE


def test_flatten_selected_twice_sends_each_exit_once(operator, exchange):
    long, short, keep = open_bracket("AAPL"), open_bracket("MSFT", side="sell"), open_bracket("TSLA", quantity=3)
    token = _token(_action(operator, "flatten_selected", [long.pk, short.pk]))

    done = _action(operator, "flatten_selected", [long.pk, short.pk], confirmed="yes", token=token)

    assert done.status_code == 302 and done["Location"].endswith("/admin/trading/position/results/")
    results = operator.get(done["Location"])
    page = results.content.decode()
    assert "Trading set to HALTED." in page
    assert page.count("closed at ") == 2 and "(EMERGENCY_STOP)" in page
    for position in (long, short):
        position.refresh_from_db()
        assert position.status == PositionStatus.CLOSED and position.close_reason == "EMERGENCY_STOP"
    keep.refresh_from_db()
    assert keep.status == PositionStatus.OPEN
    state = trading_state()
    assert state.mode == TradingMode.HALTED and state.reason == "emergency flatten by operator"

    # the same confirmation again (double click, back + resubmit): nothing is done
    again = _action(operator, "flatten_selected", [long.pk, short.pk], confirmed="yes", token=token)
    assert again.status_code == 302
    assert "already used" in operator.get(again["Location"]).content.decode()
    # a fresh confirmation for the same positions: each is skipped
    token = _token(_action(operator, "flatten_selected", [long.pk, short.pk]))
    skipped = _action(operator, "flatten_selected", [long.pk, short.pk], confirmed="yes", token=token)
    page = operator.get(skipped["Location"]).content.decode()
    assert page.count("skipped: already closed") == 2 and "Trading was already HALTED." in page

    exits = exit_posts(exchange)
    assert sorted(r["body"]["client_order_id"] for r in exits) == sorted(
        [f"catalyst-exit-{long.pk}-0", f"catalyst-exit-{short.pk}-0"])
    assert TradingStateChange.objects.filter(mode=TradingMode.HALTED).count() == 1


def test_flatten_everything_needs_the_typed_word(operator, exchange):
    long, short = open_bracket("AAPL"), open_bracket("MSFT", side="sell")

    page = operator.get(CHANGELIST + "flatten/")
    assert page.status_code == 200
    preview = page.context["preview"]
    assert preview.everything and {row.position.pk for row in preview.rows} == {long.pk, short.pk}
    assert len(preview.broker_orders) == 4  # two legs each, at the broker
    assert 'id="flatten-orders"' in page.content.decode()

    wrong = operator.post(CHANGELIST + "flatten/", {"confirm": "flatten", "token": _token(page)})
    assert wrong.status_code == 200 and "Type FLATTEN" in wrong.content.decode()
    assert not exit_posts(exchange) and Position.objects.open().count() == 2

    token = _token(wrong)
    done = operator.post(CHANGELIST + "flatten/", {"confirm": "FLATTEN", "token": token})
    assert done.status_code == 302
    page = operator.get(done["Location"]).content.decode()
    assert "The broker cancelled 4 open orders." in page and page.count("closed at ") == 2
    assert not Position.objects.active().exists()

    again = operator.post(CHANGELIST + "flatten/", {"confirm": "FLATTEN", "token": token})
    assert again.status_code == 302
    assert len(exit_posts(exchange)) == 2


def test_flattening_needs_the_permission_not_just_staff(viewer, exchange):
    position = open_bracket("AAPL")
    page = viewer.get(CHANGELIST).content.decode()
    assert "flatten_selected" not in page and "close_selected" not in page and "Flatten everything" not in page

    response = _action(viewer, "flatten_selected", [position.pk], confirmed="yes", token="forged")
    assert response.status_code == 200  # the action is not offered to this user: the list is shown again
    assert viewer.get(CHANGELIST + "flatten/").status_code == 403
    assert viewer.post(CHANGELIST + "flatten/", {"confirm": "FLATTEN", "token": "x"}).status_code == 403
    position.refresh_from_db()
    assert position.status == PositionStatus.OPEN and not exit_posts(exchange)
    assert trading_state().mode == TradingMode.ACTIVE


def test_manual_close_needs_its_permission_and_leaves_trading_alone(exchange):
    position = open_bracket("AAPL")
    flattener = staff_client("flattener", VIEW_PERMS + ["trading.flatten_positions"])
    assert _action(flattener, "close_selected", [position.pk]).status_code == 302  # not allowed: back to list

    closer = staff_client("closer", VIEW_PERMS + ["trading.close_positions"])
    confirm = _action(closer, "close_selected", [position.pk])
    assert confirm.status_code == 200 and "MANUAL" in confirm.content.decode()
    done = _action(closer, "close_selected", [position.pk], confirmed="yes", token=_token(confirm))
    assert "closed at 149.9900 (MANUAL)" in closer.get(done["Location"]).content.decode()
    position.refresh_from_db()
    assert position.close_reason == "MANUAL" and trading_state().mode == TradingMode.ACTIVE


# --- Trading state page -------------------------------------------------------------------------------------


STATE_PAGE = "/admin/trading/tradingstatechange/"


def test_trading_state_page_and_the_override(operator, exchange):
    page = operator.get(STATE_PAGE)
    assert page.status_code == 200
    html = page.content.decode()
    assert "FAIL" in html and "checklist-test_bracket" in html and 'id="trading-state-form"' in html

    refused = operator.post(STATE_PAGE, {"mode": "ACTIVE", "reason": "let's go"})
    assert refused.status_code == 200 and "tick the override" in refused.content.decode()
    no_reason = operator.post(STATE_PAGE, {"mode": "ACTIVE", "reason": "let's go", "override": "on"})
    assert "An override needs a reason." in no_reason.content.decode()
    assert trading_state().mode == TradingMode.HALTED

    done = operator.post(STATE_PAGE, {"mode": "ACTIVE", "reason": "let's go", "override": "on",
                                      "override_reason": "monitor restarts in a minute"})
    assert done.status_code == 302
    change = trading_state()
    assert change.mode == "ACTIVE" and change.overrode_checklist and change.changed_by_name == "operator"
    assert "monitor restarts in a minute" in change.reason
    html = operator.get(STATE_PAGE).content.decode()
    assert "monitor restarts in a minute" in html and "Trading is now ACTIVE" in html

    halted = operator.post(STATE_PAGE, {"mode": "HALTED", "reason": "lunch"})
    assert halted.status_code == 302 and trading_state().mode == "HALTED"


def test_trading_state_page_passes_with_a_test_bracket_and_a_fresh_monitor(operator, exchange):
    submit_bracket_order(symbol="AAPL", quantity=1, side="buy", stop_loss="140", take_profit="160", is_test=True)
    Heartbeat.objects.create(name="monitor", finished_at=timezone.now())
    html = operator.get(STATE_PAGE).content.decode()
    assert "ALL PASS" in html
    assert operator.post(STATE_PAGE, {"mode": "ACTIVE", "reason": "checked"}).status_code == 302
    assert trading_state().mode == "ACTIVE" and not trading_state().overrode_checklist


def test_changing_the_trading_state_needs_the_permission(viewer):
    html = viewer.get(STATE_PAGE).content.decode()
    assert "trading.change_trading_mode" in html and 'id="trading-state-form"' not in html
    assert viewer.post(STATE_PAGE, {"mode": "ACTIVE", "reason": "x", "override": "on",
                                    "override_reason": "y"}).status_code == 403
    assert trading_state().mode == TradingMode.HALTED
    nobody = staff_client("nobody", [])
    assert nobody.get(STATE_PAGE).status_code == 403


def test_records_are_read_only(operator):
    _rows(1)
    event = RiskEvent.objects.first()
    assert operator.get(f"/admin/risk/riskevent/{event.pk}/change/").status_code == 200
    assert operator.post(f"/admin/risk/riskevent/{event.pk}/change/", {"kind": "error"}).status_code == 403
    assert operator.get(f"/admin/risk/riskevent/{event.pk}/delete/").status_code == 403
    assert operator.get("/admin/risk/riskevent/add/").status_code == 403
    assert operator.get("/admin/trading/order/add/").status_code == 403
    assert operator.get(CHANGELIST + "add/").status_code == 403


def test_root_redirects_to_the_admin():
    response = Client(HTTP_X_FORWARDED_PROTO="https").get("/")
    assert response.status_code == 302 and response["Location"] == "/admin/"


def test_date_drilldown_without_scanning_every_row(operator):
    _rows(3, days_ago=1)
    now = timezone.localtime(timezone.now() - timedelta(days=1))
    with CaptureQueriesContext(connection) as captured:
        page = operator.get(CHANGELIST).content.decode()
    assert not [q for q in captured if "DISTINCT" in q["sql"].upper()]
    assert f"closed_at__year={now.year}" in page
    months = operator.get(CHANGELIST, {"closed_at__year": now.year}).content.decode()
    assert len(re.findall(rf'href="\?closed_at__month=\d+&amp;closed_at__year={now.year}"', months)) == 12
    days = operator.get(CHANGELIST, {"closed_at__year": now.year, "closed_at__month": now.month})
    assert days.context["cl"].result_count == 3
    assert f"closed_at__day={now.day}" in days.content.decode()


def test_the_review_note_is_the_only_thing_an_operator_edits(operator):
    _rows(1)
    position = Position.objects.get()
    for _ in range(60):  # more events than the inline shows
        RiskEvent.objects.create(kind="skipped", position=position, symbol="AAPL", reason="stale quote")
    url = f"{CHANGELIST}{position.pk}/change/"
    page = operator.get(url)
    data = {"needs_review": "on", "review_note": "checked by ops", "_save": "Save"}
    for inline in page.context["inline_admin_formsets"]:
        formset = inline.formset
        for name, value in formset.management_form.initial.items():
            data[f"{formset.prefix}-{name}"] = value
        for form in formset.initial_forms:
            data[f"{form.prefix}-id"] = form.instance.pk
            data[f"{form.prefix}-{formset.fk.name}"] = position.pk
    data.update({"quantity": "999", "status": "open", "exit_price": "1"})  # read-only: ignored
    response = operator.post(url, data)
    assert response.status_code == 302, response.context["errors"] if response.context else response
    position.refresh_from_db()
    assert position.needs_review and position.review_note == "checked by ops"
    assert position.quantity == 10 and position.status == PositionStatus.CLOSED and position.exit_price == 140


def test_protect_selected_replaces_a_cancelled_stop_with_an_oco(exchange):
    from trading import broker

    client = staff_client("protector", VIEW_PERMS + ["trading.protect_positions"])
    position = open_bracket()
    stop_leg = position.orders.get(role="stop_loss")
    broker.cancel_order(stop_leg.broker_order_id)  # cancelled by hand at the broker

    response = _action(client, "protect_selected", [position.pk])

    assert response.status_code == 302
    position.refresh_from_db()
    assert position.protection == "protected"
    ocos = [r["body"] for r in exchange.control.requests_log()
            if r["method"] == "POST" and r["path"] == "/v2/orders" and r["body"].get("order_class") == "oco"]
    assert len(ocos) == 1
    assert Decimal(str(ocos[0]["stop_loss"]["stop_price"])) == Decimal("140.00")


def test_protect_selected_needs_its_permission(viewer, exchange):
    position = open_bracket()
    response = _action(viewer, "protect_selected", [position.pk])
    assert response.status_code == 200  # the changelist again: the action is not offered
    assert not [r for r in exchange.control.requests_log() if (r["body"] or {}).get("order_class") == "oco"]
