"""Prometheus metrics at /metrics, for a scraper on the internal network.

Refused (401/403) unless the request carries `Authorization: Bearer <METRICS_TOKEN>` or comes
from an address in METRICS_ALLOWED_ADDRESSES (REMOTE_ADDR: the direct peer); with neither
set, nobody gets them. The gauges are read from the database at each scrape (a few
aggregate queries); the broker-error counter comes from every process that counts one
(PROMETHEUS_MULTIPROC_DIR), or this process alone without it.
"""

import hmac
import ipaddress
import os

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector

from risk.selectors import heartbeats_status
from trading.selectors import positions_closed_by_reason, protection_summary


class ConsoleCollector:
    """The positions, the heartbeats and the exits, as the database has them now."""

    def collect(self):
        summary = protection_summary()
        for name, value, text in (
            ("catalyst_positions_open", summary.open, "Open positions."),
            ("catalyst_positions_unprotected", summary.unprotected, "Open positions without a live stop."),
            ("catalyst_positions_closing", summary.closing, "Positions being closed (an exit working)."),
            ("catalyst_positions_needs_review", summary.needs_review, "Open or closing positions flagged for review."),
        ):
            yield GaugeMetricFamily(name, text, value=value)
        age = GaugeMetricFamily(
            "catalyst_heartbeat_age_seconds",
            "Seconds since each heartbeat last beat: name=monitor is the monitor's last cycle age, "
            "name=stream the trade_updates stream's lag.", labels=["name"])
        stale = GaugeMetricFamily("catalyst_heartbeat_stale", "1 when the heartbeat is stale.", labels=["name"])
        for status in heartbeats_status():
            if status.age_seconds is not None:
                age.add_metric([status.name], status.age_seconds)
            stale.add_metric([status.name], int(status.stale))
        yield age
        yield stale
        exits = CounterMetricFamily("catalyst_positions_closed", "Positions closed, by close reason.", labels=["reason"])
        for reason, count in positions_closed_by_reason().items():
            exits.add_metric([reason or "none"], count)
        yield exits


def _allowed(request: HttpRequest) -> bool:
    sent = request.headers.get("Authorization", "")
    if settings.METRICS_TOKEN and hmac.compare_digest(sent.encode(), f"Bearer {settings.METRICS_TOKEN}".encode()):
        return True
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    return any(address in network for network in settings.METRICS_ALLOWED_ADDRESSES)


def metrics_view(request: HttpRequest) -> HttpResponse:
    if not _allowed(request):
        if not (settings.METRICS_TOKEN or settings.METRICS_ALLOWED_ADDRESSES):
            return HttpResponse("Metrics are off: set METRICS_TOKEN or METRICS_ALLOWED_ADDRESSES.\n", status=403,
                                content_type="text/plain")
        response = HttpResponse("A bearer token (METRICS_TOKEN) or an allowed address is needed.\n", status=401,
                                content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return _metrics(request)


@require_GET
def _metrics(request: HttpRequest) -> HttpResponse:
    console = CollectorRegistry()
    console.register(ConsoleCollector())
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(console)  # every process's counters, this one's included
        body = generate_latest(console)
    else:
        body = generate_latest(REGISTRY) + generate_latest(console)
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)
