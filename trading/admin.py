"""The operator's console in the Django admin.

Every screen answers "are we protected?" at a glance; every dangerous action goes through
a confirmation page, needs its own permission (not just staff), and cannot be done twice:
the confirmation carries a one-time token, the result is shown after a redirect
(POST-redirect-GET), and underneath the claim (open -> closing) makes a second close a
"skip". Views here are thin: reads in selectors, changes in risk.flatten / risk.checklist.
"""

import calendar
import json
import secrets
from datetime import date

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Max, Min
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.html import format_html
from django.utils.http import urlencode

from risk.checklist import ChecklistNotPassed, checklist_run, trading_mode_change
from risk.flatten import close_manually, close_preview, flatten, flatten_preview, outcome_summary
from risk.models import RiskEvent
from risk.selectors import monitor_status

from .models import Order, Position, PositionStatus, Protection, TradingMode, TradingStateChange
from .selectors import (
    close_reason_summary,
    default_period,
    live_stop_exists,
    period_bounds,
    protection_summary,
    trading_state_history,
)
from .services import trading_state
from .validation import OrderValidationError

FLATTEN_PERM = "trading.flatten_positions"
CLOSE_PERM = "trading.close_positions"
TRADING_MODE_PERM = "trading.change_trading_mode"
CONFIRM_WORD = "FLATTEN"
RESULTS_SESSION_KEY = "catalyst_close_results"
TOKENS_SESSION_KEY = "catalyst_confirm_tokens"

admin.site.site_header = "Catalyst Ops Console"
admin.site.site_title = "Catalyst Ops Console"
admin.site.index_title = "Are we protected?"


# --- Shared pieces ------------------------------------------------------------------------


class CappedCountPaginator(Paginator):
    """Counts at most `cap` rows (COUNT over a LIMITed subquery), so a changelist of
    millions of rows never scans the whole table to number its pages."""

    cap = 10_000

    @cached_property
    def count(self) -> int:
        if isinstance(self.object_list, list):
            total = len(self.object_list)
        else:
            total = self.object_list[: self.cap + 1].count()
        self.capped = total > self.cap
        return min(total, self.cap)

    capped = False


class ReadOnlyAdmin(admin.ModelAdmin):
    """Records kept as the broker or the monitor wrote them: viewable, never edited here."""

    show_full_result_count = False
    paginator = CappedCountPaginator

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class LimitedInlineFormSet(BaseInlineFormSet):
    """Shows the newest `limit` related rows only (the monitor writes many events)."""

    limit = 50

    def get_queryset(self):
        if not hasattr(self, "_limited_queryset"):
            self._limited_queryset = super().get_queryset()[: self.limit]
        return self._limited_queryset


class ReadOnlyInline(admin.TabularInline):
    formset = LimitedInlineFormSet
    extra = 0
    max_num = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


def console_status() -> dict:
    """What every console screen shows on top: trading state, protection, monitor."""
    return {
        "trading_state": trading_state(),
        "protection": protection_summary(),
        "monitor": monitor_status(),
    }


def console_index(request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
    """The admin index with the console status (mounted over admin:index in catalyst/urls.py),
    for those allowed to see positions; other staff get the plain index."""
    status = console_status() if request.user.has_perm("trading.view_position") else {}
    return admin.site.index(request, extra_context={**status, **(extra_context or {})})


def _tokens(request: HttpRequest) -> list[str]:
    return list(request.session.get(TOKENS_SESSION_KEY, []))


def confirmation_token_issue(request: HttpRequest) -> str:
    token = secrets.token_urlsafe(16)
    request.session[TOKENS_SESSION_KEY] = (_tokens(request) + [token])[-20:]
    return token


def confirmation_token_use(request: HttpRequest, token: str | None) -> bool:
    """True once per issued token: a re-submitted confirmation does nothing."""
    tokens = _tokens(request)
    if not token or token not in tokens:
        return False
    tokens.remove(token)
    request.session[TOKENS_SESSION_KEY] = tokens
    return True


def date_drilldown(cl) -> dict:
    """The changelist's date hierarchy without its SELECT DISTINCT over every row: years
    from MIN/MAX (an index read), then every month of a year, every day of a month."""
    field = cl.date_hierarchy
    params = {key: cl.params.get(f"{field}__{key}") for key in ("year", "month", "day")}
    year, month, day = (int(params[k]) if params[k] and str(params[k]).isdigit() else None
                        for k in ("year", "month", "day"))
    label = cl.model._meta.get_field(field).verbose_name

    def link(**values) -> str:
        return cl.get_query_string({f"{field}__{k}": v for k, v in values.items()}, [f"{field}__"])

    if year and month and day:
        when = date(year, month, day)
        return {"show": True, "field_name": label,
                "back": {"link": link(year=year, month=month), "title": when.strftime("%B %Y")},
                "choices": [{"title": when.strftime("%B %-d")}]}
    if year and month:
        days = calendar.monthrange(year, month)[1]
        return {"show": True, "field_name": label, "back": {"link": link(year=year), "title": str(year)},
                "choices": [{"link": link(year=year, month=month, day=d), "title": date(year, month, d).strftime("%b %-d")}
                            for d in range(1, days + 1)]}
    if year:
        return {"show": True, "field_name": label, "back": {"link": link(), "title": "All dates"},
                "choices": [{"link": link(year=year, month=m), "title": date(year, m, 1).strftime("%B %Y")}
                            for m in range(1, 13)]}
    bounds = cl.queryset.aggregate(first=Min(field), last=Max(field))
    if not (bounds["first"] and bounds["last"]):
        return {"show": False}
    first, last = timezone.localtime(bounds["first"]), timezone.localtime(bounds["last"])
    return {"show": True, "field_name": label, "back": None,
            "choices": [{"link": link(year=y), "title": str(y)} for y in range(last.year, first.year - 1, -1)]}


def _pnl(value) -> str:
    return "-" if value is None else f"{value:,.2f}"


# --- Orders -------------------------------------------------------------------------------


ORDER_COLUMNS = ("order_link", "role", "side", "type", "qty", "limit_price", "stop_price", "status", "filled_qty",
                 "filled_avg_price", "parent_link", "broker_order_id", "client_order_id")


def _order_link(order_id: int | None) -> str:
    if order_id is None:
        return "-"
    return format_html('<a href="{}">#{}</a>', reverse("admin:trading_order_change", args=[order_id]), order_id)


class OrderColumns:
    @admin.display(description="order")
    def order_link(self, obj: Order) -> str:
        return _order_link(obj.pk)

    @admin.display(description="parent")
    def parent_link(self, obj: Order) -> str:
        return _order_link(obj.parent_id)


class PositionOrderInline(OrderColumns, ReadOnlyInline):
    model = Order
    fk_name = "position"
    fields = ORDER_COLUMNS
    readonly_fields = ORDER_COLUMNS
    verbose_name_plural = "Orders (newest 50)"

    def get_queryset(self, request):
        return super().get_queryset(request).order_by("-id")


class LegInline(OrderColumns, ReadOnlyInline):
    model = Order
    fk_name = "parent"
    fields = ORDER_COLUMNS
    readonly_fields = ORDER_COLUMNS
    verbose_name = "leg"
    verbose_name_plural = "Legs"

    def get_queryset(self, request):
        return super().get_queryset(request).order_by("id")


@admin.register(Order)
class OrderAdmin(OrderColumns, ReadOnlyAdmin):
    list_display = ("id", "role", "symbol", "side", "qty", "type", "order_class", "status", "filled_qty",
                    "filled_avg_price", "position_link", "parent_link", "legs_summary", "created_at")
    list_filter = ("status", "role", "order_class", "side")
    search_fields = ("symbol",)
    search_help_text = "Exact symbol, broker order id or client order id."
    ordering = ("-id",)
    inlines = (LegInline,)
    fields = ("role", "symbol", "side", "qty", "type", "order_class", "time_in_force", "limit_price", "stop_price",
              "status", "filled_qty", "filled_avg_price", "submitted_at", "filled_at", "updated_at", "position_link",
              "parent_link", "broker_order_id", "client_order_id", "error", "created_at", "synced_at", "raw_pretty")
    readonly_fields = fields

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("legs")

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()
        if not term:
            return queryset, False
        if term.startswith("catalyst-"):
            return queryset.filter(client_order_id=term), False
        if len(term) > 16:
            return queryset.filter(broker_order_id=term), False
        return queryset.filter(symbol=term.upper()), False

    @admin.display(description="position")
    def position_link(self, obj: Order) -> str:
        if obj.position_id is None:
            return "-"
        return format_html('<a href="{}">#{}</a>', reverse("admin:trading_position_change", args=[obj.position_id]),
                           obj.position_id)

    @admin.display(description="legs")
    def legs_summary(self, obj: Order) -> str:
        legs = list(obj.legs.all())  # prefetched: no query per row
        if not legs:
            return "-"
        return "; ".join(f"{leg.role} {leg.stop_price or leg.limit_price} {leg.status}" for leg in legs)

    @admin.display(description="raw broker payload")
    def raw_pretty(self, obj: Order) -> str:
        if obj.raw is None:
            return "-"
        return format_html('<pre style="white-space: pre-wrap; max-height: 40em; overflow: auto">{}</pre>',
                           json.dumps(obj.raw, indent=2, sort_keys=True, default=str))


# --- Positions ------------------------------------------------------------------------------


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

    def clean(self):
        data = super().clean()
        if data.get("start") and data.get("end") and data["start"] > data["end"]:
            raise forms.ValidationError("From must not be after To.")
        return data


@admin.register(Position)
class PositionAdmin(admin.ModelAdmin):
    list_display = ("id", "symbol", "side", "qty", "entry_price", "stop_loss", "take_profit", "status",
                    "reason", "exit_price", "realised_pnl", "protection_badge", "opened_at", "closed_at")
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
    sortable_by = ("id", "symbol", "closed_at")
    actions = ("flatten_selected", "close_selected", "protect_selected")
    inlines = (PositionOrderInline, PositionRiskEventInline)
    fieldsets = (
        (None, {"fields": ("symbol", "side", "quantity", "status", "protection", "protection_checked_at")}),
        ("Prices", {"fields": ("entry_price", "stop_loss", "take_profit", "exit_price", "realised_pnl")}),
        ("Lifecycle", {"fields": ("opened_at", "closed_at", "close_reason", "entry_order_link", "is_test", "adopted",
                                  "lock_owner", "locked_until", "updated_at")}),
        ("Review", {"fields": ("needs_review", "review_note")}),
    )
    # Broker-derived fields are never edited by hand: only the review flag and note are.
    readonly_fields = ("symbol", "side", "quantity", "status", "protection", "protection_checked_at", "entry_price",
                       "stop_loss", "take_profit", "exit_price", "realised_pnl", "opened_at", "closed_at",
                       "close_reason", "entry_order_link", "is_test", "adopted", "lock_owner", "locked_until",
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
        return request.user.has_perm("trading.protect_positions")

    # -- columns

    @admin.display(description="quantity", ordering="quantity")
    def qty(self, obj: Position) -> str:
        return f"{obj.quantity.normalize():f}"

    @admin.display(description="close reason", ordering="close_reason")
    def reason(self, obj: Position) -> str:
        if not obj.close_reason:
            return "-"
        return format_html('<span title="{}">{}</span>', obj.get_close_reason_display(), obj.close_reason)

    @admin.display(description="realised P&L", ordering="pnl")
    def realised_pnl(self, obj: Position) -> str:
        value = getattr(obj, "pnl", None)
        if value is None:
            value = obj.realised_pnl
        if value is None:
            return "-"
        colour = "#0a7d32" if value >= 0 else "#b00020"
        return format_html('<span style="color:{}">{}</span>', colour, _pnl(value))

    @admin.display(description="protection", ordering="protection")
    def protection_badge(self, obj: Position) -> str:
        if obj.status != PositionStatus.OPEN:
            return obj.protection if obj.status == PositionStatus.CLOSED else f"{obj.protection} (closing)"
        live_stop = getattr(obj, "has_live_stop", None)
        if obj.protection == Protection.UNPROTECTED or live_stop is False:
            why = "UNPROTECTED" if obj.protection == Protection.UNPROTECTED else "NO LIVE STOP"
            return format_html('<strong style="color:#fff;background:#b00020;padding:1px 4px">{}</strong>', why)
        return format_html('<span style="color:#0a7d32">{}</span>', obj.protection)

    @admin.display(description="entry order")
    def entry_order_link(self, obj: Position) -> str:
        return _order_link(obj.entry_order_id)

    # -- pages

    def get_urls(self):
        info = self.opts.app_label, self.opts.model_name
        view = self.admin_site.admin_view
        return [
            path("close-reasons/", view(self.close_reasons_view), name="%s_%s_close_reasons" % info),
            path("flatten/", view(self.flatten_everything_view), name="%s_%s_flatten" % info),
            path("results/", view(self.close_results_view), name="%s_%s_close_results" % info),
        ] + super().get_urls()

    def changelist_view(self, request, extra_context=None):
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
        totals = {"count": sum(r.count for r in rows), "total_pnl": sum((r.total_pnl for r in rows), start=0)}
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
            return self._results_redirect(request, title="Manual close: results", outcomes=outcomes, notes=[])
        return self._confirmation(request, title="Close selected positions (MANUAL)",
                                  preview=close_preview(positions=ids), action="close_selected", reason="MANUAL",
                                  queryset=queryset)

    @admin.action(description="Protect selected positions (audit their stops; policy PROTECTION_POLICY)",
                  permissions=["protect"])
    def protect_selected(self, request, queryset):
        from risk.protection import protection_audit

        results = protection_audit(positions=list(queryset.values_list("pk", flat=True)))
        for result in results:
            failed = result.action in ("failed", "alerted") or result.protection == "unprotected"
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


# --- Trading state ------------------------------------------------------------------------------


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

