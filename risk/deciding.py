"""Deciding on quotes: which watched positions a set of quotes triggers, and claiming and closing
those. One path for both deciders, the polling monitor (quotes it fetched) and the quote stream
(one quote as it arrives), so they apply the same rules (`risk.rules`) and race through the same
compare-and-set claim: exactly one exit, whoever sees the crossing first."""

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from trading.broker import Quote
from trading.models import Closer, Position, Side

from .claims import positions_claim
from .closing import claimed_close
from .finalize import CloseOutcome
from .journal import events_record, log_line
from .models import RiskEvent, RiskEventKind
from .rules import exit_price, quote_problem, trigger_reason


class DecidedOn(StrEnum):
    """What a decision was made on (a triggered event's `data["via"]`)."""

    POLL = "poll"  # the monitor's cycle fetched the quote
    STREAM = "stream"  # the quote stream delivered it


@dataclass(frozen=True)
class Trigger:
    position: Position
    reason: str
    quote: Quote
    price: Decimal


@dataclass
class Judgement:
    skipped: list[RiskEvent] = field(default_factory=list)  # not acted on: why, per position
    triggered: list[Trigger] = field(default_factory=list)


def positions_judge(*, positions: list[Position], quotes: dict[str, Quote], now: datetime,
                    max_age) -> Judgement:
    """Each position against its symbol's quote: skipped (no usable quote: crossed, zero,
    stale, missing) or triggered (its stop or target crossed at the price an exit trades at).
    No database, no broker: the caller records and acts."""
    judgement = Judgement()
    problems = {symbol: quote_problem(quote=quotes.get(symbol), now=now, max_age=max_age)
                for symbol in {p.symbol for p in positions}}
    for position in positions:
        quote = quotes.get(position.symbol)
        price = None if problems[position.symbol] else exit_price(quote=quote, side=position.side)
        if price is None:
            problem = problems[position.symbol] or f"no {'bid' if position.side == Side.LONG else 'ask'} to exit at"
            judgement.skipped.append(RiskEvent(
                kind=RiskEventKind.SKIPPED, position=position, symbol=position.symbol,
                price=quote.price if quote else None, quote_time=quote.time if quote else None,
                reason=problem, data=quote_data(quote)))
            continue
        reason = trigger_reason(side=position.side, price=price, stop_loss=position.stop_loss,
                                take_profit=position.take_profit)
        if reason:
            judgement.triggered.append(Trigger(position=position, reason=reason, quote=quote, price=price))
    return judgement


def quote_data(quote: Quote | None) -> dict:
    return {} if quote is None else {"bid": quote.bid, "ask": quote.ask}


def skips_record(*, skipped: list[RiskEvent], via: DecidedOn) -> None:
    """The quotes not acted on, in batched inserts, and one log line counting them by reason."""
    if not skipped:
        return
    by_reason: dict[str, int] = {}
    for event in skipped:
        event.data = {**event.data, "via": via}
        by_reason[event.reason] = by_reason.get(event.reason, 0) + 1
    RiskEvent.objects.bulk_create(skipped, batch_size=500)
    log_line({"event": "skipped", "count": len(skipped), "reasons": by_reason, "via": via})


def triggered_close(*, triggered: list[Trigger], owner: str, via: DecidedOn, wait: bool = True,
                    market_open: bool | None = None) -> tuple[int, list[CloseOutcome]]:
    """Claim the triggered positions (compare-and-set, one statement per symbol and close reason:
    a position another decider claimed first is left to it; deciders racing over many symbols
    share them out symbol by symbol), record why, and close the claimed ones; (claimed,
    outcomes). `wait`: await the exits' fills briefly (the monitor does; the stream must not
    hold up the next quote); `market_open`: what the broker's clock said when deciding."""
    groups: dict[tuple[str, str], list[Trigger]] = {}
    for trigger in triggered:
        groups.setdefault((trigger.position.symbol, trigger.reason), []).append(trigger)
    claimed, events = [], []
    for (_, reason), group in groups.items():
        won = set(positions_claim(position_ids=[t.position.pk for t in group], reason=reason, owner=owner,
                                  by=Closer.MONITOR))
        for trigger in group:
            if trigger.position.pk not in won:
                continue
            position, quote, price = trigger.position, trigger.quote, trigger.price
            claimed.append(position.pk)
            events.append(RiskEvent(
                kind=RiskEventKind.TRIGGERED, position=position, symbol=position.symbol, price=price,
                quote_time=quote.time, reason=reason, data=quote_data(quote) | {"price_used": price, "via": via},
                message=f"{'bid' if position.side == Side.LONG else 'ask'} {price} (bid {quote.bid} / ask {quote.ask}) "
                        f"vs stop {position.stop_loss} / target {position.take_profit} ({via})"))
    if events:
        events_record(events=events)
    return len(claimed), claimed_close(claimed, owner, wait=wait, market_open=market_open)
