"""Sub-second detection: the fallback monitor's decision made on each streamed quote.

`manage.py runquotes` runs a `QuoteWatch` in a `risk.streaming.StreamRunner` (lease
"stream:quotes", heartbeat "quotes"). Each quote is decided at once against an in-memory view
of the watched positions (reloaded every second, so no level is older than that) by the
monitor's own path (`risk.deciding`): the same rules, the same compare-and-set claim, the same
close. A quote the monitor would skip (crossed, zero, stale) is skipped and recorded here too;
STREAM_CONFIRM_QUOTES consecutive quotes beyond a level may be asked for before acting.

Alpaca's IEX plan streams STREAM_MAX_SYMBOLS (30) symbols on one connection: the symbols whose
positions are nearest a stop or target (in % of the price) are streamed, the rest polled by the
monitor. New symbols fill free room at once; swapping a streamed symbol for a nearer one is
re-ranked every STREAM_RERANK_SECONDS and only when the newcomer is clearly nearer
(HYSTERESIS), so prices wobbling around the cut cause no storm of resubscriptions. Alpaca's
answers are acted on: the accepted list is what counts as streamed; a 405 (symbol limit) lowers
the limit to what was accepted and drops the rest; 406/409 are recorded, and the stream is
stale (polled) until it connects.

The heartbeat says whether the monitor may leave these symbols to the stream: it beats to the
last quote while the market is open, so a stream that drops or goes silent for
STREAM_SILENCE_SECONDS turns stale, is alerted (risk.heartbeats), and the monitor polls every
symbol at its normal interval again from its next cycle.
"""

import logging
import math
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import Count, Max
from django.utils import timezone

from trading import broker
from trading.broker import BrokerDataError, BrokerError, Clock, Quote
from trading.models import WATCHED, Position

from .deciding import DecidedOn, positions_judge, skips_record, triggered_close
from .journal import event_record
from .market import market_clock
from .models import QUOTES, RiskEventKind, StreamedSymbol
from .streaming import StreamRunner

log = logging.getLogger("risk.quotes")

HYSTERESIS = Decimal("0.2")  # a symbol replaces a streamed one only when 20 % nearer its level than it
SKIP_RECORD_SECONDS = 5.0  # one skipped-quote record per symbol and problem in this long (all are counted)
CLOCK_RETRY_SECONDS = 15.0  # the clock unreadable: asked again after this long, meanwhile counted closed
BOOK_RELOAD_SECONDS = 30.0
ERROR_RECORD_SECONDS = 60.0


@dataclass
class SymbolStats:
    quotes: int = 0
    skipped: int = 0
    last_quote: Quote | None = None
    last_quote_at: datetime | None = None
    last_problem: str = ""
    recorded: tuple[str, float] = ("", -math.inf)  # the last skip recorded: (problem, time.monotonic())


@dataclass
class QuoteWatchState:
    requested: set[str] = field(default_factory=set)  # what the stream asks for (and re-asks after reconnecting)
    accepted: set[str] = field(default_factory=set)  # the broker's last subscription answer, on this connection
    rejected: dict[str, str] = field(default_factory=dict)  # symbol -> why the broker refused it
    limit: int = 0  # the subscription budget (0 = none); lowered by a 405
    connection: int | None = None
    connected_at: datetime | None = None
    last_quote_at: datetime | None = None  # any symbol's
    last_error: str = ""
    ranked_at: float = -math.inf
    distance: dict[str, Decimal | None] = field(default_factory=dict)


def distance_pct(*, price: Decimal | None, positions: list[Position]) -> Decimal | None:
    """How near the nearest stop or target of these positions the price is, in % of the price."""
    if price is None or price <= 0:
        return None
    levels = [lvl for p in positions for lvl in (p.stop_loss, p.take_profit) if lvl is not None]
    if not levels:
        return None
    return min(abs(price - level) for level in levels) / price * 100


class QuoteWatch:
    """Everything runs in the StreamRunner's one worker thread (`apply` for each message, `tick`
    once a second), so the state needs no lock."""

    def __init__(self, *, owner: str, max_symbols: int | None = None, confirm: int | None = None):
        self.owner = owner
        self.confirm = confirm or settings.STREAM_CONFIRM_QUOTES
        self.state = QuoteWatchState(limit=settings.STREAM_MAX_SYMBOLS if max_symbols is None else max_symbols)
        self.book: dict[str, list[Position]] = {}
        self.book_version: tuple = ()
        self.book_loaded = -math.inf  # time.monotonic()
        self.reader: ThreadPoolExecutor | None = None
        self.reading: Future | None = None
        self.symbols: dict[str, SymbolStats] = {}
        self.streaks: dict[int, tuple[str, int]] = {}  # position -> (reason, consecutive quotes beyond it)
        self.error_recorded: tuple[str, float] = ("", -math.inf)  # (error, time.monotonic())
        self.clock: Clock | None = None
        self.clock_failed = False
        self.clock_retry = -math.inf  # time.monotonic(): when to ask an unreadable clock again

    # -- each message --------------------------------------------------------------------

    def apply(self, message: dict) -> None:
        notice = broker.parse_stream_notice(message)
        if notice is not None:
            self._notice(notice)
            return
        try:
            quote = broker.parse_stream_quote(message)
        except BrokerDataError as exc:
            log.warning("quote not read: %s", exc)
            return
        self.quote_decide(quote=quote)

    def quote_decide(self, *, quote: Quote, streamed: bool = True) -> int:
        """Decide one quote against the watched positions of its symbol; how many were claimed.
        `streamed`: False for a snapshot read over REST (it says nothing of the stream's health)."""
        now = timezone.now()
        stats = self.symbols.setdefault(quote.symbol, SymbolStats())
        if streamed:
            self.state.last_quote_at = now
            stats.quotes += 1
            stats.last_quote, stats.last_quote_at = quote, now
        self._book_swap()
        positions = self.book.get(quote.symbol)
        if not positions:
            return 0
        if not self._market_open():
            return 0
        judgement = positions_judge(positions=positions, quotes={quote.symbol: quote}, now=now,
                                    max_age=timedelta(seconds=settings.MONITOR_QUOTE_MAX_AGE_SECONDS))
        if judgement.skipped:
            self._skipped(stats, judgement.skipped)
            return 0
        stats.last_problem = ""
        beyond = {t.position.pk: t for t in judgement.triggered}
        confirmed = []
        for position in positions:
            trigger = beyond.get(position.pk)
            if trigger is None:
                self.streaks.pop(position.pk, None)
                continue
            reason, count = self.streaks.get(position.pk, (trigger.reason, 0))
            count = count + 1 if reason == trigger.reason else 1
            self.streaks[position.pk] = (trigger.reason, count)
            if count >= self.confirm:
                confirmed.append(trigger)
        if not confirmed:
            return 0
        decided = {t.position.pk for t in confirmed}
        self.book[quote.symbol] = [p for p in positions if p.pk not in decided]  # claimed, or another's
        for pk in decided:
            self.streaks.pop(pk, None)
        try:
            claimed, _ = triggered_close(triggered=confirmed, owner=self.owner, via=DecidedOn.STREAM, wait=False,
                                         market_open=True)  # _market_open() said so
        finally:
            self.book_version = ()  # read the book again at the next tick, whatever came of it
        return claimed

    def _snapshot(self, symbols: set[str]) -> None:
        """Decide the latest quote of symbols just accepted, read after the broker accepted them:
        a stream sends only what changes from then on, and the monitor already leaves these
        symbols to the stream, so a crossing that happened just before would wait for the
        backstop poll."""
        wanted = {s for s in symbols if s in self.book}
        if not wanted:
            return
        try:
            quotes = broker.latest_quotes(wanted)
        except BrokerError as exc:
            log.warning("quote stream: no snapshot of %d new symbols (%s)", len(wanted), exc)
            return
        for quote in quotes.values():
            self.quote_decide(quote=quote, streamed=False)

    def _skipped(self, stats: SymbolStats, skipped: list) -> None:
        """Counted always; recorded once per symbol and problem every SKIP_RECORD_SECONDS (a feed
        sending crossed quotes many times a second must not flood the journal)."""
        problem = skipped[0].reason
        stats.skipped += 1
        stats.last_problem = problem
        last_problem, last_at = stats.recorded
        if problem == last_problem and time.monotonic() - last_at < SKIP_RECORD_SECONDS:
            return
        stats.recorded = (problem, time.monotonic())
        try:
            skips_record(skipped=skipped, via=DecidedOn.STREAM)
        except DatabaseError as exc:
            log.error("skipped quotes not recorded (%s): %s", type(exc).__name__, exc)

    def _notice(self, notice: broker.StreamNotice) -> None:
        state = self.state
        if notice.kind == "subscription":
            new = set(notice.accepted) - state.accepted
            state.accepted = set(notice.accepted)
            for symbol in state.accepted:
                state.rejected.pop(symbol, None)
            log.info("quote stream: %d symbols accepted", len(state.accepted))
            self._snapshot(new)
            return
        state.last_error = f"{notice.code} {notice.message}".strip()
        if notice.code == 405:  # symbol limit: only what was accepted is streamed; the rest is polled
            refused = state.requested - state.accepted
            state.limit = len(state.accepted)
            for symbol in refused:
                state.rejected[symbol] = state.last_error
        last_error, last_at = self.error_recorded
        if state.last_error == last_error and time.monotonic() - last_at < ERROR_RECORD_SECONDS:
            return  # a refusal repeated at each reconnection is recorded once a minute
        self.error_recorded = (state.last_error, time.monotonic())
        event_record(kind=RiskEventKind.ERROR, reason=f"quote stream: {state.last_error}"[:255],
                     message={405: "symbol limit: the symbols refused are polled",
                              406: "connection limit: polled until a connection is allowed",
                              409: "insufficient subscription: polled"}.get(notice.code, "broker error"))

    # -- once a second ---------------------------------------------------------------------

    def tick(self, stream, connection: int | None):
        """Reload the watched positions, follow the connection, re-plan the subscriptions, write
        the per-symbol health; returns the subscription change to send (a coroutine) or None."""
        state = self.state
        reconnected = connection is not None and connection != state.connection
        if connection != state.connection:  # its subscription answer may have come already: `accepted` stays
            state.connection = connection
            state.connected_at = timezone.now() if connection is not None else None
        self.book_load()
        if reconnected:  # quotes sent while it was away are never sent again
            self._snapshot(state.accepted)
        self._market_open()
        state.rejected = {symbol: why for symbol, why in state.rejected.items() if symbol in self.book}
        add, remove = self.plan()
        state.requested = (state.requested - remove) | add
        self.health_write()
        if add or remove:
            log.info("quote stream: +%s -%s", sorted(add), sorted(remove))
            return broker.quotes_change(stream, add=add, remove=remove)
        return None

    def book_load(self) -> None:
        """Take the watched positions read in the background (`book_read`), and start the next
        read: the reading (10,000 positions take a few hundred ms) never holds up a quote, which
        is decided on the book as last read. The first read is waited for."""
        self._book_swap()
        if self.reading is None:
            force = time.monotonic() - self.book_loaded >= BOOK_RELOAD_SECONDS
            self.reading = self._reader().submit(book_read, version=self.book_version, force=force)
            if self.book_loaded == -math.inf:
                wait([self.reading], timeout=30)
                self._book_swap()

    def _reader(self) -> ThreadPoolExecutor:
        if self.reader is None:
            self.reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="quotes-book")
        return self.reader

    def _book_swap(self) -> None:
        reading = self.reading
        if reading is None or not reading.done():
            return
        self.reading = None
        try:
            result = reading.result()
        except DatabaseError as exc:  # the next tick reads again
            log.error("quote stream: watched positions not read (%s): %s", type(exc).__name__, exc)
            return
        if result is None:
            return
        self.book_version, self.book = result
        self.book_loaded = time.monotonic()
        live = {p.pk for positions in self.book.values() for p in positions}
        self.streaks = {pk: streak for pk, streak in self.streaks.items() if pk in live}

    def close(self) -> None:
        """Stop the background reader (its thread closes its own connection after each read)."""
        if self.reader is not None:
            self.reader.shutdown(wait=True)
            self.reader = None

    def plan(self) -> tuple[set[str], set[str]]:
        """(symbols to subscribe, to unsubscribe): gone symbols leave; free room is filled at once
        (nearest first, as last ranked); swaps wait for the re-rank and need HYSTERESIS."""
        state = self.state
        watched = set(self.book)
        remove = (state.requested - watched) | (set(state.rejected) & state.requested)
        kept = state.requested - remove
        candidates = watched - kept - set(state.rejected)
        limit = state.limit or math.inf
        if candidates and (len(kept) + len(candidates) > limit) and \
                time.monotonic() - state.ranked_at >= settings.STREAM_RERANK_SECONDS:
            self.rank()
        nearest = sorted(candidates, key=self._distance_key)
        add = set()
        for symbol in nearest:
            if len(kept) + len(add) < limit:
                add.add(symbol)
                continue
            if not kept - remove:
                break
            worst = max(kept - remove, key=self._distance_key)
            near, far = state.distance.get(symbol), state.distance.get(worst)
            if near is not None and (far is None or near < far * (1 - HYSTERESIS)):
                remove.add(worst)
                add.add(symbol)
                kept = kept - {worst}
        return add, remove & state.requested

    def _distance_key(self, symbol: str) -> tuple[bool, Decimal]:
        distance = self.state.distance.get(symbol)
        return (distance is None, distance if distance is not None else Decimal(0))

    def rank(self) -> None:
        """Each watched symbol's distance to its nearest level, from the streamed quotes and, for
        the polled symbols, one batched read of the latest quotes."""
        state = self.state
        state.ranked_at = time.monotonic()
        prices = {s: stats.last_quote.price for s, stats in self.symbols.items()
                  if s in state.accepted and stats.last_quote is not None}
        missing = set(self.book) - set(prices)
        try:
            prices |= {s: q.price for s, q in broker.latest_quotes(missing).items()} if missing else {}
        except BrokerError as exc:
            log.warning("quote stream: not re-ranked (%s)", exc)
        state.distance = {s: distance_pct(price=prices.get(s), positions=positions) for s, positions in self.book.items()}

    def _market_open(self) -> bool:
        """Whether exits may go out: the broker's clock (`market_clock`, read again at its turns);
        unknown (unreadable) counts as closed here, asked again after CLOCK_RETRY_SECONDS, and
        the stream goes stale so the monitor decides meanwhile."""
        now = time.monotonic()
        if self.clock_failed and now < self.clock_retry:
            return False
        try:
            self.clock = market_clock()
            self.clock_failed = False
        except BrokerError as exc:
            log.warning("quote stream: clock unreadable (%s)", exc)
            self.clock_failed = True
            self.clock_retry = now + CLOCK_RETRY_SECONDS
            return False
        return self.clock is None or self.clock.is_open

    def beat_at(self, connection: int | None) -> datetime | None:
        """The heartbeat's time: now while there is nothing to stream or the market is closed;
        the last quote (or the connection's start) while it is open; None while disconnected
        or the clock is unknown. Stale after STREAM_SILENCE_SECONDS."""
        state = self.state
        if not state.requested:
            return timezone.now()
        if connection is None or self.clock_failed:
            return None
        if self.clock is not None and not self.clock.is_open:
            return timezone.now()
        return max((t for t in (state.connected_at, state.last_quote_at) if t is not None), default=None)

    def health_write(self) -> None:
        """One row per symbol asked for (upserted), none for the others."""
        state, now = self.state, timezone.now()
        rows = []
        for symbol in sorted(state.requested | set(state.rejected)):
            stats = self.symbols.get(symbol, SymbolStats())
            quote = stats.last_quote
            rows.append(StreamedSymbol(
                symbol=symbol, accepted=symbol in state.accepted, requested_at=now, last_quote_at=stats.last_quote_at,
                bid=quote.bid if quote else None, ask=quote.ask if quote else None,
                distance_pct=_rounded(state.distance.get(symbol)), quotes=stats.quotes, skipped=stats.skipped,
                last_problem=(state.rejected.get(symbol) or stats.last_problem)[:255], updated_at=now))
        with transaction.atomic():
            StreamedSymbol.objects.exclude(symbol__in=[r.symbol for r in rows]).delete()
            StreamedSymbol.objects.bulk_create(
                rows, update_conflicts=True, unique_fields=["symbol"],
                update_fields=["accepted", "last_quote_at", "bid", "ask", "distance_pct", "quotes", "skipped",
                               "last_problem", "updated_at"])


def book_read(*, version: tuple, force: bool) -> tuple[tuple, dict[str, list[Position]]] | None:
    """The watched positions by symbol, with their version: how many are watched and their
    latest `updated_at` (which every change of a position moves); None when the version is
    `version` (nothing changed) and not `force`. Runs in the reader thread, and closes its
    connection after each read."""
    try:
        watched = Position.objects.filter(WATCHED)
        now = tuple(watched.aggregate(n=Count("id"), at=Max("updated_at")).values())
        if now == version and not force:
            return None
        book: dict[str, list[Position]] = {}
        for position in watched.only("id", "symbol", "side", "stop_loss", "take_profit", "status"):
            book.setdefault(position.symbol, []).append(position)
        return now, book
    finally:
        connection.close()


def _rounded(value: Decimal | None) -> Decimal | None:
    return None if value is None else value.quantize(Decimal("0.0001"))


def quote_stream_runner(*, holder: str, max_symbols: int | None = None,
                        ping_seconds: float | None = None) -> tuple[StreamRunner, QuoteWatch]:
    """The quote stream's runner and its watch (`manage.py runquotes`, the tests, the benchmark)."""
    watch = QuoteWatch(owner=holder, max_symbols=max_symbols)
    runner = StreamRunner(
        name=QUOTES, holder=holder,
        make_stream=lambda handler: broker.quote_stream(handler,
                                                        ping_seconds=ping_seconds or settings.STREAM_PING_SECONDS),
        apply=watch.apply, on_tick=watch.tick, beat_at=watch.beat_at, on_stop=watch.close)
    return runner, watch
