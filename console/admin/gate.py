"""The order gate in the console: the pre-trade limits (one row, edited here, each change recorded
with who, when and why), the requests the trading service sent, and the trading days the
daily-loss kill switch evaluated."""

from django import forms
from django.contrib import admin, messages
from django.http import HttpResponseRedirect
from django.urls import reverse

from risk.limits import LIMIT_FIELDS, SYMBOL_LISTS, limits_current, limits_update, symbols_parse
from risk.models import OrderRequest, RiskLimits, RiskLimitsChange, TradingDay
from trading.validation import OrderValidationError

from .base import ReadOnlyAdmin, ReadOnlyInline, change_link


class RiskLimitsForm(forms.ModelForm):
    reason = forms.CharField(widget=forms.Textarea(attrs={"rows": 2, "cols": 60}), max_length=2000,
                             help_text="Why the limits change (kept in the history below).")

    class Meta:
        model = RiskLimits
        fields = LIMIT_FIELDS

    def clean(self):
        data = super().clean()
        for name in LIMIT_FIELDS:
            value = data.get(name)
            if name in SYMBOL_LISTS:
                try:
                    data[name] = ", ".join(symbols_parse(value, name))
                except OrderValidationError as exc:
                    self.add_error(name, exc.errors[name])
            elif value is not None and value <= 0:
                self.add_error(name, "must be greater than 0; leave it blank for no limit")
        return data


class RiskLimitsChangeInline(ReadOnlyInline):
    model = RiskLimitsChange
    fields = readonly_fields = ("changed_at", "changed_by_name", "reason", "changes")
    verbose_name_plural = "History (newest 50)"

    def has_view_permission(self, request, obj=None) -> bool:
        return request.user.has_perm("risk.view_risklimits") or request.user.has_perm("risk.change_risklimits")

    def get_queryset(self, request):
        return super().get_queryset(request).order_by("-changed_at", "-id")


@admin.register(RiskLimits)
class RiskLimitsAdmin(admin.ModelAdmin):
    """One row: the list opens it; saving records the change through risk.limits."""

    form = RiskLimitsForm
    inlines = [RiskLimitsChangeInline]
    fieldsets = [
        ("Per order", {"fields": ["max_order_qty", "max_order_notional", "max_order_loss"]}),
        ("Per account", {"fields": ["max_open_positions", "max_symbol_exposure", "max_total_exposure",
                                    "max_orders_per_minute"]}),
        ("Symbols", {"fields": ["symbols_allowed", "symbols_refused"]}),
        (None, {"fields": ["reason"]}),
    ]

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def changelist_view(self, request, extra_context=None):
        if not self.has_view_or_change_permission(request):
            return super().changelist_view(request, extra_context)  # refuses as the admin does
        return HttpResponseRedirect(reverse("admin:risk_risklimits_change", args=[limits_current().pk]))

    def save_model(self, request, obj, form, change):
        values = {name: form.cleaned_data[name] for name in LIMIT_FIELDS}
        if limits_update(values=values, reason=form.cleaned_data["reason"], user=request.user) is None:
            self.message_user(request, "Nothing changed.", messages.INFO)


@admin.register(OrderRequest)
class OrderRequestAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "client_order_id", "kind", "state", "position_link", "order_link", "refusal",
                    "requested_by_name", "short_detail")
    list_filter = ("kind", "state", "refusal")
    search_fields = ("client_order_id",)
    search_help_text = "Exact client_order_id."
    ordering = ("-created_at", "-id")
    readonly_fields = ("created_at", "updated_at", "client_order_id", "kind", "state", "request", "expected_price",
                       "notional", "position_link", "order_link", "refusal", "detail", "data", "requested_by_name",
                       "claimed_until")
    fields = readonly_fields

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()
        return (queryset.filter(client_order_id=term) if term else queryset), False

    @admin.display(description="position")
    def position_link(self, obj: OrderRequest) -> str:
        return change_link("position", obj.position_id)

    @admin.display(description="entry order")
    def order_link(self, obj: OrderRequest) -> str:
        return change_link("order", obj.entry_order_id)

    @admin.display(description="detail")
    def short_detail(self, obj: OrderRequest) -> str:
        return obj.detail if len(obj.detail) <= 120 else obj.detail[:117] + "..."


@admin.register(TradingDay)
class TradingDayAdmin(ReadOnlyAdmin):
    list_display = ("session_open", "realised_pnl", "unrealised_pnl", "unpriced", "loss_limit", "evaluated_at",
                    "tripped_at", "tripped_pnl", "flattened")
    ordering = ("-session_open",)
    readonly_fields = list_display
    fields = readonly_fields
