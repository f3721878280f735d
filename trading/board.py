"""The live positions board: every open or closing position against the latest quote, with
its distances to the stop and the target ($, %, R) and unrealised P&L, and totals per symbol
and overall.

One query for the positions, one batched market-data request for all their symbols per
refresh, and that only for quotes not in the cache: quotes are kept BOARD_QUOTE_CACHE_SECONDS
in the shared cache, so several operators watching the board don't multiply requests.
"""

import logging
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.core.cache import cache
from django.utils import timezone

from . import broker
from .broker import BrokerError, Quote
from .models import Position, PositionStatus, Protection, Side
from .selectors import live_stop_exists

log = logging.getLogger(__name__)

MAX_ROWS = 500  # the positions nearest their stop; the totals count every one
CENT = Decimal("0.01")
_NO_QUOTE = "none"  # cached too: a symbol without a quote is not asked for on every refresh
_CACHE_PREFIX = "board:quote:"


@dataclass(frozen=True)
class Distance:
    """How far the price may move before it reaches a level: $ per share, % of the price, and
    R (multiples of the initial risk |entry - stop|). Negative: the level is crossed."""

    dollars: Decimal
    percent: Decimal
    r: Decimal | None


@dataclass(frozen=True)
class BoardRow:
    position: Position  # annotated has_live_stop
    price: Decimal | None
    quote_time: datetime | None
    to_stop: Distance | None
    to_target: Distance | None
    unrealised_pnl: Decimal | None

    @property
    def protected(self) -> bool:
        return self.position.protection != Protection.UNPROTECTED and bool(self.position.has_live_stop)


@dataclass(frozen=True)
class SymbolTotal:
    symbol: str
    positions: int
    net_quantity: Decimal  # long minus short
    price: Decimal | None
    unrealised_pnl: Decimal | None  # None: no price
    unprotected: int


@dataclass(frozen=True)
class Board:
    rows: list[BoardRow]  # nearest their stop first, at most MAX_ROWS
    symbols: list[SymbolTotal]
    positions: int
    unprotected: int
    unrealised_pnl: Decimal  # over the positions with a price
    unpriced: int  # positions without a usable quote
    quotes_error: str  # the broker failed: no prices this time
    built_at: datetime


def board_quotes(symbols: set[str]) -> tuple[dict[str, Quote], str]:
    """Latest quotes for `symbols`, from the cache or one batched broker request for the rest.
    Returns the quotes and "" or the broker's error (then the cached ones only)."""
    keys = {symbol: f"{_CACHE_PREFIX}{symbol}" for symbol in symbols}
    cached = cache.get_many(keys.values())
    quotes = {s: cached[k] for s, k in keys.items() if k in cached and cached[k] != _NO_QUOTE}
    missing = sorted(s for s, k in keys.items() if k not in cached)
    if not missing:
        return quotes, ""
    try:
        fetched = broker.latest_quotes(missing)
    except BrokerError as exc:
        log.warning("board: quotes not fetched: %s", exc)
        return quotes, str(exc)
    cache.set_many({keys[s]: fetched.get(s, _NO_QUOTE) for s in missing}, timeout=settings.BOARD_QUOTE_CACHE_SECONDS)
    quotes.update(fetched)
    return quotes, ""


def _distance(room: Decimal, price: Decimal, risk: Decimal | None) -> Distance:
    return Distance(dollars=room.quantize(CENT), percent=(room / price * 100).quantize(CENT),
                    r=(room / risk).quantize(CENT) if risk else None)


def board_row(position: Position, quote: Quote | None) -> BoardRow:
    price = quote.price if quote is not None and not quote.crossed else None
    if price is None:
        return BoardRow(position, None, quote.time if quote else None, None, None, None)
    sign = 1 if position.side == Side.LONG else -1
    risk = abs(position.entry_price - position.stop_loss) if position.stop_loss is not None else None
    to_stop = _distance(sign * (price - position.stop_loss), price, risk) if position.stop_loss is not None else None
    to_target = (_distance(sign * (position.take_profit - price), price, risk)
                 if position.take_profit is not None else None)
    pnl = (sign * (price - position.entry_price) * position.quantity).quantize(CENT)
    return BoardRow(position, price.quantize(Decimal("0.0001")), quote.time, to_stop, to_target, pnl)


def _nearest_first(row: BoardRow) -> tuple:
    """Closest to its stop first (in R, else %), then positions without a price or a stop."""
    if row.to_stop is None:
        return (1, Decimal(0), row.position.pk)
    return (0, row.to_stop.r if row.to_stop.r is not None else row.to_stop.percent, row.position.pk)


def positions_board() -> Board:
    """The board, built now. One query, plus one quote request when the cache lacks quotes."""
    positions = list(
        Position.objects.active().annotate(has_live_stop=live_stop_exists())
        .only("id", "symbol", "side", "quantity", "entry_price", "stop_loss", "take_profit", "status", "protection",
              "protection_checked_at", "opened_at")
    )
    quotes, error = board_quotes({p.symbol for p in positions}) if positions else ({}, "")
    rows = [board_row(p, quotes.get(p.symbol)) for p in positions]
    by_symbol: dict[str, list[BoardRow]] = {}
    for row in rows:
        by_symbol.setdefault(row.position.symbol, []).append(row)
    symbols = []
    for symbol in sorted(by_symbol):
        group = by_symbol[symbol]
        priced = [r.unrealised_pnl for r in group if r.unrealised_pnl is not None]
        symbols.append(SymbolTotal(
            symbol=symbol, positions=len(group),
            net_quantity=sum((r.position.quantity if r.position.side == Side.LONG else -r.position.quantity
                              for r in group), Decimal(0)),
            price=group[0].price, unrealised_pnl=sum(priced, Decimal(0)) if priced else None,
            unprotected=sum(1 for r in group if r.position.status == PositionStatus.OPEN and not r.protected),
        ))
    rows.sort(key=_nearest_first)
    return Board(
        rows=rows[:MAX_ROWS], symbols=symbols, positions=len(rows),
        unprotected=sum(s.unprotected for s in symbols),
        unrealised_pnl=sum((r.unrealised_pnl for r in rows if r.unrealised_pnl is not None), Decimal(0)),
        unpriced=sum(1 for r in rows if r.price is None), quotes_error=error, built_at=timezone.now(),
    )
