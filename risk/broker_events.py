"""Applying the broker's order events (trade_updates) to our orders and positions.

Each event is journalled once, keyed by its execution id (a repeated event changes
nothing), copied onto the order it names, and its position follows (risk.follow): a leg's
fill closes it from the fill, a stop cancelled or expired makes it unprotected at once and
PROTECTION_POLICY applies, an entry's fill opens it. Alpaca does not report the sibling
leg's cancel after a leg fills, so the order group is read back over REST after a fill.
An event for an order that isn't ours, or that can't be read, is recorded and logged, never
fatal.
"""

import logging
from dataclasses import dataclass

from django.db import IntegrityError, transaction

from trading import broker
from trading.broker import BrokerDataError, BrokerError, TradeUpdate
from trading.models import BrokerEvent, Order, Position
from trading.orders import order_apply, order_refresh, replacement_record

from .follow import Change, position_follow
from .journal import log_line
from .protection import protection_audit

log = logging.getLogger("risk.stream")

FILLS = {"fill", "partial_fill"}
KNOWN = FILLS | {"new", "canceled", "expired", "replaced", "rejected", "pending_new", "accepted", "done_for_day",
                 "pending_cancel", "pending_replace", "calculated", "suspended", "order_replace_rejected",
                 "order_cancel_rejected", "stopped", "held", "restated"}


@dataclass(frozen=True)
class Applied:
    event: str
    outcome: str
    duplicate: bool = False


def _key(update: TradeUpdate) -> str:
    if update.execution_id:
        return update.execution_id[:128]
    order = update.order
    stamp = (update.at or (order.updated_at if order else None))
    return f"{update.event}:{order.id if order else '-'}:{stamp.isoformat() if stamp else '-'}"[:128]


def _journal(update: TradeUpdate) -> BrokerEvent | None:
    """The event's row, or None when it was applied before."""
    order = update.order
    try:
        with transaction.atomic():
            return BrokerEvent.objects.create(
                key=_key(update), event=update.event, broker_order_id=order.id if order else "",
                symbol=order.symbol if order else "", at=update.at, payload=update.raw)
    except IntegrityError:
        return None


def _ours(update: TradeUpdate) -> Order | None:
    order = update.order
    row = (Order.objects.filter(broker_order_id=order.id).select_related("parent").first()
           or Order.objects.filter(client_order_id=order.client_order_id[:48]).select_related("parent").first())
    if row is None and order.raw.get("replaces"):
        row = replacement_record(remote=order)  # a replacement of one of ours is ours
    return row


def _effects(update: TradeUpdate, row: Order) -> str:
    order_apply(order=row, remote=update.order)
    top = row.parent or row
    if update.event in FILLS and (row.parent_id or top.legs.exists()):
        order_refresh(order=top)  # the sibling's cancel is not reported: read the group back
    ids = {top.position_id or row.position_id} | set(row.shares.values_list("position_id", flat=True))
    done = []
    for position in Position.objects.filter(pk__in=ids - {None}):  # an exit netted over several: each
        change = position_follow(position=position)
        if change == Change.UNPROTECTED:
            results = protection_audit(positions=[position])  # PROTECTION_POLICY, at once
            done.append(f"#{position.pk} unprotected: " + "; ".join(r.line() for r in results))
        elif change != Change.NONE:
            done.append(f"#{position.pk} {change}")
    return "; ".join(done) or f"order {row.client_order_id} now {row.status}"


def trade_update_apply(*, message: dict) -> Applied:
    """Apply one raw trade_updates message. Broker and database faults are recorded on the
    event and raised for the caller to log; a repeated event is reported as a duplicate."""
    try:
        update = broker.parse_trade_update(message)
    except BrokerDataError as exc:
        log.error("trade update not readable: %s", exc)
        return Applied("unreadable", str(exc))
    if update.event not in KNOWN:
        log.warning("trade update with an event name we don't know: %r (recorded, orders still followed)",
                    update.event)
    event = _journal(update)
    if event is None:
        return Applied(update.event, "duplicate: already applied", duplicate=True)
    if update.order is None:
        outcome = "no order in the event"
    else:
        row = _ours(update)
        if row is None:
            outcome = f"not ours: {update.order.side} {update.order.qty} {update.order.symbol} {update.order.status}"
        else:
            try:
                outcome = _effects(update, row)
            except BrokerError as exc:
                outcome = f"broker error while following it: {exc}"
            BrokerEvent.objects.filter(pk=event.pk).update(order=row)
    BrokerEvent.objects.filter(pk=event.pk).update(outcome=outcome[:2000])
    log_line({"event": "broker_event", "name": update.event, "order": update.order.id if update.order else None,
              "symbol": update.order.symbol if update.order else "", "outcome": outcome})
    return Applied(update.event, outcome)
