"""The live console pages under Positions: the positions board (refreshed in place by htmx),
one position's timeline, and the charts. Thin: the rows come from trading.board,
risk.timeline and trading.charts."""

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest
from django.template.response import TemplateResponse

from risk.timeline import position_timeline
from trading.broker import PORTFOLIO_PERIODS
from trading.board import positions_board
from trading.charts import closes_by_day, equity_curve
from trading.models import CloseReason
from trading.selectors import default_period

REASON_COLOURS = {CloseReason.STOP_LOSS_HIT: "#b00020", CloseReason.TAKE_PROFIT_HIT: "#0a7d32",
                  CloseReason.MANUAL: "#3465a4", CloseReason.EMERGENCY_STOP: "#d98c00",
                  CloseReason.MARKET_CLOSE: "#75507b"}


def board_view(model_admin, request: HttpRequest) -> TemplateResponse:
    """The whole page; an htmx refresh gets the board alone (request.htmx, django-htmx)."""
    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    context = {"board": positions_board(), "refresh_seconds": settings.BOARD_REFRESH_SECONDS}
    if request.htmx:
        return TemplateResponse(request, "admin/trading/position/_board.html", context)
    return TemplateResponse(request, "admin/trading/position/board.html",
                            model_admin._context(request, title="Live positions board", **context))


def timeline_view(model_admin, request: HttpRequest, object_id: str) -> TemplateResponse:
    position = model_admin.get_object(request, object_id)
    if position is None:
        raise Http404("No such position.")
    if not model_admin.has_view_permission(request, position):
        raise PermissionDenied
    return TemplateResponse(request, "admin/trading/position/timeline.html", model_admin._context(
        request, title=f"Timeline of {position}", position=position, timeline=position_timeline(position=position),
        original=position,
    ))


def charts_view(model_admin, request: HttpRequest) -> TemplateResponse:
    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    start, end = default_period()
    period = request.GET.get("period", "1M")
    if period not in PORTFOLIO_PERIODS:
        period = "1M"
    closes = closes_by_day(start=start, end=end)
    labels = dict(CloseReason.choices)
    data = {
        "days": [day.isoformat() for day in closes.days],
        "reasons": [{"reason": reason, "label": labels.get(reason, reason), "colour": REASON_COLOURS.get(reason, "#888"),
                     "exits": closes.exits[reason], "pnl": [float(v) for v in closes.cumulative_pnl[reason]]}
                    for reason in closes.reasons],
    }
    curve = equity_curve(period=period, timeframe="1D" if period not in ("1D", "1W") else "1H")
    equity = ({"times": [p.time.isoformat() for p in curve.history.points],
               "equity": [float(p.equity) for p in curve.history.points]} if curve.history else None)
    return TemplateResponse(request, "admin/trading/position/charts.html", model_admin._context(
        request, title="Charts", start=start, end=end, chart_data=data, equity=equity, equity_error=curve.error,
        period=period, periods=PORTFOLIO_PERIODS,
    ))
