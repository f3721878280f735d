"""Reads for the trading day: when it opened, what the account holds, its P&L, and the state of
the guards (kill switch, stop-loss cool-down) for the checklist and the console.

Today's open is the regular session's: 09:30 New York on the broker clock's date, or the day
before when the clock is earlier than that (the most recent 09:30 at or before it). Alpaca's
clock gives only the next open and close; every regular session opens at 09:30 (early closes
move the close only), and a weekend or holiday in between changes nothing, since nothing fills.
"""

from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db.models import Case, Count, DecimalField, ExpressionWrapper, F, Q, Sum, When
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from trading.broker import Quote
from trading.models import FINAL_ORDER_STATUSES, Order, OrderRole, Position, PositionStatus, Side

from .models import RiskEvent, RiskEventKind, TradingDay

MARKET_TIMEZONE = ZoneInfo("America/New_York")
REGULAR_OPEN = time(9, 30)
ZERO = Decimal("0")
CENT = Decimal("0.01")
_AMOUNT = DecimalField(max_digits=30, decimal_places=4)


def session_open(*, now: datetime | None = None) -> datetime:
    """The most recent regular-session open (09:30 New York) at or before `now`."""
    local = (now or timezone.now()).astimezone(MARKET_TIMEZONE)
    opened = datetime.combine(local.date(), REGULAR_OPEN, tzinfo=MARKET_TIMEZONE)
    if opened > local:
        opened = datetime.combine(local.date() - timedelta(days=1), REGULAR_OPEN, tzinfo=MARKET_TIMEZONE)
    return opened


# --- What the account holds ------------------------------------------------------------------------


@dataclass(frozen=True)
class Held:
    """An active position with what it holds by its orders (as trading.holdings counts it) and
    what its entry may still buy or sell."""

    position: Position
    held: Decimal
    working: Decimal  # entry quantity still working at the broker
    entry_client_order_id: str | None


def held_positions() -> list[Held]:
    """Every pending, open or closing position with what it holds (a pending one: nothing yet,
    its entry working): one query."""
    entry = Q(orders__role=OrderRole.ENTRY)
    rows = Position.objects.filter(status__in=[PositionStatus.PENDING, PositionStatus.OPEN, PositionStatus.CLOSING]).annotate(
        entry_client_order_id=F("entry_order__client_order_id"),
        entries=Count("orders", filter=entry),
        entry_filled=Sum("orders__filled_qty", filter=entry),
        closed=Sum("orders__filled_qty", filter=~entry),
        working=Sum(F("orders__qty") - F("orders__filled_qty"),
                    filter=entry & ~Q(orders__status__in=FINAL_ORDER_STATUSES)),
    ).order_by("pk")
    result = []
    for position in rows:
        bought = (position.entry_filled or ZERO) if position.entries else position.quantity
        result.append(Held(position, max(bought - (position.closed or ZERO), ZERO), position.working or ZERO,
                           position.entry_client_order_id))
    return result


# --- P&L -------------------------------------------------------------------------------------------


def realised_pnl_since(start: datetime) -> Decimal:
    """Realised P&L of every closing fill (legs, OCOs, exits, reduces) since `start`, against
    its position's entry price: one aggregate query."""
    per_fill = Case(
        When(position__side=Side.LONG, then=(F("filled_avg_price") - F("position__entry_price")) * F("filled_qty")),
        default=(F("position__entry_price") - F("filled_avg_price")) * F("filled_qty"),
    )
    total = (
        Order.objects.filter(position__isnull=False, filled_qty__gt=0, filled_avg_price__isnull=False,
                             filled_at__gte=start)
        .exclude(role=OrderRole.ENTRY)
        .aggregate(total=Sum(ExpressionWrapper(per_fill, output_field=_AMOUNT)))["total"]
    )
    return Decimal(total or 0).quantize(CENT)


@dataclass
class Unrealised:
    pnl: Decimal
    unpriced: list[str] = field(default_factory=list)  # symbols held without a usable quote


def mark(quote: Quote | None, side: str) -> Decimal | None:
    """What a position would get now: the bid for a long, the ask for a short."""
    if quote is None:
        return None
    return quote.bid if side == Side.LONG else quote.ask


def unrealised_pnl(holdings: list[Held], quotes: dict[str, Quote]) -> Unrealised:
    """Open P&L of what is held, at the bid (longs) or the ask (shorts) against the entry price.
    A position without a quote counts 0 and is named."""
    total, unpriced = ZERO, set()
    for item in holdings:
        if item.held <= 0:
            continue
        price = mark(quotes.get(item.position.symbol), item.position.side)
        if price is None:
            unpriced.add(item.position.symbol)
            continue
        diff = price - item.position.entry_price
        total += (diff if item.position.side == Side.LONG else -diff) * item.held
    return Unrealised(total.quantize(CENT), sorted(unpriced))


# --- The guards' state ---------------------------------------------------------------------------


def trading_day(*, now: datetime | None = None) -> TradingDay | None:
    """Today's row, as the monitor last evaluated it (None before its first evaluation today)."""
    return TradingDay.objects.filter(session_open=session_open(now=now)).first()


def stop_loss_cooldown_until(*, now: datetime | None = None) -> datetime | None:
    """When the stop-loss guard's cool-down ends, while one is in force."""
    now = now or timezone.now()
    event = RiskEvent.objects.filter(kind=RiskEventKind.STOP_LOSS_GUARD).order_by("-created_at", "-id").first()
    until = parse_datetime(str(event.data.get("until", ""))) if event else None
    return until if until is not None and until > now else None


@dataclass(frozen=True)
class GuardStatus:
    """For the console: today's P&L against the limit, the kill switch, the stop-loss cool-down."""

    day: TradingDay | None
    loss_limit: Decimal
    cooldown_until: datetime | None

    @property
    def tripped(self) -> bool:
        return self.day is not None and self.day.tripped_at is not None


def guard_status(*, now: datetime | None = None) -> GuardStatus:
    """Two queries, no broker call."""
    return GuardStatus(day=trading_day(now=now), loss_limit=settings.DAILY_LOSS_LIMIT,
                       cooldown_until=stop_loss_cooldown_until(now=now))
