"""Pre-trade limits over HTTP against the paper exchange: each limit below, at and above its value
(at it passes, beyond it is a 422 naming the limit and its value, a risk event, nothing sent);
the one row from the environment, edited in the admin with every change recorded."""

from decimal import Decimal

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.utils import timezone

from risk.limits import limits_current, limits_update
from risk.models import OrderRequest, RiskEvent, RiskLimitsChange
from tests.helpers import order_posts, token_client
from trading.models import Position, Side

pytestmark = pytest.mark.django_db

# A limit entry at 150 with its stop 5 below: notional 150 and a loss of 5 a share.
LIMIT_ORDER = {"symbol": "AAPL", "side": "buy", "entry_price": "150", "stop_loss": "145", "take_profit": "160"}
OFF = {name: None for name in ("max_order_qty", "max_order_notional", "max_order_loss", "max_open_positions",
                               "max_symbol_exposure", "max_total_exposure", "max_orders_per_minute")}
counter = iter(range(10**6))


@pytest.fixture
def trader(exchange, active):
    limits_update(values={**OFF, "symbols_allowed": "", "symbols_refused": ""}, reason="tests set their own")
    return token_client("trader", ["trading.submit_order"])


def _symbol(exchange) -> str:
    """A fresh symbol quoted like AAPL. Alpaca refuses a second bracket in a symbol while the
    first one's legs work (a wash trade), so orders that must all go out use one each."""
    symbol = "Q" + "".join(chr(ord("A") + int(d)) for d in f"{next(counter):03d}")
    exchange.control.set_quote(symbol, "149.99", "150.01")
    return symbol


def _send(trader, quantity: int, **fields):
    return trader.post("/api/v1/orders", {**LIMIT_ORDER, "client_order_id": f"limit-{next(counter)}",
                                          "quantity": quantity, **fields}, format="json")


def _limit(name: str, value) -> None:
    limits_update(values={name: value}, reason=f"test {name}")


def _refused(response, limit: str, value: str, requested: str) -> None:
    assert response.status_code == 422, response.json()
    body = response.json()
    assert body["code"] == "limit_exceeded"
    assert body["limits"] == [{"limit": limit, "value": value, "requested": requested}]
    assert limit in body["detail"] and value in body["detail"]
    event = RiskEvent.objects.filter(kind="limit_refused").latest("id")
    assert event.reason == limit and event.data["limits"][0]["value"] == value


def _answered(response, refused: bool, limit: str, value: str, requested: str) -> None:
    """Below or at its limit an order goes out (201); above it, it is refused naming the limit."""
    if refused:
        _refused(response, limit, value, requested)
    else:
        assert response.status_code == 201, response.json()


def _held(exchange, symbol: str, quantity: int, price: str = "150") -> Position:
    """A position already held (no working orders): what an account-wide limit counts."""
    exchange.control.set_quote(symbol, "149.99", "150.01")
    exchange.control.set_position(symbol, quantity, price)
    return Position.objects.create(symbol=symbol, side=Side.LONG, quantity=quantity, entry_price=Decimal(price),
                                   stop_loss=Decimal("140"), take_profit=Decimal("160"), opened_at=timezone.now())


BELOW_AT_ABOVE = [(9, None), (10, None), (11, "above")]

# Each per-order limit with its value and what 11 shares make it (limit entry at 150, stop 145).
PER_ORDER = [
    ("max_order_qty", Decimal("10"), "11"),
    ("max_order_notional", Decimal("1500"), "1650"),  # quantity x 150
    ("max_order_loss", Decimal("50"), "55"),  # quantity x |150 - 145|
]


@pytest.mark.parametrize("quantity,refused", BELOW_AT_ABOVE, ids=["below", "at", "above"])
@pytest.mark.parametrize("limit,value,above", PER_ORDER, ids=[row[0] for row in PER_ORDER])
def test_per_order_limits(trader, exchange, limit, value, above, quantity, refused):
    _limit(limit, value)
    _answered(_send(trader, quantity), bool(refused), limit, f"{value.normalize():f}", above)
    assert len(order_posts(exchange)) == (0 if refused else 1)


def test_a_market_entry_is_measured_at_the_price_it_trades_at(trader, exchange):
    _limit("max_order_notional", Decimal("1500.10"))  # 10 x the ask, 150.01, for a buy
    market = {"entry_price": None}
    _refused(_send(trader, 11, **market), "max_order_notional", "1500.1", "1650.11")
    assert _send(trader, 10, **market).status_code == 201
    # a sell trades at the bid, 149.99: 10 of them fit under 1500
    _limit("max_order_notional", Decimal("1500"))
    assert _send(trader, 10, symbol=_symbol(exchange), side="sell", stop_loss="155", take_profit="140",
                 **market).status_code == 201


@pytest.mark.parametrize("already_open,refused", [(0, False), (1, False), (2, True)], ids=["below", "at", "above"])
def test_max_open_positions(trader, exchange, already_open, refused):
    _limit("max_open_positions", 2)
    for n in range(already_open):
        _held(exchange, f"HELD{chr(ord('A') + n)}", 1)
    _answered(_send(trader, 1), refused, "max_open_positions", "2", "3")


def test_an_entry_admitted_counts_as_an_open_position(trader, exchange):
    _limit("max_open_positions", 1)
    assert _send(trader, 1).status_code == 201  # a limit entry still working: it counts
    _refused(_send(trader, 1, symbol=_symbol(exchange)), "max_open_positions", "1", "2")


@pytest.mark.parametrize("quantity,refused", BELOW_AT_ABOVE, ids=["below", "at", "above"])
def test_max_symbol_exposure_counts_what_is_held(trader, exchange, quantity, refused):
    _limit("max_symbol_exposure", Decimal("3000"))
    _held(exchange, "AAPL", 10)  # 1500 held at 150
    _held(exchange, "MSFT", 100)  # another symbol's exposure does not count here
    _answered(_send(trader, quantity), bool(refused), "max_symbol_exposure", "3000", "3150")  # 9, 10, 11 x 150 more


def test_max_symbol_exposure_counts_a_working_entry(trader):
    _limit("max_symbol_exposure", Decimal("1500"))
    assert _send(trader, 10).status_code == 201  # 10 at 150, still working (the ask is 150.01)
    _refused(_send(trader, 1), "max_symbol_exposure", "1500", "1650")


@pytest.mark.parametrize("quantity,refused", BELOW_AT_ABOVE, ids=["below", "at", "above"])
def test_max_total_exposure_counts_every_symbol(trader, exchange, quantity, refused):
    _limit("max_total_exposure", Decimal("3000"))
    _held(exchange, "MSFT", 5, price="300")  # 1500 in another symbol
    _answered(_send(trader, quantity), bool(refused), "max_total_exposure", "3000", "3150")


def test_max_orders_per_minute_below_at_and_above(trader, exchange):
    _limit("max_orders_per_minute", 2)
    assert _send(trader, 1).status_code == 201  # the first in a minute: below
    assert _send(trader, 1, symbol=_symbol(exchange)).status_code == 201  # the second: at the limit
    _refused(_send(trader, 1, symbol=_symbol(exchange)), "max_orders_per_minute", "2", "3")
    OrderRequest.objects.update(created_at=OrderRequest.objects.first().created_at.replace(year=2000))
    assert _send(trader, 1, symbol=_symbol(exchange)).status_code == 201  # a minute later


def test_symbols_allowed_and_refused(trader):
    limits_update(values={"symbols_allowed": "msft, TSLA"}, reason="test")
    _refused(_send(trader, 1), "symbols_allowed", "MSFT, TSLA", "AAPL")
    limits_update(values={"symbols_allowed": "", "symbols_refused": "AAPL"}, reason="test")
    _refused(_send(trader, 1), "symbols_refused", "AAPL", "AAPL")
    limits_update(values={"symbols_refused": ""}, reason="test")
    assert _send(trader, 1).status_code == 201


def test_every_limit_broken_is_named_and_the_id_stays_free(trader, exchange):
    limits_update(values={"max_order_qty": Decimal("5"), "max_order_loss": Decimal("10")}, reason="test")
    body = {**LIMIT_ORDER, "client_order_id": "two-limits", "quantity": 6}
    response = trader.post("/api/v1/orders", body, format="json")
    assert response.status_code == 422
    assert [b["limit"] for b in response.json()["limits"]] == ["max_order_qty", "max_order_loss"]
    assert not OrderRequest.objects.exists() and not order_posts(exchange)
    limits_update(values={"max_order_qty": None, "max_order_loss": None}, reason="test")
    assert trader.post("/api/v1/orders", body, format="json").status_code == 201


def test_the_row_takes_its_defaults_from_the_environment(db, settings):
    settings.LIMIT_ORDER_MAX_QTY = Decimal("25")
    settings.LIMIT_MAX_OPEN_POSITIONS = 0  # 0: no limit
    settings.LIMIT_SYMBOLS_REFUSED = ["gme", "AMC"]
    limits = limits_current()
    assert limits.max_order_qty == 25 and limits.max_open_positions is None
    assert limits.symbols_refused == "GME, AMC"
    assert limits_current().pk == limits.pk


def test_changes_are_recorded_with_who_when_what_and_why(db):
    user = User.objects.create_user("risk-officer")
    change = limits_update(values={"max_order_qty": Decimal("7")}, reason="smaller orders today", user=user)
    assert change.changed_by == user and change.changed_by_name == "risk-officer" and change.changed_at
    assert change.changes == {"max_order_qty": ["1000", "7"]}  # from LIMIT_ORDER_MAX_QTY's default
    assert limits_update(values={"max_order_qty": Decimal("7")}, reason="again") is None  # nothing changed


def _admin(perms: list[str], username: str = "officer") -> Client:
    user = User.objects.create_user(username, is_staff=True)
    for perm in perms:
        app_label, codename = perm.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    client = Client(HTTP_X_FORWARDED_PROTO="https")
    client.force_login(user)
    return client


def test_the_admin_edits_the_one_row_and_records_the_change(db):
    client = _admin(["risk.view_risklimits", "risk.change_risklimits"])
    listing = client.get("/admin/risk/risklimits/")
    assert listing.status_code == 302
    page = client.get(listing["Location"])
    assert page.status_code == 200 and b"max quantity per order" in page.content.lower()
    form = {"max_order_qty": "50", "max_order_notional": "", "max_order_loss": "250", "max_open_positions": "5",
            "max_symbol_exposure": "", "max_total_exposure": "", "max_orders_per_minute": "10",
            "symbols_allowed": "", "symbols_refused": "gme", "reason": "new risk budget",
            "changes-TOTAL_FORMS": "0", "changes-INITIAL_FORMS": "0"}
    bad = client.post(listing["Location"], {**form, "symbols_refused": "not a symbol", "max_order_loss": "-1"})
    assert bad.status_code == 200 and not RiskLimitsChange.objects.exists()
    assert b"not US equity symbols" in bad.content and b"greater than 0" in bad.content
    saved = client.post(listing["Location"], form)
    assert saved.status_code == 302, saved.content[:2000]
    limits = limits_current()
    assert limits.max_order_qty == 50 and limits.max_order_notional is None and limits.symbols_refused == "GME"
    change = RiskLimitsChange.objects.get()
    assert change.changed_by_name == "officer" and change.reason == "new risk budget"
    assert change.changes["max_order_qty"][1] == "50" and "symbols_refused" in change.changes
    assert b"new risk budget" in client.get(listing["Location"]).content


def test_viewing_without_changing_and_nothing_without_the_permission(db):
    viewer = _admin(["risk.view_risklimits"])
    url = f"/admin/risk/risklimits/{limits_current().pk}/change/"
    assert viewer.get(url).status_code == 200
    assert viewer.post(url, {"max_order_qty": "1", "reason": "x"}).status_code == 403
    nobody = _admin([], username="nobody")
    assert nobody.get("/admin/risk/risklimits/").status_code == 403
