"""Reads for the console (admin and API): plain functions returning querysets or values.

Every list here is built so that one page costs a fixed number of queries, however many
rows the tables hold: annotations and select_related, never per-row lookups.
"""

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal

from django.db.models import Count, Exists, OuterRef, Prefetch, Q, QuerySet, Sum
from django.utils import timezone

from .models import (
    Order,
    OrderRole,
    Position,
    PositionStatus,
    Protection,
    TradingMode,
    TradingStateChange,
)

CLOSE_REASON_DEFAULT_DAYS = 30


def positions_list(*, status: str | None = None, symbol: str | None = None) -> QuerySet[Position]:
    """Positions, newest first, with realised P&L annotated (`pnl`)."""
    queryset = Position.objects.with_pnl().order_by("-id")
    if status:
        queryset = queryset.filter(status=status)
    if symbol:
        queryset = queryset.filter(symbol=symbol.strip().upper())
    return queryset


def order_with_legs(*, order_id: int) -> Order:
    """One order with its legs and, for an exit, the positions' shares loaded (three queries).
    Raises Order.DoesNotExist."""
    legs = Prefetch("legs", queryset=Order.objects.order_by("id"))
    return Order.objects.prefetch_related(legs, "shares").get(pk=order_id)


def live_stop_exists() -> Exists:
    """Annotation: the position has a stop_loss-role order the broker may still act on."""
    return Exists(Order.objects.live().filter(position=OuterRef("pk"), role=OrderRole.STOP_LOSS))


def working_exit_exists() -> Exists:
    """Annotation: the position has a share of an exit of ours at the broker that may still fill."""
    return Exists(Order.objects.live().filter(shares__position=OuterRef("pk"), role=OrderRole.EXIT,
                                              broker_order_id__isnull=False))


def _unprotected() -> Q:
    """Over positions annotated with has_live_stop and has_working_exit: open and marked
    unprotected or without a live stop; or closing with neither a working exit nor a live
    stop (its legs were cancelled and the exit refused: the shares are naked)."""
    open_bare = Q(status=PositionStatus.OPEN) & (Q(protection=Protection.UNPROTECTED) | Q(has_live_stop=False))
    closing_bare = Q(status=PositionStatus.CLOSING, has_working_exit=False, has_live_stop=False)
    return open_bare | closing_bare


def _with_cover(queryset: QuerySet[Position]) -> QuerySet[Position]:
    return queryset.annotate(has_live_stop=live_stop_exists(), has_working_exit=working_exit_exists())


def positions_without_stop() -> QuerySet[Position]:
    """Positions whose shares nothing protects: see `_unprotected`."""
    return _with_cover(Position.objects.active()).filter(_unprotected()).order_by("id")


@dataclass(frozen=True)
class ProtectionSummary:
    """"Are we protected?" in numbers, for the top of every console screen."""

    open: int
    closing: int
    unprotected: int  # open and (marked unprotected or without a live stop), or closing with nothing working
    needs_review: int

    @property
    def protected(self) -> bool:
        return self.unprotected == 0


def protection_summary() -> ProtectionSummary:
    """One query: counts over open and closing positions."""
    row = (
        _with_cover(Position.objects.active())
        .aggregate(
            open=Count("pk", filter=Q(status=PositionStatus.OPEN)),
            closing=Count("pk", filter=Q(status=PositionStatus.CLOSING)),
            unprotected=Count("pk", filter=_unprotected()),
            needs_review=Count("pk", filter=Q(needs_review=True)),
        )
    )
    return ProtectionSummary(**{key: value or 0 for key, value in row.items()})


@dataclass(frozen=True)
class CloseReasonRow:
    close_reason: str
    label: str
    count: int
    priced: int  # closed with an exit price: the ones with a P&L
    total_pnl: Decimal
    average_pnl: Decimal | None  # over `priced`; None when none has a P&L


def period_bounds(*, start: date, end: date) -> tuple[datetime, datetime]:
    """[start 00:00, the day after end 00:00) in the current time zone: `end` is inclusive."""
    tz = timezone.get_current_timezone()
    return (
        datetime.combine(start, time.min, tzinfo=tz),
        datetime.combine(end + timedelta(days=1), time.min, tzinfo=tz),
    )


def default_period(*, today: date | None = None) -> tuple[date, date]:
    today = today or timezone.localdate()
    return today - timedelta(days=CLOSE_REASON_DEFAULT_DAYS), today


def close_reason_summary(*, start: date, end: date) -> list[CloseReasonRow]:
    """Closed positions per close_reason, closed within [start, end] (whole days): count,
    total and average realised P&L, the average over the positions that have one (closed
    without an exit price, a position has no P&L). One aggregate query."""
    lower, upper = period_bounds(start=start, end=end)
    rows = (
        Position.objects.with_pnl()
        .filter(status=PositionStatus.CLOSED, closed_at__gte=lower, closed_at__lt=upper)
        .values("close_reason")
        # the average is total / priced: P&L worked out once a row
        .annotate(count=Count("pk"), priced=Count("exit_price"), total_pnl=Sum("pnl"))
        .order_by("close_reason")
    )
    labels = dict(Position._meta.get_field("close_reason").choices)
    cent = Decimal("0.01")
    result = []
    for row in rows:
        reason = row["close_reason"] or ""
        total = Decimal(row["total_pnl"] or 0)
        average = (total / row["priced"]).quantize(cent) if row["priced"] else None
        result.append(
            CloseReasonRow(
                close_reason=reason,
                label=labels.get(reason, reason or "(none)"),
                count=row["count"],
                priced=row["priced"],
                total_pnl=total.quantize(cent),
                average_pnl=average,
            )
        )
    return result


def positions_closed_by_reason() -> dict[str, int]:
    """How many positions were closed, per close_reason ("" for none). One aggregate query,
    read from the close-review index."""
    rows = (Position.objects.filter(status=PositionStatus.CLOSED).values("close_reason")
            .annotate(count=Count("pk")).order_by("close_reason"))
    return {row["close_reason"] or "": row["count"] for row in rows}


def trading_state() -> TradingStateChange:
    """The state in force. A fresh install starts HALTED: verify, then resume."""
    latest = TradingStateChange.objects.order_by("-changed_at", "-id").first()
    if latest is None:
        return TradingStateChange(
            mode=TradingMode.HALTED,
            reason="Initial state: verify a test bracket and the monitor, then resume.",
            changed_by_name="system",
        )
    return latest


def trading_state_history(*, limit: int = 50) -> list[TradingStateChange]:
    return list(TradingStateChange.objects.select_related("changed_by").order_by("-changed_at", "-id")[:limit])


def latest_test_entry() -> Order | None:
    """The newest test bracket's entry order (whether or not it opened a position)."""
    return (
        Order.objects.filter(role=OrderRole.ENTRY)
        .filter(Q(client_order_id__startswith="catalyst-test-") | Q(position__is_test=True))
        .select_related("position")
        .order_by("-created_at", "-id")
        .first()
    )
