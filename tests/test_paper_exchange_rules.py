"""The paper exchange's fidelity to Alpaca's order rules and endpoints, driven through
alpaca-py's TradingClient over HTTP (raw ``requests`` where alpaca-py hides the status
or the body).  Each test names the Alpaca doc it follows.
"""

import json
import time
import uuid
from decimal import Decimal

import pytest
import requests
from alpaca.common.exceptions import APIError
from alpaca.trading.enums import OrderClass, OrderSide, QueryOrderStatus, TimeInForce
from alpaca.trading.requests import (
    ClosePositionRequest,
    GetOrderByIdRequest,
    GetOrdersRequest,
    GetPortfolioHistoryRequest,
    LimitOrderRequest,
    MarketOrderRequest,
    ReplaceOrderRequest,
    StopLossRequest,
    StopOrderRequest,
    TakeProfitRequest,
)

from paper_exchange.state import ExchangeState
from tests.paper_exchange_fixtures import (  # noqa: F401
    PAPER_API_KEY,
    PAPER_SECRET_KEY,
    paper_exchange,
    paper_exchange_options,
    trading_client,
)

NESTED = GetOrderByIdRequest(nested=True)
HEADERS = {"APCA-API-KEY-ID": PAPER_API_KEY, "APCA-API-SECRET-KEY": PAPER_SECRET_KEY}
WASH = {"code": 40310000, "message": "potential wash trade detected. use complex orders"}


@pytest.fixture
def ex(paper_exchange):  # noqa: F811
    paper_exchange.control.set_quote("AAPL", "149.99", "150.01")
    return paper_exchange


@pytest.fixture
def tc(ex):
    return trading_client(ex)


def _error(fn, *args) -> APIError:
    with pytest.raises(APIError) as info:
        fn(*args)
    return info.value


def _body(err: APIError) -> dict:
    return json.loads(str(err))


def _post(ex, path, body, method="POST"):
    return requests.request(method, f"{ex.url}{path}", json=body, headers=HEADERS, timeout=10)


def _bracket(side, qty, tp, sl, limit=None, symbol="AAPL", tif=TimeInForce.DAY, **extra):
    kw = dict(symbol=symbol, qty=qty, side=side, time_in_force=tif, order_class=OrderClass.BRACKET,
              take_profit=TakeProfitRequest(limit_price=tp), stop_loss=StopLossRequest(stop_price=sl), **extra)
    return LimitOrderRequest(limit_price=limit, **kw) if limit else MarketOrderRequest(**kw)


def _limit(side, qty, price, symbol="AAPL", tif=TimeInForce.GTC):
    return LimitOrderRequest(symbol=symbol, qty=qty, side=side, time_in_force=tif, limit_price=price)


def _market(side, qty, symbol="AAPL", tif=TimeInForce.DAY):
    return MarketOrderRequest(symbol=symbol, qty=qty, side=side, time_in_force=tif)


# ---------------------------------------------------------------- partial exits


def test_partial_take_profit_shrinks_the_stop_leg(ex, tc):
    """https://docs.alpaca.markets/docs/orders-at-alpaca#bracket-orders -- "If the take-profit
    order is partially filled, the stop-loss order will be adjusted to the remaining quantity." """
    order = tc.submit_order(_bracket(OrderSide.BUY, 10, 155.0, 145.0))
    tp, sl = order.legs
    ex.control.fill_order(tp.id, qty=4, price="155")
    order = tc.get_order_by_id(order.id, NESTED)
    tp, sl = order.legs
    assert (tp.status, tp.filled_qty, tp.qty) == ("partially_filled", "4", "10")
    assert (sl.status, sl.qty) == ("held", "6")
    pos = tc.get_open_position("AAPL")
    assert (pos.qty, pos.qty_available) == ("6", "0")
    ex.control.set_quote("AAPL", "144.80", "144.90")  # the stop sells the 6 left
    tp, sl = tc.get_order_by_id(order.id, NESTED).legs
    assert (sl.status, sl.filled_qty, tp.status) == ("filled", "6", "canceled")
    assert tc.get_all_positions() == []


def test_partial_take_profit_of_an_oco_shrinks_its_stop(ex, tc):
    """https://docs.alpaca.markets/docs/orders-at-alpaca#oco-orders -- the two OCO orders
    "work exactly the same way as the two legs of the bracket orders"."""
    ex.control.set_position("AAPL", 10, "140")
    order = tc.submit_order(LimitOrderRequest(
        symbol="AAPL", qty=10, side=OrderSide.SELL, time_in_force=TimeInForce.GTC, limit_price=160.0,
        order_class=OrderClass.OCO, take_profit=TakeProfitRequest(limit_price=160.0),
        stop_loss=StopLossRequest(stop_price=140.0)))
    ex.control.fill_order(order.id, qty=3)
    order = tc.get_order_by_id(order.id, NESTED)
    assert (order.status, order.filled_qty) == ("partially_filled", "3")
    assert order.legs[0].qty == "7"
    ex.control.set_quote("AAPL", "139.00", "139.10")
    order = tc.get_order_by_id(order.id, NESTED)
    assert (order.status, order.legs[0].status, order.legs[0].filled_qty) == ("canceled", "filled", "7")
    assert tc.get_all_positions() == []


def test_oco_body_exactly_as_documented_is_accepted(ex):
    """https://docs.alpaca.markets/docs/orders-at-alpaca#oco-orders -- the example body has
    type "limit" and the take-profit price only inside take_profit (no top-level limit_price)."""
    ex.control.set_position("SPY", 100, "300")
    ex.control.set_quote("SPY", "299.99", "300.01")
    resp = _post(ex, "/v2/orders", {
        "side": "sell", "symbol": "SPY", "type": "limit", "qty": "100", "time_in_force": "gtc",
        "order_class": "oco", "take_profit": {"limit_price": "301"},
        "stop_loss": {"stop_price": "299", "limit_price": "298.5"}})
    assert resp.status_code == 200, resp.text
    order = resp.json()
    assert (order["order_class"], order["type"], order["limit_price"]) == ("oco", "limit", "301.00")
    (stop,) = order["legs"]
    assert (stop["type"], stop["stop_price"], stop["limit_price"]) == ("stop_limit", "299.00", "298.50")


# ---------------------------------------------------------------- wash trades


def test_market_buy_while_a_sell_limit_works_is_a_wash_trade(ex, tc):
    """https://docs.alpaca.markets/docs/user-protection#preventing-wash-trades -- "limit sell /
    market buy: always rejected", 403; the body is Alpaca's (code 40310000)."""
    ex.control.set_position("AAPL", 10, "140")
    tc.submit_order(_limit(OrderSide.SELL, 10, 160.0))
    resp = _post(ex, "/v2/orders", {"symbol": "AAPL", "qty": "1", "side": "buy", "type": "market",
                                    "time_in_force": "day"})
    assert (resp.status_code, resp.json()) == (403, WASH)
    err = _error(tc.submit_order, _market(OrderSide.BUY, 1))
    assert (err.status_code, _body(err)) == (403, WASH)


def test_buy_limit_at_or_above_a_working_sell_limit_is_a_wash_trade(ex, tc):
    """https://docs.alpaca.markets/docs/user-protection -- "limit sell / limit buy: rejected if
    buy limit price >= sell limit price"."""
    ex.control.set_position("AAPL", 10, "140")
    tc.submit_order(_limit(OrderSide.SELL, 10, 160.0))
    assert _body(_error(tc.submit_order, _limit(OrderSide.BUY, 1, 160.0))) == WASH
    assert _body(_error(tc.submit_order, _limit(OrderSide.BUY, 1, 165.0))) == WASH
    assert tc.submit_order(_limit(OrderSide.BUY, 1, 159.99)).status == "filled"  # accepted (marketable)


def test_a_working_stop_conflicts_with_any_opposite_order(ex, tc):
    """https://docs.alpaca.markets/docs/user-protection -- "stop sell / limit buy: always
    rejected" (a stop may trade at any price)."""
    ex.control.set_position("AAPL", 10, "140")
    tc.submit_order(StopOrderRequest(symbol="AAPL", qty=10, side=OrderSide.SELL,
                                     time_in_force=TimeInForce.GTC, stop_price=140.0))
    assert _body(_error(tc.submit_order, _limit(OrderSide.BUY, 1, 100.0))) == WASH


def test_working_bracket_legs_count_but_a_new_complex_order_s_legs_do_not(ex, tc):
    """https://docs.alpaca.markets/docs/user-protection -- bracket and OCO orders "are exceptions
    to our wash trade protection": the exit legs of the order being submitted are not checked.
    The working legs of an earlier bracket do count, so a second bracket entry in the same
    symbol (a market buy against the first one's take-profit sell limit) is refused."""
    first = tc.submit_order(_bracket(OrderSide.BUY, 10, 155.0, 145.0))
    assert first.status == "filled"
    assert _body(_error(tc.submit_order, _bracket(OrderSide.BUY, 5, 156.0, 144.0))) == WASH
    assert _body(_error(tc.submit_order, _limit(OrderSide.BUY, 1, 120.0))) == WASH  # vs the stop leg
    tc.cancel_order_by_id(first.legs[0].id)  # both legs go
    working_buy = tc.submit_order(_limit(OrderSide.BUY, 1, 120.0))
    # the new bracket's stop leg (a sell stop) would conflict with the working buy limit: exempt
    assert tc.submit_order(_bracket(OrderSide.BUY, 5, 156.0, 144.0)).status == "filled"
    tc.cancel_order_by_id(working_buy.id)


def test_oco_exit_is_exempt_and_the_rule_can_be_switched_off(ex, tc):
    """https://docs.alpaca.markets/docs/user-protection -- complex orders are exceptions; the
    switch is the paper exchange's own (POST /_paper/rules) for tests that need it off."""
    ex.control.set_position("AAPL", 10, "140")
    tc.submit_order(_limit(OrderSide.BUY, 5, 120.0))
    oco = tc.submit_order(LimitOrderRequest(
        symbol="AAPL", qty=10, side=OrderSide.SELL, time_in_force=TimeInForce.GTC, limit_price=170.0,
        order_class=OrderClass.OCO, take_profit=TakeProfitRequest(limit_price=170.0),
        stop_loss=StopLossRequest(stop_price=130.0)))
    assert oco.status == "new"
    assert _body(_error(tc.submit_order, _market(OrderSide.BUY, 1))) == WASH
    assert ex.control.set_rules(wash_trade=False) == {"wash_trade": False, "buying_power": True}
    assert tc.submit_order(_market(OrderSide.BUY, 1)).status == "filled"


def test_a_bracket_that_would_reduce_a_position_is_refused(ex, tc):
    """Alpaca answers 422 {"code": 42210000, "message": "bracket orders must be entry orders"}
    to a bracket whose side reduces or reverses the open position (alpaca-trade-api-js #248;
    https://docs.alpaca.markets/docs/orders-at-alpaca#bracket-orders: the first order "is used to
    enter a new long or short position")."""
    ex.control.set_position("AAPL", 10, "140")
    err = _error(tc.submit_order, _bracket(OrderSide.SELL, 5, 140.0, 160.0))
    assert (err.status_code, _body(err)) == (422, {"code": 42210000, "message": "bracket orders must be entry orders"})
    ex.control.set_position("MSFT", -3, "400")
    ex.control.set_quote("MSFT", "399.99", "400.01")
    err = _error(tc.submit_order, _bracket(OrderSide.BUY, 3, 410.0, 390.0, symbol="MSFT"))
    assert err.message == "bracket orders must be entry orders"
    assert tc.submit_order(_bracket(OrderSide.BUY, 2, 160.0, 140.0)).status == "filled"  # adds to the long


# ---------------------------------------------------------------- buying power


@pytest.mark.parametrize("paper_exchange", [{"cash": "10000"}], indirect=True)
def test_buying_power_reserved_by_working_orders_and_released(ex, tc):
    """https://docs.alpaca.markets/docs/orders-at-alpaca#buying-power -- open buy orders reduce
    the available buying power until they fill or are canceled; an order beyond it is refused
    403 {"code": 40310000, "message": "insufficient buying power"}; an opening short is valued
    at 3% above the ask."""
    assert Decimal(tc.get_account().buying_power) == Decimal("20000")  # 2x margin account
    first = tc.submit_order(_limit(OrderSide.BUY, 100, 150.0))
    assert Decimal(tc.get_account().buying_power) == Decimal("5000")
    err = _error(tc.submit_order, _limit(OrderSide.BUY, 40, 150.0))
    assert (err.status_code, _body(err)) == (403, {"code": 40310000, "message": "insufficient buying power"})
    tc.cancel_order_by_id(first.id)
    assert Decimal(tc.get_account().buying_power) == Decimal("20000")
    tc.submit_order(_market(OrderSide.BUY, 100))  # fills at 150.01
    acct = tc.get_account()
    assert Decimal(acct.cash) == Decimal("10000") - Decimal("15001")
    assert Decimal(acct.buying_power) == 2 * (Decimal(acct.cash) + 100 * Decimal("150.00")) - 15000
    ex.control.set_quote("MSFT", "99.99", "100.01")
    err = _error(tc.submit_order, _market(OrderSide.SELL, 60, symbol="MSFT"))  # 60 * 103.0103 > 4998
    assert err.message == "insufficient buying power"
    assert tc.submit_order(_market(OrderSide.SELL, 40, symbol="AAPL")).status == "filled"  # a sale of a long: free
    ex.control.set_cash("1000000")
    assert tc.submit_order(_market(OrderSide.SELL, 60, symbol="MSFT")).status == "filled"


# ---------------------------------------------------------------- assets


def test_assets_unknown_and_untradable_symbols(ex, tc):
    """https://docs.alpaca.markets/reference/get-v2-assets-symbol_or_asset_id -- the asset
    entity; an order for an unknown symbol is refused 422 'asset "XYZ" not found', one for an
    untradable asset 422 'asset XYZ is not tradable', a short of an unshortable one
    'asset XYZ cannot be sold short'."""
    aapl = tc.get_asset("AAPL")
    assert (aapl.symbol, aapl.tradable, aapl.shortable, aapl.fractionable, aapl.status) == (
        "AAPL", True, True, True, "active")
    assert tc.get_asset(str(aapl.id)).symbol == "AAPL"
    assert _error(tc.get_asset, "XYZ").status_code == 404
    err = _error(tc.submit_order, _market(OrderSide.BUY, 1, symbol="XYZ"))
    assert (err.status_code, _body(err)) == (422, {"code": 42210000, "message": 'asset "XYZ" not found'})
    ex.control.set_quote("XYZ", "9.99", "10.01")  # a quote lists the symbol as a tradable asset
    assert tc.get_asset("XYZ").tradable is True
    assert tc.submit_order(_market(OrderSide.BUY, 1, symbol="XYZ")).status == "filled"
    ex.control.set_asset("XYZ", tradable=False)
    err = _error(tc.submit_order, _market(OrderSide.BUY, 1, symbol="XYZ"))
    assert (err.status_code, err.message) == (422, "asset XYZ is not tradable")
    ex.control.set_asset("XYZ", tradable=True, shortable=False)
    assert tc.submit_order(_market(OrderSide.SELL, 1, symbol="XYZ")).status == "filled"  # closes the long
    err = _error(tc.submit_order, _market(OrderSide.SELL, 1, symbol="XYZ"))
    assert err.message == "asset XYZ cannot be sold short"


def test_fractional_quantities(ex, tc):
    """https://docs.alpaca.markets/docs/fractional-trading -- fractional orders are DAY orders
    of the simple class only; Alpaca's messages "fractional orders must be DAY orders",
    "fractional orders must be simple orders", "fractional orders cannot be sold short"."""
    assert tc.submit_order(_market(OrderSide.BUY, 0.5)).filled_qty == "0.5"
    assert tc.submit_order(_limit(OrderSide.BUY, 0.5, 100.0, tif=TimeInForce.DAY)).status == "new"
    assert _error(tc.submit_order, _market(OrderSide.BUY, 0.5, tif=TimeInForce.GTC)).message == \
        "fractional orders must be DAY orders"
    assert _error(tc.submit_order, _bracket(OrderSide.BUY, 1.5, 160.0, 140.0)).message == \
        "fractional orders must be simple orders"
    ex.control.set_quote("MSFT", "399.99", "400.01")
    assert _error(tc.submit_order, _market(OrderSide.SELL, 0.5, symbol="MSFT")).message == \
        "fractional orders cannot be sold short"
    ex.control.set_asset("MSFT", fractionable=False)
    assert _error(tc.submit_order, _market(OrderSide.BUY, 0.5, symbol="MSFT")).message == \
        "asset MSFT is not fractionable"


def test_bracket_time_in_force_and_extended_hours(ex, tc):
    """https://docs.alpaca.markets/docs/orders-at-alpaca#bracket-orders -- "Extended hours are
    not supported" and "time_in_force must be day or gtc"; extended-hours orders must be DAY
    limit orders (#extended-hours-trading)."""
    err = _error(tc.submit_order, _bracket(OrderSide.BUY, 1, 160.0, 140.0, limit=150.0, tif=TimeInForce.IOC))
    assert (err.status_code, err.message) == (422, "bracket orders must be day or gtc orders")
    assert tc.submit_order(_bracket(OrderSide.BUY, 1, 160.0, 140.0, limit=150.0, tif=TimeInForce.GTC)).status \
        == "new"
    err = _error(tc.submit_order, _bracket(OrderSide.BUY, 1, 160.0, 140.0, limit=149.0, extended_hours=True))
    assert err.message == "extended hours orders must be simple orders"
    err = _error(tc.submit_order, MarketOrderRequest(symbol="AAPL", qty=1, side=OrderSide.BUY,
                                                     time_in_force=TimeInForce.DAY, extended_hours=True))
    assert err.message == "extended hours order must be DAY limit orders"


# ---------------------------------------------------------------- endpoints


def test_list_orders_side_filter(ex, tc):
    """https://docs.alpaca.markets/reference/getallorders -- the ``side`` query parameter."""
    ex.control.set_position("MSFT", 10, "400")
    ex.control.set_quote("MSFT", "399.99", "400.01")
    buy = tc.submit_order(_limit(OrderSide.BUY, 1, 100.0))
    sell = tc.submit_order(_limit(OrderSide.SELL, 1, 500.0, symbol="MSFT"))
    only = lambda side: [o.id for o in tc.get_orders(GetOrdersRequest(status=QueryOrderStatus.ALL, side=side))]  # noqa: E731
    assert only(OrderSide.BUY) == [buy.id] and only(OrderSide.SELL) == [sell.id]


def test_replace_order(ex, tc):
    """https://docs.alpaca.markets/reference/patchorderbyorderid-1 -- the replacing order is a new
    order with ``replaces``; the old one ends ``replaced`` with ``replaced_by``; an order that is
    not open answers 422 "unable to replace order, order is not open"."""
    old = tc.submit_order(_limit(OrderSide.BUY, 10, 140.0))
    new = tc.replace_order_by_id(old.id, ReplaceOrderRequest(qty=5, limit_price=141.0))
    assert (new.replaces, new.qty, new.limit_price, new.status) == (old.id, "5", "141.00", "new")
    old = tc.get_order_by_id(old.id)
    assert (old.status, old.replaced_by) == ("replaced", new.id) and old.replaced_at is not None
    filled = tc.submit_order(_market(OrderSide.BUY, 1, symbol="AAPL"))
    err = _error(tc.replace_order_by_id, filled.id, ReplaceOrderRequest(qty=2))
    assert (err.status_code, err.message) == (422, "unable to replace order, order is not open")
    tc.cancel_order_by_id(new.id)
    bracket = tc.submit_order(_bracket(OrderSide.BUY, 10, 155.0, 145.0))
    tp = tc.replace_order_by_id(bracket.legs[0].id, ReplaceOrderRequest(limit_price=152.0))
    legs = tc.get_order_by_id(bracket.id, NESTED).legs
    assert [leg.id for leg in legs] == [tp.id, bracket.legs[1].id] and legs[0].limit_price == "152.00"
    ex.control.set_quote("AAPL", "152.00", "152.02")
    legs = tc.get_order_by_id(bracket.id, NESTED).legs
    assert (legs[0].status, legs[1].status) == ("filled", "canceled")


def test_close_positions(ex, tc):
    """https://docs.alpaca.markets/reference/deleteopenposition-1 (qty or percentage; answers the
    closing order) and deleteallopenpositions-1 (cancel_orders=true; 207, one entry per symbol)."""
    ex.control.set_position("AAPL", 10, "140")
    order = tc.close_position("AAPL", ClosePositionRequest(qty="4"))
    assert (order.side, order.qty, order.type, order.status) == ("sell", "4", "market", "filled")
    order = tc.close_position("AAPL", ClosePositionRequest(percentage="50"))
    assert order.qty == "3" and tc.get_open_position("AAPL").qty == "3"
    assert _error(tc.close_position, "MSFT").status_code == 404
    ex.control.set_position("TSLA", -2, "250")
    ex.control.set_quote("TSLA", "249.99", "250.01")
    tc.submit_order(_limit(OrderSide.SELL, 3, 200.0))  # holds the AAPL shares: canceled first
    resp = requests.delete(f"{ex.url}/v2/positions", params={"cancel_orders": "true"}, headers=HEADERS, timeout=10)
    assert resp.status_code == 207
    results = {r["symbol"]: r for r in resp.json()}
    assert set(results) == {"AAPL", "TSLA"} and {r["status"] for r in results.values()} == {200}
    assert results["TSLA"]["body"]["side"] == "buy"
    assert tc.get_all_positions() == [] and tc.get_orders() == []


def test_unknown_endpoint_answers_unlike_a_missing_order(ex):
    """A missing order is Alpaca's 404 {"code": 40410000, "message": "order not found"}; a path
    the API does not have must not look like one."""
    resp = requests.get(f"{ex.url}/v2/ordersx", headers=HEADERS, timeout=10)
    assert (resp.status_code, resp.json()) == (404, {"message": "endpoint not found"})
    resp = requests.get(f"{ex.url}/v2/orders/{uuid.uuid4()}", headers=HEADERS, timeout=10)
    assert (resp.status_code, resp.json()) == (404, {"code": 40410000, "message": "order not found"})


def test_portfolio_history(ex, tc, monkeypatch):
    """https://docs.alpaca.markets/reference/getaccountportfoliohistory-1 -- period/timeframe;
    left-labelled timestamps with equity and profit_loss against base_value."""
    start = (int(time.time()) // 3600) * 3600 - 3 * 3600
    now = [start]
    monkeypatch.setattr(ex.state, "clock_time", lambda: now[0])
    with ex.state.lock:
        ex.state.equity_history[:] = []
        ex.state._record_equity()  # 10,000,000 at start
    now[0] = start + 120
    tc.submit_order(_market(OrderSide.BUY, 100))  # 100 @ 150.01, marked at 150.00: -1
    now[0] = start + 600
    ex.control.set_quote("AAPL", "159.99", "160.01")  # marked at 160: +999
    now[0] = start + 900
    history = tc.get_portfolio_history(GetPortfolioHistoryRequest(period="1D", timeframe="5Min"))
    assert history.timeframe == "5Min" and history.base_value == 10_000_000
    assert history.timestamp == [start, start + 300, start + 600, start + 900]
    assert history.equity == [9_999_999.0, 9_999_999.0, 10_000_999.0, 10_000_999.0]
    assert history.profit_loss == [-1.0, -1.0, 999.0, 999.0]
    assert _error(tc.get_portfolio_history, GetPortfolioHistoryRequest(period="1X")).status_code == 422


# ---------------------------------------------------------------- rate limit


@pytest.mark.parametrize("paper_exchange", [{"rate_limit": 3}], indirect=True)
def test_rate_limit(ex, monkeypatch):
    """https://docs.alpaca.markets/docs/rate-limits -- X-RateLimit-Limit/-Remaining/-Reset (unix
    seconds) on every response, 429 once the budget is spent; the trading API allows 200 a
    minute per account by default.  Market data has a budget of its own."""
    t0 = time.time()
    remaining = []
    for _ in range(3):
        resp = requests.get(f"{ex.url}/v2/account", headers=HEADERS, timeout=10)
        assert resp.status_code == 200 and resp.headers["X-RateLimit-Limit"] == "3"
        remaining.append(resp.headers["X-RateLimit-Remaining"])
        assert t0 + 59 <= int(resp.headers["X-RateLimit-Reset"]) <= t0 + 62
    assert remaining == ["2", "1", "0"]
    resp = requests.get(f"{ex.url}/v2/clock", headers=HEADERS, timeout=10)
    assert (resp.status_code, resp.json()) == (429, {"code": 42910000, "message": "rate limit exceeded"})
    assert resp.headers["X-RateLimit-Remaining"] == "0"
    assert _error(trading_client(ex).get_account).status_code == 429
    quotes = requests.get(f"{ex.url}/v2/stocks/AAPL/quotes/latest", headers=HEADERS, timeout=10)
    assert quotes.status_code == 200 and "X-RateLimit-Limit" not in quotes.headers  # its own budget, off
    counts = ex.control.rate_limit()
    assert (counts["requests"], counts["throttled"], counts["remaining"]) == (5, 2, 0)
    monkeypatch.setattr(ex.state.rate_limiter, "clock", lambda: t0 + 61)  # the next window
    assert requests.get(f"{ex.url}/v2/account", headers=HEADERS, timeout=10).status_code == 200
    ex.control.set_rate_limit(0)  # off at run time
    resp = requests.get(f"{ex.url}/v2/account", headers=HEADERS, timeout=10)
    assert resp.status_code == 200 and "X-RateLimit-Remaining" not in resp.headers


def test_fixture_leaves_the_rate_limit_off_and_cash_generous(ex, tc):
    resp = requests.get(f"{ex.url}/v2/account", headers=HEADERS, timeout=10)
    assert "X-RateLimit-Limit" not in resp.headers
    assert Decimal(resp.json()["cash"]) == Decimal("10000000")
    ex.control.set_rate_limit(1)
    assert requests.get(f"{ex.url}/v2/account", headers=HEADERS, timeout=10).status_code == 200
    assert requests.get(f"{ex.url}/v2/account", headers=HEADERS, timeout=10).status_code == 429


# ---------------------------------------------------------------- persistence


def test_a_version_1_state_file_still_loads(tmp_path):
    old = {"version": 1, "account": {"id": "a1", "cash": "90000"}, "clock": {"is_open": True}, "seq": 1,
           "orders": [{"id": "o1", "seq": 1, "client_order_id": "c1", "symbol": "ZZZ", "qty": "1",
                       "filled_qty": "0", "filled_avg_price": None, "side": "buy", "type": "limit",
                       "time_in_force": "gtc", "limit_price": "5", "stop_price": None, "order_class": "simple",
                       "status": "new", "extended_hours": False, "created_at": "2026-01-02T00:00:00.000000Z",
                       "updated_at": "2026-01-02T00:00:00.000000Z", "submitted_at": "2026-01-02T00:00:00.000000Z",
                       "filled_at": None, "canceled_at": None, "expired_at": None, "parent_id": None,
                       "leg_role": None, "legs": [], "no_fill": False, "auto_fill_cap": None}],
           "positions": {}, "quotes": {}, "client_order_ids": ["c1"], "faults": []}
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    state = ExchangeState(path)
    assert state.order_json("o1")["replaces"] is None
    assert state.asset_json("ZZZ")["tradable"] is True and state.rules["wash_trade"] is True
    assert state.account_json()["cash"] == "90000.00"
    state.cancel_order("o1")
    assert json.loads(path.read_text())["version"] == 2


def test_recent_events_are_readable_without_a_websocket(ex, tc):
    """The trade_updates messages the exchange published, for tests that need no stream."""
    ex.control.clear_events()
    order = tc.submit_order(_market(OrderSide.BUY, 2))
    events = ex.control.events()
    assert [(e["stream"], e["data"]["event"], e["data"]["order"]["id"]) for e in events] == [
        ("trade_updates", "new", str(order.id)), ("trade_updates", "fill", str(order.id))]
    assert events[1]["data"]["position_qty"] == "2" and events[1]["data"]["price"] == "150.01"
