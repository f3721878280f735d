"""What the console's charts show: realised P&L per close reason over time, exits per day by
reason (one aggregate query), and the account's equity from the broker's portfolio history."""

from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal

from django.db.models import Count, Sum
from django.db.models.functions import TruncDate

from . import broker
from .broker import BrokerError
from .models import CloseReason, Position, PositionStatus
from .selectors import period_bounds

NO_REASON = "(none)"


@dataclass(frozen=True)
class ClosesByDay:
    days: list[date]  # every day of the period
    reasons: list[str]  # close reasons seen, in CloseReason order
    exits: dict[str, list[int]]  # per reason, per day: positions closed
    pnl: dict[str, list[Decimal]]  # per reason, per day: realised P&L (positions with an exit price)
    cumulative_pnl: dict[str, list[Decimal]]


def closes_by_day(*, start: date, end: date) -> ClosesByDay:
    """Closed positions per day and close reason within [start, end]. One aggregate query."""
    lower, upper = period_bounds(start=start, end=end)
    rows = (
        Position.objects.with_pnl()
        .filter(status=PositionStatus.CLOSED, closed_at__gte=lower, closed_at__lt=upper)
        .annotate(day=TruncDate("closed_at"))
        .values("day", "close_reason")
        .annotate(exits=Count("pk"), pnl=Sum("pnl"))
        .order_by("day", "close_reason")
    )
    days = [start + timedelta(days=i) for i in range((end - start).days + 1)]
    index = {day: i for i, day in enumerate(days)}
    exits: dict[str, list[int]] = {}
    pnl: dict[str, list[Decimal]] = {}
    for row in rows:
        reason = row["close_reason"] or NO_REASON
        exits.setdefault(reason, [0] * len(days))[index[row["day"]]] += row["exits"]
        pnl.setdefault(reason, [Decimal(0)] * len(days))[index[row["day"]]] += Decimal(row["pnl"] or 0)
    order = [*CloseReason.values, NO_REASON]
    reasons = sorted(exits, key=lambda r: order.index(r) if r in order else len(order))
    cumulative = {}
    for reason in reasons:
        running, series = Decimal(0), []
        for value in pnl[reason]:
            running += value
            series.append(running.quantize(Decimal("0.01")))
        cumulative[reason] = series
    return ClosesByDay(days=days, reasons=reasons, exits=exits,
                       pnl={r: [v.quantize(Decimal("0.01")) for v in pnl[r]] for r in reasons},
                       cumulative_pnl=cumulative)


@dataclass(frozen=True)
class EquityCurve:
    history: broker.PortfolioHistory | None
    error: str  # the broker could not give it: why


def equity_curve(*, period: str = "1M", timeframe: str = "1D") -> EquityCurve:
    """The account's equity (Alpaca's portfolio history); the broker's error instead of raising."""
    try:
        return EquityCurve(broker.portfolio_history(period=period, timeframe=timeframe), "")
    except BrokerError as exc:
        return EquityCurve(None, str(exc))
