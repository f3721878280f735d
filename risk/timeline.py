"""One position's story in one chronological list: its entry, legs, fills and exit, the risk
events and alerts about it, what operators did to it (the admin's LogEntry rows), and the
trading-state changes made while it was open. A fixed number of queries, whatever its size."""

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from django.contrib.admin.models import LogEntry
from django.contrib.contenttypes.models import ContentType
from django.utils import timezone

from trading.models import FINAL_ORDER_STATUSES, Order, OrderRole, OrderStatus, Position, TradingStateChange

from .models import Alert, RiskEvent

MAX_EVENTS = 300  # the newest risk events (a quiet position gathers a "skipped" one per stale quote)
MAX_OTHER = 100  # alerts, operator actions, trading-state changes


class Source(StrEnum):
    POSITION = "position"
    ORDER = "order"
    RISK_EVENT = "risk event"
    ALERT = "alert"
    OPERATOR = "operator"
    TRADING_STATE = "trading state"


@dataclass(frozen=True)
class TimelineEntry:
    at: datetime
    source: Source
    title: str
    detail: str = ""
    order_id: int | None = None  # a link to the order, for its source "order"
    seq: int = 0  # keeps entries of one instant in the order they happened


ROLE_NAMES = {OrderRole.ENTRY: "Entry", OrderRole.STOP_LOSS: "Stop-loss leg", OrderRole.TAKE_PROFIT: "Take-profit leg",
              OrderRole.EXIT: "Exit"}


def _price(order: Order) -> str:
    parts = [f"stop {order.stop_price}" if order.stop_price is not None else "",
             f"limit {order.limit_price}" if order.limit_price is not None else ""]
    return " ".join(p for p in parts if p)


def _order_entries(order: Order) -> list[TimelineEntry]:
    name = ROLE_NAMES.get(order.role, order.role)
    what = f"{order.side} {order.qty.normalize():f} {order.symbol} {order.type}"
    if order.order_class != "simple":
        what += f" ({order.order_class})"
    entries = [TimelineEntry(order.submitted_at or order.created_at, Source.ORDER, f"{name} sent",
                             f"{what} {_price(order)}".strip() + f" · {order.client_order_id}", order.pk, 1)]
    if order.filled_at and order.filled_qty:
        entries.append(TimelineEntry(order.filled_at, Source.ORDER, f"{name} filled",
                                     f"{order.filled_qty.normalize():f} @ {order.filled_avg_price}", order.pk, 2))
    if order.status in FINAL_ORDER_STATUSES and order.status != OrderStatus.FILLED:
        entries.append(TimelineEntry(order.updated_at or order.synced_at, Source.ORDER, f"{name} {order.status}",
                                     order.error[:300], order.pk, 3))
    return entries


def position_timeline(*, position: Position) -> list[TimelineEntry]:
    """Everything that happened to `position`, oldest first (times to the second). Six queries."""
    entries = [TimelineEntry(position.opened_at, Source.POSITION, "Position opened",
                             f"{position.side} {position.quantity.normalize():f} {position.symbol} at "
                             f"{position.entry_price}, stop {position.stop_loss or '-'}, target "
                             f"{position.take_profit or '-'}" + (" (adopted from the broker)" if position.adopted else ""))]
    for order in position.orders.order_by("id"):
        entries += _order_entries(order)
    for event in RiskEvent.objects.filter(position=position).order_by("-created_at", "-id")[:MAX_EVENTS]:
        detail = " · ".join(part for part in (
            event.reason, f"price {event.price}" if event.price is not None else "",
            f"quote {timezone.localtime(event.quote_time):%H:%M:%S}" if event.quote_time else "", event.message,
        ) if part)
        entries.append(TimelineEntry(event.created_at, Source.RISK_EVENT, event.get_kind_display(), detail, seq=4))
    for alert in Alert.objects.filter(position=position).order_by("-created_at", "-id")[:MAX_OTHER]:
        entries.append(TimelineEntry(alert.created_at, Source.ALERT, f"Alert: {alert.get_kind_display()}",
                                     alert.message, seq=5))
    content_type = ContentType.objects.get_for_model(Position)
    for entry in (LogEntry.objects.filter(content_type=content_type, object_id=str(position.pk))
                  .select_related("user").order_by("-action_time", "-id")[:MAX_OTHER]):
        who = entry.user.get_username() if entry.user else "someone"
        entries.append(TimelineEntry(entry.action_time, Source.OPERATOR, f"{who}: {entry.get_change_message()}",
                                     seq=6))
    until = position.closed_at or timezone.now()
    for change in (TradingStateChange.objects.filter(changed_at__gte=position.opened_at, changed_at__lte=until)
                   .order_by("-changed_at", "-id")[:MAX_OTHER]):
        entries.append(TimelineEntry(change.changed_at, Source.TRADING_STATE, f"Trading set to {change.mode}",
                                     f"by {change.changed_by_name}: {change.reason}", seq=0))
    if position.closed_at:
        pnl = position.realised_pnl
        entries.append(TimelineEntry(
            position.closed_at, Source.POSITION, "Position closed",
            f"{position.close_reason or 'no close reason'}"
            + (f" at {position.exit_price}, P&L {pnl:,.2f}" if pnl is not None else ", no exit price (needs review)")
            + (f", by {position.get_closed_by_display().lower()}" if position.closed_by else ""), seq=9))
    return sorted(entries, key=lambda e: (e.at, e.seq))
