"""A heartbeat that stops is noticed by whatever is still alive: one alert per staleness
episode (and one when it beats again), for the monitor's heartbeat and any other by name."""

from datetime import timedelta

import pytest
from django.utils import timezone

from console.tasks import monitor_task
from risk.heartbeats import heartbeats_stale_check
from risk.lease import lease_acquire
from risk.models import MONITOR, Alert, AlertKind, Heartbeat
from risk.selectors import STALE_AFTER, monitor_status

pytestmark = pytest.mark.django_db


def _beat(name: str, seconds_ago: float) -> None:
    finished = timezone.now() - timedelta(seconds=seconds_ago)
    Heartbeat.objects.update_or_create(name=name, defaults={"started_at": finished, "finished_at": finished})


def _kinds() -> list[tuple[str, str]]:
    return [(a.kind, a.message.split(" heartbeat")[0]) for a in Alert.objects.order_by("id")]


def test_one_alert_per_staleness_episode_and_one_when_it_beats_again(settings):
    settings.MONITOR_INTERVAL_SECONDS = 30  # stale after 60 s
    _beat(MONITOR, 10)
    assert heartbeats_stale_check() == []

    _beat(MONITOR, 90)
    assert heartbeats_stale_check() == ["heartbeat_stale monitor"]
    assert heartbeats_stale_check() == []  # still stale: no second alert
    (alert,) = Alert.objects.all()
    assert alert.kind == AlertKind.HEARTBEAT_STALE
    assert "The monitor heartbeat is stale: last beat" in alert.message and "90s ago (stale after 60s)" in alert.message
    assert "No stop or target is checked" in alert.message

    _beat(MONITOR, 0)
    assert heartbeats_stale_check() == ["heartbeat_back monitor"]
    assert heartbeats_stale_check() == []

    _beat(MONITOR, 120)  # a new episode
    assert heartbeats_stale_check() == ["heartbeat_stale monitor"]
    assert [kind for kind, _ in _kinds()] == ["heartbeat_stale", "heartbeat_back", "heartbeat_stale"]


def test_any_heartbeat_by_name_with_its_own_threshold(settings, monkeypatch):
    """The hook a second process (the trade_updates stream) uses: its row, its threshold."""
    settings.MONITOR_INTERVAL_SECONDS = 30
    monkeypatch.setitem(STALE_AFTER, "stream", lambda: 5)
    _beat(MONITOR, 1)
    _beat("stream", 10)
    assert heartbeats_stale_check() == ["heartbeat_stale stream"]
    assert _kinds() == [("heartbeat_stale", "The stream")]


def test_the_scheduled_task_alerts_a_monitor_that_died_holding_the_lease(settings):
    """runmonitor killed: its lease lives on for MONITOR_LEASE_SECONDS, so the django-q2 task
    can't run cycles yet, and the card alone would show the staleness. The task alerts."""
    settings.MONITOR_INTERVAL_SECONDS = 30
    _beat(MONITOR, 75)
    assert lease_acquire(name=MONITOR, holder="runmonitor:dead", seconds=120)

    assert monitor_task() == "skipped: another monitor holds the lease; alerted: heartbeat_stale monitor"
    assert monitor_task() == "skipped: another monitor holds the lease"
    assert Alert.objects.filter(kind=AlertKind.HEARTBEAT_STALE).count() == 1


def test_a_last_error_shows_with_its_time_only_while_recent(settings):
    settings.MONITOR_INTERVAL_SECONDS = 30
    now = timezone.now()
    Heartbeat.objects.create(name=MONITOR, finished_at=now, last_error="BrokerError: broker unreachable",
                             last_error_at=now - timedelta(minutes=4))
    assert monitor_status(now=now).recent_error == "BrokerError: broker unreachable"
    assert monitor_status(now=now + timedelta(minutes=2)).recent_error == ""  # 6 min > 10 cycles of 30 s
