"""What the monitor checks after each cycle's positions (`guards_step`, called by
risk.monitor.monitor_cycle):

1. re-protect the positions whose reduce finished in this cycle (risk.protection.reduced_protect);
2. the end-of-day flatten (risk.end_of_day);
3. the stop-loss guard: STOP_LOSS_GUARD_COUNT STOP_LOSS_HIT closes within STOP_LOSS_GUARD_MINUTES
   halt trading for STOP_LOSS_GUARD_COOLDOWN_MINUTES; back to ACTIVE only through the checklist,
   whose item fails until the cool-down is over;
4. the daily-loss kill switch: realised plus unrealised P&L since today's open (risk.daily) below
   -DAILY_LOSS_LIMIT halts trading (once a trading day), alerts, and with DAILY_LOSS_FLATTEN=true
   flattens everything (risk.flatten.flatten). Evaluated while the market is open (or always with
   MONITOR_MARKET_HOURS_ONLY=false), on the quotes the cycle fetched.

Both guards halt as "system", with the reason, a risk event and an alert.
"""

from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import IntegrityError
from django.utils import timezone

from trading import broker
from trading.broker import Clock, Quote
from trading.models import CloseReason, Position, PositionStatus, TradingMode
from trading.selectors import trading_state

from .alerts import alert_send
from .finalize import CloseOutcome
from .daily import held_positions, realised_pnl_since, session_open, unrealised_pnl
from .end_of_day import eod_candidates, end_of_day_flatten
from .flatten import flatten
from .journal import event_record
from .market import broker_clock
from .models import AlertKind, RiskEvent, RiskEventKind, TradingDay
from .protection import reduced_protect
from .trading_state import trading_state_set


def _halt(reason: str) -> None:
    if trading_state().mode != TradingMode.HALTED:
        trading_state_set(mode=TradingMode.HALTED, reason=reason)


def stop_loss_guard(*, now: datetime | None = None) -> RiskEvent | None:
    """Halt for a cool-down when enough stops were hit lately (closes after the last trip only)."""
    count = settings.STOP_LOSS_GUARD_COUNT
    if not count:
        return None
    now = now or timezone.now()
    minutes = settings.STOP_LOSS_GUARD_MINUTES
    since = now - timedelta(minutes=minutes)
    last = RiskEvent.objects.filter(kind=RiskEventKind.STOP_LOSS_GUARD).order_by("-created_at", "-id").first()
    if last is not None and last.created_at > since:
        since = last.created_at
    stops = list(Position.objects.filter(status=PositionStatus.CLOSED, close_reason=CloseReason.STOP_LOSS_HIT,
                                         closed_at__gt=since).order_by("closed_at").values_list("pk", "symbol"))
    if len(stops) < count:
        return None
    until = now + timedelta(minutes=settings.STOP_LOSS_GUARD_COOLDOWN_MINUTES)
    names = ", ".join(f"#{pk} {symbol}" for pk, symbol in stops[:20])
    message = (f"stop-loss guard: {len(stops)} stop-loss closes within {minutes} min ({names}); trading halted, "
               f"cool-down until {until:%Y-%m-%d %H:%M %Z}, then resume through the checklist")
    _halt(message)
    event = event_record(kind=RiskEventKind.STOP_LOSS_GUARD, reason=CloseReason.STOP_LOSS_HIT, message=message,
                         data={"until": until, "positions": [pk for pk, _ in stops]})
    alert_send(kind=AlertKind.STOP_LOSS_GUARD, message=message)
    return event


def _trading_day(opened: datetime) -> TradingDay:
    try:
        return TradingDay.objects.get_or_create(session_open=opened)[0]
    except IntegrityError:  # created by a concurrent monitor
        return TradingDay.objects.get(session_open=opened)


def daily_loss_check(*, quotes: dict[str, Quote], now: datetime | None = None) -> list[CloseOutcome]:
    """Record today's P&L (TradingDay) and trip the kill switch when it is below -DAILY_LOSS_LIMIT
    (DAILY_LOSS_LIMIT=0: off, nothing evaluated)."""
    limit = Decimal(settings.DAILY_LOSS_LIMIT)
    if not limit:
        return []
    now = now or timezone.now()
    opened = session_open(now=now)
    holdings = [h for h in held_positions() if h.held > 0]
    missing = {h.position.symbol for h in holdings} - set(quotes)
    if missing:
        quotes = {**quotes, **broker.latest_quotes(missing)}
    realised = realised_pnl_since(opened)
    unrealised = unrealised_pnl(holdings, quotes)
    total = realised + unrealised.pnl
    day = _trading_day(opened)
    TradingDay.objects.filter(pk=day.pk).update(realised_pnl=realised, unrealised_pnl=unrealised.pnl,
                                                unpriced=len(unrealised.unpriced), loss_limit=limit,
                                                evaluated_at=timezone.now())
    if total >= -limit:
        return []
    # Compare-and-set: the kill switch trips once a trading day, however many monitors see it.
    if not TradingDay.objects.filter(pk=day.pk, tripped_at__isnull=True).update(tripped_at=timezone.now(),
                                                                                tripped_pnl=total):
        return []
    message = (f"daily-loss kill switch: P&L {total:,.2f} since the open at {opened:%Y-%m-%d %H:%M %Z} (realised "
               f"{realised:,.2f}, unrealised {unrealised.pnl:,.2f}"
               + (f", without a quote: {', '.join(unrealised.unpriced)}" if unrealised.unpriced else "")
               + f") is below -{limit:,.2f}: trading halted"
               + (", flattening everything" if settings.DAILY_LOSS_FLATTEN else ""))
    _halt(message)
    event_record(kind=RiskEventKind.KILL_SWITCH, reason="daily loss limit", message=message,
                 data={"pnl": total, "realised": realised, "unrealised": unrealised.pnl, "limit": limit,
                       "session_open": opened, "flatten": settings.DAILY_LOSS_FLATTEN})
    alert_send(kind=AlertKind.DAILY_LOSS, message=message)
    if not settings.DAILY_LOSS_FLATTEN:
        return []
    result = flatten(user=None)
    TradingDay.objects.filter(pk=day.pk).update(flattened=True)
    return result.outcomes


def guards_step(*, clock: Clock | None, clock_failed: bool, quotes: dict[str, Quote], outcomes: list[CloseOutcome],
                owner: str) -> list[CloseOutcome]:
    """The monitor's step after checking positions; returns the closes it started.

    `clock` is the one the cycle read. None: its read failed (`clock_failed`, already recorded:
    what needs the clock waits for the next cycle), or the cycle did not read it (nothing to
    check, or MONITOR_MARKET_HOURS_ONLY off: read here, and only when the kill switch is on or
    an intraday position is open)."""
    reduced_protect(outcomes=outcomes)
    stop_loss_guard()
    if clock is None:
        if clock_failed or not (settings.DAILY_LOSS_LIMIT or eod_candidates().exists()):
            return []
        clock = broker_clock()
    closes = end_of_day_flatten(clock=clock, owner=owner)
    if clock.is_open or not settings.MONITOR_MARKET_HOURS_ONLY:
        closes += daily_loss_check(quotes=quotes, now=clock.timestamp)
    return closes
