"""CSV export of the positions and orders lists (django-import-export), export only.

The button exports what the changelist shows (its filters and search), needs the model's
view permission (IMPORT_EXPORT_EXPORT_PERMISSION_CODE), and streams: rows are read with a
server-side iterator and written as they come, so a million-row table is never held in
memory or built before the first byte goes out.
"""

import csv
from collections.abc import Iterator

from django.core.exceptions import PermissionDenied
from django.http import StreamingHttpResponse
from import_export import fields, resources
from import_export.admin import ExportMixin
from import_export.formats.base_formats import CSV

from trading.models import Order, Position


class PositionResource(resources.ModelResource):
    realised_pnl = fields.Field(attribute="pnl", column_name="realised_pnl")  # annotated by the admin's queryset

    class Meta:
        model = Position
        fields = ("id", "symbol", "side", "quantity", "entry_price", "stop_loss", "take_profit", "status",
                  "protection", "protection_checked_at", "opened_at", "closed_at", "exit_price", "close_reason",
                  "closed_by", "realised_pnl", "adopted", "needs_review", "is_test", "entry_order", "updated_at")
        export_order = fields


class OrderResource(resources.ModelResource):
    class Meta:
        model = Order
        fields = ("id", "position", "parent", "role", "symbol", "side", "qty", "type", "order_class", "time_in_force",
                  "limit_price", "stop_price", "status", "filled_qty", "filled_avg_price", "submitted_at", "filled_at",
                  "broker_order_id", "client_order_id", "created_at", "error")
        export_order = fields


class _Line:
    """A file-like for csv.writer that hands back what was written."""

    def write(self, text: str) -> str:
        return text


class CsvExportMixin(ExportMixin):
    """The changelist's Export button: CSV straight away (no format form), streamed."""

    formats = [CSV]
    skip_export_form = True
    skip_export_form_from_action = True

    def _do_file_export(self, file_format, request, queryset, export_form=None):
        # django-import-export builds the whole file in memory here; this writes it row by row.
        if not self.has_export_permission(request):
            raise PermissionDenied
        resource = self.get_export_resource_classes(request)[0](**self.get_export_resource_kwargs(request))
        rows = queryset.prefetch_related(None)  # a plain server-side iterator, no pagination

        def lines() -> Iterator[str]:
            writer = csv.writer(_Line())
            yield writer.writerow(resource.get_export_headers())
            for obj in resource.iter_queryset(rows):
                yield writer.writerow(["" if value is None else value for value in resource.export_resource(obj)])

        response = StreamingHttpResponse(lines(), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="{self.get_export_filename(request, queryset, file_format)}"'
        return response
