"""The risk event journal: every decision is an append-only row and one JSON line on stdout."""

import json
import logging
from datetime import datetime
from decimal import Decimal

from django.db import DatabaseError, transaction

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
    log_line({"event": kind, "position": position.pk if position else None, "symbol": event.symbol,
              "price": price, "quote_time": quote_time, "reason": reason, "message": message})
    try:
        with transaction.atomic():  # a savepoint: a failed insert must not poison the caller's transaction
            event.save()
    except DatabaseError as exc:
        log.exception("risk event not stored (%s): %s", type(exc).__name__, exc)
        return None
    return event
