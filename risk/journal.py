"""The risk event journal: every decision is an append-only row and one JSON line on stdout."""

import json
import logging
from contextlib import nullcontext
from datetime import datetime
from decimal import Decimal

from django.db import DatabaseError, connection, transaction

from trading.models import Position

from .models import RiskEvent

log = logging.getLogger("risk.monitor")


def log_line(payload: dict, *, level: int = logging.INFO) -> None:
    """One structured line for the operator's log: the payload's fields are the JSON line's
    (catalyst.logs.JsonLines); the message is the payload as JSON, for any other handler."""
    log.log(level, json.dumps(payload, default=str, sort_keys=True), extra={"payload": payload})


def event_record(
    *,
    kind: str,
    position: Position | None = None,
    symbol: str = "",
    price: Decimal | None = None,
    quote_time: datetime | None = None,
    reason: str = "",
    message: str = "",
    data: dict | None = None,
) -> RiskEvent | None:
    """Append a risk event and log it as one structured line. A database fault is logged,
    never raised: recording must not stop the monitor from protecting positions."""
    event = RiskEvent(
        kind=kind,
        position=position,
        symbol=symbol or (position.symbol if position else ""),
        price=price,
        quote_time=quote_time,
        reason=reason[:255],
        message=message,
        data=data or {},
    )
    return event if events_record(events=[event]) else None


def events_record(*, events: list[RiskEvent]) -> bool:
    """Append many risk events in one insert, one log line each. False (logged, never raised)
    when the database refused them."""
    for event in events:
        event.reason = event.reason[:255]
        log_line({"event": event.kind, "position": event.position_id, "symbol": event.symbol, "price": event.price,
                  "quote_time": event.quote_time, "reason": event.reason, "message": event.message})
    try:
        # inside a transaction, a savepoint: a failed insert must not poison the caller's transaction
        with transaction.atomic() if connection.in_atomic_block else nullcontext():
            if len(events) == 1:
                events[0].save()
            else:
                RiskEvent.objects.bulk_create(events)  # as few inserts as the database takes
    except DatabaseError as exc:
        log.exception("%d risk events not stored (%s): %s", len(events), type(exc).__name__, exc)
        return False
    return True
