"""Claiming positions for closing: exactly one claimant wins, and a dead worker's lock expires.

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

CHUNK = 2000  # ids per statement


def lock_span() -> timedelta:
    return timedelta(seconds=settings.MONITOR_LEASE_SECONDS)


def _chunks(ids: list[int]):
    for start in range(0, len(ids), CHUNK):
        yield ids[start:start + CHUNK]


def positions_claim(*, position_ids: list[int], reason: str | None, owner: str, by: Closer,
                    keep: Decimal | None = None) -> list[int]:
    """Move positions from open to closing; the ids this caller claimed. Each position is
    claimed by exactly one caller, however many race (rows another claimant holds locked are
    skipped on PostgreSQL; SQLite's transactions take its write lock up front). `by` says who
    closes them (the alert for an exit is named after it).

    `keep`: a reduce, which exits down to that quantity and then reopens the position. A full
    close (no `keep`) also takes over a reduce in progress: a flatten must not leave a rest."""
    claimable = Q(status=PositionStatus.OPEN)
    if keep is None:
        claimable |= Q(status=PositionStatus.CLOSING, keep_quantity__isnull=False)
    claimed = []
    for chunk in _chunks(list(position_ids)):
        now = timezone.now()
        with transaction.atomic():
            candidates = Position.objects.filter(Q(pk__in=chunk) & claimable)
            if connection.features.has_select_for_update_skip_locked:
                candidates = candidates.select_for_update(skip_locked=True)
            ids = list(candidates.values_list("pk", flat=True))
            Position.objects.filter(Q(pk__in=ids) & claimable).update(
                status=PositionStatus.CLOSING, close_reason=reason, closed_by=by, keep_quantity=keep,
                lock_owner=owner, locked_until=now + lock_span(), exit_refusals=0, exit_refused_at=None,
            )
        claimed += ids
    return claimed


def position_claim(*, position_id: int, reason: str | None, owner: str, by: Closer,
                   keep: Decimal | None = None) -> bool:
    """Move one position from open to closing. True for exactly one caller, however many race."""
    return positions_claim(position_ids=[position_id], reason=reason, owner=owner, by=by, keep=keep) == [position_id]


def closings_lock(*, position_ids: list[int], owner: str) -> list[int]:
    """Take the working lock on closing positions, except those a live worker holds; the ids locked."""
    locked = []
    for chunk in _chunks(list(position_ids)):
        now = timezone.now()
        free = Q(locked_until__isnull=True) | Q(locked_until__lt=now) | Q(lock_owner=owner)
        Position.objects.filter(Q(pk__in=chunk, status=PositionStatus.CLOSING) & free).update(
            lock_owner=owner, locked_until=now + lock_span())
        locked += Position.objects.filter(pk__in=chunk, status=PositionStatus.CLOSING,
                                          lock_owner=owner).values_list("pk", flat=True)
    return locked


def closings_unlock(*, position_ids: list[int], owner: str) -> None:
    for chunk in _chunks(list(position_ids)):
        Position.objects.filter(pk__in=chunk, lock_owner=owner).update(lock_owner="", locked_until=None)
