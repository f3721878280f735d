"""Changing the trading state (ACTIVE, HALTED, REDUCING): an append-only history.

Resuming (to ACTIVE) runs the re-enable checklist first; resuming while an item fails
needs an explicit override with a reason, and the override is recorded on the change.
"""

import logging

from trading.models import TradingMode, TradingStateChange
from trading.validation import OrderValidationError

from .checklist import Checklist, checklist_run

log = logging.getLogger(__name__)


class ChecklistNotPassed(OrderValidationError):
    """Resuming while checklist items fail, without an override. `errors` names the fields."""

    def __init__(self, checklist: Checklist):
        self.checklist = checklist
        failing = "; ".join(f"{item.label}: {item.detail}" for item in checklist.failing)
        super().__init__({"override": f"the re-enable checklist fails ({failing}); override with a reason to resume anyway"})


def _validated(mode: str, reason: str) -> str:
    """The reason, stripped; every bad field reported at once."""
    errors = {}
    if mode not in TradingMode.values:
        errors["mode"] = f"{mode!r} is not one of {', '.join(TradingMode.values)}"
    if not reason or not reason.strip():
        errors["reason"] = "a reason is required"
    if errors:
        raise OrderValidationError(errors)
    return reason.strip()


def trading_state_set(*, mode: str, reason: str, user=None, overrode_checklist: bool = False) -> TradingStateChange:
    """Record a new trading state as it is (no checklist: halting is never refused)."""
    reason = _validated(mode, reason)
    change = TradingStateChange.objects.create(
        mode=mode,
        reason=reason,
        changed_by=user if user is not None and user.is_authenticated else None,
        changed_by_name=getattr(user, "username", "") or "system",
        overrode_checklist=overrode_checklist,
    )
    log.warning("trading state -> %s by %s: %s", mode, change.changed_by_name, change.reason)
    return change


def trading_mode_change(
    *, mode: str, reason: str, user=None, override: bool = False, override_reason: str = "",
    checklist: Checklist | None = None,
) -> TradingStateChange:
    """Change the trading state; resuming (to ACTIVE) runs the checklist first.

    Raises OrderValidationError (bad mode, no reason, override without a reason) or
    ChecklistNotPassed (resuming with failing items and no override). An override is
    recorded (overrode_checklist=True) with its reason and the items that failed.
    """
    reason = _validated(mode, reason)
    overrode = False
    if mode == TradingMode.ACTIVE:
        checklist = checklist or checklist_run()
        if not checklist.passed:
            if not override:
                raise ChecklistNotPassed(checklist)
            why = (override_reason or "").strip() or reason
            failing = ", ".join(item.key for item in checklist.failing)
            reason = (f"{reason} [checklist overridden ({failing}): {why}]" if why != reason
                      else f"{reason} [checklist overridden ({failing})]")
            overrode = True
    return trading_state_set(mode=mode, reason=reason, user=user, overrode_checklist=overrode)
