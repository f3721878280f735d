"""Prometheus metrics at /metrics: a bearer token or an allowed address, refused otherwise;
the positions, the heartbeats (the monitor's and any other), exits by reason and broker errors."""

import ipaddress
from datetime import timedelta
from decimal import Decimal

import pytest
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from risk.models import Heartbeat
from tests.helpers import open_bracket
from trading import broker
from trading.models import CloseReason, Position, PositionStatus

pytestmark = pytest.mark.django_db

TOKEN = "metrics-token-for-tests-0123456789"


def _samples(response) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.content.decode()) for s in family.samples}


def test_refused_without_a_token_or_an_allowed_address(settings):
    settings.METRICS_TOKEN = ""
    settings.METRICS_ALLOWED_ADDRESSES = []
    assert Client().get("/metrics").status_code == 403  # off until configured
    settings.METRICS_TOKEN = TOKEN
    response = Client().get("/metrics")
    assert response.status_code == 401 and response["WWW-Authenticate"].startswith("Bearer")
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert Client(REMOTE_ADDR="10.1.2.3").get("/metrics").status_code == 401


def test_an_allowed_address_needs_no_token(settings):
    settings.METRICS_TOKEN = ""
    settings.METRICS_ALLOWED_ADDRESSES = [ipaddress.ip_network("10.0.0.0/8")]
    assert Client(REMOTE_ADDR="10.1.2.3").get("/metrics").status_code == 200
    assert Client(REMOTE_ADDR="192.0.2.1").get("/metrics").status_code == 401


def test_positions_heartbeats_exits_and_broker_errors(settings, exchange):
    settings.METRICS_TOKEN = TOKEN
    open_bracket("AAPL")
    unprotected = open_bracket("MSFT")
    Position.objects.filter(pk=unprotected.pk).update(protection="unprotected")
    for reason in (CloseReason.STOP_LOSS_HIT, CloseReason.STOP_LOSS_HIT, CloseReason.MANUAL):
        Position.objects.create(symbol="NVDA", side="long", quantity=Decimal(1), entry_price=Decimal(1),
                                status=PositionStatus.CLOSED, opened_at=timezone.now(), closed_at=timezone.now(),
                                close_reason=reason, exit_price=Decimal(1))
    now = timezone.now()
    Heartbeat.objects.create(name="monitor", finished_at=now - timedelta(seconds=5))
    Heartbeat.objects.create(name="stream", finished_at=now - timedelta(seconds=600))
    before = broker.BROKER_ERRORS.labels(status="500")._value.get()
    exchange.control.add_fault("http_500", path="/v2/clock", count=1)
    with pytest.raises(broker.BrokerError):
        broker.clock()

    response = Client().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/plain")
    samples = _samples(response)
    assert samples[("catalyst_positions_open", ())] == 2
    assert samples[("catalyst_positions_unprotected", ())] == 1
    assert samples[("catalyst_positions_closing", ())] == 0
    assert 5 <= samples[("catalyst_heartbeat_age_seconds", (("name", "monitor"),))] < 30
    assert samples[("catalyst_heartbeat_age_seconds", (("name", "stream"),))] >= 600  # the stream's lag
    assert samples[("catalyst_heartbeat_stale", (("name", "stream"),))] == 1
    assert samples[("catalyst_positions_closed_total", (("reason", "STOP_LOSS_HIT"),))] == 2
    assert samples[("catalyst_positions_closed_total", (("reason", "MANUAL"),))] == 1
    assert samples[("catalyst_broker_errors_total", (("status", "500"),))] == before + 1
