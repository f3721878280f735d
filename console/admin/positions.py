"""Positions: the list with protection and P&L, the close-reason review, and the dangerous
actions (flatten, close, protect).

Every dangerous action goes through a confirmation page, needs its own permission (not
just staff), and cannot be done twice: the confirmation carries a one-time token, the result
is shown after a redirect (POST-redirect-GET), and underneath the claim (open -> closing)
makes a second close a "skip". Views here are thin: reads in selectors, changes in risk.
"""

from datetime import date

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.views.main import ERROR_FLAG
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.html import format_html
from django.utils.http import urlencode

from risk.flatten import (
    close_manually,
    close_preview,
    flatten,
    flatten_preview,
    outcome_summary,
)
from risk.models import RiskEvent
from risk.protection import ProtectionAction, protection_audit
from trading.models import Position, PositionStatus, Protection
from trading.selectors import (
    close_reason_summary,
    default_period,
    live_stop_exists,
    period_bounds,
)

from ..audit import flatten_history, history_record
from . import live
from .export import CsvExportMixin, PositionResource
from .base import (
    CappedCountPaginator,
    ReadOnlyInline,
    confirmation_token_issue,
    confirmation_token_use,
    console_status,
    date_drilldown,
    pnl_text,
)
from .orders import PositionOrderInline, PositionShareInline, order_link

FLATTEN_PERM = "trading.flatten_positions"
CLOSE_PERM = "trading.close_positions"
PROTECT_PERM = "trading.protect_positions"
CONFIRM_WORD = "FLATTEN"
RESULTS_SESSION_KEY = "catalyst_close_results"
FIRST_DAY, LAST_DAY = date(1970, 1, 1), date(2999, 12, 31)  # a review period; and where dates stay computable


class PositionRiskEventInline(ReadOnlyInline):
    model = RiskEvent
    fields = ("created_at", "kind", "price", "quote_time", "reason", "message")
    readonly_fields = fields
    verbose_name_plural = "Risk events (newest 50)"


class FlattenEverythingForm(forms.Form):
    confirm = forms.CharField(label=f"Type {CONFIRM_WORD} to confirm", max_length=20)
    token = forms.CharField(widget=forms.HiddenInput)

    def clean_confirm(self) -> str:
        value = self.cleaned_data["confirm"].strip()
        if value != CONFIRM_WORD:
            raise forms.ValidationError(f"Type {CONFIRM_WORD} (in capitals) to flatten everything.")
        return value


class PeriodForm(forms.Form):
    start = forms.DateField(label="From", widget=forms.DateInput(attrs={"type": "date"}))
    end = forms.DateField(label="To (inclusive)", widget=forms.DateInput(attrs={"type": "date"}))

    def _in_range(self, value):
        if not FIRST_DAY <= value <= LAST_DAY:
            raise forms.ValidationError(f"Give a date from {FIRST_DAY} to {LAST_DAY}.")
        return value

    def clean_start(self):
        return self._in_range(self.cleaned_data["start"])

    def clean_end(self):
        return self._in_range(self.cleaned_data["end"])

    def clean(self):
        data = super().clean()
        if data.get("start") and data.get("end") and data["start"] > data["end"]:
            raise forms.ValidationError("From must not be after To.")
        return data


@admin.register(Position)
class PositionAdmin(CsvExportMixin, admin.ModelAdmin):
    resource_classes = [PositionResource]
    import_export_change_list_template = "admin/trading/position/change_list.html"  # the console's, with Export
    # Fits a 1400 px screen: the levels, the status and the times share columns.
    list_display = ("id", "symbol", "side", "qty", "levels", "status_reason", "exit_price", "realised_pnl",
                    "protection_badge", "times")
    list_display_links = ("id", "symbol")
    list_filter = ("status", "side", "close_reason", "protection", "is_test", "needs_review")
    date_hierarchy = "closed_at"
    search_fields = ("symbol",)
    search_help_text = "Exact symbol, e.g. AAPL."
    show_full_result_count = False
    paginator = CappedCountPaginator
    list_per_page = 100
    ordering = ("-id",)
    # Only indexed columns sort: sorting a million rows by price or P&L would scan them all.
    sortable_by = ("id", "symbol", "times")  # times: by closed_at
    actions = ("flatten_selected", "close_selected", "protect_selected")
    inlines = (PositionOrderInline, PositionShareInline, PositionRiskEventInline)
    fieldsets = (
        (None, {"fields": ("symbol", "side", "quantity", "status", "protection", "protection_checked_at")}),
        ("Prices", {"fields": ("entry_price", "stop_loss", "take_profit", "exit_price", "realised_pnl")}),
        ("Lifecycle", {"fields": ("opened_at", "closed_at", "close_reason", "closed_by", "entry_order_link", "is_test",
                                  "adopted",
                                  "lock_owner", "locked_until", "updated_at")}),
        ("Review", {"fields": ("needs_review", "review_note")}),
    )
    # Broker-derived fields are never edited by hand: only the review flag and note are.
    readonly_fields = ("symbol", "side", "quantity", "status", "protection", "protection_checked_at", "entry_price",
                       "stop_loss", "take_profit", "exit_price", "realised_pnl", "opened_at", "closed_at",
                       "close_reason", "closed_by", "entry_order_link", "is_test", "adopted", "lock_owner",
                       "locked_until",
                       "updated_at")

    def get_queryset(self, request):
        return super().get_queryset(request).with_pnl().annotate(has_live_stop=live_stop_exists())

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip().upper()
        return (queryset.filter(symbol=term) if term else queryset), False


    def has_add_permission(self, request) -> bool:
        return False  # positions come from bracket orders and the broker

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def has_flatten_permission(self, request) -> bool:
        return request.user.has_perm(FLATTEN_PERM)

    def has_close_permission(self, request) -> bool:
        return request.user.has_perm(CLOSE_PERM)

    def has_protect_permission(self, request) -> bool:
        return request.user.has_perm(PROTECT_PERM)

    # -- columns

    @admin.display(description="quantity", ordering="quantity")
    def qty(self, obj: Position) -> str:
        return f"{obj.quantity.normalize():f}"

    @admin.display(description="entry · stop · target")
    def levels(self, obj: Position) -> str:
        return " · ".join("-" if v is None else f"{v:.2f}" for v in (obj.entry_price, obj.stop_loss, obj.take_profit))

    @admin.display(description="status / close reason")
    def status_reason(self, obj: Position) -> str:
        if not obj.close_reason:
            return obj.status
        return format_html('{}<br><span title="{}">{}</span>', obj.status, obj.get_close_reason_display(),
                           obj.close_reason)

    @admin.display(description="opened / closed", ordering="closed_at")
    def times(self, obj: Position) -> str:
        return format_html("{}<br>{}", date_format(timezone.localtime(obj.opened_at), "DATETIME_FORMAT"),
                           date_format(timezone.localtime(obj.closed_at), "DATETIME_FORMAT") if obj.closed_at else "-")

    @admin.display(description="realised P&L", ordering="pnl")
    def realised_pnl(self, obj: Position) -> str:
        value = getattr(obj, "pnl", None)
        if value is None:
            value = obj.realised_pnl
        if value is None:
            return "-"
        colour = "#0a7d32" if value >= 0 else "#b00020"
        return format_html('<span style="color:{}">{}</span>', colour, pnl_text(value))

    @admin.display(description="protection", ordering="protection")
    def protection_badge(self, obj: Position) -> str:
        if obj.status == PositionStatus.CLOSED:
            return "-"  # nothing left to protect
        if obj.status == PositionStatus.CLOSING:
            return "closing"
        live_stop = getattr(obj, "has_live_stop", None)
        if obj.protection == Protection.UNPROTECTED or live_stop is False:
            why = "UNPROTECTED" if obj.protection == Protection.UNPROTECTED else "NO LIVE STOP"
            return format_html('<strong style="color:#fff;background:#b00020;padding:1px 4px">{}</strong>', why)
        return format_html('<span style="color:#0a7d32">{}</span>', obj.protection)

    @admin.display(description="entry order")
    def entry_order_link(self, obj: Position) -> str:
        return order_link(obj.entry_order_id)

    # -- pages

    def get_urls(self):
        info = self.opts.app_label, self.opts.model_name
        view = self.admin_site.admin_view
        return [
            path("close-reasons/", view(self.close_reasons_view), name="%s_%s_close_reasons" % info),
            path("flatten/", view(self.flatten_everything_view), name="%s_%s_flatten" % info),
            path("results/", view(self.close_results_view), name="%s_%s_close_results" % info),
            path("board/", view(lambda request: live.board_view(self, request)), name="%s_%s_board" % info),
            path("charts/", view(lambda request: live.charts_view(self, request)), name="%s_%s_charts" % info),
            path("<path:object_id>/timeline/", view(lambda request, object_id: live.timeline_view(self, request, object_id)),
                 name="%s_%s_timeline" % info),
        ] + super().get_urls()

    def changelist_view(self, request, extra_context=None):
        year = request.GET.get(f"{self.date_hierarchy}__year")
        if year is not None and not (year.isascii() and year.isdigit() and FIRST_DAY.year <= int(year) <= LAST_DAY.year):
            # Django's date hierarchy overflows on year 9999 (a 500): the admin's "invalid filter" page instead
            return HttpResponseRedirect(f"{request.path}?{ERROR_FLAG}=1")
        context = {**console_status(), "can_flatten": self.has_flatten_permission(request), **(extra_context or {})}
        response = super().changelist_view(request, extra_context=context)
        cl = getattr(response, "context_data", {}).get("cl")
        if cl is not None:
            response.context_data["date_drilldown"] = date_drilldown(cl)
        return response

    def _context(self, request, **kwargs) -> dict:
        return {**self.admin_site.each_context(request), "opts": self.opts, **console_status(), **kwargs}

    def close_reasons_view(self, request):
        if not self.has_view_permission(request):
            raise PermissionDenied
        start, end = default_period()
        form = PeriodForm(request.GET or None, initial={"start": start, "end": end})
        if form.is_bound and form.is_valid():
            start, end = form.cleaned_data["start"], form.cleaned_data["end"]
        rows = close_reason_summary(start=start, end=end)
        lower, upper = period_bounds(start=start, end=end)
        changelist = reverse("admin:trading_position_changelist")
        period = {"status__exact": PositionStatus.CLOSED, "closed_at__gte": lower.isoformat(),
                  "closed_at__lt": upper.isoformat()}
        linked = []
        for row in rows:
            reason = {"close_reason__exact": row.close_reason} if row.close_reason else {"close_reason__isnull": "True"}
            linked.append({"row": row, "url": f"{changelist}?{urlencode({**reason, **period})}"})
        totals = {"count": sum(r.count for r in rows), "priced": sum(r.priced for r in rows),
                  "total_pnl": sum((r.total_pnl for r in rows), start=0)}
        return TemplateResponse(request, "admin/trading/position/close_reasons.html", self._context(
            request, title="Close-reason review", form=form, rows=linked, start=start, end=end, totals=totals,
            all_url=f"{changelist}?{urlencode(period)}",
        ))

    def _confirmation(self, request, *, title: str, preview, action: str | None, reason: str, queryset=None,
                      everything_form=None) -> TemplateResponse:
        return TemplateResponse(request, "admin/trading/position/flatten_confirm.html", self._context(
            request, title=title, preview=preview, action=action, reason=reason, everything=queryset is None,
            selected_ids=[row.position.pk for row in preview.rows], action_checkbox_name=ACTION_CHECKBOX_NAME,
            token=confirmation_token_issue(request), form=everything_form, confirm_word=CONFIRM_WORD,
        ))

    def _results_redirect(self, request, *, title: str, outcomes, notes: list[str]) -> HttpResponseRedirect:
        request.session[RESULTS_SESSION_KEY] = {
            "title": title,
            "notes": notes,
            "rows": [
                {"id": o.position.pk, "symbol": o.position.symbol, "side": o.position.side,
                 "quantity": str(o.position.quantity), "state": o.state, "summary": outcome_summary(o),
                 "status": o.position.status, "close_reason": o.position.close_reason or "",
                 "exit_price": "" if o.position.exit_price is None else str(o.position.exit_price)}
                for o in outcomes
            ],
        }
        return HttpResponseRedirect(reverse("admin:trading_position_close_results"))

    def _already_used(self, request) -> HttpResponseRedirect:
        self.message_user(request, "This confirmation was already used: nothing was done again.", messages.WARNING)
        if RESULTS_SESSION_KEY in request.session:
            return HttpResponseRedirect(reverse("admin:trading_position_close_results"))
        return HttpResponseRedirect(reverse("admin:trading_position_changelist"))

    @admin.action(description="Flatten selected positions (EMERGENCY_STOP)", permissions=["flatten"])
    def flatten_selected(self, request, queryset):
        ids = list(queryset.values_list("pk", flat=True))
        if request.POST.get("confirmed"):
            if not confirmation_token_use(request, request.POST.get("token")):
                return self._already_used(request)
            result = flatten(user=request.user, positions=ids)
            flatten_history(user=request.user, result=result)
            notes = ["Trading set to HALTED." if result.halted else "Trading was already HALTED."] + result.errors
            return self._results_redirect(request, title="Emergency flatten: results", outcomes=result.outcomes,
                                          notes=notes)
        return self._confirmation(request, title="Flatten selected positions (EMERGENCY_STOP)",
                                  preview=flatten_preview(positions=ids), action="flatten_selected",
                                  reason="EMERGENCY_STOP", queryset=queryset)

    @admin.action(description="Close selected positions (MANUAL)", permissions=["close"])
    def close_selected(self, request, queryset):
        ids = list(queryset.values_list("pk", flat=True))
        if request.POST.get("confirmed"):
            if not confirmation_token_use(request, request.POST.get("token")):
                return self._already_used(request)
            outcomes = close_manually(user=request.user, positions=ids)
            history_record(user=request.user, entries=[(o.position, f"Manual close (MANUAL): {outcome_summary(o)}")
                                                       for o in outcomes])
            return self._results_redirect(request, title="Manual close: results", outcomes=outcomes, notes=[])
        return self._confirmation(request, title="Close selected positions (MANUAL)",
                                  preview=close_preview(positions=ids), action="close_selected", reason="MANUAL",
                                  queryset=queryset)

    @admin.action(description="Protect selected positions (audit their stops; policy PROTECTION_POLICY)",
                  permissions=["protect"])
    def protect_selected(self, request, queryset):
        results = protection_audit(positions=list(queryset.values_list("pk", flat=True)))
        history_record(user=request.user, entries=[(r.position, f"Protect: {r.line()}") for r in results])
        for result in results:
            failed = result.action in (ProtectionAction.FAILED, ProtectionAction.ALERTED) or \
                result.protection == Protection.UNPROTECTED
            self.message_user(request, result.line(), messages.WARNING if failed else messages.SUCCESS)
        if not results:
            self.message_user(request, "No open position among those selected.", messages.INFO)

    def flatten_everything_view(self, request):
        if not self.has_flatten_permission(request):
            raise PermissionDenied
        form = None
        if request.method == "POST":
            form = FlattenEverythingForm(request.POST)
            if form.is_valid():
                if not confirmation_token_use(request, form.cleaned_data["token"]):
                    return self._already_used(request)
                result = flatten(user=request.user, positions=None)
                flatten_history(user=request.user, result=result)
                notes = ["Trading set to HALTED." if result.halted else "Trading was already HALTED."]
                if result.cancelled_orders is not None:
                    notes.append(f"The broker cancelled {result.cancelled_orders} open orders.")
                return self._results_redirect(request, title="Flatten everything: results",
                                              outcomes=result.outcomes, notes=notes + result.errors)
        return self._confirmation(request, title="Flatten everything (EMERGENCY_STOP)", preview=flatten_preview(),
                                  action=None, reason="EMERGENCY_STOP", everything_form=form or FlattenEverythingForm())

    def close_results_view(self, request):
        if not self.has_view_permission(request):
            raise PermissionDenied
        results = request.session.get(RESULTS_SESSION_KEY)
        return TemplateResponse(request, "admin/trading/position/close_results.html", self._context(
            request, title=(results or {}).get("title", "Close results"), results=results,
        ))
