"""Running a broker stream in a long-lived process: one per account, a heartbeat, a clean stop.

alpaca-py's streams run their own reconnect loop (with backoff); this drives that loop's
coroutine in our own event loop (their run() calls asyncio.run) beside a watchdog that, once
a second, renews the lease (a second process waits for it instead of fighting for the
connection: Alpaca allows one), catches up after every (re)connection, beats the heartbeat
while connected (a stream down, or its process dead, goes stale and is alerted by
risk.heartbeats like any heartbeat), and stops everything when asked. Messages are handed,
in order, to a worker thread that applies them to the database.
"""

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

from django.db import DatabaseError, close_old_connections, connections
from django.utils import timezone

from trading import broker

from .lease import lease_acquire, lease_release
from .models import Heartbeat

log = logging.getLogger("risk.stream")

RESTART_PAUSE_SECONDS = 5.0


@dataclass
class StreamStats:
    connection: int | None = None  # the connection seen at the last tick
    messages: int = 0
    errors: int = 0
    last_error: str = ""
    last_error_at: datetime | None = None


class StreamRunner:
    """`make_stream(handler)` builds the alpaca-py stream; `apply(message)` applies one message
    (in a worker thread, with the database). `run(stop)` blocks until `stop` is set."""

    def __init__(self, *, name: str, holder: str, make_stream: Callable, apply: Callable[[dict], object],
                 on_connect: Callable[[], object] | None = None, lease_seconds: int = 30,
                 on_tick: Callable[[object, int | None], Awaitable | None] | None = None,
                 beat_at: Callable[[int | None], datetime | None] | None = None,
                 on_stop: Callable[[], object] | None = None):
        """`on_tick(stream, connection)`: once a second in the worker thread, after the lease;
        what it returns (a coroutine: sending on the websocket) is awaited in the stream's loop.
        `beat_at(connection)`: the time the heartbeat beats to, None for no beat (default: now
        while connected): a stream may be connected and still silent. `on_stop()`: once, as `run`
        ends."""
        self.name = name
        self.holder = holder
        self.make_stream = make_stream
        self.apply = apply
        self.on_connect = on_connect
        self.on_tick = on_tick
        self.beat_at = beat_at
        self.on_stop = on_stop
        self.lease_seconds = lease_seconds
        self.stats = StreamStats()

    # -- the process --------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        waiting_said = False
        try:
            while not stop.is_set():
                if self._lease():
                    asyncio.run(self._main(stop))
                    stop.wait(RESTART_PAUSE_SECONDS)  # it ended on its own (409: not entitled): not in a loop
                    continue
                if not waiting_said:
                    log.info("%s: another process holds the %s stream; waiting for it", self.holder, self.name)
                    waiting_said = True
                stop.wait(min(5.0, self.lease_seconds / 3))
        finally:
            try:
                lease_release(name=self.lease_name, holder=self.holder)
            except DatabaseError as exc:  # it expires on its own
                log.error("%s lease not released (%s)", self.name, type(exc).__name__)
            if self.on_stop is not None:
                self.on_stop()
            connections.close_all()

    @property
    def lease_name(self) -> str:
        return f"stream:{self.name}"

    def _lease(self) -> bool:
        try:
            close_old_connections()
            return lease_acquire(name=self.lease_name, holder=self.holder, seconds=self.lease_seconds)
        except DatabaseError as exc:
            log.error("%s lease unavailable (%s): %s", self.name, type(exc).__name__, exc)
            return False

    async def _main(self, stop: threading.Event) -> None:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{self.name}-apply") as worker:
            loop = asyncio.get_running_loop()

            async def handler(message) -> None:
                await loop.run_in_executor(worker, self._apply_one, message)

            stream = self.make_stream(handler)
            reader = asyncio.create_task(broker.stream_run(stream))
            try:
                while not stop.is_set() and not reader.done():
                    await asyncio.sleep(1)
                    held, then = await loop.run_in_executor(worker, self._tick, stream,
                                                            broker.stream_connection(stream))
                    if not held:
                        log.warning("%s: lost the %s lease; stopping the stream", self.holder, self.name)
                        break
                    if then is not None:
                        try:
                            await then
                        except Exception as exc:  # a send on a closing connection: the next tick retries
                            await loop.run_in_executor(worker, self._failed, f"{type(exc).__name__}: {exc}")
            finally:
                await broker.stream_stop(stream)
                try:
                    await asyncio.wait_for(reader, timeout=10)
                except (asyncio.TimeoutError, Exception) as exc:  # stopping: a late error is only logged
                    log.info("%s: stopped (%s)", self.name, type(exc).__name__)
                await loop.run_in_executor(worker, connections.close_all)  # the worker thread's, as it ends

    # -- in the worker thread ----------------------------------------------------------------

    def _apply_one(self, message) -> None:
        self.stats.messages += 1
        try:
            self.apply(message)
        except Exception as exc:  # one bad message must not end the stream
            self._failed(f"{type(exc).__name__}: {exc}")
            log.exception("%s message not applied", self.name)
            close_old_connections()

    def _tick(self, stream, connection: int | None) -> tuple[bool, Awaitable | None]:
        """Once a second: the lease, the heartbeat; catching up after every (re)connection,
        however brief the gap; then `on_tick`. (False, None) when the lease is lost."""
        connected = connection is not None
        reconnected = connected and connection != self.stats.connection
        if reconnected:
            log.info("%s: connected", self.name)
            self._caught_up()
        elif not connected and self.stats.connection is not None:
            log.warning("%s: disconnected; alpaca-py reconnects", self.name)
        self.stats.connection = connection
        try:
            close_old_connections()
            if not lease_acquire(name=self.lease_name, holder=self.holder, seconds=self.lease_seconds):
                return False, None
        except DatabaseError as exc:
            log.error("%s lease not renewed (%s): %s", self.name, type(exc).__name__, exc)
        then = None
        if self.on_tick is not None:
            try:
                then = self.on_tick(stream, connection)
            except Exception as exc:  # a database or broker fault: the next tick tries again
                self._failed(f"tick: {type(exc).__name__}: {exc}")
                log.exception("%s tick failed", self.name)
                close_old_connections()
        try:
            at = self.beat_at(connection) if self.beat_at is not None else (timezone.now() if connected else None)
            if at is not None:
                self._heartbeat(at=at, since_now=reconnected)
        except DatabaseError as exc:
            log.error("%s heartbeat not written (%s): %s", self.name, type(exc).__name__, exc)
        return True, then

    def _failed(self, error: str) -> None:
        self.stats.errors += 1
        self.stats.last_error, self.stats.last_error_at = error, timezone.now()

    def _caught_up(self) -> None:
        """Events sent while we were disconnected are never sent again: catch up now."""
        if self.on_connect is None:
            return
        try:
            self.on_connect()
        except Exception as exc:  # the monitor's cycles catch up too; the stream goes on
            self._failed(f"catching up: {type(exc).__name__}: {exc}")
            log.exception("%s: catching up after connecting failed", self.name)
            close_old_connections()

    def _heartbeat(self, *, at: datetime, since_now: bool) -> None:
        """started_at: connected since; finished_at: the last moment seen connected (or what
        `beat_at` says); cycles: messages applied."""
        now = timezone.now()
        fields = {"finished_at": at, "cycles": self.stats.messages, "errors": self.stats.errors,
                  "last_error": self.stats.last_error, "market_open": None}
        if since_now:
            fields["started_at"] = now
        if self.stats.last_error_at is not None:
            fields["last_error_at"] = self.stats.last_error_at
        if not Heartbeat.objects.filter(name=self.name).update(**fields):
            Heartbeat.objects.get_or_create(name=self.name, defaults=fields | {"started_at": now})
