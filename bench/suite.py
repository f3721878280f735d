"""One database's measurements, in a process of its own (Django settings are per process).

Started by bench.run with DATABASE_URL pointing at a freshly migrated bench database and
PAPER_EXCHANGE_URL at a paper exchange running in another process. Writes its figures as
JSON to --out. Never fails on a time: a figure is a figure.
"""

import argparse
import cProfile
import io
import json
import os
import pstats
import random
import re
import statistics
import sys
import threading
import time
from collections import Counter
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from string import ascii_uppercase

from bench import procs

ROOT = procs.ROOT
BENCH_VAR = ROOT / "var" / "bench"

SYMBOLS = [f"B{a}{b}" for a in ascii_uppercase for b in ascii_uppercase][:500]
API_SYMBOLS = [f"QA{a}" for a in ascii_uppercase[:20]]
MAX_SYMBOLS = 500
PRICE = Decimal("100")
QTY = Decimal("10")

EXCHANGE_RATE_LIMIT = int(os.environ.get("BENCH_EXCHANGE_RATE_LIMIT") or 0) or None
LONG_LEVELS = {"stop_loss": Decimal("95"), "take_profit": Decimal("110")}
SHORT_LEVELS = {"stop_loss": Decimal("105"), "take_profit": Decimal("90")}


def progress(message: str) -> None:
    sys.stderr.write(f"[bench {os.environ.get('BENCH_DB', '?')} {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def epoch(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def median(values):
    return statistics.median(values) if values else None


def path_kind(method: str, path: str) -> str:
    path = re.sub(r"^/v2/positions/[^/]+$", "/v2/positions/{symbol}", path)
    path = re.sub(r"^/v2/orders/[0-9a-fA-F-]{8,}$", "/v2/orders/{id}", path)
    return f"{method} {path}"


def is_long(symbol: str) -> bool:
    return SYMBOLS.index(symbol) % 2 == 0


def quote(symbol: str, mid: Decimal) -> dict:
    return {"symbol": symbol, "bid": mid - Decimal("0.01"), "ask": mid + Decimal("0.01")}


def crossing_quote(symbol: str) -> dict:
    """A quote past the stop (and not past the target) for the symbol's side."""
    return quote(symbol, Decimal("94") if is_long(symbol) else Decimal("106"))


# --- Instrumentation of the code under test (in this process only) --------------------------


class QueryCounter:
    """Every query the code runs, on the default connection and on those its worker threads
    open, with its time. Like Django's CaptureQueriesContext but unbounded (that one keeps only
    the last 9,000 queries) and across threads."""

    def __init__(self):
        self.queries: list[tuple[str, float]] = []

    def __call__(self, execute, sql, params, many, context):
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            self.queries.append((sql, time.perf_counter() - started))

    def __enter__(self):
        from django.db import connection
        from django.db.backends.signals import connection_created

        self._cm = connection.execute_wrapper(self)
        self._cm.__enter__()
        # the monitor works many positions in worker threads, each on its own connection
        connection_created.connect(self._watch, dispatch_uid=f"bench-{id(self)}")
        return self

    def _watch(self, sender, connection, **kwargs):
        if self not in connection.execute_wrappers:
            connection.execute_wrappers.append(self)

    def __exit__(self, *exc):
        from django.db.backends.signals import connection_created

        connection_created.disconnect(dispatch_uid=f"bench-{id(self)}")
        self._cm.__exit__(*exc)

    def top(self, n: int = 6) -> list[dict]:
        """The statements (parametrised SQL) that took the most time in total."""
        total, count = Counter(), Counter()
        for sql, seconds in self.queries:
            total[sql] += seconds
            count[sql] += 1
        return [{"ms": round(t * 1000), "count": count[sql], "sql": sql[:300]} for sql, t in total.most_common(n)]

    @property
    def captured_queries(self) -> list[dict]:
        return [{"sql": sql, "time": seconds} for sql, seconds in self.queries]


class HttpClock:
    """Time spent inside broker HTTP calls, by wrapping the broker module's session class."""

    def __init__(self):
        self.seconds = 0.0
        self.calls = 0

    def install(self):
        from trading import broker

        original = broker._TimeoutSession.request
        clock = self

        def timed(session, method, url, **kwargs):
            started = time.perf_counter()
            try:
                return original(session, method, url, **kwargs)
            finally:
                clock.seconds += time.perf_counter() - started
                clock.calls += 1

        broker._TimeoutSession.request = timed

    def reset(self):
        self.seconds, self.calls = 0.0, 0


HTTP = HttpClock()


# --- Database and exchange state ---------------------------------------------------------------


def reset_everything(control) -> None:
    from django.core.management import call_command

    call_command("flush", interactive=False, verbosity=0)
    control.reset()
    control.set_rate_limit(EXCHANGE_RATE_LIMIT)


def fresh_minute(control) -> None:
    """Each measurement starts with the request budget and the exchange's window unspent, so
    no figure pays for the requests of the one before it."""
    from trading.models import BrokerBudget

    BrokerBudget.objects.all().delete()
    control.reset_rate_limit_counts()


def seed_open_positions(n: int, control, *, symbols: int | None = None) -> dict:
    """n open positions over `symbols` symbols (default min(n, 500); even symbols long, odd
    short), with the broker holding each symbol's total so the monitor's exits are accepted."""
    from django.utils import timezone

    from trading.models import Position, PositionStatus, Protection, Side

    symbols = SYMBOLS[: symbols or min(n, MAX_SYMBOLS)]
    now = timezone.now()
    held = Counter()
    rows = []
    for i in range(n):
        symbol = symbols[i % len(symbols)]
        long = is_long(symbol)
        rows.append(Position(
            symbol=symbol, side=Side.LONG if long else Side.SHORT, quantity=QTY, entry_price=PRICE,
            **(LONG_LEVELS if long else SHORT_LEVELS), status=PositionStatus.OPEN,
            opened_at=now - timedelta(minutes=i % 600), protection=Protection.PROTECTED, protection_checked_at=now,
        ))
        held[symbol] += QTY if long else -QTY
    started = time.perf_counter()
    Position.objects.bulk_create(rows, batch_size=2000)
    control.set_quotes([quote(s, PRICE) for s in symbols])  # live quotes: re-stamped "now" when read
    for symbol in symbols:
        control.set_position(symbol, held[symbol], PRICE)
    return {"positions": n, "symbols": len(symbols), "seconds": time.perf_counter() - started}


# --- Monitor cycles -------------------------------------------------------------------------------


def run_cycle(control, *, capture: bool) -> dict:
    from risk.monitor import monitor_cycle

    control.clear_requests_log()
    HTTP.reset()
    started_epoch = time.time()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    if capture:
        with QueryCounter() as ctx:
            result = monitor_cycle()
        queries = ctx.captured_queries
    else:
        result = monitor_cycle()
        queries = None
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    log = control.requests_log()
    figures = {
        "wall": wall, "cpu": cpu, "http": HTTP.seconds, "started_epoch": started_epoch,
        "requests": len(log), "request_kinds": dict(Counter(path_kind(e["method"], e["path"]) for e in log)),
        "checked": result.checked, "actions": result.actions, "errors": result.errors, "skipped": result.skipped,
        "summary": result.summary(), "log": log,
    }
    if queries is not None:
        figures["queries"] = len(queries)
        figures["db"] = sum(float(q["time"]) for q in queries)
        figures["query_kinds"] = dict(Counter(_query_kind(q["sql"]) for q in queries).most_common(12))
        figures["top_sql"] = ctx.top()
    return figures


def _query_kind(sql: str) -> str:
    words = sql.split()
    verb = words[0].upper() if words else "?"
    table = next((w.strip('"`') for prev, w in zip(words, words[1:]) if prev.upper() in ("FROM", "INTO", "UPDATE")), "")
    return f"{verb} {table}".strip()


def idle_cycles(control, repeats: int) -> dict:
    fresh_minute(control)
    run_cycle(control, capture=False)  # warm-up: clients, heartbeat row, caches
    timed = [run_cycle(control, capture=False) for _ in range(repeats)]
    counted = run_cycle(control, capture=True)
    assert all(t["actions"] == 0 for t in timed + [counted]), [t["summary"] for t in timed]
    return {
        "wall": median([t["wall"] for t in timed]),
        "wall_all": [t["wall"] for t in timed],
        "cpu": median([t["cpu"] for t in timed]),
        "http": median([t["http"] for t in timed]),
        "queries": counted["queries"],
        "db": counted["db"],
        "query_kinds": counted["query_kinds"],
        "requests": counted["requests"],
        "request_kinds": counted["request_kinds"],
        "checked": counted["checked"],
        "summary": counted["summary"],
    }


def trigger_cycle(control, n: int, symbols_in_use: int) -> dict:
    """10% of the positions cross their stop at once (the symbols crossing hold 10% of them),
    under the exchange's rate limit and the console's request budget."""
    from django.conf import settings

    from trading.models import Position, PositionStatus

    crossing = SYMBOLS[: max(1, symbols_in_use // 10)]
    expected = Position.objects.filter(symbol__in=crossing, status=PositionStatus.OPEN).count()
    control.set_quotes([crossing_quote(s) for s in crossing])
    fresh_minute(control)
    figures = run_cycle(control, capture=True)
    log = figures.pop("log")
    exits = [e for e in log if e["method"] == "POST" and e["path"] == "/v2/orders"]
    last_exit = max((epoch(e["time"]) for e in exits), default=None)
    trading = [e for e in log if not e["path"].startswith("/v2/stocks/")]
    figures.update(
        crossing_positions=expected,
        crossing_symbols=len(crossing),
        exits=len(exits),
        trading_requests=len(trading),
        throttled=control.rate_limit().get("throttled", 0),
        cycle_budget=settings.BROKER_REQUESTS_PER_MINUTE * settings.MONITOR_INTERVAL_SECONDS // 60,
        closed=Position.objects.filter(symbol__in=crossing, status=PositionStatus.CLOSED).count(),
        to_last_exit=(last_exit - figures["started_epoch"]) if last_exit else None,
    )
    return figures


def seed_standalone_protection(control, symbols: list[str]) -> None:
    """One OCO per symbol for the symbol's whole holding, placed at the exchange by "the trading
    service" (client ids not ours): the positions were adopted from the broker's holdings with
    standalone protection. Alpaca refuses a second bracket in a symbol while the first's legs
    work (its wash-trade rule), so twenty brackets a symbol can't happen there; this can."""
    import requests

    positions = control.state()["positions"]
    session = requests.Session()
    session.headers.update({"APCA-API-KEY-ID": "bench", "APCA-API-SECRET-KEY": "bench"})
    control.set_rate_limit(None)  # seeding is not measured
    for symbol in symbols:
        qty = Decimal(str(positions[symbol]["qty"]))
        long = qty > 0
        body = {"symbol": symbol, "qty": str(abs(qty)), "side": "sell" if long else "buy", "type": "limit",
                "time_in_force": "gtc", "order_class": "oco", "client_order_id": f"service-oco-{symbol}",
                "limit_price": "110" if long else "90",
                "take_profit": {"limit_price": "110" if long else "90"},
                "stop_loss": {"stop_price": "95" if long else "105"}}
        answer = session.post(f"{control.url}/v2/orders", json=body, timeout=30)
        answer.raise_for_status()
    control.set_rate_limit(EXCHANGE_RATE_LIMIT)


def _wait_reconciled(proc, timeout: float = 300) -> None:
    """Until runmonitor's start-up reconciliation (beside its cycles) is on record."""
    from risk.models import Heartbeat

    deadline = time.monotonic() + timeout
    while not Heartbeat.objects.filter(name="monitor", last_reconcile_at__isnull=False).exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("runmonitor never reconciled")
        time.sleep(0.2)


def _wait_quiet(control, seconds: float = 1.5, timeout: float = 300) -> None:
    """Until the exchange has seen no request for `seconds`."""
    deadline = time.monotonic() + timeout
    seen = -1
    while time.monotonic() < deadline:
        count = len(control.requests_log())
        if count == seen:
            return
        seen = count
        time.sleep(seconds)


def flatten_everything(control, env: dict, n: int, tag: str) -> dict:
    """Flatten everything as the admin does it (in this process: the web), with `runmonitor`
    (default 30 s interval) carrying on what the request budget holds back; until every
    position is closed. Under the exchange's rate limit and the console's budget."""
    from django.conf import settings

    from risk.flatten import flatten
    from trading.models import Position, PositionStatus

    reset_everything(control)
    seed = seed_open_positions(n, control, symbols=min(n // 2, MAX_SYMBOLS))  # 100 over 50, then 500
    symbols = SYMBOLS[: seed["symbols"]]
    seed_standalone_protection(control, symbols)
    log_path = BENCH_VAR / f"runmonitor-flatten-{tag}.log"
    initial = _heartbeat_cycles()
    with open(log_path, "wb") as log:
        proc = procs.start([procs.PYTHON, "manage.py", "runmonitor"], env=env, stdout=log, stderr=log)
    try:
        _wait_for_cycle(initial, proc, timeout=300)  # started: first cycle done
        _wait_reconciled(proc)
        _wait_quiet(control, seconds=3)  # and the protection audit after the reconciliation
        fresh_minute(control)
        control.clear_requests_log()
        started = time.perf_counter()
        result = flatten(user=None)
        returned = time.perf_counter() - started
        states = Counter(o.state for o in result.outcomes)
        deadline = time.monotonic() + 900
        while Position.objects.active().exists() and time.monotonic() < deadline:
            time.sleep(0.25)
        flat = time.perf_counter() - started
    finally:
        procs.stop(proc)
    limit = control.rate_limit()
    log = control.requests_log()
    trading = [e for e in log if not e["path"].startswith("/v2/stocks/")]
    return {
        "positions": n, "symbols": seed["symbols"], "open_orders": len(symbols),
        "requests": limit.get("requests", len(trading)), "throttled": limit.get("throttled", 0),
        "request_kinds": dict(Counter(path_kind(e["method"], e["path"]) for e in trading)),
        "flatten_call": returned, "until_flat": flat, "states": dict(states),
        "left_active": Position.objects.active().count(),
        "closed": Position.objects.filter(status=PositionStatus.CLOSED, exit_price__isnull=False).count(),
        "needs_review": Position.objects.filter(needs_review=True).count(),
        "budget": settings.BROKER_REQUESTS_PER_MINUTE, "exchange_limit": EXCHANGE_RATE_LIMIT,
        "cancelled_orders": result.cancelled_orders, "errors": result.errors,
    }


def housekeeping_runs(control) -> dict:
    """The monitor's housekeeping (reconciliation + protection audit, run by runmonitor at
    start-up and every RECONCILE_EVERY_N_CYCLES cycles), in-process, under the `alert` policy
    (see README of the bench: the seeded positions have no stop orders at the broker, so the
    audit finds every one unprotected; `protect` would place an OCO for each). First run:
    one alert per position; second run: the steady state (alerts are repeated at most hourly)."""
    from django.test.utils import override_settings

    from risk.monitor import housekeeping

    runs = []
    with override_settings(PROTECTION_POLICY="alert"):
        for _ in range(2):
            fresh_minute(control)
            control.clear_requests_log()
            HTTP.reset()
            wall0, cpu0 = time.perf_counter(), time.process_time()
            with QueryCounter() as ctx:
                housekeeping()
                for thread in threading.enumerate():  # its sweep of undelivered alerts: counted every time
                    if thread.name == "alerts-pending":
                        thread.join(10)
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
            log = control.requests_log()
            runs.append({"wall": wall, "cpu": cpu, "http": HTTP.seconds, "queries": len(ctx.queries),
                         "db": sum(t for _, t in ctx.queries), "requests": len(log),
                         "request_kinds": dict(Counter(path_kind(e["method"], e["path"]) for e in log)),
                         "query_kinds": dict(Counter(_query_kind(q) for q, _ in ctx.queries).most_common(8)),
                         "top_sql": ctx.top()})
    time.sleep(0.5)  # let the alert-delivery thread it starts finish
    return {"first": runs[0], "steady": runs[1]}


def profile_cycle(control, crossing: list[str] = ()) -> str:
    """cProfile of one cycle; with `crossing`, those symbols' quotes cross their stops first."""
    from risk.monitor import monitor_cycle

    if crossing:
        control.set_quotes([crossing_quote(s) for s in crossing])
    control.clear_requests_log()
    profiler = cProfile.Profile()
    profiler.enable()
    monitor_cycle()
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("cumulative").print_stats(30)
    stats.sort_stats("tottime").print_stats(20)
    return out.getvalue()


# --- The monitor as a real process ----------------------------------------------------------------


def runmonitor_once_rss(control, env: dict, tag: str) -> dict:
    """Peak RSS of `runmonitor --once` (one no-action cycle), read for that process alone."""
    log_path = BENCH_VAR / f"runmonitor-once-{tag}.log"
    fresh_minute(control)
    with open(log_path, "wb") as log:
        started = time.perf_counter()
        proc = procs.start([procs.PYTHON, "manage.py", "runmonitor", "--once"], env=env, stdout=log, stderr=log)
    code, usage = procs.wait_rusage(proc, timeout=300)
    return {"exit_code": code, "seconds": time.perf_counter() - started, "maxrss_kb": usage.ru_maxrss, "log": str(log_path)}


def _heartbeat_cycles() -> int:
    from risk.models import Heartbeat

    beat = Heartbeat.objects.filter(name="monitor").values_list("cycles", flat=True).first()
    return beat or 0


def _wait_for_cycle(after: int, proc, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"runmonitor exited with {proc.returncode}")
        cycles = _heartbeat_cycles()
        if cycles > after:
            return cycles
        time.sleep(0.05)
    raise TimeoutError("runmonitor finished no cycle in time")


def detection_latency(control, env: dict, *, interval: float, samples: int, symbols: list[str], tag: str) -> dict:
    """Quote crosses a stop at a random moment of the monitor's interval; latency = the exit
    order's arrival at the exchange (its request-log time) minus the moment the quote was set."""
    if samples <= 0:
        return {"interval": interval, "samples": []}
    log_path = BENCH_VAR / f"runmonitor-{tag}-{interval:g}s.log"
    fresh_minute(control)
    rng = random.Random(7)
    latencies, misses = [], 0
    initial = _heartbeat_cycles()
    with open(log_path, "wb") as log:
        proc = procs.start([procs.PYTHON, "manage.py", "runmonitor", "--interval", str(interval)],
                           env=env, stdout=log, stderr=log)
    try:
        _wait_for_cycle(initial, proc, timeout=120)  # started, first cycle done
        for symbol in symbols[:samples]:
            time.sleep(rng.uniform(0, interval))  # cross at a random phase of the interval
            control.clear_requests_log()
            before = _heartbeat_cycles()
            crossed_at = time.time()
            control.set_quotes([crossing_quote(symbol)])
            deadline = time.monotonic() + interval + 30
            arrival = None
            while arrival is None and time.monotonic() < deadline:
                time.sleep(0.1)
                for entry in control.requests_log():
                    body = entry.get("body") or {}
                    if entry["method"] == "POST" and entry["path"] == "/v2/orders" and body.get("symbol") == symbol:
                        arrival = epoch(entry["time"])
                        break
            if arrival is None:
                misses += 1
            else:
                latencies.append(arrival - crossed_at)
            _wait_for_cycle(before, proc, timeout=interval + 120)  # the cycle that sent the exit has ended
    finally:
        procs.stop(proc, timeout=interval + 60)  # SIGTERM: the loop ends after its current cycle
    return {"interval": interval, "samples": latencies, "misses": misses, "median": median(latencies),
            "max": max(latencies) if latencies else None, "log": str(log_path)}


# --- Admin ----------------------------------------------------------------------------------------------


def superuser():
    from django.contrib.auth import get_user_model

    User = get_user_model()
    user = User.objects.filter(username="bench").first()
    return user or User.objects.create_superuser("bench", "bench@localhost", "bench-password-not-secret")


def measure_page(client, url: str, repeats: int = 3) -> dict:
    warm = client.get(url)  # warm-up: templates, caches
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        client.get(url)
        times.append(time.perf_counter() - started)
    with QueryCounter() as ctx:
        counted = client.get(url)
    slowest = sorted(ctx.captured_queries, key=lambda q: -float(q["time"]))[:3]
    return {"url": url, "status": counted.status_code, "warm_status": warm.status_code, "bytes": len(counted.content),
            "median": median(times), "all": times, "queries": len(ctx.captured_queries),
            "db": sum(float(q["time"]) for q in ctx.captured_queries),
            "slowest": [{"ms": round(float(q["time"]) * 1000, 1), "sql": q["sql"][:600]} for q in slowest]}


def admin_pages(label: str) -> dict:
    from django.test import Client
    from django.utils import timezone

    client = Client()
    client.force_login(superuser())
    today = timezone.localdate()
    day = (today - timedelta(days=1)).isoformat()
    pages = {
        "console index (/admin/)": "/admin/",
        "positions changelist": "/admin/trading/position/",
        "changelist, search one symbol": f"/admin/trading/position/?q={SYMBOLS[0]}",
        "changelist, closed + STOP_LOSS_HIT": "/admin/trading/position/?status__exact=closed&close_reason__exact=STOP_LOSS_HIT",
        "close-reason review (default 30 days)": "/admin/trading/position/close-reasons/",
        "close-reason review (1 day)": f"/admin/trading/position/close-reasons/?start={day}&end={today.isoformat()}",
    }
    results = {}
    for name, url in pages.items():
        progress(f"admin {label}: {name}")
        results[name] = measure_page(client, url)
    return results


def seed_closed_positions(total: int) -> dict:
    """`total` closed positions, closed evenly over the last 29.5 days (all inside the close-reason
    page's default period), with a realistic mix of close reasons. SQLite: executemany in one
    transaction; PostgreSQL: COPY."""
    from django.db import connection, transaction
    from django.utils import timezone

    from trading.models import CloseReason, Position

    now = timezone.now()
    span = timedelta(days=29.5)
    steps = 20_000
    fields = [f for f in Position._meta.concrete_fields if not f.primary_key]
    prep = {f.name: f for f in fields}

    def p(name, value):
        return prep[name].get_db_prep_save(value, connection)

    closed_at = [p("closed_at", now - span + span * k / steps) for k in range(steps)]
    opened_at = [p("opened_at", now - span + span * k / steps - timedelta(hours=2)) for k in range(steps)]
    mix = ([CloseReason.STOP_LOSS_HIT] * 40 + [CloseReason.TAKE_PROFIT_HIT] * 40 + [CloseReason.MANUAL] * 10
           + [CloseReason.EMERGENCY_STOP] * 5 + [CloseReason.MARKET_CLOSE] * 4 + [None])
    exit_for = {  # (reason, long) -> exit price
        (CloseReason.STOP_LOSS_HIT, True): "95", (CloseReason.STOP_LOSS_HIT, False): "105",
        (CloseReason.TAKE_PROFIT_HIT, True): "110", (CloseReason.TAKE_PROFIT_HIT, False): "90",
    }
    dec = {name: {v: p(name, Decimal(v)) for v in ("10", "100", "95", "105", "110", "90", "101", "99")}
           for name in ("quantity", "entry_price", "stop_loss", "take_profit", "exit_price")}
    constant = {f.name: f.get_db_prep_save(f.get_default(), connection) for f in fields}
    constant.update(status=p("status", "closed"), protection=p("protection", "protected"), adopted=False,
                    is_test=False, lock_owner="", review_note="", entry_order=None, protection_checked_at=None,
                    locked_until=None)
    names = [f.name for f in fields]
    columns = [f.column for f in fields]

    def rows():
        for i in range(total):
            k = i * steps // total
            long = i % 2 == 0
            reason = mix[i % len(mix)]
            row = dict(constant)
            row.update(
                symbol=SYMBOLS[i % MAX_SYMBOLS], side="long" if long else "short",
                quantity=dec["quantity"]["10"], entry_price=dec["entry_price"]["100"],
                stop_loss=dec["stop_loss"]["95" if long else "105"], take_profit=dec["take_profit"]["110" if long else "90"],
                closed_at=closed_at[k], opened_at=opened_at[k], updated_at=closed_at[k],
                exit_price=dec["exit_price"][exit_for.get((reason, long), "101" if long else "99")],
                close_reason=reason, needs_review=reason is None,
            )
            yield tuple(row[name] for name in names)

    started = time.perf_counter()
    table = Position._meta.db_table
    with transaction.atomic():
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cols = ", ".join(connection.ops.quote_name(c) for c in columns)
                with cursor.cursor.copy(f"COPY {table} ({cols}) FROM STDIN") as copy:
                    for row in rows():
                        copy.write_row(row)
            else:
                cols = ", ".join(connection.ops.quote_name(c) for c in columns)
                sql = f"INSERT INTO {table} ({cols}) VALUES ({', '.join('?' * len(columns))})"
                batch = []
                for row in rows():
                    batch.append(row)
                    if len(batch) == 50_000:
                        cursor.cursor.executemany(sql, batch)
                        batch = []
                if batch:
                    cursor.cursor.executemany(sql, batch)
    inserted = time.perf_counter() - started
    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {table}" if connection.vendor == "postgresql" else "ANALYZE")
    return {"rows": total, "insert_seconds": inserted, "analyze_seconds": time.perf_counter() - started,
            "method": "COPY" if connection.vendor == "postgresql" else "executemany"}


# --- API ---------------------------------------------------------------------------------------------------


def api_throughput(control, env: dict, *, requests_total: int, clients: int, workers: int) -> dict:
    import requests
    from rest_framework.authtoken.models import Token

    token, _ = Token.objects.get_or_create(user=superuser())
    control.set_quotes([quote(s, PRICE) for s in API_SYMBOLS])
    port = procs.free_port()
    log_path = BENCH_VAR / f"gunicorn-{os.environ.get('BENCH_DB', 'db')}.log"
    api_env = {**env, "DJANGO_DEBUG": "false", "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
               "DJANGO_SECURE_SSL_REDIRECT": "false", "LOG_LEVEL": "WARNING",
               "DJANGO_SETTINGS_MODULE": "bench.api_settings",  # throttling raised: see that module
               "BROKER_REQUESTS_PER_MINUTE": "0"}  # it measures the web server, not the broker's limit
    control.set_rate_limit(None)
    # 400 brackets on 20 symbols: Alpaca refuses a second bracket in a symbol while the first one's
    # legs work (its wash-trade rule), and the account's buying power is spent by the positions the
    # runs before seeded; with either rule on nearly all would be refused (422s).
    control.set_rules(wash_trade=False, buying_power=False)
    with open(log_path, "wb") as log:
        proc = procs.start([procs.PYTHON, "-m", "gunicorn", "catalyst.wsgi:application", "--bind", f"127.0.0.1:{port}",
                            "--workers", str(workers), "--timeout", "60", "--graceful-timeout", "10"],
                           env=api_env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}/api/v1/orders/test"
    headers = {"Authorization": f"Token {token.key}"}

    def body(i: int) -> dict:
        buy = i % 2 == 0
        return {"symbol": API_SYMBOLS[i % len(API_SYMBOLS)], "quantity": "1", "side": "buy" if buy else "sell",
                "stop_loss": "95" if buy else "105", "take_profit": "110" if buy else "90"}

    try:
        procs.wait_port(port, timeout=60, proc=proc)
        lock = threading.Lock()
        counter = iter(range(10**9))
        latencies, statuses, errors = [], Counter(), []

        def worker(limit: int, record: bool):
            session = requests.Session()
            while True:
                with lock:
                    i = next(counter)
                if i >= limit:
                    return
                started = time.perf_counter()
                try:
                    response = session.post(url, json=body(i), headers=headers, timeout=60)
                    status = response.status_code
                    detail = response.text[:200] if status != 201 else ""
                except requests.RequestException as exc:
                    status, detail = "exception", f"{type(exc).__name__}: {exc}"[:200]
                elapsed = time.perf_counter() - started
                if record:
                    with lock:
                        latencies.append(elapsed)
                        statuses[status] += 1
                        if status != 201 and len(errors) < 5:
                            errors.append(f"{status}: {detail}")

        def run(limit: int, record: bool) -> float:
            threads = [threading.Thread(target=worker, args=(limit, record), daemon=True) for _ in range(clients)]
            started = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=600)
            return time.perf_counter() - started

        warmup = 2 * clients
        run(warmup, record=False)  # every worker imports, connects and warms its caches
        counter = iter(range(10**9))
        elapsed = run(requests_total, record=True)
    finally:
        procs.stop(proc, timeout=20)
    ordered = sorted(latencies)

    def pct(q):
        return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else None

    return {"requests": len(latencies), "clients": clients, "workers": workers, "seconds": elapsed,
            "rps": len(latencies) / elapsed if elapsed else None, "p50": pct(0.50), "p95": pct(0.95), "max": pct(1.0),
            "statuses": {str(k): v for k, v in statuses.items()},
            "errors": sum(v for k, v in statuses.items() if k != 201), "error_samples": errors,
            "log": str(log_path)}


# --- Main ----------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--sizes", required=True)
    parser.add_argument("--idle-repeats", type=int, default=3)
    parser.add_argument("--latency", default="1:5,30:2", help="interval:samples,...")
    parser.add_argument("--admin-rows", type=int, default=1_000_000)
    parser.add_argument("--api-requests", type=int, default=400)
    parser.add_argument("--api-clients", type=int, default=8)
    parser.add_argument("--api-workers", type=int, default=2 * (os.cpu_count() or 1) + 1)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--skip", default="", help="comma list of: latency,admin,api,flatten,stream,quotes")
    parser.add_argument("--quote-sizes", default="100,1000,10000",
                        help="positions (over 500 symbols) for the quote-stream figure")
    parser.add_argument("--quote-samples", default="30:5", help="streamed:polled crossings per size")
    args = parser.parse_args()
    skip = {s for s in args.skip.split(",") if s}

    import django

    django.setup()
    from django.db import connection

    from paper_exchange.control import PaperExchangeControl

    HTTP.install()
    control = PaperExchangeControl(os.environ["PAPER_EXCHANGE_URL"], timeout=60)
    # The monitor processes run with the `alert` protection policy: the seeded positions have no
    # stop orders at the broker, and `protect` would place an OCO for every one at start-up.
    env = {**os.environ, "PROTECTION_POLICY": "alert"}
    sizes = [int(s) for s in args.sizes.split(",") if s]
    latency_plan = [(float(i), int(n)) for i, n in (part.split(":") for part in args.latency.split(",") if part)]
    results = {"db": os.environ.get("BENCH_DB"), "vendor": connection.vendor, "sizes": {}, "started": time.time()}
    with connection.cursor() as cursor:
        cursor.execute("SELECT version()" if connection.vendor == "postgresql" else "SELECT sqlite_version()")
        results["server_version"] = cursor.fetchone()[0]

    def save():
        Path(args.out).write_text(json.dumps(results, indent=1, default=str))

    for n in sizes:
        progress(f"{n} positions: seeding")
        reset_everything(control)
        size = results["sizes"][str(n)] = {"seed": seed_open_positions(n, control)}
        progress(f"{n} positions: no-action cycles")
        size["idle"] = idle_cycles(control, args.idle_repeats)
        if args.profile and n == max(sizes):
            size["profile_idle"] = profile_cycle(control)
        progress(f"{n} positions: housekeeping (reconcile + protection audit)")
        size["housekeeping"] = housekeeping_runs(control)
        progress(f"{n} positions: runmonitor --once (peak RSS)")
        size["once"] = runmonitor_once_rss(control, env, f"{results['db']}-{n}")
        progress(f"{n} positions: cycle with 10% crossing their stop")
        size["trigger"] = trigger_cycle(control, n, size["seed"]["symbols"])
        size["trigger_post_idle"] = {k: v for k, v in run_cycle(control, capture=True).items() if k != "log"}
        if "latency" not in skip:
            spare = [s for s in SYMBOLS[: size["seed"]["symbols"]] if s not in SYMBOLS[: max(1, size["seed"]["symbols"] // 10)]]
            rng = random.Random(n)
            rng.shuffle(spare)
            size["latency"] = []
            for interval, samples in latency_plan:
                progress(f"{n} positions: detection latency, runmonitor --interval {interval:g} ({samples} samples)")
                take, spare = spare[:samples], spare[samples:]
                size["latency"].append(detection_latency(control, env, interval=interval, samples=samples,
                                                         symbols=take, tag=f"{results['db']}-{n}"))
        else:
            spare = [s for s in SYMBOLS[: size["seed"]["symbols"]] if s not in SYMBOLS[: max(1, size["seed"]["symbols"] // 10)]]
        if args.profile and n == max(sizes):
            progress(f"{n} positions: profiling a cycle that exits the positions of 5 symbols")
            size["profile_trigger"] = profile_cycle(control, crossing=spare[:5])
        if "flatten" not in skip:
            progress(f"{n} positions: flatten everything under the rate limit, runmonitor carrying on")
            size["flatten"] = flatten_everything(control, env, n, f"{results['db']}-{n}")
        save()

    if "admin" not in skip:
        progress("admin: pages before the bulk seed")
        results["admin_small"] = admin_pages("before")
        progress(f"admin: seeding {args.admin_rows:,} closed positions")
        results["admin_seed"] = seed_closed_positions(args.admin_rows)
        from trading.models import Position

        results["admin_rows_total"] = Position.objects.count()
        results["admin"] = admin_pages(f"{args.admin_rows:,} rows")
        save()

    if "stream" not in skip:
        from bench import broker_events
        from django.conf import settings

        progress("broker events: leg fill -> position closed, with the stream")
        reset_everything(control)
        results["broker_events"] = {"stream": broker_events.with_stream(control, env, samples=10)}
        progress(f"broker events: without the stream (monitor every {settings.MONITOR_INTERVAL_SECONDS}s)")
        reset_everything(control)
        results["broker_events"]["no_stream"] = broker_events.without_stream(
            control, env, samples=10, interval=settings.MONITOR_INTERVAL_SECONDS)
        save()

    if "quotes" not in skip:
        from bench import quotes
        from django.conf import settings

        streamed_samples, polled_samples = (int(x) for x in args.quote_samples.split(":"))
        results["quotes"] = {}
        for n in (int(s) for s in args.quote_sizes.split(",") if s):
            progress(f"quotes: {n} positions over 500 symbols, 30 streamed, monitor every "
                     f"{settings.MONITOR_INTERVAL_SECONDS}s")
            results["quotes"][str(n)] = quotes.quotes_figure(
                control, env, n=n, streamed_samples=streamed_samples, polled_samples=polled_samples,
                interval=settings.MONITOR_INTERVAL_SECONDS)
            save()

    if "api" not in skip:
        progress(f"api: {args.api_requests} test orders, {args.api_clients} clients, gunicorn x{args.api_workers}")
        results["api"] = api_throughput(control, env, requests_total=args.api_requests, clients=args.api_clients,
                                        workers=args.api_workers)
    results["finished"] = time.time()
    save()
    progress("done")


if __name__ == "__main__":
    import signal

    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))  # run the finally below
    try:
        main()
    finally:
        procs.stop_all()
