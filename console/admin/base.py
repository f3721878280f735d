"""Pieces every console screen shares: read-only admins, capped counting, one-time
confirmation tokens, the date drill-down, and the status shown on top of every page."""

import calendar
import secrets
from datetime import date

from django.contrib import admin
from django.core.paginator import Paginator
from django.db.models import Max, Min
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.html import format_html

from risk.daily import guard_status
from risk.selectors import monitor_status, protection_as_of, quote_stream_status, stream_status
from trading.selectors import protection_summary, trading_state

TOKENS_SESSION_KEY = "catalyst_confirm_tokens"

admin.site.site_header = "Catalyst Ops Console"
admin.site.site_title = "Catalyst Ops Console"
admin.site.index_title = "Are we protected?"
admin.site.enable_nav_sidebar = False  # the tables get the width (positions, risk events: 1400 px screens)


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
    """What every console screen shows on top: trading state, protection (and when the broker
    last confirmed it), the monitor, the stream and the guards."""
    monitor, stream = monitor_status(), stream_status()
    return {
        "trading_state": trading_state(),
        "protection": protection_summary(),
        "protection_as_of": protection_as_of(monitor=monitor, stream=stream),
        "monitor": monitor,
        "stream": stream,
        "quotes": quote_stream_status(),
        "guards": guard_status(),
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


def pnl_text(value) -> str:
    return "-" if value is None else f"{value:,.2f}"


def change_link(model_name: str, pk: int | None) -> str:
    """A link to a trading model's admin page ("#12"), or "-"."""
    if pk is None:
        return "-"
    return format_html('<a href="{}">#{}</a>', reverse(f"admin:trading_{model_name}_change", args=[pk]), pk)
