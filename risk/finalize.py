"""Closing claimed positions from their real fills: the last step of every close path.

Also the outcome every close step reports (`CloseOutcome`, `CloseState`).
"""

from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

from django.utils import timezone

from trading.holdings import close_reason_from_fills, holding
from trading.models import OrderRole, Position, PositionStatus

from .journal import events_record
from .models import RiskEvent, RiskEventKind

ZERO = Decimal("0")


class CloseState(StrEnum):
    CLOSED = "closed"
    EXIT_PENDING = "exit_pending"
    WAITING = "waiting"  # nothing sent yet: orders still being cancelled, shares not attributable, budget spent
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


def _update(position: Position, orders: list, note: str, now) -> tuple[dict, str]:
    """What closing one position from its fills writes, and its note."""
    h = holding(position, orders)
    fills = [o for o in h.fills if o.filled_avg_price is not None]
    update = dict(status=PositionStatus.CLOSED, close_reason=close_reason_from_fills(fills, default=position.close_reason),
                  lock_owner="", locked_until=None, updated_at=now)
    if fills:
        qty = sum((o.filled_qty for o in fills), ZERO)
        update["exit_price"] = (sum((o.filled_qty * o.filled_avg_price for o in fills), ZERO) / qty).quantize(
            Decimal("0.0001"))
        update["closed_at"] = max((o.filled_at for o in fills if o.filled_at), default=now)
    elif h.entry_qty <= 0:  # nothing ever filled: it was never a position, whatever it was claimed for
        update.update(status=PositionStatus.CANCELLED, close_reason=None, closed_at=now)
        note = note or "entry never filled"
    else:
        update["closed_at"] = now
        update["needs_review"] = True
        note = note or "the broker holds nothing and no fill of ours closed it"
    if h.entry_qty > 0 and h.entry_qty != position.quantity:
        update["quantity"] = h.entry_qty
    if note:
        update["review_note"] = note
    entry = next((o for o in orders if o.role == OrderRole.ENTRY and o.filled_avg_price), None)
    if entry is not None:
        update["entry_price"] = entry.filled_avg_price
    return update, note


def positions_finalize(rows: list[tuple[Position, list]], *, note: str = "") -> list[CloseOutcome]:
    """Close claimed positions from their real fills (`rows`: each with its orders, or their
    views): exit price = their fills' weighted average. One UPDATE per set of equal values and
    one insert of events, however many positions. A position another path (the stream, a
    cycle) closed a moment ago is left as it is and recorded there."""
    now = timezone.now()
    groups: dict[tuple, list[int]] = {}
    notes: dict[int, str] = {}
    events = []
    for position, orders in rows:
        update, notes[position.pk] = _update(position, orders, note, now)
        groups.setdefault(tuple(sorted(update.items())), []).append(position.pk)
        events += [RiskEvent(kind=RiskEventKind.EXIT_FILLED, position=position, symbol=position.symbol,
                             price=o.filled_avg_price, message=f"{o.filled_qty} @ {o.filled_avg_price}",
                             data={"order": o.broker_order_id})
                   for o in holding(position, orders).fills if o.role == OrderRole.EXIT and o.filled_avg_price]
    finalized = set()
    for update, pks in groups.items():
        closing = list(Position.objects.filter(pk__in=pks, status=PositionStatus.CLOSING).values_list("pk", flat=True))
        Position.objects.filter(pk__in=closing, status=PositionStatus.CLOSING).update(**dict(update))
        finalized.update(closing)
    closed = Position.objects.in_bulk([p.pk for p, _ in rows])
    events = [e for e in events if e.position_id in finalized]
    for pk in finalized:
        done = closed[pk]
        events.append(RiskEvent(kind=RiskEventKind.CLOSED, position=done, symbol=done.symbol, price=done.exit_price,
                                reason=done.close_reason or "", message=notes[pk] or f"closed at {done.exit_price}",
                                data={"pnl": done.realised_pnl}))
    events_record(events=events)
    outcomes = []
    for position, _ in rows:
        done = closed[position.pk]
        if position.pk in finalized:
            outcomes.append(CloseOutcome(done, CloseState.CLOSED, notes[position.pk]))
        else:
            outcomes.append(CloseOutcome(done, CloseState.CLOSED if done.status == PositionStatus.CLOSED
                                         else CloseState.SKIPPED, "closed elsewhere"))
    return outcomes


def position_finalize(position: Position, orders: list, *, note: str = "") -> CloseOutcome:
    """Close one claimed position from its real fills (see `positions_finalize`)."""
    return positions_finalize([(position, orders)], note=note)[0]
