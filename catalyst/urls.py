from django.contrib import admin
from django.urls import include, path, re_path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from console.admin import console_index
from console.api.views import NotFoundView
from console.metrics import metrics_view

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    # The admin index with the monitor, the trading state and "are we protected?" on it.
    path("admin/", admin.site.admin_view(console_index), name="console-index"),
    path("admin/", admin.site.urls),
    path("api/v1/", include("console.api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    re_path(r"^api/", NotFoundView.as_view(), name="api-not-found"),  # the API's own JSON 404, last
    path("metrics", metrics_view, name="metrics"),  # Prometheus: a bearer token or an allowed address
]
