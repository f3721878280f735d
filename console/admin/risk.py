"""What the monitor saw and did, read-only in the admin: risk events are append-only,
alerts and the heartbeat are written by the monitor alone."""

from django.contrib import admin
from django.utils import timezone
from django.utils.html import format_html

from risk.models import Alert, Heartbeat, Lease, RiskEvent
from risk.selectors import monitor_stale_after_seconds

from .base import ReadOnlyAdmin, change_link


@admin.register(RiskEvent)
class RiskEventAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "kind", "position_link", "symbol", "price", "quote_time", "reason", "short_message")
    list_filter = ("kind",)
    search_fields = ("symbol",)
    search_help_text = "Exact symbol, or #position id."
    ordering = ("-created_at", "-id")
    readonly_fields = ("created_at", "kind", "position_link", "symbol", "price", "quote_time", "reason", "message",
                       "data")
    fields = readonly_fields

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()
        if term.startswith("#") and term[1:].isdigit():
            return queryset.filter(position_id=int(term[1:])), False
        return (queryset.filter(symbol=term.upper()) if term else queryset), False

    @admin.display(description="position")
    def position_link(self, obj: RiskEvent) -> str:
        return change_link("position", obj.position_id)

    @admin.display(description="message")
    def short_message(self, obj: RiskEvent) -> str:
        return obj.message if len(obj.message) <= 90 else obj.message[:87] + "..."


@admin.register(Alert)
class AlertAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "kind", "position_link", "message", "email_status", "apprise_status", "attempts",
                    "last_error")
    list_filter = ("kind", "email_status", "apprise_status")
    ordering = ("-created_at", "-id")
    readonly_fields = ("created_at", "kind", "position_link", "message", "email_status", "apprise_status",
                       "attempts", "last_error")
    fields = readonly_fields

    @admin.display(description="position")
    def position_link(self, obj: Alert) -> str:
        return change_link("position", obj.position_id)


@admin.register(Heartbeat)
class HeartbeatAdmin(ReadOnlyAdmin):
    list_display = ("name", "finished_at", "age", "positions_checked", "actions", "errors",
                    "consecutive_error_cycles", "cycles", "market_open", "last_error")
    readonly_fields = ("name", "started_at", "finished_at", "age", "positions_checked", "actions", "errors",
                       "consecutive_error_cycles", "cycles", "market_open", "last_error", "last_reconcile_at",
                       "last_reconcile_summary")
    fields = readonly_fields

    @admin.display(description="age")
    def age(self, obj: Heartbeat) -> str:
        if obj.finished_at is None:
            return "never finished a cycle"
        seconds = max(0, int((timezone.now() - obj.finished_at).total_seconds()))
        if seconds > monitor_stale_after_seconds():
            return format_html('<strong style="color:#b00020">{}s ago (STALE)</strong>', seconds)
        return f"{seconds}s ago"


@admin.register(Lease)
class LeaseAdmin(ReadOnlyAdmin):
    list_display = ("name", "holder", "expires_at")
    readonly_fields = ("name", "holder", "expires_at")
    fields = readonly_fields
