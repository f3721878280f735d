"""Closing a claimed position from its real fills: the last step of every close path.

Also the outcome every close step reports (`CloseOutcome`, `CloseState`).
"""

from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

from django.utils import timezone

from trading.holdings import close_reason_from_fills, holding
from trading.models import Order, OrderRole, Position, PositionStatus

from .journal import event_record
from .models import RiskEventKind

ZERO = Decimal("0")


class CloseState(StrEnum):
    CLOSED = "closed"
    EXIT_PENDING = "exit_pending"
    WAITING = "waiting"  # nothing sent yet: orders still being cancelled, or shares not attributable
    ERROR = "error"
    SKIPPED = "skipped"  # not claimed: already closing or closed
    CANCELLED = "cancelled"  # an entry still working, cancelled: never a position
    LOCKED = "locked"  # another worker is stepping it
    REDUCED = "reduced"  # a reduce exited what it was asked to: the rest is open again, to be re-protected


@dataclass
class CloseOutcome:
    position: Position
    state: CloseState
    detail: str = ""


def position_finalize(position: Position, orders: list[Order], *, note: str = "") -> CloseOutcome:
    """Close a claimed position from its real fills: exit price = their weighted average."""
    h = holding(position, orders)
    fills = [o for o in h.fills if o.filled_avg_price is not None]
    update = dict(status=PositionStatus.CLOSED, close_reason=close_reason_from_fills(fills, default=position.close_reason),
                  lock_owner="", locked_until=None, updated_at=timezone.now())
    if fills:
        qty = sum((o.filled_qty for o in fills), ZERO)
        update["exit_price"] = (sum((o.filled_qty * o.filled_avg_price for o in fills), ZERO) / qty).quantize(
            Decimal("0.0001"))
        update["closed_at"] = max((o.filled_at for o in fills if o.filled_at), default=timezone.now())
    elif h.entry_qty <= 0:  # nothing ever filled: it was never a position, whatever it was claimed for
        update.update(status=PositionStatus.CANCELLED, close_reason=None, closed_at=timezone.now())
        note = note or "entry never filled"
    else:
        update["closed_at"] = timezone.now()
        update["needs_review"] = True
        note = note or "the broker holds nothing and no fill of ours closed it"
    if h.entry_qty > 0 and h.entry_qty != position.quantity:
        update["quantity"] = h.entry_qty
    if note:
        update["review_note"] = note
    entry = next((o for o in orders if o.role == OrderRole.ENTRY and o.filled_avg_price), None)
    if entry is not None:
        update["entry_price"] = entry.filled_avg_price
    finalized = Position.objects.filter(pk=position.pk, status=PositionStatus.CLOSING).update(**update)
    position.refresh_from_db()
    if not finalized:  # another path (the stream, a cycle) closed it a moment ago: recorded there
        return CloseOutcome(position, CloseState.CLOSED if position.status == PositionStatus.CLOSED
                            else CloseState.SKIPPED, "closed elsewhere")
    event_record(kind=RiskEventKind.CLOSED, position=position, price=position.exit_price,
                 reason=position.close_reason or "", message=note or f"closed at {position.exit_price}",
                 data={"pnl": position.realised_pnl})
    return CloseOutcome(position, CloseState.CLOSED, note)
