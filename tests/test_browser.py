"""The console in a real browser: headless Chromium (Debian's, via Playwright's Python sync
API) against pytest-django's live server and the paper exchange.

Log in, see the monitor on the index, watch the live board follow a price moved on the
exchange (refreshed in place, no reload), flatten one position through the confirmation page,
see it closed with EMERGENCY_STOP, read its timeline, see the charts drawn. With CATALYST_SCREENSHOTS=1 the main screens are saved
to docs/screenshots/ (otherwise to the test's temporary folder).
"""

import os
import re
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.contrib.auth.models import Permission, User
from django.utils import timezone

from risk.models import Heartbeat
from trading.models import CloseReason, Position, PositionStatus, Protection
from risk.entries import submit_bracket_order
from risk.trading_state import trading_state_set

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
PASSWORD = "pw-for-browser-tests"

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None

MISSING = ("playwright (Python package) is not installed" if sync_playwright is None
           else "/usr/bin/chromium is missing (apt-get install chromium)" if not CHROMIUM.exists() else "")
if MISSING and os.environ.get("CATALYST_REQUIRE_BROWSER") == "1":  # .ci/run: a skip would hide the pages
    pytestmark = [pytest.mark.usefixtures("_browser_required")]
else:
    pytestmark = [pytest.mark.skipif(bool(MISSING), reason=MISSING)]


@pytest.fixture
def _browser_required():
    pytest.fail(f"the browser test must run here (CATALYST_REQUIRE_BROWSER=1): {MISSING}")


@pytest.fixture
def console(transactional_db, live_server, paper_exchange, settings, monkeypatch):
    """A live console over plain HTTP on localhost, with an operator and some history."""
    # Production settings redirect plain HTTP to HTTPS, and the live server's middleware read
    # them when it started: the browser says it came through a TLS proxy (X-Forwarded-Proto,
    # SECURE_PROXY_SSL_HEADER), so its http:// origin must be trusted for CSRF.
    settings.CSRF_TRUSTED_ORIGINS = [live_server.url]
    settings.SESSION_COOKIE_SECURE = False
    settings.CSRF_COOKIE_SECURE = False
    # Playwright's sync API runs an event loop in this thread; the ORM calls made here
    # between browser steps are plain synchronous ones.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

    user = User.objects.create_user("operator", password=PASSWORD, is_staff=True)
    for codename in ("view_position", "view_order", "view_tradingstatechange", "change_trading_mode",
                     "flatten_positions", "close_positions", "view_riskevent", "view_alert", "view_heartbeat"):
        user.user_permissions.add(Permission.objects.get(codename=codename))

    paper_exchange.control.set_quote("AAPL", "149.99", "150.01")
    paper_exchange.control.set_quote("MSFT", "399.99", "400.01")
    paper_exchange.control.set_quote("TSLA", "249.99", "250.01")
    # in a symbol of its own: Alpaca refuses a second bracket while the first's legs work (wash trades)
    submit_bracket_order(symbol="TSLA", quantity=1, side="buy", stop_loss="240", take_profit="260", is_test=True)
    trading_state_set(mode="ACTIVE", reason="checklist passed at the open", user=user)
    long = submit_bracket_order(symbol="AAPL", quantity=10, side="buy", stop_loss="140", take_profit="160")
    short = submit_bracket_order(symbol="MSFT", quantity=5, side="sell", stop_loss="410", take_profit="390")
    _history()
    Heartbeat.objects.create(name="monitor", started_at=timezone.now() - timedelta(seconds=4),
                             finished_at=timezone.now() - timedelta(seconds=3), positions_checked=3, actions=0,
                             errors=0, cycles=412, market_open=True)
    return {"url": live_server.url, "long": long, "short": short, "exchange": paper_exchange}


def _history() -> None:
    """Closed positions for the close-reason review."""
    now = timezone.now()
    rows = [("NVDA", "long", "120", "126", CloseReason.TAKE_PROFIT_HIT, 2),
            ("NVDA", "long", "118", "116.50", CloseReason.STOP_LOSS_HIT, 3),
            ("TSLA", "short", "250", "255", CloseReason.STOP_LOSS_HIT, 5),
            ("AMD", "long", "160", "161.20", CloseReason.MANUAL, 8),
            ("META", "long", "480", "471", CloseReason.EMERGENCY_STOP, 12),
            ("AMZN", "short", "180", "176", CloseReason.TAKE_PROFIT_HIT, 20)]
    for symbol, side, entry, exit_price, reason, days in rows:
        Position.objects.create(symbol=symbol, side=side, quantity=Decimal("10"), entry_price=Decimal(entry),
                                stop_loss=None, take_profit=None, status=PositionStatus.CLOSED,
                                opened_at=now - timedelta(days=days, hours=3), closed_at=now - timedelta(days=days),
                                exit_price=Decimal(exit_price), close_reason=reason,
                                protection=Protection.PROTECTED)


def _fits(page, selector: str) -> None:
    """The table fits the 1400 px window, and its box: no column hidden behind a sideways scroll."""
    right, hidden = page.evaluate(f"""() => {{ const t = document.querySelector('{selector}');
        return [t.getBoundingClientRect().right, t.scrollWidth - t.parentElement.clientWidth]; }}""")
    assert right <= 1400 and hidden <= 0, f"{selector}: right edge {right:.0f} px, {hidden} px hidden"


def _shot(page, folder: Path, name: str) -> None:
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


def test_operator_flattens_one_position_in_the_browser(console, tmp_path):
    folder = SCREENSHOTS if os.environ.get("CATALYST_SCREENSHOTS") == "1" else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    url, long, short = console["url"], console["long"], console["short"]

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 900},  # an operator's screen
                                          extra_http_headers={"X-Forwarded-Proto": "https"})
            page = context.new_page()

            page.goto(f"{url}/admin/login/?next=/admin/")
            page.fill("#id_username", "operator")
            page.fill("#id_password", PASSWORD)
            page.click("input[type=submit]")

            # the index: monitor status, trading state, broker
            page.wait_for_url(re.compile(r"/admin/$"))
            monitor = page.locator("#monitor-box")
            expect(monitor).to_contain_text("RUNNING")
            expect(monitor).to_contain_text("Positions checked: 3")
            expect(page.locator("#trading-state-box")).to_contain_text("ACTIVE")
            expect(page.locator("#protection-box")).to_contain_text("YES")
            expect(page.locator("#site-name")).to_contain_text("PAPER")
            _shot(page, folder, "index")

            page.goto(f"{url}/admin/trading/position/")
            expect(page.locator("#result_list")).to_contain_text("AAPL")
            _fits(page, "#result_list")
            _shot(page, folder, "positions")

            # the live board follows the exchange's price without a reload
            page.goto(f"{url}/admin/trading/position/board/")
            price = page.locator(f"#board-row-{long.pk} .board-price")
            expect(price).to_have_text("150.00")
            page.evaluate("window.notReloaded = true")
            console["exchange"].control.set_quote("AAPL", "154.99", "155.01")  # what paperquote does
            expect(price).to_have_text("155.00", timeout=15000)
            assert page.evaluate("window.notReloaded === true")
            expect(page.locator(f"#board-row-{long.pk} .board-to-stop")).to_contain_text("15.00")
            expect(page.locator("#board-symbol-MSFT")).to_contain_text("-5")
            _fits(page, "#board-positions")
            _shot(page, folder, "board")
            console["exchange"].control.set_quote("AAPL", "149.99", "150.01")

            page.goto(f"{url}/admin/trading/position/close-reasons/")
            expect(page.locator("#close-reasons")).to_contain_text("Stop-loss hit")
            _shot(page, folder, "close_reasons")

            page.goto(f"{url}/admin/trading/tradingstatechange/")
            expect(page.locator("#checklist")).to_contain_text("PASS")
            _shot(page, folder, "trading_state")

            # flatten the long through the confirmation page
            page.goto(f"{url}/admin/trading/position/?status__exact=open")
            page.check(f'input[name="_selected_action"][value="{long.pk}"]')
            page.select_option('select[name="action"]', "flatten_selected")
            page.click('button[name="index"]')
            table = page.locator("#flatten-positions")
            expect(table).to_contain_text("SELL 10")
            expect(table).to_contain_text("stop_loss")
            expect(table).not_to_contain_text("MSFT")
            _shot(page, folder, "flatten_confirm")
            page.click("#confirm-button")

            page.wait_for_url(re.compile(r"/admin/trading/position/results/$"))
            results = page.locator("#close-results")
            expect(results).to_contain_text("closed at 149.9900 (EMERGENCY_STOP)")
            expect(page.locator("#trading-state-box")).to_contain_text("HALTED")
            _shot(page, folder, "flatten_results")

            page.goto(f"{url}/admin/trading/position/?close_reason__exact=EMERGENCY_STOP&status__exact=closed")
            rows = page.locator("#result_list tbody tr")
            expect(rows.filter(has_text="AAPL")).to_have_count(1)
            expect(rows.filter(has_text="AAPL")).to_contain_text("EMERGENCY_STOP")

            # its timeline, from its page
            page.goto(f"{url}/admin/trading/position/{long.pk}/change/")
            page.click("#timeline-link")
            timeline = page.locator("#timeline")
            for step in ("Entry filled", "Stop-loss leg canceled", "Exit filled", "Emergency flatten: exit sent",
                         "operator: Emergency flatten", "Position closed"):
                expect(timeline).to_contain_text(step)
            _shot(page, folder, "timeline")

            # the charts are drawn (Chart.js from the static files)
            page.goto(f"{url}/admin/trading/position/charts/")
            page.wait_for_function("document.getElementById('chart-exits').chart !== undefined")
            drawn = page.evaluate("""() => { const c = document.getElementById('chart-pnl');
                const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                let n = 0; for (let i = 3; i < d.length; i += 4) { if (d[i]) n++; } return n; }""")
            assert drawn > 1000, drawn  # pixels painted, not an empty canvas
            _shot(page, folder, "charts")

            page.goto(f"{url}/admin/risk/riskevent/")
            _fits(page, "#result_list")
            _shot(page, folder, "risk_events")

        finally:
            browser.close()

    long.refresh_from_db()
    short.refresh_from_db()
    assert long.status == PositionStatus.CLOSED and long.close_reason == CloseReason.EMERGENCY_STOP
    assert long.exit_price == Decimal("149.99")
    assert short.status == PositionStatus.OPEN
    exits = [r for r in console_requests(console) if str(r["body"].get("client_order_id", "")).startswith("catalyst-exit-")]
    assert len(exits) == 1


def console_requests(console) -> list[dict]:
    log = console["exchange"].control.requests_log()
    return [r for r in log if r["method"] == "POST" and r["path"] == "/v2/orders" and isinstance(r["body"], dict)]


def test_a_locked_out_login_gets_the_consoles_page(transactional_db, live_server, settings, tmp_path):
    folder = SCREENSHOTS if os.environ.get("CATALYST_SCREENSHOTS") == "1" else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    settings.AXES_ENABLED = True
    settings.CSRF_TRUSTED_ORIGINS = [live_server.url]
    settings.SESSION_COOKIE_SECURE = settings.CSRF_COOKIE_SECURE = False
    User.objects.create_user("operator", password=PASSWORD, is_staff=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_context(viewport={"width": 1400, "height": 700},
                                       extra_http_headers={"X-Forwarded-Proto": "https"}).new_page()
            for _ in range(settings.AXES_FAILURE_LIMIT):
                page.goto(f"{live_server.url}/admin/login/?next=/admin/")
                page.fill("#id_username", "operator")
                page.fill("#id_password", "not the password")
                page.click("input[type=submit]")
            lockout = page.locator("#lockout")
            expect(lockout).to_contain_text(f"locked out for {round(settings.AXES_COOLOFF_TIME * 60)} minutes")
            expect(lockout).to_contain_text("manage.py axes_reset_username operator")
            _shot(page, folder, "lockout")
        finally:
            browser.close()
