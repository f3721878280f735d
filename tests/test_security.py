"""Security: every URL refuses whoever may not use it, CSRF on session writes, login and API
throttling, and the broker keys never show up anywhere.

- Every URL of the URL conf (walked, not listed by hand), every method: anonymous is refused
  (API 401, admin to the login page or 403, schema 401); a user without permissions gets 403
  from every API endpoint and, not being staff, only the login page from the admin. The only
  exceptions are the explicit, commented ALLOWED_ANONYMOUS below: a new URL is refused or fails.
- CSRF: admin POSTs and session-authenticated API writes without the token are 403 (and change
  nothing); token-authenticated API calls need no CSRF token.
- Throttling: bad admin logins lock the username out from that address (django-axes), the API's
  writes and every user's requests are rate-limited (429 with Retry-After).
- Secrets: with recognisable broker keys configured, a bracket, broker failures, an unprotected
  bracket, the monitor on a failing broker, the admin pages, the API and the schema: no response,
  log line, stdout/stderr output or stored row contains the keys (or a piece of them).
"""

import json
import logging
import re

import pytest
from django.apps import apps
from django.contrib.auth.models import Permission, User
from django.contrib.contenttypes.models import ContentType
from django.core import serializers
from django.core.cache import cache
from django.test import Client
from django.urls import URLResolver, get_resolver, resolve
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from risk.models import Alert, RiskEvent
from trading.models import Order, Position, PositionStatus, TradingMode
from risk.entries import submit_bracket_order
from risk.trading_state import trading_state_set
from trading.selectors import trading_state

pytestmark = [pytest.mark.reliability, pytest.mark.django_db]

HTTPS = {"HTTP_X_FORWARDED_PROTO": "https"}  # production settings redirect plain HTTP to HTTPS
# For the CSRF checks: over HTTPS Django also compares the Referer with the host, which the test
# client would otherwise give as "testserver:80".
CSRF_CLIENT = {**HTTPS, "HTTP_HOST": "testserver", "enforce_csrf_checks": True}
PASSWORD = "pw-for-tests-only-7f3a"
GOOD_ORDER = {"symbol": "AAPL", "quantity": 1, "side": "buy", "stop_loss": "140", "take_profit": "160"}

# URLs anyone may open, each with why. Everything else in the URL conf must refuse anonymous.
ALLOWED_ANONYMOUS = {
    "": "redirects to /admin/, which asks for a login",
    "admin/login/": "the login page itself",
    "admin/logout/": "logging out: POST only, does nothing without a session",
    # No password-reset pages are mounted: if they are added (admin_password_reset and
    # friends), they belong here. Static files are not in the URL conf (served by the web
    # server / WhiteNoise / runserver), so they need no entry.
}
# The API's documentation: refused to anonymous (401) like the API, but open to any
# authenticated user, whatever their permissions (it describes, it does nothing).
DOCS = {"api/schema/", "api/docs/"}
# Pages of the admin a staff user without any permission may open: their own password, the
# JavaScript translations, and the index (which lists no model for them).
STAFF_WITHOUT_PERMISSIONS_MAY_OPEN = {"admin/", "admin/password_change/", "admin/password_change/done/",
                                      "admin/jsi18n/"}

# Any other /api/ path: the API's JSON 404, after the same 401 for anonymous callers.
API_NOT_FOUND = "^api/"
# Prometheus metrics: a bearer token (METRICS_TOKEN) or an allowed address; nobody by default.
METRICS = "metrics"

API_METHODS = ["get", "post", "put", "patch", "delete", "head", "options"]
ADMIN_METHODS = ["get", "post"]


@pytest.fixture(autouse=True)
def clean_cache():
    """DRF's throttles count in the default cache: nothing carries over between tests."""
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def exchange(paper_exchange):
    paper_exchange.control.set_quote("AAPL", "149.99", "150.01")
    paper_exchange.control.set_quote("MSFT", "399.99", "400.01")
    return paper_exchange


def _user(username: str, perms: list[str] = (), **flags) -> User:
    user = User.objects.create_user(username, password=PASSWORD, **flags)
    for perm in perms:
        app_label, codename = perm.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    return user


def _token_client(user: User) -> APIClient:
    client = APIClient(**HTTPS)
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get_or_create(user=user)[0].key}")
    return client


def _session_client(user: User, **kwargs) -> Client:
    client = Client(**HTTPS, **kwargs)
    client.force_login(user)
    return client


def _open(symbol: str = "AAPL") -> Position:
    if trading_state().mode != TradingMode.ACTIVE:
        trading_state_set(mode="ACTIVE", reason="test")
    stop, target = {"AAPL": ("140", "160"), "MSFT": ("390", "410")}[symbol]
    return submit_bracket_order(symbol=symbol, quantity=1, side="buy", stop_loss=stop, take_profit=target)


# --- The URL conf, walked ------------------------------------------------------------------------


def _walk(patterns, prefix: str = ""):
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            yield from _walk(pattern.url_patterns, prefix + str(pattern.pattern))
        else:
            yield prefix + str(pattern.pattern), pattern


def _value(name: str, url_name: str | None, ids: dict[str, str]) -> str:
    """A plausible value for a URL parameter: the id of a row that exists where one can."""
    if name == "object_id" and url_name:  # admin:<app>_<model>_<page>
        for key, pk in ids.items():
            if url_name.startswith(key + "_"):
                return pk
        return "1"
    return {"content_type_id": ids["content_type"], "object_id": ids["trading_position"],
            "id": ids["auth_user"], "pk": ids["trading_order"], "app_label": "trading",
            "url": "no-such-page/"}.get(name, "1")


def _concrete(route: str, url_name: str | None, ids: dict[str, str]) -> str:
    route = re.sub(r"\(\?P<(\w+)>[^)]*\)", lambda m: _value(m.group(1), url_name, ids), route)  # regex groups
    route = re.sub(r"<(?:\w+:)?(\w+)>", lambda m: _value(m.group(1), url_name, ids), route)  # path converters
    return "/" + route.replace("^", "").replace("$", "")


def _every_url(ids: dict[str, str]) -> list[tuple[str, str]]:
    urls = []
    for route, pattern in _walk(get_resolver().url_patterns):
        url = _concrete(route, pattern.name, ids)
        resolve(url)  # a filled-in URL that does not resolve would test nothing
        urls.append((route, url))
    return urls


def _refused_by_admin(response) -> bool:
    """The admin's refusals: to the login page (not logged in / not staff) or 403."""
    if response.status_code == 403:
        return True
    return response.status_code == 302 and response["Location"].startswith("/admin/login/")


@pytest.fixture
def rows(exchange) -> dict[str, str]:
    """One row of the things the URLs take ids of, so the checks hit real objects."""
    position = _open()
    alert = Alert.objects.create(kind="error", message="test alert")
    event = RiskEvent.objects.create(kind="error", message="test event", position=position)
    user = User.objects.create_superuser("admin", password=PASSWORD)
    return {
        "trading_position": str(position.pk), "trading_order": str(position.entry_order_id),
        "trading_tradingstatechange": str(trading_state().pk), "risk_alert": str(alert.pk),
        "risk_riskevent": str(event.pk), "auth_user": str(user.pk),
        "content_type": str(ContentType.objects.get_for_model(Position).pk),
    }


def test_every_url_refuses_anonymous_and_users_without_permissions(rows, figures):
    urls = _every_url(rows)
    assert len(urls) > 50  # the admin's and the API's, all of them
    assert set(ALLOWED_ANONYMOUS) <= {route for route, _ in urls}, "an allow-listed URL is gone: drop it"

    anonymous = APIClient(**HTTPS)
    nobody = _user("nobody")  # active, not staff, no permissions
    nobody_token = _token_client(nobody)
    nobody_session = _session_client(nobody)
    staff = _user("staff-without-permissions", is_staff=True)
    staff_session = _session_client(staff)

    open_to_anonymous, wrong = [], []
    open_urls: set[str] = set()
    checked = 0
    for route, url in urls:
        if route in ALLOWED_ANONYMOUS:
            continue
        checked += 1
        if route.startswith("api/v1/"):
            for method in API_METHODS:
                response = getattr(anonymous, method)(url)
                if response.status_code != 401:
                    open_to_anonymous.append(f"{method.upper()} {url}: {response.status_code}")
                    open_urls.add(url)
                for who, client in (("token", nobody_token), ("session", nobody_session)):
                    response = getattr(client, method)(url)
                    if response.status_code != 403:
                        wrong.append(f"{method.upper()} {url} ({who}, no permissions): {response.status_code}")
        elif route == API_NOT_FOUND:
            for method in API_METHODS:
                if getattr(anonymous, method)(url).status_code != 401:
                    open_to_anonymous.append(f"{method.upper()} {url}")
                    open_urls.add(url)
                response = getattr(nobody_token, method)(url)
                if response.status_code != 404 or (method != "head" and "detail" not in response.json()):
                    wrong.append(f"{method.upper()} {url} (no permissions): {response.status_code}, not a JSON 404")
        elif route == METRICS:
            for method in ("get", "post"):
                for client in (anonymous, nobody_session, staff_session):
                    if getattr(client, method)(url).status_code not in (401, 403):
                        open_to_anonymous.append(f"{method.upper()} {url}")
                        open_urls.add(url)
        elif route in DOCS:
            for method in ("get", "post", "options"):
                response = getattr(anonymous, method)(url)
                if response.status_code != 401:
                    open_to_anonymous.append(f"{method.upper()} {url}: {response.status_code}")
                    open_urls.add(url)
            assert nobody_token.get(url).status_code == 200, url  # documentation: any authenticated user
        elif route.startswith("admin/"):
            for method in ADMIN_METHODS:
                response = getattr(anonymous, method)(url)
                if not _refused_by_admin(response):
                    open_to_anonymous.append(f"{method.upper()} {url}: {response.status_code}")
                    open_urls.add(url)
                response = getattr(nobody_session, method)(url)
                if not _refused_by_admin(response):
                    wrong.append(f"{method.upper()} {url} (not staff): {response.status_code}")
            # Staff without any permission: nothing beyond their own password and the index.
            response = staff_session.get(url)
            if route not in STAFF_WITHOUT_PERMISSIONS_MAY_OPEN and response.status_code == 200:
                wrong.append(f"GET {url} (staff without permissions): 200")
        else:
            wrong.append(f"{url}: a URL this test does not know; say who may open it (API, admin, docs)")

    figures.add("endpoints checked", checked)
    figures.add("open to anonymous", len(open_urls))
    assert not open_to_anonymous, "\n".join(open_to_anonymous)
    assert not wrong, "\n".join(wrong)


def test_the_allowed_urls_do_only_what_they_are_allowed_to(rows):
    anonymous = Client(**HTTPS)
    assert anonymous.get("/")["Location"] == "/admin/"
    login = anonymous.get("/admin/login/")
    assert login.status_code == 200 and b'name="password"' in login.content
    logout = anonymous.get("/admin/logout/")  # POST only: refused, or sent back to /admin/
    assert logout.status_code == 405 or logout["Location"] == "/admin/"
    assert anonymous.post("/admin/logout/").status_code in (200, 302)
    assert "_auth_user_id" not in anonymous.session


def test_api_refusals_name_no_more_than_needed(rows):
    """401 says how to authenticate; 403 names the permission, not the data."""
    response = APIClient(**HTTPS).get(f"/api/v1/orders/{rows['trading_order']}")
    assert response.status_code == 401 and response["WWW-Authenticate"].startswith("Token")
    response = _token_client(_user("nobody")).get(f"/api/v1/orders/{rows['trading_order']}")
    assert response.status_code == 403 and set(response.json()) == {"detail"}
    assert "AAPL" not in response.content.decode()


# --- CSRF ---------------------------------------------------------------------------------------


def _csrf(client: Client, page: str) -> str:
    assert client.get(page).status_code == 200
    return client.cookies["csrftoken"].value


def test_admin_posts_need_the_csrf_token(exchange):
    position = _open()
    operator = _user("operator", is_staff=True, is_superuser=True)
    client = Client(**CSRF_CLIENT)
    client.force_login(operator)
    referer = {"HTTP_REFERER": "https://testserver/admin/"}
    state_page = "/admin/trading/tradingstatechange/"
    halt = {"mode": "HALTED", "reason": "csrf test"}

    # Without the token: 403, and nothing happens.
    assert client.post(state_page, halt, **referer).status_code == 403
    assert trading_state().mode == TradingMode.ACTIVE
    response = client.post("/admin/trading/position/flatten/", {"confirm": "FLATTEN", "token": "x"}, **referer)
    assert response.status_code == 403
    position.refresh_from_db()
    assert position.status == PositionStatus.OPEN
    # A wrong token is no better than none.
    assert client.post(state_page, {**halt, "csrfmiddlewaretoken": "x" * 32}, **referer).status_code == 403

    # With it, the same POST goes through.
    token = _csrf(client, state_page)
    response = client.post(state_page, {**halt, "csrfmiddlewaretoken": token}, **referer)
    assert response.status_code == 302, response.content.decode()[-1500:]
    assert trading_state().mode == TradingMode.HALTED


WRITES = [
    ("/api/v1/orders/test", GOOD_ORDER),
    ("/api/v1/positions/flatten", {"confirm": "FLATTEN"}),
    ("/api/v1/trading-state", {"mode": "HALTED", "reason": "csrf test"}),
]


def test_session_authenticated_api_writes_need_the_csrf_token(exchange):
    position = _open()
    operator = _user("operator", is_staff=True, is_superuser=True)
    client = Client(**CSRF_CLIENT)
    client.force_login(operator)
    referer = {"HTTP_REFERER": "https://testserver/api/docs/"}
    orders_before = Order.objects.count()

    for url, body in WRITES:
        response = client.post(url, body, content_type="application/json", **referer)
        assert response.status_code == 403, url
        assert "CSRF" in response.json()["detail"], url
    position.refresh_from_db()
    assert position.status == PositionStatus.OPEN and trading_state().mode == TradingMode.ACTIVE
    assert Order.objects.count() == orders_before  # no order was sent
    assert client.get("/api/v1/positions").status_code == 200  # reads need no token

    token = _csrf(client, "/admin/")  # a page that hands out the cookie, as the Swagger UI's page would
    response = client.post("/api/v1/trading-state", {"mode": "HALTED", "reason": "csrf test"},
                           content_type="application/json", HTTP_X_CSRFTOKEN=token, **referer)
    assert response.status_code == 200, response.content
    assert trading_state().mode == TradingMode.HALTED


def test_token_authenticated_api_writes_need_no_csrf_token(exchange):
    operator = _user("operator", is_superuser=True)
    client = APIClient(**CSRF_CLIENT)
    client.force_login(operator)  # a session as well: the token is tried first, and suffices
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=operator).key}")
    response = client.post("/api/v1/orders/test", GOOD_ORDER, format="json")
    assert response.status_code == 201, response.content
    response = client.post("/api/v1/trading-state", {"mode": "REDUCING", "reason": "token"}, format="json")
    assert response.status_code == 200 and trading_state().mode == TradingMode.REDUCING


# --- Throttling -----------------------------------------------------------------------------------


def test_bad_admin_logins_lock_the_username_out(settings):
    settings.AXES_ENABLED = True
    _user("operator", is_staff=True, is_superuser=True)
    _user("colleague", is_staff=True)
    client = Client(**HTTPS)
    for _ in range(settings.AXES_FAILURE_LIMIT):
        response = client.post("/admin/login/?next=/admin/", {"username": "operator", "password": "wrong"})
        assert response.status_code in (200, 429)  # the form again, then locked out

    locked = client.post("/admin/login/?next=/admin/", {"username": "operator", "password": PASSWORD})
    assert locked.status_code == 429
    page = locked.content.decode()  # the console's page: how long, and how to unlock
    assert 'id="lockout"' in page and "Catalyst Ops Console" in page
    assert f"for {round(settings.AXES_COOLOFF_TIME * 60)} minutes" in page
    assert "manage.py axes_reset_username operator" in page
    assert "_auth_user_id" not in client.session
    assert client.get("/admin/")["Location"].startswith("/admin/login/")
    # The lock is on that username from that address: a colleague can still log in.
    other = Client(**HTTPS)
    assert other.post("/admin/login/?next=/admin/", {"username": "colleague", "password": PASSWORD}).status_code == 302
    assert other.get("/admin/").status_code == 200


def test_admin_logins_are_not_throttled_while_they_succeed(settings):
    settings.AXES_ENABLED = True
    _user("operator", is_staff=True)
    for _ in range(settings.AXES_FAILURE_LIMIT + 2):
        client = Client(**HTTPS)
        assert client.post("/admin/login/", {"username": "operator", "password": PASSWORD}).status_code == 302


def _rates(settings, **rates):
    base = {"user": "1000/min", "orders": "1000/min", "flatten": "1000/min", "trading_state": "1000/min"}
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {**base, **rates}}


@pytest.mark.parametrize("scope,url,body", [
    ("orders", "/api/v1/orders/test", {"symbol": "not a symbol"}),
    ("flatten", "/api/v1/positions/flatten", {"confirm": "no"}),
    ("trading_state", "/api/v1/trading-state", {"mode": "PANIC", "reason": "x"}),
])
def test_api_writes_are_throttled_per_scope(settings, scope, url, body):
    _rates(settings, **{scope: "3/min"})
    operator = _user("operator", is_superuser=True)
    client = _token_client(operator)
    # Refused bodies count as well: nobody gets to hammer a write endpoint with junk.
    for _ in range(3):
        assert client.post(url, body, format="json").status_code == 400
    throttled = client.post(url, body, format="json")
    assert throttled.status_code == 429
    assert int(throttled["Retry-After"]) > 0 and "throttled" in throttled.json()["detail"]

    # Per user: a colleague is not held up; reads of the same endpoint are not counted.
    assert _token_client(_user("colleague", is_superuser=True)).post(url, body, format="json").status_code == 400
    if url == "/api/v1/trading-state":
        assert all(client.get(url).status_code == 200 for _ in range(5))
    # Anonymous and unpermitted callers are refused before they are counted.
    assert APIClient(**HTTPS).post(url, body, format="json").status_code == 401
    assert _token_client(_user("nobody")).post(url, body, format="json").status_code == 403


def test_every_request_counts_against_the_users_rate(settings):
    _rates(settings, user="5/min")
    client = _token_client(_user("operator", is_superuser=True))
    assert [client.get("/api/v1/monitor").status_code for _ in range(6)] == [200] * 5 + [429]
    assert client.get("/api/v1/positions").status_code == 429  # the same allowance, any endpoint


def test_the_default_rates_are_in_force():
    """The settings carry a rate for every scope the views use, and the views use them."""
    from django.conf import settings

    from console.api import views

    rates = settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]
    assert views.TestOrderView.throttle_scope in rates
    assert views.FlattenView.throttle_scope in rates
    assert views.TradingStateView.throttle_scope in rates
    assert "user" in rates


# --- Secrets ----------------------------------------------------------------------------------------

API_KEY = "PKLEAKPROBE7Q3Z9XW2AB"
SECRET_KEY = "leakprobe-Vx8Jf2Lq9Zt4Rm7Np1HsQ6WcTb3"


def _pieces(secret: str) -> list[str]:
    """The whole value and overlapping pieces of it: a truncated or partly masked copy is a leak too."""
    return [secret] + [secret[i:i + 10] for i in range(0, len(secret) - 9, 5)]


def _everything_stored() -> str:
    """Every row of every model of the project (and of django-q and axes), as JSON."""
    dumped = []
    for label in ("trading", "risk", "django_q", "axes", "authtoken"):
        for model in apps.get_app_config(label).get_models():
            dumped.append(serializers.serialize("json", model._base_manager.all()))
    return "\n".join(dumped)


def test_the_broker_keys_never_appear(exchange, settings, caplog, capfd):
    settings.ALPACA_API_KEY = API_KEY  # the paper exchange takes any key
    settings.ALPACA_SECRET_KEY = SECRET_KEY
    from trading import broker

    assert broker._credentials() == (API_KEY, SECRET_KEY)  # these are the keys the broker calls send
    caplog.set_level(logging.DEBUG)
    for noisy in ("urllib3", "alpaca", "requests", "django", "trading", "risk"):
        caplog.set_level(logging.DEBUG, logger=noisy)

    from risk.alerts import alert_threads_join
    from risk.monitor import monitor_cycle

    admin = User.objects.create_superuser("admin", password=PASSWORD)
    api = _token_client(admin)
    browser = _session_client(admin)
    seen: list[str] = []

    def keep(response) -> None:
        seen.append(f"{response.status_code} {dict(response.items())}")
        seen.append(response.content.decode(errors="replace") if hasattr(response, "content") else "")

    # A bracket that works, the broker failing every way it can, one not held.
    keep(api.post("/api/v1/orders/test", GOOD_ORDER, format="json"))
    assert seen[-2].startswith("201")
    for fault in ("http_500", "non_json_error", "reject", "http_429"):
        exchange.control.add_fault(fault, method="POST", path="/v2/orders")
        keep(api.post("/api/v1/orders/test", GOOD_ORDER, format="json"))
        exchange.control.clear_faults()
    exchange.control.add_fault("drop_legs", count=1)  # in another symbol: the first bracket's legs still work
    exchange.control.set_quote("TSLA", "249.99", "250.01")
    keep(api.post("/api/v1/orders/test", {**GOOD_ORDER, "symbol": "TSLA", "stop_loss": "240", "take_profit": "260"},
                  format="json"))
    assert "BRACKET NOT PROTECTED" in seen[-1]

    # The monitor against a broker that fails every call, then against a working one.
    trading_state_set(mode="ACTIVE", reason="test")
    _open("MSFT")
    exchange.control.add_fault("http_500")
    try:
        monitor_cycle(owner="security-test")
    except Exception as exc:  # the monitor may give up on the cycle: its message is checked too
        seen.append(repr(exc))
    exchange.control.clear_faults()
    monitor_cycle(owner="security-test")
    # Flattening while the broker fails, then for real.
    exchange.control.add_fault("non_json_error")
    keep(api.post("/api/v1/positions/flatten", {"confirm": "FLATTEN"}, format="json"))
    exchange.control.clear_faults()
    keep(api.post("/api/v1/positions/flatten", {"confirm": "FLATTEN"}, format="json"))
    alert_threads_join()

    # Everything an operator can read.
    for url in ["/api/v1/positions", "/api/v1/monitor", "/api/v1/trading-state", "/api/schema/", "/api/docs/"]:
        keep(api.get(url))
    for order in Order.objects.all():
        keep(api.get(f"/api/v1/orders/{order.pk}"))
        keep(browser.get(f"/admin/trading/order/{order.pk}/change/"))
    for position in Position.objects.all():
        keep(browser.get(f"/admin/trading/position/{position.pk}/change/"))
    for url in ["/admin/", "/admin/trading/order/", "/admin/trading/position/", "/admin/trading/tradingstatechange/",
                "/admin/trading/position/close-reasons/", "/admin/trading/position/flatten/",
                "/admin/risk/riskevent/", "/admin/risk/alert/", "/admin/risk/heartbeat/", "/admin/risk/lease/"]:
        response = browser.get(url)
        assert response.status_code == 200, url
        keep(response)
    for model, prefix in ((RiskEvent, "/admin/risk/riskevent/"), (Alert, "/admin/risk/alert/")):
        for row in model.objects.all():
            keep(browser.get(f"{prefix}{row.pk}/change/"))

    assert RiskEvent.objects.exists() and Alert.objects.exists()  # the failures were recorded
    assert Order.objects.exclude(error="").exists()
    out, err = capfd.readouterr()
    logs = "\n".join([caplog.text] + [json.dumps(r.__dict__, default=str) for r in caplog.records])
    places = {"responses": "\n".join(seen), "logs": logs, "stdout": out, "stderr": err,
              "database": _everything_stored()}
    assert len(caplog.records) > 20 and "broker error" in logs  # the logs did see the failures
    leaks = [f"{where}: {piece!r}" for where, text in places.items()
             for secret in (API_KEY, SECRET_KEY) for piece in _pieces(secret) if piece in text]
    assert not leaks, leaks
