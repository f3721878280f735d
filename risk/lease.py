"""Named leases: a compare-and-set row with an expiry, so one holder at a time and a dead
holder loses it."""

from datetime import timedelta

from django.db import IntegrityError
from django.db.models import Q
from django.utils import timezone

from .models import Lease


def lease_acquire(*, name: str, holder: str, seconds: int) -> bool:
    now = timezone.now()
    try:
        Lease.objects.get_or_create(name=name)
    except IntegrityError:
        pass  # created by a concurrent caller
    free = Q(expires_at__isnull=True) | Q(expires_at__lt=now) | Q(holder=holder)
    return Lease.objects.filter(Q(name=name) & free).update(holder=holder, expires_at=now + timedelta(seconds=seconds)) == 1


def lease_release(*, name: str, holder: str) -> None:
    Lease.objects.filter(name=name, holder=holder).update(holder="", expires_at=None)
