"""Claiming a position for closing: exactly one claimant wins, and a dead worker's lock expires.

The claim is a compare-and-set (open -> closing); the per-position lock (lock_owner,
locked_until) says which worker is stepping a closing position now.
"""

from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from trading.models import Closer, Position, PositionStatus


def lock_span() -> timedelta:
    return timedelta(seconds=settings.MONITOR_LEASE_SECONDS)


def position_claim(*, position_id: int, reason: str | None, owner: str, by: Closer,
                   keep: Decimal | None = None) -> bool:
    """Move one position from open to closing. True for exactly one caller, however many race.
    `by` says who closes it (the alert for its exit is named after it).

    `keep`: a reduce, which exits down to that quantity and then reopens the position. A full
    close (no `keep`) also takes over a reduce in progress: a flatten must not leave a rest."""
    now = timezone.now()
    claimable = Q(status=PositionStatus.OPEN)
    if keep is None:
        claimable |= Q(status=PositionStatus.CLOSING, keep_quantity__isnull=False)
    with transaction.atomic():
        candidates = Position.objects.filter(Q(pk=position_id) & claimable)
        if connection.features.has_select_for_update_skip_locked:
            if not list(candidates.select_for_update(skip_locked=True).values_list("pk", flat=True)):
                return False
        return candidates.update(
            status=PositionStatus.CLOSING, close_reason=reason, closed_by=by, keep_quantity=keep, lock_owner=owner,
            locked_until=now + lock_span(), exit_refusals=0, exit_refused_at=None, updated_at=now,
        ) == 1


def closing_lock(*, position_id: int, owner: str) -> bool:
    """Take the working lock on a closing position, unless a live worker holds it."""
    now = timezone.now()
    free = Q(locked_until__isnull=True) | Q(locked_until__lt=now) | Q(lock_owner=owner)
    return Position.objects.filter(Q(pk=position_id, status=PositionStatus.CLOSING) & free).update(
        lock_owner=owner, locked_until=now + lock_span()
    ) == 1


def closing_unlock(*, position_id: int, owner: str) -> None:
    Position.objects.filter(pk=position_id, lock_owner=owner).update(lock_owner="", locked_until=None)
