"""One request budget for the broker's trading API, shared by every process of the console.

Alpaca allows 200 trading-API requests a minute per account, and the trading service spends
from the same keys. Every trading-API request of the console (web, monitor, worker, stream)
first takes a slot here: at most BROKER_REQUESTS_PER_MINUTE in any 60 seconds. The window
slides (pyrate-limiter's SlidingWindowLog), so no minute, however the broker aligns its own
window, sees more than the budget.

Priorities spend from that one count with different ceilings, so exits never starve:

| priority | what                                                  | may use the budget up to |
|----------|-------------------------------------------------------|--------------------------|
| EXIT     | exits, cancels, and the reads an exit or a flatten needs | all of it             |
| PROTECT  | protective orders (OCOs) and their reads              | BROKER_PROTECT_SHARE_PERCENT |
| ROUTINE  | reads, reconciliation, the audit, new entries         | BROKER_READ_SHARE_PERCENT |

A request waits for a slot at most BROKER_BUDGET_WAIT_SECONDS; when the wait would be
longer, `BudgetSpent` says how long, and nothing is sent. A 429 from the broker pauses the
budget for every process until the broker's X-RateLimit-Reset (`pause`).

Where the count lives: Redis (pyrate-limiter's RedisBucket: a sorted set checked and added
to in one Lua script) when REDIS_URL is set; otherwise one database row per account
(`BrokerBudget`), locked while pyrate-limiter's InMemoryBucket decides over the send times it
holds. Both work across processes (SQLite serialises on its write lock, PostgreSQL on the
row lock). The market-data API is not counted here: Alpaca limits it separately, and the
monitor asks it once per BROKER_QUOTE_BATCH_SIZE symbols per cycle.
"""

import contextvars
import hashlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from enum import IntEnum
from functools import cache

from django.conf import settings
from django.db import DatabaseError, IntegrityError, transaction
from pyrate_limiter import Duration, InMemoryBucket, Rate, RateItem, RedisBucket
from pyrate_limiter.buckets.redis_bucket import LuaScript
from redis.exceptions import NoScriptError, RedisError

from .models import BrokerBudget

ITEM = "broker-request"


class Priority(IntEnum):
    ROUTINE = 0
    PROTECT = 1
    EXIT = 2


class BudgetSpent(Exception):
    """No slot within BROKER_BUDGET_WAIT_SECONDS: nothing was sent."""

    def __init__(self, wait_seconds: float):
        self.wait_seconds = wait_seconds
        super().__init__(f"the broker request budget is spent for {wait_seconds:.1f}s more")


class BudgetUnavailable(Exception):
    """The budget's store (Redis or the database) failed: the caller decides whether to send."""


_priority: contextvars.ContextVar[Priority] = contextvars.ContextVar("broker_priority", default=Priority.ROUTINE)


@contextmanager
def priority(level: Priority) -> Iterator[None]:
    """Requests made inside spend at `level` at least (never lowered by an inner context).
    A context variable: a worker thread sets its own."""
    token = _priority.set(max(level, _priority.get()))
    try:
        yield
    finally:
        _priority.reset(token)


def current_priority(*, least: Priority) -> Priority:
    return max(least, _priority.get())


def ceiling(*, level: Priority) -> int:
    """Requests a minute that `level` may bring the shared count up to."""
    total = settings.BROKER_REQUESTS_PER_MINUTE
    share = {Priority.EXIT: 100, Priority.PROTECT: settings.BROKER_PROTECT_SHARE_PERCENT,
             Priority.ROUTINE: settings.BROKER_READ_SHARE_PERCENT}[level]
    return max(1, total * share // 100)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def budget_name() -> str:
    """One budget per account (trading URL and key id), never naming the key itself."""
    account = f"{settings.ALPACA_TRADING_URL}|{settings.ALPACA_API_KEY}".encode()
    return f"broker-{hashlib.sha256(account).hexdigest()[:16]}"


class _RedisStore:
    def __init__(self, url: str, name: str, ceilings: tuple[tuple[Priority, int], ...]):
        from redis import Redis

        self.redis = Redis.from_url(url)
        self.key = f"catalyst:{name}"
        self.pause_key = f"{self.key}:paused-until-ms"
        self.buckets = {level: RedisBucket.init([Rate(limit, Duration.MINUTE)], self.redis, self.key)
                        for level, limit in ceilings}
        self.lock = threading.Lock()  # a bucket object keeps its last verdict: one caller at a time

    def try_take(self, level: Priority, now_ms: int) -> int:
        paused = int(self.redis.get(self.pause_key) or 0)
        if paused > now_ms:
            return paused - now_ms
        bucket = self.buckets[level]
        item = RateItem(ITEM, now_ms)
        with self.lock:
            try:
                decision = bucket.put_decision(item)
            except NoScriptError:  # Redis restarted and forgot the bucket's script: load it again
                script = self.redis.script_load(LuaScript.PUT_ITEM)
                for each in self.buckets.values():
                    each.script_hash = script
                decision = bucket.put_decision(item)
            bucket.leak(now_ms)
        return 0 if decision.allowed else max(1, decision.retry_after_ms or 1000)

    def pause(self, until_ms: int) -> None:
        if until_ms > _now_ms():
            self.redis.set(self.pause_key, until_ms, pxat=until_ms)

    def sent(self, now_ms: int) -> int:
        return self.redis.zcount(self.key, now_ms - Duration.MINUTE.value, now_ms)


class _DatabaseStore:
    def __init__(self, name: str, ceilings: tuple[tuple[Priority, int], ...]):
        self.name = name
        self.rates = dict(ceilings)

    def _row(self) -> tuple[list[int], int]:
        row = (BrokerBudget.objects.select_for_update().filter(name=self.name)
               .values_list("sent_ms", "paused_until_ms").first())
        if row is None:
            raise BrokerBudget.DoesNotExist
        return row

    def _create(self) -> None:
        try:
            with transaction.atomic():
                BrokerBudget.objects.create(name=self.name)
        except IntegrityError:
            pass  # another process made it

    def try_take(self, level: Priority, now_ms: int) -> int:
        for _ in range(2):
            try:
                with transaction.atomic():
                    sent, paused = self._row()
                    if paused > now_ms:
                        return paused - now_ms
                    bucket = InMemoryBucket([Rate(self.rates[level], Duration.MINUTE)])
                    bucket.items = [RateItem(ITEM, ms) for ms in sorted(sent)]
                    bucket.leak(now_ms)
                    item = RateItem(ITEM, now_ms)
                    if not bucket.put(item):
                        return max(1, bucket.waiting(item))
                    BrokerBudget.objects.filter(name=self.name).update(sent_ms=[i.timestamp for i in bucket.items])
                    return 0
            except BrokerBudget.DoesNotExist:
                self._create()
        raise RuntimeError(f"broker budget row {self.name} could not be made")

    def pause(self, until_ms: int) -> None:
        self._create()
        BrokerBudget.objects.filter(name=self.name, paused_until_ms__lt=until_ms).update(paused_until_ms=until_ms)

    def sent(self, now_ms: int) -> int:
        row = BrokerBudget.objects.filter(name=self.name).values_list("sent_ms", flat=True).first() or []
        return sum(1 for ms in row if ms >= now_ms - Duration.MINUTE.value)


@cache
def _store_for(redis_url: str, name: str, ceilings: tuple[tuple[Priority, int], ...]):
    return _RedisStore(redis_url, name, ceilings) if redis_url else _DatabaseStore(name, ceilings)


def _store():
    ceilings = tuple((level, ceiling(level=level)) for level in Priority)
    return _store_for(settings.REDIS_URL, budget_name(), ceilings)


def enabled() -> bool:
    return settings.BROKER_REQUESTS_PER_MINUTE > 0


def take(*, least: Priority) -> None:
    """Take one slot for a trading-API request at the caller's priority (at least `least`),
    waiting up to BROKER_BUDGET_WAIT_SECONDS. Raises BudgetSpent when the wait would be longer."""
    if not enabled():
        return
    level = current_priority(least=least)
    deadline = time.monotonic() + float(settings.BROKER_BUDGET_WAIT_SECONDS)
    while True:
        try:
            wait = _store().try_take(level, _now_ms()) / 1000
        except (DatabaseError, RedisError) as exc:
            raise BudgetUnavailable(f"broker request budget unavailable ({type(exc).__name__})") from exc
        if wait <= 0:
            return
        if time.monotonic() + wait > deadline:
            raise BudgetSpent(wait)
        time.sleep(wait)


def pause(*, until_epoch_seconds: float) -> None:
    """The broker refused with 429 until then: every process waits for it (no-op without a budget)."""
    if enabled():
        try:
            _store().pause(int(until_epoch_seconds * 1000))
        except (DatabaseError, RedisError) as exc:
            raise BudgetUnavailable(f"broker request budget unavailable ({type(exc).__name__})") from exc


def sent_last_minute() -> int:
    """Requests counted in the last 60 s, by every process."""
    return _store().sent(_now_ms()) if enabled() else 0
