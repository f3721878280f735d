"""The end-of-day flatten: intraday positions are closed (MARKET_CLOSE) through the safe exit path
EOD_FLATTEN_MINUTES before the broker clock's next close, while the market is open.

Which positions: EOD_FLATTEN=intraday (default) closes those whose order said "intraday": true;
EOD_FLATTEN=all closes every open position except those whose order said "intraday": false;
off closes none. The others stay overnight under their GTC stop (the order gate sends their legs
GTC). An intraday entry still working is cancelled with them: filling after the flatten, it
would be held overnight. Each monitor cycle in the window closes what is due; a position
already closing is left to its close.
"""

from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import QuerySet
from django.template.defaultfilters import pluralize
from django.utils import timezone

from trading.broker import Clock
from trading.models import CloseReason, Closer, Position, PositionStatus

from .closing import positions_close
from .finalize import CloseOutcome
from .journal import event_record
from .models import RiskEventKind


def eod_flattens(intraday: bool | None) -> bool:
    """Whether a position marked so is closed at the end of the day."""
    if settings.EOD_FLATTEN == "all":
        return intraday is not False
    return settings.EOD_FLATTEN == "intraday" and intraday is True


def eod_candidates() -> QuerySet[Position]:
    """The open positions (and entries still working) the end-of-day flatten closes (none when
    it is off)."""
    if settings.EOD_FLATTEN == "off":
        return Position.objects.none()
    due = Position.objects.filter(status__in=[PositionStatus.PENDING, PositionStatus.OPEN])
    return due.filter(intraday=True) if settings.EOD_FLATTEN == "intraday" else due.exclude(intraday=False)


def eod_flatten_starts(clock: Clock) -> datetime | None:
    """When today's end-of-day flatten starts (None while the market is closed or it is off)."""
    if settings.EOD_FLATTEN == "off" or not clock.is_open or clock.next_close is None:
        return None
    return clock.next_close - timedelta(minutes=settings.EOD_FLATTEN_MINUTES)


def end_of_day_flatten(*, clock: Clock, owner: str) -> list[CloseOutcome]:
    """Close the intraday positions once the flatten window has begun; nothing before it."""
    starts = eod_flatten_starts(clock)
    if starts is None or (clock.timestamp or timezone.now()) < starts:
        return []
    positions = list(eod_candidates().order_by("pk"))
    if not positions:
        return []
    event_record(kind=RiskEventKind.END_OF_DAY, reason=CloseReason.MARKET_CLOSE,
                 message=f"closing {len(positions)} intraday position{pluralize(len(positions))}, "
                         f"{settings.EOD_FLATTEN_MINUTES} min before "
                         f"the close at {clock.next_close:%Y-%m-%d %H:%M %Z}",
                 data={"positions": [p.pk for p in positions], "next_close": clock.next_close})
    return positions_close(positions=positions, reason=CloseReason.MARKET_CLOSE, by=Closer.MONITOR,
                           owner=f"eod-{owner}"[:64])
