"""Orders as the broker last reported them, with their legs and the raw payload: read-only."""

import json

from django.contrib import admin
from django.utils.html import format_html

from trading.models import ExitShare, Order

from .base import ReadOnlyAdmin, ReadOnlyInline, change_link
from .export import CsvExportMixin, OrderResource

ORDER_COLUMNS = ("order_link", "role", "side", "type", "qty", "limit_price", "stop_price", "status", "filled_qty",
                 "filled_avg_price", "parent_link", "broker_order_id", "client_order_id")


def order_link(order_id: int | None) -> str:
    return change_link("order", order_id)


class OrderColumns:
    @admin.display(description="order")
    def order_link(self, obj: Order) -> str:
        return order_link(obj.pk)

    @admin.display(description="parent")
    def parent_link(self, obj: Order) -> str:
        return order_link(obj.parent_id)


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


SHARE_COLUMNS = ("order_link", "position_link", "qty", "filled_qty", "order_status", "order_price", "client_order_id")


class ShareColumns:
    """An exit's share of one position: which order, which position, asked and got."""

    @admin.display(description="exit order")
    def order_link(self, obj: ExitShare) -> str:
        return order_link(obj.order_id)

    @admin.display(description="position")
    def position_link(self, obj: ExitShare) -> str:
        return change_link("position", obj.position_id)

    @admin.display(description="order status")
    def order_status(self, obj: ExitShare) -> str:
        return obj.order.status

    @admin.display(description="fill price")
    def order_price(self, obj: ExitShare) -> str:
        return "-" if obj.order.filled_avg_price is None else str(obj.order.filled_avg_price)

    @admin.display(description="client order id")
    def client_order_id(self, obj: ExitShare) -> str:
        return obj.order.client_order_id


class ShareInline(ShareColumns, ReadOnlyInline):
    model = ExitShare
    fields = SHARE_COLUMNS
    readonly_fields = SHARE_COLUMNS

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("order").order_by("-order_id", "id")


class OrderShareInline(ShareInline):
    fk_name = "order"
    verbose_name = "position it closes"
    verbose_name_plural = "Positions it closes (an exit netted over several has one share each)"


class PositionShareInline(ShareInline):
    fk_name = "position"
    verbose_name = "exit share"
    verbose_name_plural = "Its exits (its share of each exit order)"


@admin.register(Order)
class OrderAdmin(CsvExportMixin, OrderColumns, ReadOnlyAdmin):
    resource_classes = [OrderResource]
    list_display = ("id", "role", "symbol", "side", "qty", "type", "order_class", "status", "filled_qty",
                    "filled_avg_price", "position_link", "parent_link", "legs_summary", "created_at")
    list_filter = ("status", "role", "order_class", "side")
    search_fields = ("symbol",)
    search_help_text = "Exact symbol, broker order id or client order id."
    ordering = ("-id",)
    inlines = (LegInline, OrderShareInline)
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
        return change_link("position", obj.position_id)

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
