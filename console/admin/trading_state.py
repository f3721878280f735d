"""The trading state page: the state in force, the re-enable checklist, the form to change
it, and its history."""

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse

from risk.checklist import checklist_run
from risk.trading_state import ChecklistNotPassed, trading_mode_change
from trading.models import TradingMode, TradingStateChange
from trading.selectors import trading_state_history
from trading.validation import OrderValidationError

from ..audit import history_add
from .base import ReadOnlyAdmin, console_status

TRADING_MODE_PERM = "trading.change_trading_mode"


class TradingModeForm(forms.Form):
    mode = forms.ChoiceField(choices=[("", "— choose —"), *TradingMode.choices])
    reason = forms.CharField(widget=forms.Textarea(attrs={"rows": 2, "cols": 60}), max_length=2000)
    override = forms.BooleanField(required=False, label="Override the failing checklist items")
    override_reason = forms.CharField(required=False, max_length=1000,
                                      widget=forms.Textarea(attrs={"rows": 2, "cols": 60}),
                                      help_text="Required with the override: why resume although items fail.")

    def __init__(self, *args, checklist=None, **kwargs):
        self.checklist = checklist
        super().__init__(*args, **kwargs)

    def clean(self):
        data = super().clean()
        resuming_blocked = data.get("mode") == TradingMode.ACTIVE and self.checklist and not self.checklist.passed
        if resuming_blocked:
            if not data.get("override"):
                self.add_error("override", "Checklist items fail: tick the override (and say why) to resume anyway.")
            elif not (data.get("override_reason") or "").strip():
                self.add_error("override_reason", "An override needs a reason.")
        return data


@admin.register(TradingStateChange)
class TradingStateChangeAdmin(ReadOnlyAdmin):
    """The trading state page: current state, checklist, the form to change it, history."""

    def has_view_permission(self, request, obj=None) -> bool:
        return super().has_view_permission(request, obj) or request.user.has_perm(TRADING_MODE_PERM)

    def changelist_view(self, request, extra_context=None):
        if not self.has_view_permission(request):
            raise PermissionDenied
        can_change = request.user.has_perm(TRADING_MODE_PERM)
        if request.method == "POST" and not can_change:
            raise PermissionDenied
        checklist = checklist_run()
        form = TradingModeForm(request.POST or None, checklist=checklist) if can_change else None
        if form is not None and form.is_bound and form.is_valid():
            data = form.cleaned_data
            try:
                change = trading_mode_change(mode=data["mode"], reason=data["reason"], user=request.user,
                                             override=data["override"], override_reason=data["override_reason"],
                                             checklist=checklist)
            except ChecklistNotPassed:
                form.add_error("override", "Checklist items fail: tick the override (and say why) to resume anyway.")
            except OrderValidationError as exc:
                for field, message in exc.errors.items():
                    form.add_error(field if field in form.fields else None, message)
            else:
                history_add(user=request.user, obj=change, message=f"Trading set to {change.mode}: {change.reason}")
                self.message_user(request, f"Trading is now {change.mode}: {change.reason}", messages.SUCCESS)
                return HttpResponseRedirect(request.path)
        context = {
            **self.admin_site.each_context(request),
            **console_status(),
            "opts": self.opts,
            "title": "Trading state",
            "checklist": checklist,
            "form": form,
            "can_change": can_change,
            "history": trading_state_history(limit=50),
            **(extra_context or {}),
        }
        return TemplateResponse(request, "admin/trading/tradingstatechange/state.html", context)
