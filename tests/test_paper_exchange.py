"""The paper exchange, driven through the real alpaca-py clients over HTTP.

No database needed.  Uses the ``paper_exchange`` fixture from
tests/paper_exchange_fixtures.py (re-imported here so the file also works
before tests/conftest.py imports it).
"""

import ast
import io
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from decimal import Decimal

import pytest
import requests
from alpaca.common.exceptions import APIError
from alpaca.data.historical import StockHistoricalDataClient
from alpaca.data.requests import StockLatestQuoteRequest
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderClass, OrderSide, QueryOrderStatus, TimeInForce
from alpaca.trading.requests import (
    GetOrderByIdRequest,
    GetOrdersRequest,
    LimitOrderRequest,
    MarketOrderRequest,
    StopLossRequest,
    TakeProfitRequest,
)

from tests.paper_exchange_fixtures import paper_exchange  # noqa: F401
from paper_exchange.control import PaperExchangeControlError

NESTED = GetOrderByIdRequest(nested=True)
ROOT = pathlib.Path(__file__).resolve().parent.parent


def _client(url, raw=False):
    client = TradingClient("test-key-id", "test-secret-key", paper=True, url_override=url,
                           raw_data=raw)
    # alpaca-py retries 429/504 three times with 3 s sleeps and TradingClient does
    # not expose the knob: switch retries off so fault tests are fast and exact.
    client._retry = 0
    return client


@pytest.fixture
def paper_exchange_options():
    """These tests were written for a 100,000 USD paper account (the console's fixture
    default is 10,000,000); keep their cash arithmetic as it was."""
    return {"cash": "100000"}


@pytest.fixture
def ex(paper_exchange):  # noqa: F811
    return paper_exchange


@pytest.fixture
def tc(ex):
    return _client(ex.url)


@pytest.fixture
def raw(ex):
    return _client(ex.url, raw=True)


def _bracket(side, qty, tp, sl, limit=None, sl_limit=None, coid=None, order_class=OrderClass.BRACKET):
    kw = dict(symbol="AAPL", qty=qty, side=side, time_in_force=TimeInForce.DAY,
              take_profit=TakeProfitRequest(limit_price=tp),
              stop_loss=StopLossRequest(stop_price=sl, limit_price=sl_limit),
              client_order_id=coid)
    if order_class is not None:
        kw["order_class"] = order_class
    if limit is None:
        return MarketOrderRequest(**kw)
    return LimitOrderRequest(limit_price=limit, **kw)


def _api_error(fn, *args):
    with pytest.raises(APIError) as info:
        fn(*args)
    return info.value


def _legs(tc, order_id):
    order = tc.get_order_by_id(order_id, NESTED)
    tp, sl = order.legs
    return order, tp, sl


# ---------------------------------------------------------------- brackets


def test_bracket_market_long_lifecycle(ex, tc):
    ex.control.set_quote("AAPL", "149.99", "150.01")
    ex.control.set_clock(False)
    order = tc.submit_order(_bracket(OrderSide.BUY, 10, 155.0, 145.0, sl_limit=144.5))
    assert order.order_class == OrderClass.BRACKET and order.status == "new"
    tp, sl = order.legs
    assert (tp.type, tp.side, tp.status, Decimal(tp.limit_price), Decimal(tp.qty)) == (
        "limit", "sell", "held", Decimal("155"), Decimal("10"))
    assert (sl.type, sl.side, sl.status) == ("stop_limit", "sell", "held")
    assert Decimal(sl.stop_price) == Decimal("145") and Decimal(sl.limit_price) == Decimal("144.5")
    assert tp.id != sl.id != order.id and tp.client_order_id != sl.client_order_id
    assert tp.time_in_force == sl.time_in_force == "day"
    assert tp.order_class == sl.order_class == "bracket"

    ex.control.set_clock(True)  # market opens -> entry fills at the ask
    order, tp, sl = _legs(tc, order.id)
    assert order.status == "filled" and Decimal(order.filled_avg_price) == Decimal("150.01")
    assert (tp.status, sl.status) == ("new", "held")
    pos = tc.get_open_position("AAPL")
    assert (pos.qty, pos.side, pos.qty_available) == ("10", "long", "0")

    ex.control.set_quote("AAPL", "144.80", "144.90")  # below the stop, above its limit
    order, tp, sl = _legs(tc, order.id)
    assert sl.status == "filled" and Decimal(sl.filled_avg_price) == Decimal("144.80")
    assert tp.status == "canceled" and tp.canceled_at is not None
    assert tc.get_all_positions() == []
    assert _api_error(tc.get_open_position, "AAPL").status_code == 404


def test_bracket_limit_long_take_profit(ex, tc):
    ex.control.set_quote("AAPL", "150.50", "150.60")
    order = tc.submit_order(_bracket(OrderSide.BUY, 5, 160.0, 140.0, limit=150.0))
    assert order.status == "new" and [leg.status for leg in order.legs] == ["held", "held"]
    ex.control.set_quote("AAPL", "149.90", "149.95")
    order, tp, sl = _legs(tc, order.id)
    assert order.status == "filled" and Decimal(order.filled_avg_price) == Decimal("150")
    assert (tp.status, sl.status, sl.type) == ("new", "held", "stop")
    ex.control.set_quote("AAPL", "160.05", "160.10")
    order, tp, sl = _legs(tc, order.id)
    assert tp.status == "filled" and Decimal(tp.filled_avg_price) == Decimal("160")
    assert sl.status == "canceled"
    assert tc.get_all_positions() == []
    assert Decimal(tc.get_account().cash) == Decimal("100000") + 5 * (Decimal("160") - Decimal("150"))


def test_bracket_market_short_lifecycle(ex, tc):
    ex.control.set_quote("AAPL", "100.00", "100.02")
    order = tc.submit_order(_bracket(OrderSide.SELL, 5, 95.0, 105.0))
    tp, sl = order.legs
    assert order.status == "filled" and Decimal(order.filled_avg_price) == Decimal("100")
    assert (tp.side, tp.type, tp.status, Decimal(tp.limit_price)) == ("buy", "limit", "new", Decimal("95"))
    assert (sl.side, sl.type, sl.status, Decimal(sl.stop_price)) == ("buy", "stop", "held", Decimal("105"))
    pos = tc.get_open_position("AAPL")
    assert (pos.qty, pos.side, pos.qty_available) == ("-5", "short", "0")
    ex.control.set_quote("AAPL", "105.00", "105.05")  # ask >= stop -> buy to cover at the ask
    order, tp, sl = _legs(tc, order.id)
    assert sl.status == "filled" and Decimal(sl.filled_avg_price) == Decimal("105.05")
    assert tp.status == "canceled"
    assert tc.get_all_positions() == []


def test_bracket_limit_short_take_profit(ex, tc):
    ex.control.set_quote("AAPL", "100.00", "100.02")
    order = tc.submit_order(_bracket(OrderSide.SELL, 3, 90.0, 110.0, limit=101.0))
    assert order.status == "new"
    ex.control.set_quote("AAPL", "101.00", "101.02")
    order, tp, sl = _legs(tc, order.id)
    assert order.status == "filled" and Decimal(order.filled_avg_price) == Decimal("101")
    ex.control.set_quote("AAPL", "89.95", "90.00")
    order, tp, sl = _legs(tc, order.id)
    assert (tp.status, sl.status) == ("filled", "canceled")
    assert Decimal(tp.filled_avg_price) == Decimal("90")


@pytest.mark.parametrize("side,tp,sl,limit,message", [
    (OrderSide.BUY, 150.0, 140.0, 150.0, "take_profit.limit_price must be >= base_price + 0.01"),
    (OrderSide.BUY, 160.0, 150.0, 150.0, "stop_loss.stop_price must be <= base_price - 0.01"),
    (OrderSide.SELL, 150.0, 160.0, 150.0, "take_profit.limit_price must be <= base_price - 0.01"),
    (OrderSide.SELL, 140.0, 150.0, 150.0, "stop_loss.stop_price must be >= base_price + 0.01"),
    (OrderSide.BUY, 150.01, 149.0, None, "take_profit.limit_price must be >= base_price + 0.01"),
])
def test_bracket_price_validation(ex, tc, side, tp, sl, limit, message):
    ex.control.set_quote("AAPL", "149.99", "150.01")
    err = _api_error(tc.submit_order, _bracket(side, 1, tp, sl, limit=limit))
    assert err.status_code == 422 and err.code == 42210000 and err.message == message
    assert tc.get_orders(GetOrdersRequest(status=QueryOrderStatus.ALL)) == []


def test_market_bracket_without_quote_rejected(ex, tc):
    err = _api_error(tc.submit_order, _bracket(OrderSide.BUY, 1, 155.0, 145.0))
    assert err.status_code == 422


def test_bracket_needs_both_legs(ex, raw):
    ex.control.set_quote("AAPL", "149.99", "150.01")
    body = {"symbol": "AAPL", "qty": 1, "side": "buy", "type": "market", "time_in_force": "day",
            "order_class": "bracket", "take_profit": {"limit_price": 155}}
    err = _api_error(raw.post, "/orders", body)
    assert err.status_code == 422


def test_bracket_without_order_class_is_plain_order(ex, raw):
    """take_profit/stop_loss without order_class are silently ignored (the production bug)."""
    ex.control.set_quote("AAPL", "149.99", "150.01")
    req = _bracket(OrderSide.BUY, 10, 155.0, 145.0, order_class=None)
    assert "order_class" not in req.to_request_fields()
    order = raw.submit_order(req)
    assert order["order_class"] == "simple" and order["legs"] is None
    assert order["status"] == "filled"
    listed = raw.get_orders(GetOrdersRequest(status=QueryOrderStatus.ALL, nested=True))
    assert len(listed) == 1 and listed[0]["legs"] is None
    assert raw.get_open_position("AAPL")["qty_available"] == "10"  # nothing protects it


# ---------------------------------------------------------- order rules


def test_duplicate_client_order_id_rejected_even_after_cancel(ex, tc):
    ex.control.set_quote("AAPL", "149.99", "150.01")
    req = LimitOrderRequest(symbol="AAPL", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.GTC,
                            limit_price=100.0, client_order_id="entry-1")
    order = tc.submit_order(req)
    assert order.client_order_id == "entry-1" and order.status == "new"
    tc.cancel_order_by_id(order.id)
    assert tc.get_order_by_id(order.id).status == "canceled"
    err = _api_error(tc.submit_order, req)
    assert err.status_code == 422
    assert json.loads(str(err)) == {"code": 40010001, "message": "client_order_id must be unique"}
    long_id = LimitOrderRequest(symbol="AAPL", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.GTC,
                                limit_price=100.0, client_order_id="x" * 129)
    assert _api_error(tc.submit_order, long_id).status_code == 422
    generated = tc.submit_order(LimitOrderRequest(symbol="AAPL", qty=1, side=OrderSide.BUY,
                                                  time_in_force=TimeInForce.GTC, limit_price=100.0))
    assert len(generated.client_order_id) == 36


def test_selling_held_shares_is_rejected(ex, tc):
    ex.control.set_quote("AAPL", "149.99", "150.01")
    tc.submit_order(_bracket(OrderSide.BUY, 10, 155.0, 145.0))
    err = _api_error(tc.submit_order, MarketOrderRequest(
        symbol="AAPL", qty=10, side=OrderSide.SELL, time_in_force=TimeInForce.DAY))
    assert err.status_code == 403
    assert json.loads(str(err)) == {
        "code": 40310000,
        "message": "insufficient qty available for order (requested: 10, available: 0)",
        "symbol": "AAPL", "requested": "10", "available": "0",
        "existing_qty": "10", "held_for_orders": "10",
    }


def test_sell_without_position_opens_short_and_buy_covers(ex, tc):
    # Whole shares now: Alpaca refuses a fractional short ("fractional orders cannot be sold
    # short", test_fractional_rules), which this test used to send (2.5).
    ex.control.set_quote("MSFT", "400.00", "400.10")
    tc.submit_order(MarketOrderRequest(symbol="MSFT", qty=2, side=OrderSide.SELL,
                                       time_in_force=TimeInForce.DAY))
    pos = tc.get_open_position("MSFT")
    assert (pos.qty, pos.side, pos.avg_entry_price) == ("-2", "short", "400.00")
    tc.submit_order(MarketOrderRequest(symbol="MSFT", qty=2, side=OrderSide.BUY,
                                       time_in_force=TimeInForce.DAY))
    assert tc.get_all_positions() == []


def test_cancel_leg_cancels_sibling_and_parent_cancels_legs(ex, tc):
    ex.control.set_quote("AAPL", "149.99", "150.01")
    filled = tc.submit_order(_bracket(OrderSide.BUY, 10, 155.0, 145.0))
    tp = filled.legs[0]
    tc.cancel_order_by_id(tp.id)
    _, tp, sl = _legs(tc, filled.id)
    assert (tp.status, sl.status) == ("canceled", "canceled")
    assert tc.get_open_position("AAPL").qty_available == "10"
    err = _api_error(tc.cancel_order_by_id, filled.id)
    assert err.status_code == 422 and err.message == "order is not cancelable"

    pending = tc.submit_order(_bracket(OrderSide.BUY, 1, 140.0, 120.0, limit=130.0))
    tc.cancel_order_by_id(pending.id)
    order, tp, sl = _legs(tc, pending.id)
    assert [order.status, tp.status, sl.status] == ["canceled"] * 3
    assert _api_error(tc.cancel_order_by_id, "3f1b3c3e-0000-4000-8000-000000000000").status_code == 404


def test_sub_penny_prices(ex, tc):
    ex.control.set_quote("AAPL", "149.99", "150.01")
    err = _api_error(tc.submit_order, LimitOrderRequest(
        symbol="AAPL", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.DAY, limit_price=150.123))
    assert err.status_code == 422
    assert json.loads(str(err)) == {
        "code": 42210000,
        "message": "invalid limit_price 150.123. sub-penny increment does not fulfill minimum pricing criteria",
    }
    err = _api_error(tc.submit_order, _bracket(OrderSide.BUY, 1, 155.005, 145.0, limit=150.0))
    assert err.code == 42210000 and "take_profit.limit_price 155.005" in err.message
    err = _api_error(tc.submit_order, _bracket(OrderSide.BUY, 1, 155.0, 145.001, limit=150.0))
    assert "stop_loss.stop_price" in err.message
    ex.control.set_quote("PENNY", "0.1230", "0.1240")
    ok = tc.submit_order(LimitOrderRequest(
        symbol="PENNY", qty=100, side=OrderSide.BUY, time_in_force=TimeInForce.DAY, limit_price=0.1234))
    assert ok.limit_price == "0.1234" and ok.status == "new"
    err = _api_error(tc.submit_order, LimitOrderRequest(
        symbol="PENNY", qty=100, side=OrderSide.BUY, time_in_force=TimeInForce.DAY, limit_price=0.12345))
    assert err.status_code == 422


def test_partial_fill_of_entry_keeps_legs_held(ex, tc):
    ex.control.set_quote("AAPL", "149.99", "150.01")
    order = tc.submit_order(_bracket(OrderSide.BUY, 10, 155.0, 130.0, limit=140.0))
    ex.control.fill_order(order.id, qty=4)
    order, tp, sl = _legs(tc, order.id)
    assert order.status == "partially_filled" and order.filled_qty == "4"
    assert Decimal(order.filled_avg_price) == Decimal("140")
    assert (tp.status, sl.status) == ("held", "held")
    pos = tc.get_open_position("AAPL")
    assert (pos.qty, pos.qty_available) == ("4", "4")  # legs of a partial entry hold nothing
    ex.control.set_quote("AAPL", "160.00", "160.02")  # would cross the take-profit: legs not live
    assert tc.get_order_by_id(tp.id).status == "held"
    ex.control.fill_order(order.id)  # the rest, at the limit price
    order, tp, sl = _legs(tc, order.id)
    assert order.status == "filled"
    assert tp.status == "filled" and sl.status == "canceled"  # the live TP matched at once


def test_oco_exit_for_existing_position(ex, raw):
    oco = LimitOrderRequest(
        symbol="AAPL", qty=10, side=OrderSide.SELL, time_in_force=TimeInForce.GTC, limit_price=110.0,
        order_class=OrderClass.OCO, take_profit=TakeProfitRequest(limit_price=110.0),
        stop_loss=StopLossRequest(stop_price=95.0))
    assert _api_error(raw.submit_order, oco).status_code == 422  # nothing to exit
    ex.control.set_position("AAPL", 10, "100")
    ex.control.set_quote("AAPL", "104.99", "105.01")
    order = raw.submit_order(oco)
    assert (order["order_class"], order["type"], order["status"]) == ("oco", "limit", "new")
    (stop,) = order["legs"]
    assert (stop["type"], stop["side"], stop["status"], stop["stop_price"]) == ("stop", "sell", "held", "95.00")
    assert raw.get_open_position("AAPL")["qty_available"] == "0"
    ex.control.set_quote("AAPL", "94.50", "94.60")
    order = raw.get_order_by_id(order["id"], NESTED)
    assert order["status"] == "canceled" and order["legs"][0]["status"] == "filled"
    assert raw.get_all_positions() == []


# ---------------------------------------------------------- listing


def test_list_orders_filters(ex, tc, raw):
    ex.control.set_quote("AAPL", "149.99", "150.01")
    ex.control.set_quote("MSFT", "399.99", "400.01")
    bracket = tc.submit_order(_bracket(OrderSide.BUY, 1, 155.0, 145.0))  # entry filled, legs open
    msft = tc.submit_order(LimitOrderRequest(symbol="MSFT", qty=1, side=OrderSide.BUY,
                                             time_in_force=TimeInForce.DAY, limit_price=300.0))
    flat = raw.get_orders()  # open, flat: the two AAPL legs + MSFT, legs null
    assert {o["id"] for o in flat} == {str(bracket.legs[0].id),
                                       str(bracket.legs[1].id), str(msft.id)}
    assert all(o["legs"] is None for o in flat)
    assert flat[0]["id"] == str(msft.id)  # desc by default
    nested = tc.get_orders(GetOrdersRequest(status=QueryOrderStatus.ALL, nested=True))
    assert [o.id for o in nested] == [msft.id, bracket.id] and len(nested[1].legs) == 2
    closed = tc.get_orders(GetOrdersRequest(status=QueryOrderStatus.CLOSED))
    assert [o.id for o in closed] == [bracket.id]
    only_msft = tc.get_orders(GetOrdersRequest(status=QueryOrderStatus.ALL, symbols=["MSFT"]))
    assert [o.id for o in only_msft] == [msft.id]
    asc = tc.get_orders(GetOrdersRequest(status=QueryOrderStatus.ALL, direction="asc", limit=1))
    assert [o.id for o in asc] == [bracket.id]
    assert tc.get_order_by_client_id(msft.client_order_id).id == msft.id
    assert _api_error(tc.get_order_by_client_id, "nope").status_code == 404
    assert _api_error(tc.get_order_by_id, "3f1b3c3e-0000-4000-8000-000000000000").message == "order not found"

    cancelled = tc.cancel_orders()
    assert sorted(str(r.id) for r in cancelled) == sorted(o["id"] for o in flat)
    assert all(r.status == 200 for r in cancelled)
    assert tc.get_orders() == []


def test_expire_day_orders(ex, tc):
    ex.control.set_quote("AAPL", "149.99", "150.01")
    day = tc.submit_order(LimitOrderRequest(symbol="AAPL", qty=1, side=OrderSide.BUY,
                                            time_in_force=TimeInForce.DAY, limit_price=100.0))
    gtc = tc.submit_order(LimitOrderRequest(symbol="AAPL", qty=1, side=OrderSide.BUY,
                                            time_in_force=TimeInForce.GTC, limit_price=100.0))
    assert ex.control.expire_day_orders() == [str(day.id)]
    assert tc.get_order_by_id(day.id).status == "expired"
    assert tc.get_order_by_id(gtc.id).status == "new"


def test_market_order_waits_for_open_clock_and_quote(ex, tc):
    order = tc.submit_order(MarketOrderRequest(symbol="NVDA", qty=1, side=OrderSide.BUY,
                                               time_in_force=TimeInForce.DAY))
    assert order.status == "new"  # no quote
    ex.control.set_clock(False)
    ex.control.set_quote("NVDA", "99.99", "100.01")
    assert tc.get_order_by_id(order.id).status == "new"
    assert tc.get_clock().is_open is False
    ex.control.set_clock(True)
    assert tc.get_order_by_id(order.id).status == "filled"


# ---------------------------------------------------------- account, positions, quotes


def test_account_clock_and_broker_only_position(ex, tc):
    acct = tc.get_account()
    assert acct.status == "ACTIVE" and acct.currency == "USD" and acct.shorting_enabled
    assert acct.pattern_day_trader is False and acct.trading_blocked is False
    assert tc.get_clock().is_open is True
    ex.control.set_position("TSLA", -3, "250.5")
    ex.control.set_quote("TSLA", "240.00", "240.10")
    pos = tc.get_open_position("TSLA")
    assert (pos.qty, pos.side, pos.avg_entry_price, pos.asset_class) == ("-3", "short", "250.50", "us_equity")
    assert Decimal(pos.unrealized_pl) > 0
    assert tc.get_all_positions()[0].symbol == "TSLA"
    assert tc.get_orders(GetOrdersRequest(status=QueryOrderStatus.ALL)) == []
    err = _api_error(tc.get_open_position, "ZZZZ")
    assert json.loads(str(err)) == {"code": 40410000, "message": "position does not exist"}


def test_latest_quotes_many_symbols(ex):
    symbols = [f"S{i:03d}" for i in range(300)]
    ex.control.set_quotes([{"symbol": s, "bid": f"{10 + i}.00", "ask": f"{10 + i}.02"}
                           for i, s in enumerate(symbols[:250])])
    ex.control.set_quote("ZERO", 0, "5.00")  # a zero bid is allowed
    dc = StockHistoricalDataClient("test-key-id", "test-secret-key", url_override=ex.url)
    quotes = dc.get_stock_latest_quote(StockLatestQuoteRequest(symbol_or_symbols=symbols + ["ZERO"]))
    assert len(quotes) == 251 and "S260" not in quotes
    assert quotes["S007"].bid_price == 17.0 and quotes["S007"].ask_price == 17.02
    assert quotes["ZERO"].bid_price == 0
    raw = StockHistoricalDataClient("test-key-id", "test-secret-key", url_override=ex.url, raw_data=True)
    q = raw.get_stock_latest_quote(StockLatestQuoteRequest(symbol_or_symbols="S001", feed="iex"))["S001"]
    assert set(q) == {"ap", "as", "ax", "bp", "bs", "bx", "c", "t", "z"}
    assert isinstance(q["ap"], float) and q["t"].endswith("Z")
    long_query = ",".join(f"SYM{i:05d}" for i in range(1000))
    resp = requests.get(f"{ex.url}/v2/stocks/quotes/latest", params={"symbols": long_query},
                        headers={"APCA-API-KEY-ID": "k", "APCA-API-SECRET-KEY": "s"})
    assert resp.status_code == 414


def test_auth_required_and_secret_never_recorded(ex, tc):
    resp = requests.get(f"{ex.url}/v2/account")
    assert resp.status_code == 401
    assert resp.json() == {"code": 40110000, "message": "request is not authorized"}
    ex.control.set_quote("AAPL", "149.99", "150.01")
    tc.submit_order(_bracket(OrderSide.BUY, 1, 155.0, 145.0, coid="coid-1"))
    log = ex.control.requests_log()
    post = [r for r in log if r["method"] == "POST"][0]
    assert post["path"] == "/v2/orders" and post["body"]["client_order_id"] == "coid-1"
    assert post["body"]["order_class"] == "bracket" and post["body"]["qty"] == 1.0
    assert "test-secret-key" not in json.dumps(log)
    assert "test-secret-key" not in ex.state_file.read_text()
    assert "test-secret-key" not in json.dumps(ex.control.state())
    ex.control.clear_requests_log()
    assert ex.control.requests_log() == []


# ---------------------------------------------------------- persistence


def test_restart_keeps_state(ex, tc):
    ex.control.set_quote("AAPL", "149.99", "150.01")
    filled = tc.submit_order(_bracket(OrderSide.BUY, 10, 155.0, 145.0, coid="keep-me"))
    ex.control.set_clock(False)
    ex.restart()
    tc2 = _client(ex.url)
    order, tp, sl = _legs(tc2, filled.id)
    assert order.client_order_id == "keep-me" and (tp.status, sl.status) == ("new", "held")
    assert tc2.get_open_position("AAPL").qty == "10"
    assert tc2.get_clock().is_open is False
    assert ex.control.state()["quotes"]["AAPL"]["bid"] == "149.99"
    err = _api_error(tc2.submit_order, _bracket(OrderSide.BUY, 1, 155.0, 145.0, coid="keep-me"))
    assert err.message == "client_order_id must be unique"
    ex.control.set_clock(True)
    ex.control.set_quote("AAPL", "144.00", "144.10")
    assert tc2.get_all_positions() == []


# ---------------------------------------------------------- faults


def _market(symbol="AAPL", qty=10, coid=None):
    return MarketOrderRequest(symbol=symbol, qty=qty, side=OrderSide.BUY, time_in_force=TimeInForce.DAY,
                              client_order_id=coid)


def test_fault_http_errors_and_count(ex, tc):
    ex.control.add_fault("http_500", method="GET", path="/v2/account", count=1)
    err = _api_error(tc.get_account)
    assert err.status_code == 500 and err.code == 50010000
    assert tc.get_account().status == "ACTIVE"  # count exhausted
    ex.control.add_fault("http_429", path="/v2/clock")
    assert _api_error(tc.get_clock).status_code == 429
    assert _api_error(tc.get_clock).status_code == 429  # count null: until cleared
    assert tc.get_account()  # other paths untouched
    ex.control.clear_faults()
    assert tc.get_clock().is_open
    ex.control.add_fault("non_json_error", count=1)
    err = _api_error(tc.get_account)
    assert err.status_code == 500 and str(err).startswith("<html>")
    with pytest.raises(PaperExchangeControlError):
        ex.control.add_fault("frobnicate")


def test_fault_accept_then_504(ex, tc):
    ex.control.set_quote("AAPL", "149.99", "150.01")
    ex.control.add_fault("accept_then_504", method="POST", path="/v2/orders", count=1)
    err = _api_error(tc.submit_order, _market(coid="lost-answer"))
    assert err.status_code == 504
    found = tc.get_order_by_client_id("lost-answer")
    assert found.status == "filled" and found.filled_qty == "10"


def test_fault_hang(ex, tc):
    ex.control.add_fault("hang", method="GET", path="/v2/clock", count=1, delay=0.3)
    start = time.monotonic()
    assert tc.get_clock().is_open
    assert time.monotonic() - start >= 0.3


def test_fault_drop_legs(ex, raw):
    ex.control.set_quote("AAPL", "149.99", "150.01")
    ex.control.add_fault("drop_legs", count=1)
    order = raw.submit_order(_bracket(OrderSide.BUY, 10, 155.0, 145.0))
    assert order["order_class"] == "simple" and order["legs"] is None
    assert ex.control.faults() == []


def test_fault_unknown_status_and_malformed(ex, tc, raw):
    ex.control.set_quote("AAPL", "149.99", "150.01")
    ex.control.add_fault("unknown_status", method="POST", count=1)
    order = raw.submit_order(_market())
    assert order["status"] == "pending_frobnicated"
    ex.control.add_fault("unknown_status", method="GET", count=1)
    with pytest.raises(ValueError):  # typed parsing cannot cope (pydantic ValidationError)
        tc.get_order_by_id(order["id"])
    assert raw.get_order_by_id(order["id"])["status"] == "filled"
    ex.control.add_fault("malformed", method="GET", path="/v2/orders", count=1)
    bad = raw.get_orders(GetOrdersRequest(status=QueryOrderStatus.ALL))
    assert "id" not in bad[0] and isinstance(bad[0]["qty"], dict)


def test_fault_reject_no_fill_partial_fill(ex, tc):
    ex.control.set_quote("AAPL", "149.99", "150.01")
    ex.control.add_fault("reject", count=1)
    err = _api_error(tc.submit_order, _market(coid="rejected"))
    assert err.status_code == 403 and err.message == "order rejected by paper exchange fault"
    assert _api_error(tc.get_order_by_client_id, "rejected").status_code == 404

    ex.control.add_fault("no_fill", count=1)
    stuck = tc.submit_order(_market())
    ex.control.set_quote("AAPL", "149.98", "150.00")
    assert tc.get_order_by_id(stuck.id).status == "new"

    ex.control.add_fault("partial_fill", count=1)
    part = tc.submit_order(_market(symbol="MSFT", qty=7))
    ex.control.set_quote("MSFT", "10.00", "10.01")
    part = tc.get_order_by_id(part.id)
    assert part.status == "partially_filled" and part.filled_qty == "3"
    ex.control.set_quote("MSFT", "10.00", "10.02")
    assert tc.get_order_by_id(part.id).filled_qty == "3"  # stays partial
    assert tc.get_open_position("MSFT").qty == "3"


def test_partial_fill_fault_on_bracket_entry(ex, tc):
    ex.control.set_quote("AAPL", "149.99", "150.01")
    ex.control.add_fault("partial_fill", count=1)
    order = tc.submit_order(_bracket(OrderSide.BUY, 10, 155.0, 145.0))
    order, tp, sl = _legs(tc, order.id)
    assert (order.status, order.filled_qty, tp.status, sl.status) == ("partially_filled", "5", "held", "held")
    assert tc.get_open_position("AAPL").qty == "5"


# ---------------------------------------------------------- commands / rules


def test_paperquote_command(ex):
    from django.core.management.base import CommandError

    from console.management.commands.paperquote import Command

    def run(*argv):
        out = io.StringIO()
        cmd = Command(stdout=out)
        opts = cmd.create_parser("manage.py", "paperquote").parse_args([*argv, "--url", ex.url])
        cmd.handle(**vars(opts))
        return out.getvalue()

    assert "bid 149.99 ask 150.01" in run("aapl", "--bid", "149.99", "--ask", "150.01")
    run("MSFT", "--price", "400")
    quotes = ex.control.state()["quotes"]
    assert quotes["AAPL"]["ask"] == "150.01" and quotes["MSFT"]["bid"] == quotes["MSFT"]["ask"] == "400"
    for bad in (["AAPL", "--bid", "x", "--ask", "1"], ["AAPL", "--bid", "2", "--ask", "1"],
                ["AAPL", "--bid", "1"], ["AAPL", "--price", "1", "--bid", "1"]):
        with pytest.raises(CommandError):
            run(*bad)


def test_exchange_modules_never_import_alpaca_or_django():
    # Every module of the package now (it was split into many), and never the project either.
    modules = sorted(p.name for p in (ROOT / "paper_exchange").glob("*.py"))
    assert {"__init__.py", "state.py", "server.py", "control.py", "streams.py"} <= set(modules)
    for name in modules:
        tree = ast.parse((ROOT / "paper_exchange" / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mods = [node.module or ""]
            else:
                continue
            for mod in mods:
                assert not mod.startswith(("alpaca", "django", "trading", "risk", "catalyst")), (name, mod)


def test_runpaperexchange_command_persists_and_stops_on_sigterm(tmp_path):
    state_file = tmp_path / "var" / "paper.json"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": os.environ.get("DJANGO_SETTINGS_MODULE", "tests.settings")}
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "runpaperexchange", "--port", "0", "--state-file", str(state_file)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = ""
        while "listening on" not in line:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
        url = line.split("listening on ")[1].split()[0]
        from paper_exchange.control import PaperExchangeControl

        PaperExchangeControl(url).set_quote("AAPL", "1.00", "1.01")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert json.loads(state_file.read_text())["quotes"]["AAPL"]["ask"] == "1.01"
