"""The admin's History and Recent actions (LogEntry) for what operators do outside a model's
change form: flatten, close, protect (per position) and trading-state changes, from the
admin and from the API alike."""

from collections.abc import Iterable

from django.contrib.admin.models import ADDITION, CHANGE, LogEntry
from django.contrib.contenttypes.models import ContentType
from django.db.models import Model

from risk.flatten import FlattenResult, outcome_summary


def history_record(*, user, entries: Iterable[tuple[Model, str]], flag: int = CHANGE) -> None:
    """One LogEntry per (object, message), in one insert. Nothing for an anonymous user."""
    if not getattr(user, "is_authenticated", False):
        return
    rows = [
        LogEntry(user_id=user.pk, content_type_id=ContentType.objects.get_for_model(obj, for_concrete_model=False).pk,
                 object_id=str(obj.pk), object_repr=str(obj)[:200], action_flag=flag, change_message=message[:2000])
        for obj, message in entries
    ]
    LogEntry.objects.bulk_create(rows)


def history_add(*, user, obj: Model, message: str) -> None:
    """An object made by an operator's action (a trading-state change)."""
    history_record(user=user, entries=[(obj, message)], flag=ADDITION)


def flatten_history(*, user, result: FlattenResult) -> None:
    """A flatten: the halt it made, and each position's outcome."""
    if result.halted is not None:
        history_add(user=user, obj=result.halted, message=f"Trading set to HALTED: {result.halted.reason}")
    history_record(user=user, entries=[(o.position, f"Emergency flatten (EMERGENCY_STOP): {outcome_summary(o)}")
                                       for o in result.outcomes])
