"""The only module that talks to Alpaca (alpaca-py). Everything else calls these functions.

It makes up for what alpaca-py 0.44 leaves out:
- no HTTP timeout: every request gets BROKER_TIMEOUT_SECONDS, so a hung broker can't hang us;
- no request budget: every trading-API request takes a slot of the budget every process
  shares (trading/budget.py) first, at a priority (exits and cancels first);
- its own retries on 429/504 would spend the budget unseen: they are done here instead,
  through the budget, and a 429 pauses the budget for everyone until X-RateLimit-Reset;
- POST /v2/orders is retried on 429/504, so a retry may meet "client_order_id must be
  unique": the order is then looked up by its client_order_id, never sent again;
- request models carry prices as floats: prices are rounded with Decimal before they go in;
- APIError.code/.message raise on a non-JSON body: errors are read here, defensively;
- one unknown enum value fails a whole typed list: responses are read raw and parsed
  here order by order, with Decimal and aware datetimes;
- a 0 bid or ask means "no bid/ask"; long symbol lists are split into batches.
"""

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from functools import cache

import msgpack
import requests
from alpaca.common.exceptions import APIError
from alpaca.data.enums import DataFeed
from alpaca.data.historical import StockHistoricalDataClient
from alpaca.data.live import StockDataStream
from alpaca.data.requests import StockLatestQuoteRequest
from alpaca.trading.client import TradingClient
from alpaca.trading.stream import TradingStream
from alpaca.trading.enums import OrderClass, OrderSide, QueryOrderStatus, TimeInForce
from alpaca.trading.requests import (
    GetOrderByIdRequest,
    GetOrdersRequest,
    GetPortfolioHistoryRequest,
    LimitOrderRequest,
    MarketOrderRequest,
    StopLossRequest,
    TakeProfitRequest,
)
from django.conf import settings
from django.utils.dateparse import parse_datetime
from prometheus_client import Counter

from . import budget
from .budget import BudgetSpent, BudgetUnavailable, Priority
from .models import FINAL_ORDER_STATUSES, OrderStatus
from .redaction import scrub, scrub_data

log = logging.getLogger(__name__)

DUPLICATE_CLIENT_ORDER_ID = "client_order_id must be unique"


class BrokerError(Exception):
    """The broker refused, failed or could not be reached. Never carries credentials: its
    message and body are scrubbed here, whatever the broker put in them."""

    def __init__(self, message: str, *, status: int | None = None, code: int | None = None, body: dict | None = None):
        self.status = status
        self.code = code
        self.body = scrub_data(body or {})
        super().__init__(scrub(message))

    @property
    def outcome_unknown(self) -> bool:
        """True when the request may have been carried out (timeout, 5xx after sending)."""
        return self.status is None or self.status >= 500

    @property
    def throttled(self) -> bool:
        """Nothing was done for want of requests (the broker's 429, or our budget spent): try later."""
        return self.status == 429


class BrokerThrottled(BrokerError):
    """The request budget had no slot within BROKER_BUDGET_WAIT_SECONDS: nothing was sent."""

    def __init__(self, message: str, *, wait_seconds: float):
        self.wait_seconds = wait_seconds
        super().__init__(message, status=429)


class BrokerDataError(BrokerError):
    """The broker answered with something that can't be read as what was asked for."""


# --- What the broker says, as plain values ------------------------------------------


@dataclass(frozen=True)
class BrokerOrder:
    id: str
    client_order_id: str
    symbol: str
    side: str
    qty: Decimal
    type: str
    order_class: str
    time_in_force: str
    status: str
    limit_price: Decimal | None
    stop_price: Decimal | None
    filled_qty: Decimal
    filled_avg_price: Decimal | None
    submitted_at: datetime | None
    filled_at: datetime | None
    updated_at: datetime | None
    legs: tuple["BrokerOrder", ...] = ()
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_ORDER_STATUSES


@dataclass(frozen=True)
class BrokerPosition:
    symbol: str
    side: str  # long / short
    qty: Decimal  # absolute
    qty_available: Decimal
    avg_entry_price: Decimal
    raw: dict = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class Quote:
    symbol: str
    bid: Decimal | None
    ask: Decimal | None
    time: datetime | None

    @property
    def crossed(self) -> bool:
        return self.bid is not None and self.ask is not None and self.bid > self.ask

    @property
    def price(self) -> Decimal | None:
        """Bid/ask midpoint; one side alone when the other is missing."""
        if self.bid is not None and self.ask is not None:
            return (self.bid + self.ask) / 2
        return self.bid if self.bid is not None else self.ask


@dataclass(frozen=True)
class EquityPoint:
    time: datetime
    equity: Decimal
    profit_loss: Decimal | None
    profit_loss_pct: Decimal | None  # a fraction, as Alpaca gives it (0.01 = 1 %)


@dataclass(frozen=True)
class PortfolioHistory:
    timeframe: str
    base_value: Decimal | None
    points: tuple[EquityPoint, ...]


@dataclass(frozen=True)
class Clock:
    is_open: bool
    timestamp: datetime | None
    next_open: datetime | None
    next_close: datetime | None


# --- Clients ------------------------------------------------------------------------


class _TimeoutSession(requests.Session):
    """alpaca-py's session with a timeout on every request, and a connection pool sized
    for the threads (web workers, monitors) that share one client."""

    def __init__(self, timeout: float):
        super().__init__()
        self._timeout = timeout
        adapter = requests.adapters.HTTPAdapter(pool_maxsize=64)
        self.mount("https://", adapter)
        self.mount("http://", adapter)

    def request(self, method, url, **kwargs):
        kwargs.setdefault("timeout", self._timeout)
        return super().request(method, url, **kwargs)


def _credentials() -> tuple[str, str]:
    # The paper exchange ignores the values; alpaca-py insists on having some.
    return (settings.ALPACA_API_KEY or "paper-exchange", settings.ALPACA_SECRET_KEY or "paper-exchange")


@cache
def _clients(trading_url: str, data_url: str, paper: bool, key: str, secret: str, timeout: Decimal):
    trading = TradingClient(key, secret, paper=paper, raw_data=True, url_override=trading_url or None)
    data = StockHistoricalDataClient(key, secret, raw_data=True, url_override=data_url or None)
    for client in (trading, data):
        client._session = _TimeoutSession(float(timeout))  # alpaca-py sets no timeout
        client._retry = 0  # retried in _call, through the budget
    return trading, data


def _client_pair() -> tuple[TradingClient, StockHistoricalDataClient]:
    return _clients(
        settings.ALPACA_TRADING_URL, settings.ALPACA_DATA_URL, settings.ALPACA_PAPER, *_credentials(),
        settings.BROKER_TIMEOUT_SECONDS,
    )


def _trading() -> TradingClient:
    return _client_pair()[0]


def _data() -> StockHistoricalDataClient:
    return _client_pair()[1]


def describe() -> str:
    """Which broker and mode are in use, for the log and the admin header. No secrets."""
    if not (settings.ALPACA_API_KEY and settings.ALPACA_SECRET_KEY):
        return f"paper exchange (simulated) at {settings.ALPACA_TRADING_URL}"
    mode = "PAPER" if settings.ALPACA_PAPER else "LIVE"
    where = f" via {settings.ALPACA_TRADING_URL}" if settings.ALPACA_TRADING_URL else ""
    return f"Alpaca {mode} trading{where}"


# Every failed call, by HTTP status ("429", "404"...) or "timeout", "unreachable", "unreadable";
# /metrics shows it (summed over the processes with PROMETHEUS_MULTIPROC_DIR). A 404 or 422 can
# be an ordinary answer ("no position": flat; "already final" on a cancel).
BROKER_ERRORS = Counter("catalyst_broker_errors", "Broker calls that failed, by HTTP status or failure", ["status"])


def _take(what: str, least: Priority) -> None:
    """A slot of the shared budget. Its store failing (Redis or the database down) must not
    stop an exit: the request goes out, and the broker's own 429s still pace it."""
    try:
        budget.take(least=least)
    except BudgetSpent as exc:
        raise BrokerThrottled(f"{what}: not sent, {exc}", wait_seconds=exc.wait_seconds) from None
    except BudgetUnavailable as exc:
        log.error("%s: %s; sending anyway", what, exc)


def _reset_at(exc: APIError) -> float:
    """When the broker's window ends (X-RateLimit-Reset, epoch seconds), else a short wait."""
    headers = getattr(exc.response, "headers", None) or {}
    try:
        return float(headers["X-RateLimit-Reset"])
    except (KeyError, TypeError, ValueError):
        return time.time() + settings.BROKER_RETRY_WAIT_SECONDS


class _Retry(Exception):
    def __init__(self, error: BrokerError, reset_at: float):
        self.error, self.reset_at = error, reset_at


def _call(what: str, fn, *args, least: Priority | None = Priority.ROUTINE):
    """Run one alpaca-py call, turning every failure into a BrokerError with a readable message.

    A trading-API call (`least` is its lowest priority; None for market data, which Alpaca
    limits apart) takes a slot of the shared budget first. 429 and 504 are retried
    BROKER_RETRY_ATTEMPTS times: after a 429 every process waits for the broker's reset."""
    for attempt in range(settings.BROKER_RETRY_ATTEMPTS + 1):
        if least is not None:
            _take(what, least)
        try:
            return _call_once(what, fn, *args)
        except _Retry as retry:
            shared = retry.error.status == 429 and least is not None and _pause_everyone(what, retry.reset_at)
            if attempt == settings.BROKER_RETRY_ATTEMPTS:
                raise retry.error from None
            if retry.error.status == 504:
                time.sleep(settings.BROKER_RETRY_WAIT_SECONDS)
            elif not shared:  # the next slot of the budget comes after the reset; without one, wait here
                time.sleep(min(max(0.0, retry.reset_at - time.time()), float(settings.BROKER_BUDGET_WAIT_SECONDS)))


def _pause_everyone(what: str, reset_at: float) -> bool:
    """After the broker's 429: the budget pauses every process until the broker's reset.
    False when there is no budget to hold the pause."""
    log.warning("%s: the broker answered 429; waiting for its reset", what)
    if not budget.enabled():
        return False
    try:
        budget.pause(until_epoch_seconds=reset_at)
    except BudgetUnavailable as exc:
        log.error("%s: %s; the 429 is honoured by this process alone", what, exc)
        return False
    return True


def _call_once(what: str, fn, *args):
    """One call; every failure a BrokerError (429 and 504 as _Retry), counted in BROKER_ERRORS."""
    try:
        return fn(*args)
    except APIError as exc:
        error, label = _api_error(what, exc), str(exc.status_code)
        if error.status in (429, 504):
            BROKER_ERRORS.labels(status=label).inc()
            raise _Retry(error, _reset_at(exc)) from None
    except requests.exceptions.JSONDecodeError:
        error, label = BrokerDataError(f"{what}: broker answered with a body that is not JSON"), "unreadable"
    except requests.Timeout:
        error, label = BrokerError(f"{what}: broker did not answer within {settings.BROKER_TIMEOUT_SECONDS}s"), "timeout"
    except requests.RequestException as exc:
        error, label = BrokerError(f"{what}: broker unreachable ({type(exc).__name__})"), "unreachable"
    except (ValueError, KeyError, TypeError) as exc:  # alpaca-py choking on a malformed body
        error, label = BrokerDataError(f"{what}: unreadable broker response ({exc})"), "unreadable"
    BROKER_ERRORS.labels(status=label).inc()
    raise error from None


def _api_error(what: str, exc: APIError) -> BrokerError:
    status = exc.status_code
    text = str(exc)
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict):
        message = str(body.get("message", text))[:500]
        code = body.get("code") if isinstance(body.get("code"), int) else None
        return BrokerError(f"{what}: {message} (HTTP {status})", status=status, code=code, body=body)
    snippet = " ".join(text.split())[:200]
    return BrokerError(f"{what}: HTTP {status} with a non-JSON body: {snippet!r}", status=status)


# --- Parsing ------------------------------------------------------------------------


def _dec(value, name: str, *, required: bool = False) -> Decimal | None:
    if value is None or value == "":
        if required:
            raise BrokerDataError(f"broker response lacks {name}")
        return None
    if isinstance(value, (dict, list, bool)):
        raise BrokerDataError(f"broker response has {name}={value!r}, not a number")
    try:
        result = Decimal(str(value))
    except InvalidOperation:
        raise BrokerDataError(f"broker response has {name}={value!r}, not a number") from None
    if not result.is_finite():
        raise BrokerDataError(f"broker response has {name}={value!r}, not a finite number")
    return result


def _dt(value) -> datetime | None:
    if not value or not isinstance(value, str):
        return None
    parsed = parse_datetime(value.replace("Z", "+00:00"))
    if parsed is None or parsed.tzinfo is None:
        return None
    return parsed


def _text(raw: dict, name: str, *, required: bool = True) -> str:
    value = raw.get(name)
    if isinstance(value, str) and value:
        return value
    if required:
        raise BrokerDataError(f"broker order lacks {name}")
    return ""


_KNOWN_STATUSES = set(OrderStatus.values)


def parse_order(raw) -> BrokerOrder:
    if not isinstance(raw, dict):
        raise BrokerDataError(f"broker order is a {type(raw).__name__}, not an object")
    status = raw.get("status")
    legs = raw.get("legs") or []
    if not isinstance(legs, list):
        raise BrokerDataError("broker order has legs that are not a list")
    return BrokerOrder(
        id=_text(raw, "id"),
        client_order_id=_text(raw, "client_order_id"),
        symbol=_text(raw, "symbol"),
        side=_text(raw, "side"),
        qty=_dec(raw.get("qty"), "qty") or Decimal("0"),
        type=_text(raw, "type", required=False) or _text(raw, "order_type", required=False),
        order_class=raw.get("order_class") or "simple",
        time_in_force=_text(raw, "time_in_force", required=False),
        status=status if status in _KNOWN_STATUSES else OrderStatus.UNKNOWN,
        limit_price=_dec(raw.get("limit_price"), "limit_price"),
        stop_price=_dec(raw.get("stop_price"), "stop_price"),
        filled_qty=_dec(raw.get("filled_qty"), "filled_qty") or Decimal("0"),
        filled_avg_price=_dec(raw.get("filled_avg_price"), "filled_avg_price"),
        submitted_at=_dt(raw.get("submitted_at")),
        filled_at=_dt(raw.get("filled_at")),
        updated_at=_dt(raw.get("updated_at")),
        legs=tuple(parse_order(leg) for leg in legs),
        raw=scrub_data(raw),
    )


def _parse_position(raw) -> BrokerPosition:
    if not isinstance(raw, dict):
        raise BrokerDataError("broker position is not an object")
    qty = _dec(raw.get("qty"), "qty", required=True)
    side = raw.get("side") or ("short" if qty < 0 else "long")
    if side not in ("long", "short"):
        raise BrokerDataError(f"broker position has side {side!r}")
    available = _dec(raw.get("qty_available"), "qty_available")
    return BrokerPosition(
        symbol=_text(raw, "symbol"),
        side=side,
        qty=abs(qty),
        qty_available=abs(available) if available is not None else abs(qty),
        avg_entry_price=_dec(raw.get("avg_entry_price"), "avg_entry_price", required=True),
        raw=scrub_data(raw),
    )


def _parse_quote(symbol: str, raw) -> Quote:
    if not isinstance(raw, dict):
        raise BrokerDataError(f"quote for {symbol} is not an object")

    def side(name: str) -> Decimal | None:
        value = _dec(raw.get(name), f"{symbol} {name}")
        return value if value is not None and value > 0 else None  # 0 means "none"

    return Quote(symbol=symbol, bid=side("bp"), ask=side("ap"), time=_dt(raw.get("t")))


# --- Orders ---------------------------------------------------------------------------


def _tif(value: str) -> TimeInForce:
    return TimeInForce(value)


def _side(value: str) -> OrderSide:
    return OrderSide(value)


def _submit(request, client_order_id: str, least: Priority) -> BrokerOrder:
    """POST one order. A duplicate id or an unknown outcome is settled by looking the id up
    (at the order's own priority)."""
    with budget.priority(least):
        return _submit_at_priority(request, client_order_id, least)


def _submit_at_priority(request, client_order_id: str, least: Priority) -> BrokerOrder:
    try:
        raw = _call("submit order", _trading().submit_order, request, least=least)
    except BrokerError as exc:
        duplicate = exc.status == 422 and DUPLICATE_CLIENT_ORDER_ID in str(exc)
        if not (duplicate or exc.outcome_unknown):
            raise
        existing = find_order_by_client_id(client_order_id)
        if existing is None:
            raise
        log.warning("order %s already at the broker (%s); not sending again", client_order_id, exc)
        return existing
    try:
        return parse_order(raw)
    except BrokerDataError as exc:  # accepted, but the answer can't be read: ask again by id
        log.error("unreadable answer to order %s (%s); looking it up", client_order_id, exc)
        existing = find_order_by_client_id(client_order_id)
        if existing is None:
            raise
        return existing


def submit_bracket(
    *,
    symbol: str,
    qty: Decimal,
    side: str,
    stop_loss: Decimal,
    take_profit: Decimal,
    entry_price: Decimal | None,
    time_in_force: str,
    client_order_id: str,
) -> BrokerOrder:
    """Send entry + stop + target as ONE order with order_class=bracket. Prices already rounded."""
    common = dict(
        symbol=symbol,
        qty=qty,
        side=_side(side),
        time_in_force=_tif(time_in_force),
        order_class=OrderClass.BRACKET,
        stop_loss=StopLossRequest(stop_price=stop_loss),
        take_profit=TakeProfitRequest(limit_price=take_profit),
        client_order_id=client_order_id,
    )
    if entry_price is None:
        request = MarketOrderRequest(**common)
    else:
        request = LimitOrderRequest(limit_price=entry_price, **common)
    return _submit(request, client_order_id, Priority.ROUTINE)  # new risk waits behind exits and protection


def submit_oco_exit(
    *, symbol: str, qty: Decimal, side: str, stop_loss: Decimal, take_profit: Decimal, time_in_force: str,
    client_order_id: str,
) -> BrokerOrder:
    """Protect a position already held: a take-profit limit with a stop, one cancelling the other."""
    request = LimitOrderRequest(
        symbol=symbol,
        qty=qty,
        side=_side(side),
        time_in_force=_tif(time_in_force),
        order_class=OrderClass.OCO,
        limit_price=take_profit,
        stop_loss=StopLossRequest(stop_price=stop_loss),
        take_profit=TakeProfitRequest(limit_price=take_profit),
        client_order_id=client_order_id,
    )
    return _submit(request, client_order_id, Priority.PROTECT)


def submit_market(*, symbol: str, qty: Decimal, side: str, client_order_id: str) -> BrokerOrder:
    """A plain market order (exits). Day orders: Alpaca takes fractional market orders only as day."""
    request = MarketOrderRequest(
        symbol=symbol, qty=qty, side=_side(side), time_in_force=TimeInForce.DAY, client_order_id=client_order_id
    )
    return _submit(request, client_order_id, Priority.EXIT)


def get_order(order_id: str) -> BrokerOrder:
    raw = _call("get order", _trading().get_order_by_id, order_id, GetOrderByIdRequest(nested=True))
    return parse_order(raw)


def find_order_by_client_id(client_order_id: str) -> BrokerOrder | None:
    try:
        raw = _call("find order", _trading().get_order_by_client_id, client_order_id)
    except BrokerError as exc:
        if exc.status == 404:
            return None
        raise
    return parse_order(raw)


def list_orders(*, status: str = "open", symbols: Iterable[str] | None = None, limit: int = 500,
                nested: bool = True, until: datetime | None = None, after: datetime | None = None) -> list[BrokerOrder]:
    """Orders (newest first; `after`: submitted after then), legs nested unless `nested=False`
    (then each leg is listed as an order of its own). An order that can't be read is logged and
    left out, so one odd order can't hide the others."""
    request = GetOrdersRequest(status=QueryOrderStatus(status), limit=limit, nested=nested,
                               symbols=list(symbols) if symbols else None, until=until, after=after)
    raws = _call("list orders", _trading().get_orders, request)
    if not isinstance(raws, list):
        raise BrokerDataError("list orders: broker answered with something other than a list")
    orders = []
    for raw in raws:
        try:
            orders.append(parse_order(raw))
        except BrokerDataError as exc:
            log.error("broker order skipped: %s", exc)
    return orders


def list_live_orders_flat(*, page: int = 500, max_pages: int = 100) -> list[BrokerOrder]:
    """Every order the broker may still act on, legs included as orders of their own: one
    request per `page` orders, walking back by submission time."""
    found: dict[str, BrokerOrder] = {}
    until = None
    for _ in range(max_pages):
        batch = list_orders(status="open", nested=False, limit=page, until=until)
        fresh = [order for order in batch if order.id not in found]
        found.update((order.id, order) for order in fresh)
        oldest = min((order.submitted_at for order in batch if order.submitted_at), default=None)
        if len(batch) < page or not fresh or oldest is None:
            break
        until = oldest
    return list(found.values())


def list_orders_open_and_recent(*, symbols: Iterable[str] | None = None, limit: int = 500) -> list[BrokerOrder]:
    """The open top-level orders and the newest orders of any status, each once. Asked twice
    because, nested, the live legs of a bracket whose entry has FILLED come under a parent
    that is no longer "open": Alpaca leaves them out of status=open."""
    tops: dict[str, BrokerOrder] = {}
    for status in ("open", "all"):
        for order in list_orders(status=status, symbols=symbols, limit=limit):
            tops[order.id] = order
    return list(tops.values())


def live_orders() -> list[BrokerOrder]:
    """Every order the broker may still act on, legs included, as one flat list."""
    return [order for top in list_orders_open_and_recent() for order in (top, *top.legs) if not order.is_final]


def cancel_order(order_id: str) -> bool:
    """Cancel one order. False when it was already final (filled, cancelled...)."""
    try:
        _call("cancel order", _trading().cancel_order_by_id, order_id, least=Priority.EXIT)
    except BrokerError as exc:
        if exc.status in (404, 422):
            return False
        raise
    return True


@dataclass(frozen=True)
class CancelResult:
    id: str
    status: int  # the HTTP status of this order's cancel request (200: cancel requested)
    order: BrokerOrder | None  # the order as the broker showed it, when its answer carried it


def cancel_all_orders() -> list[CancelResult]:
    """Cancel every open order of the account in ONE request (DELETE /v2/orders, answered 207:
    one entry per order). Cancelling is asynchronous at Alpaca: read the orders back to know
    how each ended."""
    raws = _call("cancel all orders", _trading().cancel_orders, least=Priority.EXIT)
    if not isinstance(raws, list):
        raise BrokerDataError("cancel all orders: broker answered with something other than a list")
    results = []
    for raw in raws:
        if not isinstance(raw, dict) or not isinstance(raw.get("id"), str):
            log.error("cancel all orders: unreadable entry skipped")
            continue
        try:
            order = parse_order(raw["body"]) if isinstance(raw.get("body"), dict) else None
        except BrokerDataError as exc:
            log.error("cancel all orders: order %s unreadable (%s)", raw["id"], exc)
            order = None
        results.append(CancelResult(raw["id"], raw.get("status") if isinstance(raw.get("status"), int) else 0, order))
    return results


# --- Positions, prices, clock ------------------------------------------------------------


def list_positions() -> list[BrokerPosition]:
    raws = _call("list positions", _trading().get_all_positions)
    if not isinstance(raws, list):
        raise BrokerDataError("list positions: broker answered with something other than a list")
    return [_parse_position(raw) for raw in raws]


def get_position(symbol: str) -> BrokerPosition | None:
    """The broker's position in `symbol`, or None when it holds none (flat)."""
    try:
        raw = _call("get position", _trading().get_open_position, symbol)
    except BrokerError as exc:
        if exc.status == 404:
            return None
        raise
    return _parse_position(raw)


def _batches(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def latest_quotes(symbols: Iterable[str]) -> dict[str, Quote]:
    """Latest quotes, one request per batch of symbols. Symbols without a quote are absent."""
    wanted = sorted(set(symbols))
    quotes: dict[str, Quote] = {}
    for batch in _batches(wanted, settings.BROKER_QUOTE_BATCH_SIZE):
        request = StockLatestQuoteRequest(symbol_or_symbols=batch, feed=DataFeed(settings.ALPACA_DATA_FEED))
        raws = _call("latest quotes", _data().get_stock_latest_quote, request, least=None)  # Alpaca limits data apart
        if not isinstance(raws, dict):
            raise BrokerDataError("latest quotes: broker answered with something other than an object")
        for symbol, raw in raws.items():
            try:
                quotes[symbol] = _parse_quote(symbol, raw)
            except BrokerDataError as exc:
                log.error("quote skipped: %s", exc)
    return quotes


def latest_quote(symbol: str) -> Quote | None:
    """The symbol's latest quote with both a bid and an ask, not crossed; else None."""
    quote = latest_quotes([symbol]).get(symbol)
    if quote is None or quote.crossed or quote.bid is None or quote.ask is None:
        return None
    return quote


def clock() -> Clock:
    raw = _call("clock", _trading().get_clock)
    if not isinstance(raw, dict) or not isinstance(raw.get("is_open"), bool):
        raise BrokerDataError("clock: broker answer lacks is_open")
    return Clock(
        is_open=raw["is_open"],
        timestamp=_dt(raw.get("timestamp")),
        next_open=_dt(raw.get("next_open")),
        next_close=_dt(raw.get("next_close")),
    )


PORTFOLIO_PERIODS = ("1D", "1W", "1M", "3M", "6M", "1A")
PORTFOLIO_TIMEFRAMES = ("1Min", "5Min", "15Min", "1H", "1D")


def _epoch(value, name: str) -> datetime:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BrokerDataError(f"portfolio history has {name}={value!r}, not a Unix time")
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        raise BrokerDataError(f"portfolio history has {name}={value!r}, out of range") from None


def portfolio_history(*, period: str = "1M", timeframe: str = "1D") -> PortfolioHistory:
    """The account's equity over `period` at `timeframe` (GET /v2/account/portfolio/history).
    Points without an equity (days with no data) are left out; lists of unequal length or
    values that are not numbers are a BrokerDataError."""
    if period not in PORTFOLIO_PERIODS or timeframe not in PORTFOLIO_TIMEFRAMES:
        raise ValueError(f"period must be one of {PORTFOLIO_PERIODS} and timeframe one of {PORTFOLIO_TIMEFRAMES}")
    request = GetPortfolioHistoryRequest(period=period, timeframe=timeframe)
    raw = _call("portfolio history", _trading().get_portfolio_history, request)
    if not isinstance(raw, dict):
        raise BrokerDataError("portfolio history: broker answered with something other than an object")
    times = raw.get("timestamp") or []
    series = {name: raw.get(name) or [None] * len(times) for name in ("equity", "profit_loss", "profit_loss_pct")}
    if not isinstance(times, list) or any(not isinstance(v, list) or len(v) != len(times) for v in series.values()):
        raise BrokerDataError("portfolio history: timestamp, equity and profit_loss are not lists of one length")
    points = []
    for i, stamp in enumerate(times):
        equity = _dec(series["equity"][i], "equity")
        if equity is None:
            continue
        points.append(EquityPoint(time=_epoch(stamp, "timestamp"), equity=equity,
                                  profit_loss=_dec(series["profit_loss"][i], "profit_loss"),
                                  profit_loss_pct=_dec(series["profit_loss_pct"][i], "profit_loss_pct")))
    return PortfolioHistory(timeframe=str(raw.get("timeframe") or timeframe),
                            base_value=_dec(raw.get("base_value"), "base_value"), points=tuple(points))


# --- The trade_updates stream ----------------------------------------------------------------


@dataclass(frozen=True)
class TradeUpdate:
    """One trade_updates event. `event` is whatever the broker named it (unknown names too)."""

    event: str
    execution_id: str
    order: BrokerOrder | None
    at: datetime | None
    price: Decimal | None
    qty: Decimal | None
    raw: dict = field(default_factory=dict, compare=False, repr=False)


def parse_trade_update(message) -> TradeUpdate:
    """A raw trade_updates message ({"stream": "trade_updates", "data": {...}}) as plain values."""
    data = message.get("data") if isinstance(message, dict) else None
    if not isinstance(data, dict):
        raise BrokerDataError("trade update without data")
    event = data.get("event")
    if not isinstance(event, str) or not event:
        raise BrokerDataError("trade update without an event name")
    order = parse_order(data["order"]) if isinstance(data.get("order"), dict) else None
    execution_id = data.get("execution_id")
    return TradeUpdate(
        event=event[:32],
        execution_id=execution_id if isinstance(execution_id, str) else "",
        order=order,
        at=_dt(data.get("timestamp")) or (order.updated_at if order else None),
        price=_dec(data.get("price"), "price"),
        qty=_dec(data.get("qty"), "qty"),
        raw=scrub_data(data),
    )


class _TradeUpdatesStream(TradingStream):
    """alpaca-py's TradingStream, noting which connection the broker confirmed listening on:
    alpaca-py counts a connection as running once it has *sent* the listen, and events the
    broker sends before it has read it are never sent again. Only a confirmed connection
    counts as connected (and is caught up on), so nothing falls in between."""

    listening_on = None  # the websocket whose listen the broker confirmed

    async def _dispatch(self, msg: dict) -> None:
        if msg.get("stream") == "listening" and "trade_updates" in ((msg.get("data") or {}).get("streams") or []):
            self.listening_on = self._ws
        await super()._dispatch(msg)


def trade_updates_stream(handler: Callable[[dict], Awaitable[None]], *, ping_seconds: float) -> TradingStream:
    """alpaca-py's TradingStream on trade_updates, handing each raw message to `handler` (a
    coroutine function). Websocket pings every `ping_seconds`: a connection that stops
    answering them (a silent broker) is closed and reconnected with alpaca-py's backoff."""
    key, secret = _credentials()
    stream = _TradeUpdatesStream(key, secret, paper=settings.ALPACA_PAPER, raw_data=True,
                           url_override=settings.ALPACA_TRADING_STREAM_URL or None,
                           websocket_params={"ping_interval": ping_seconds, "ping_timeout": ping_seconds,
                                             "max_queue": 1024, "open_timeout": ping_seconds})
    stream.subscribe_trade_updates(handler)  # before it runs: only records the handler
    return stream


async def stream_run(stream) -> None:
    """Drive an alpaca-py stream in the caller's event loop: its run() calls asyncio.run,
    which can't share a loop, so its coroutine is awaited here. Returns once stopped."""
    await stream._run_forever()


async def stream_stop(stream) -> None:
    await stream.stop_ws()


def stream_connection(stream) -> int | None:
    """An id of the stream's open, authenticated connection (for trade_updates: once the broker
    confirmed the listen), None while it has none. A new id means it reconnected (and may have
    missed events meanwhile)."""
    ws = getattr(stream, "_ws", None)
    connected = getattr(stream, "_running", False) and ws is not None and not getattr(ws, "closed", True)
    if isinstance(stream, _TradeUpdatesStream):
        connected = connected and stream.listening_on is ws
    return id(ws) if connected else None


# --- The quote stream (market data) ------------------------------------------------------------


@dataclass(frozen=True)
class StreamNotice:
    """A control message of the market-data stream, which alpaca-py 0.44's `_dispatch` only
    logs: a subscription answer (`accepted`: the quote symbols the broker now streams) or an
    error (`code`: 405 symbol limit, 406 connection limit, 409 insufficient subscription...)."""

    kind: str  # "subscription" or "error"
    accepted: tuple[str, ...] = ()
    code: int | None = None
    message: str = ""


def parse_stream_notice(message) -> StreamNotice | None:
    """A subscription or error message as a StreamNotice; None for anything else (a quote)."""
    if not isinstance(message, dict) or message.get("T") not in ("subscription", "error"):
        return None
    if message["T"] == "subscription":
        quotes = message.get("quotes") if isinstance(message.get("quotes"), list) else []
        return StreamNotice(kind="subscription", accepted=tuple(s for s in quotes if isinstance(s, str)))
    code = message.get("code")
    return StreamNotice(kind="error", code=code if isinstance(code, int) and not isinstance(code, bool) else None,
                        message=scrub(str(message.get("msg", "")))[:200])


def parse_stream_quote(message) -> Quote:
    """A streamed quote ({"T": "q", "S", "bp", "ap", "t"}) as a Quote, read as the REST quotes
    are (a 0 bid or ask is none). alpaca-py's raw messages keep `t` as a msgpack Timestamp."""
    if not isinstance(message, dict) or message.get("T") != "q" or not isinstance(message.get("S"), str):
        raise BrokerDataError("not a quote message")
    stamp = message.get("t")
    if hasattr(stamp, "to_datetime"):  # msgpack.Timestamp
        stamp = stamp.to_datetime().isoformat()
    elif isinstance(stamp, datetime):
        stamp = stamp.isoformat()
    return _parse_quote(message["S"], {**message, "t": stamp})


class _QuoteStream(StockDataStream):
    """alpaca-py's StockDataStream, with what 0.44 makes hard designed around:
    - control messages (subscription answers, errors) reach `handler` instead of only the log;
    - an auth refusal (406 connection limit, 409 insufficient subscription) reaches it too;
    - `_run_forever` spins a core until something is subscribed: it is only entered once
      there is a symbol (waiting with a real sleep meanwhile);
    - `subscribe_quotes` from the stream's own loop blocks forever (it waits on a future of
      that same loop): `quotes_change` sends the message itself, from the loop."""

    def __init__(self, handler: Callable[[dict], Awaitable[None]], **kwargs):
        super().__init__(**kwargs)
        self._catalyst_handler = handler

    async def _dispatch(self, msg: dict) -> None:
        if isinstance(msg, dict) and msg.get("T") in ("subscription", "error"):
            await self._catalyst_handler(msg)
            return
        await super()._dispatch(msg)

    async def _auth(self) -> None:
        try:
            await super()._auth()
        except ValueError as exc:  # alpaca-py turns the error message into this; it reconnects (or stops on 409)
            text = str(exc)
            code = next((c for c, words in ((406, "connection limit"), (409, "insufficient subscription"),
                                            (402, "auth failed")) if words in text), None)
            await self._catalyst_handler({"T": "error", "code": code, "msg": text})
            raise

    async def _run_forever(self) -> None:
        while not self._handlers["quotes"]:
            if not self._stop_stream_queue.empty():
                self._stop_stream_queue.get_nowait()
                return
            await asyncio.sleep(0.1)
        await super()._run_forever()


def quote_stream(handler: Callable[[dict], Awaitable[None]], *, ping_seconds: float) -> StockDataStream:
    """alpaca-py's StockDataStream for quotes at ALPACA_DATA_STREAM_URL (or Alpaca's, for the
    ALPACA_DATA_FEED), handing `handler` each raw quote and control message (parse them with
    `parse_stream_quote` / `parse_stream_notice`). Nothing is subscribed: `quotes_change`."""
    key, secret = _credentials()
    feed = DataFeed.SIP if settings.ALPACA_DATA_FEED == "sip" else DataFeed.IEX
    return _QuoteStream(handler, api_key=key, secret_key=secret, raw_data=True, feed=feed,
                        url_override=settings.ALPACA_DATA_STREAM_URL or None,
                        websocket_params={"ping_interval": ping_seconds, "ping_timeout": ping_seconds,
                                          "max_queue": 4096, "open_timeout": ping_seconds})


async def quotes_change(stream: StockDataStream, *, add: Iterable[str] = (), remove: Iterable[str] = ()) -> None:
    """Subscribe to / unsubscribe from quotes; call it in the stream's event loop. The symbols
    are recorded first (alpaca-py resubscribes all of them after a reconnection), then the
    messages are sent when connected. The broker's answer arrives as a notice."""
    add, remove = sorted(set(add)), sorted(set(remove))
    handlers = stream._handlers["quotes"]
    for symbol in add:
        handlers[symbol] = stream._catalyst_handler
    for symbol in remove:
        handlers.pop(symbol, None)
    ws = stream._ws
    if not stream._running or ws is None:
        return
    for action, symbols in (("unsubscribe", remove), ("subscribe", add)):
        if symbols:
            await ws.send(msgpack.packb({"action": action, "quotes": symbols}))


def quote_stream_symbols(stream: StockDataStream) -> set[str]:
    """The symbols the stream asks for (and asks for again after each reconnection)."""
    return set(stream._handlers["quotes"])
