"""The broker request budget (trading/budget.py): priorities with their ceilings, one count
shared by every process (in the database, or in Redis), the broker's 429 honoured."""

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from django.db import connection

from trading import broker, budget
from trading.budget import BudgetSpent, Priority

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parent.parent
REDIS_URL = "redis://127.0.0.1:6379/15"


@pytest.fixture(params=["database", "redis"])
def store(request, settings):
    """A budget of 10 a minute: reads up to 5, protective orders up to 8, exits all 10. A
    fresh account name per test, so runs never share a count."""
    settings.BROKER_REQUESTS_PER_MINUTE = 10
    settings.BROKER_READ_SHARE_PERCENT = 50
    settings.BROKER_PROTECT_SHARE_PERCENT = 80
    settings.BROKER_BUDGET_WAIT_SECONDS = 0
    settings.ALPACA_TRADING_URL = f"http://budget-test/{uuid.uuid4().hex}"
    settings.REDIS_URL = REDIS_URL if request.param == "redis" else ""
    if request.param == "redis":
        from redis import Redis

        redis = Redis.from_url(REDIS_URL)
        try:
            redis.flushdb()  # database 15 is the tests' own
        except Exception:  # noqa: BLE001
            pytest.skip("Redis is not running on 127.0.0.1:6379")
    yield request.param
    if request.param == "redis":
        redis.flushdb()


def _taken(level: Priority, tries: int) -> int:
    got = 0
    for _ in range(tries):
        try:
            budget.take(least=level)
        except BudgetSpent:
            break
        got += 1
    return got


def test_reads_stop_at_their_ceiling_and_leave_the_rest_to_exits(store):
    assert _taken(Priority.ROUTINE, 20) == 5
    assert _taken(Priority.PROTECT, 20) == 3
    assert _taken(Priority.EXIT, 20) == 2
    assert budget.sent_last_minute() == 10
    with pytest.raises(BudgetSpent) as spent:
        budget.take(least=Priority.EXIT)
    assert 50 < spent.value.wait_seconds <= 60  # the oldest slot frees a minute after it was taken


def test_a_read_inside_an_exit_spends_at_the_exit_priority(store):
    assert _taken(Priority.ROUTINE, 20) == 5
    with budget.priority(Priority.EXIT):
        assert _taken(Priority.ROUTINE, 20) == 5
        with budget.priority(Priority.ROUTINE):  # an inner context never lowers it
            assert _taken(Priority.ROUTINE, 1) == 0


def test_a_request_waits_for_its_slot_within_the_wait_allowed(store, settings):
    settings.BROKER_REQUESTS_PER_MINUTE = 2
    settings.BROKER_BUDGET_WAIT_SECONDS = 2
    budget.pause(until_epoch_seconds=time.time() + 1)  # as after the broker's 429: everyone waits
    started = time.monotonic()
    budget.take(least=Priority.EXIT)
    assert 0.8 < time.monotonic() - started < 2


def _database_url() -> str:
    db = connection.settings_dict
    if connection.vendor == "postgresql":
        return f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
    return f"sqlite:///{db['NAME']}"


TAKE_IN_ANOTHER_PROCESS = """
import django
django.setup()
from trading import budget
from trading.budget import BudgetSpent, Priority
got = 0
for _ in range(20):
    try:
        budget.take(least=Priority.EXIT)
    except BudgetSpent:
        break
    got += 1
print(got)
"""


def _other_process(settings) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALPACA_", "DJANGO_", "DATABASE_URL", "BROKER_"))}
    env.update(DJANGO_SETTINGS_MODULE="catalyst.settings", DJANGO_DEBUG="true", DATABASE_URL=_database_url(),
               ALPACA_TRADING_URL=settings.ALPACA_TRADING_URL, ALPACA_API_KEY=settings.ALPACA_API_KEY,
               ALPACA_SECRET_KEY=settings.ALPACA_SECRET_KEY, REDIS_URL=settings.REDIS_URL, LOG_LEVEL="ERROR",
               BROKER_REQUESTS_PER_MINUTE="10", BROKER_READ_SHARE_PERCENT="50", BROKER_PROTECT_SHARE_PERCENT="80",
               BROKER_BUDGET_WAIT_SECONDS="0")
    done = subprocess.run([sys.executable, "-c", TAKE_IN_ANOTHER_PROCESS], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.strip().splitlines()[-1])


def test_two_processes_spend_from_one_budget(store, settings):
    assert _taken(Priority.EXIT, 6) == 6
    assert _other_process(settings) == 4  # what this process left
    assert _taken(Priority.EXIT, 5) == 0
    assert budget.sent_last_minute() == 10


def test_the_brokers_429_pauses_every_process_until_its_reset(store, settings, paper_exchange):
    """The exchange's own limit is spent (another client of the same account): the 429's
    X-RateLimit-Reset holds the budget, so the next request waits instead of being refused."""
    settings.BROKER_RETRY_ATTEMPTS = 0
    settings.ALPACA_TRADING_URL = paper_exchange.url
    paper_exchange.control.set_rate_limit(1)
    broker.clock()  # the exchange's one request of this minute
    with pytest.raises(broker.BrokerError) as refused:
        broker.clock()
    assert refused.value.throttled
    with pytest.raises(broker.BrokerThrottled) as held:  # no request goes out before the reset
        broker.clock()
    assert 50 < held.value.wait_seconds <= 61
    assert paper_exchange.control.rate_limit()["throttled"] == 1
    assert _other_process(settings) == 0  # nor from another process


@pytest.mark.parametrize("overrides,check_id", [
    ({"BROKER_READ_SHARE_PERCENT": 90, "BROKER_PROTECT_SHARE_PERCENT": 80}, "trading.E002"),
    ({"BROKER_PROTECT_SHARE_PERCENT": 120}, "trading.E002"),
    ({"BROKER_REQUESTS_PER_MINUTE": 250}, "trading.E003"),
    ({"BROKER_REQUESTS_PER_MINUTE": 0, "ALPACA_API_KEY": "key"}, "trading.W001"),
])
def test_budget_settings_that_must_hold_are_checked(settings, overrides, check_id):
    from risk.checks import monitor_settings_check

    for name, value in overrides.items():
        setattr(settings, name, value)
    assert check_id in {problem.id for problem in monitor_settings_check(None)}


def test_a_redis_restarted_without_the_budgets_script_is_given_it_again(store):
    if store != "redis":
        pytest.skip("Redis only")
    budget.take(least=Priority.EXIT)
    for bucket in budget._store().buckets.values():  # as after a restart (not flushed: Redis is shared)
        bucket.script_hash = "0" * 40
    budget.take(least=Priority.EXIT)
    assert budget.sent_last_minute() == 2
