from django.urls import path

from . import gate_views, views

app_name = "api"

urlpatterns = [
    path("orders", gate_views.OrderGateView.as_view(), name="orders"),
    path("orders/test", views.TestOrderView.as_view(), name="orders-test"),
    # Any segment: the view answers a non-id with its JSON 404 (see OrderDetailView).
    path("orders/<str:pk>", views.OrderDetailView.as_view(), name="order-detail"),
    path("positions", views.PositionListView.as_view(), name="positions"),
    path("positions/flatten", views.FlattenView.as_view(), name="positions-flatten"),
    path("positions/<str:pk>/timeline", views.PositionTimelineView.as_view(), name="position-timeline"),
    path("positions/<str:pk>/reduce", gate_views.PositionReduceView.as_view(), name="position-reduce"),
    path("trading-state", views.TradingStateView.as_view(), name="trading-state"),
    path("monitor", views.MonitorView.as_view(), name="monitor"),
    path("stream/quotes", views.QuoteStreamView.as_view(), name="stream-quotes"),
]
