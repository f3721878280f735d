"""`python -m bench`: seed a fresh database, run the monitor and the console against the paper
exchange over HTTP, print tables.

    python -m bench                               # SQLite, then PostgreSQL; 100, 1,000, 10,000 positions
    python -m bench --db sqlite --quick           # a fast smoke run (100 positions, small admin/API runs)
    python -m bench --sizes 100,1000 --db postgres
    python -m bench --write-docs                  # also write docs/bench-results.md

Per database: a fresh database (var/bench/catalyst_bench.sqlite3, or PostgreSQL `catalyst_bench`
on 127.0.0.1, dropped and created), `manage.py migrate`, a paper exchange in its own process
on 127.0.0.1, then bench.suite in a child process (Django settings are per process). Every
process started is stopped at the end, also on Ctrl-C or an error; the bench database is
removed at the end unless --keep-db.

It is a benchmark, not a test: it prints figures and the targets they meet or miss, and exits
0 whatever the times (non-zero only when the bench itself could not run).
"""

import argparse
import json
import os
import signal
import platform
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from bench import procs

ROOT = procs.ROOT
BENCH_VAR = ROOT / "var" / "bench"
SQLITE_PATH = BENCH_VAR / "catalyst_bench.sqlite3"
PG_DB = "catalyst_bench"
DOCS = ROOT / "docs" / "bench-results.md"

# Settings the bench must control; anything else comes from the caller's environment.
CLEARED = ("ALPACA_API_KEY", "ALPACA_SECRET_KEY", "ALPACA_TRADING_URL", "ALPACA_DATA_URL", "ALERT_WEBHOOK_URL",
           "ALERT_APPRISE_URLS", "PROMETHEUS_MULTIPROC_DIR",
           "ALERT_EMAIL_TO", "REDIS_URL", "MONITOR_INTERVAL_SECONDS", "MONITOR_MARKET_HOURS_ONLY",
           "BROKER_QUOTE_BATCH_SIZE", "DATABASE_CONN_MAX_AGE", "MONITOR_EXIT_FILL_WAIT_SECONDS",
           "BROKER_REQUESTS_PER_MINUTE", "BROKER_READ_SHARE_PERCENT", "BROKER_PROTECT_SHARE_PERCENT",
           "BROKER_BUDGET_WAIT_SECONDS", "BROKER_RETRY_ATTEMPTS", "BROKER_RETRY_WAIT_SECONDS")


def log(message: str) -> None:
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def base_env(database_url: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    env.update(
        DATABASE_URL=database_url,
        CATALYST_ENV_FILE="",  # never a developer's .env
        DJANGO_SETTINGS_MODULE="catalyst.settings",
        DJANGO_DEBUG="false",
        DJANGO_SECRET_KEY="bench-only-secret-key-not-for-production-0123456789abcdef",
        DJANGO_ALLOWED_HOSTS="127.0.0.1,testserver",
        DJANGO_SECURE_SSL_REDIRECT="false",
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
    )
    return env


# --- Databases --------------------------------------------------------------------------------------


def _pg_admin(pg_base: str):
    import psycopg

    return psycopg.connect(f"{pg_base}/postgres", autocommit=True)


def db_create(kind: str, pg_base: str) -> str:
    if kind == "sqlite":
        BENCH_VAR.mkdir(parents=True, exist_ok=True)
        db_remove(kind, pg_base)
        return f"sqlite:///{SQLITE_PATH}"
    with _pg_admin(pg_base) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{PG_DB}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{PG_DB}"')
    return f"{pg_base}/{PG_DB}"


def db_remove(kind: str, pg_base: str) -> None:
    if kind == "sqlite":
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{SQLITE_PATH}{suffix}").unlink(missing_ok=True)
        return
    with _pg_admin(pg_base) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{PG_DB}" WITH (FORCE)')


def migrate(env: dict) -> float:
    started = time.perf_counter()
    with open(BENCH_VAR / f"migrate-{env.get('BENCH_DB', 'db')}.log", "wb") as out:
        subprocess.run([procs.PYTHON, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True,
                       stdout=out)
    return time.perf_counter() - started


# --- One database ---------------------------------------------------------------------------------------


def run_database(kind: str, args) -> dict:
    url = db_create(kind, args.pg_url)
    log(f"{kind}: fresh database {url}")
    exchange = None
    try:
        env = base_env(url)
        env["BENCH_DB"] = kind
        log(f"{kind}: migrate ({migrate(env):.1f}s)")
        exchange, exchange_url = procs.start_exchange(env, BENCH_VAR / f"exchange-{kind}.log", args.rate_limit)
        env["PAPER_EXCHANGE_URL"] = exchange_url
        env["BENCH_EXCHANGE_RATE_LIMIT"] = str(args.rate_limit)
        log(f"{kind}: paper exchange at {exchange_url}, {args.rate_limit or 'no'} trading requests a minute")
        out = BENCH_VAR / f"results-{kind}.json"
        out.unlink(missing_ok=True)
        child_log = BENCH_VAR / f"suite-{kind}.log"
        command = [procs.PYTHON, "-m", "bench.suite", "--out", str(out), "--sizes", ",".join(map(str, args.sizes)),
                   "--latency", args.latency, "--admin-rows", str(args.admin_rows),
                   "--api-requests", str(args.api_requests), "--api-clients", str(args.api_clients),
                   "--api-workers", str(args.api_workers), "--skip", args.skip,
                   "--quote-sizes", ",".join(map(str, args.quote_sizes)), "--quote-samples", args.quote_samples]
        if args.profile:
            command.append("--profile")
        with open(child_log, "wb") as stdout:  # the monitor's log lines; progress goes to stderr
            child = procs.start(command, env=env, stdout=stdout)
        code = child.wait()
        procs.stop(child)
        results = json.loads(out.read_text()) if out.exists() else {"db": kind}
        results["exit_code"] = code
        results["suite_log"] = str(child_log)
        if code:
            log(f"{kind}: the suite exited with {code}; partial results kept. See {child_log}")
        return results
    finally:
        if exchange is not None:
            procs.stop(exchange)
        if not args.keep_db:
            db_remove(kind, args.pg_url)


# --- Reporting ---------------------------------------------------------------------------------------------


def ms(seconds) -> str:
    return "-" if seconds is None else f"{seconds * 1000:,.0f}"


def sec(seconds) -> str:
    return "-" if seconds is None else f"{seconds:.2f}"


def table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" if i else "---" for i in range(len(headers))) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def report(results: dict) -> str:
    kind = results.get("db")
    parts = [f"### {kind} ({results.get('vendor', '?')} {results.get('server_version', '')})"]
    sizes = results.get("sizes", {})
    if sizes:
        rows = []
        for n, s in sizes.items():
            idle, trig, once = s.get("idle", {}), s.get("trigger", {}), s.get("once", {})
            closed = trig.get("crossing_positions") or 0
            extra_q = (trig.get("queries", 0) - idle.get("queries", 0)) / closed if closed else None
            rows.append([
                f"{int(n):,}", s["seed"]["symbols"],
                ms(idle.get("wall")), ms(idle.get("cpu")), ms(idle.get("http")), idle.get("queries", "-"),
                idle.get("requests", "-"),
                f"{trig.get('closed', '?')}/{closed} · {trig.get('exits', '?')}/{trig.get('crossing_symbols', '?')}",
                ms(trig.get("to_last_exit")), ms(trig.get("wall")),
                trig.get("queries", "-"), "-" if extra_q is None else f"{extra_q:.1f}",
                f"{trig.get('trading_requests', '-')} · {trig.get('throttled', '-')}",
                f"{once.get('maxrss_kb', 0) / 1024:.0f}" if once.get("maxrss_kb") else "-",
            ])
        parts.append("**Monitor cycle** (idle = nothing to do, median of 3 after a warm-up; trigger = 10% of positions "
                     "cross their stop, the crossing symbols' positions exited netted, one order per symbol; CPU = the "
                     "monitor process's own CPU time, HTTP = time inside broker calls; under the exchange's rate limit "
                     "and the request budget)\n")
        parts.append(table(["positions", "symbols", "idle wall ms", "idle CPU ms", "idle HTTP ms", "idle queries",
                            "idle requests", "trigger: positions closed · exit orders / crossing symbols",
                            "trigger: start→last exit ms", "trigger cycle ms", "trigger queries",
                            "queries/position closed", "trigger trading requests · 429s",
                            "runmonitor --once peak RSS MB (start-up housekeeping + 1 cycle)"], rows))
        kinds = []
        for n, s in sizes.items():
            idle, trig = s.get("idle", {}), s.get("trigger", {})
            kinds.append([f"{int(n):,}", ", ".join(f"{k} ×{v}" for k, v in sorted(idle.get("request_kinds", {}).items())),
                          ", ".join(f"{k} ×{v}" for k, v in sorted(trig.get("request_kinds", {}).items()))])
        parts.append("\n**Broker requests per cycle**\n")
        parts.append(table(["positions", "idle cycle", "trigger cycle"], kinds))
        hk_rows = []
        for n, s in sizes.items():
            hk = s.get("housekeeping")
            if hk:
                for label in ("first", "steady"):
                    r = hk[label]
                    hk_rows.append([f"{int(n):,}", label, ms(r["wall"]), ms(r["cpu"]), ms(r["http"]), r["queries"],
                                    r["requests"], ", ".join(f"{k} ×{v}" for k, v in sorted(r["request_kinds"].items()))])
        if hk_rows:
            parts.append("\n**Housekeeping** (`risk.monitor.housekeeping`: reconciliation + protection audit, run by "
                         "runmonitor at start-up and every RECONCILE_EVERY_N_CYCLES cycles; in-process, policy `alert`; "
                         "first = every seeded position alerted as unprotected, steady = the next run)\n")
            parts.append(table(["positions", "run", "wall ms", "CPU ms", "HTTP ms", "queries", "requests",
                                "request kinds"], hk_rows))
        lat_rows = []
        for n, s in sizes.items():
            for lat in s.get("latency", []):
                samples = lat.get("samples") or []
                lat_rows.append([f"{int(n):,}", f"{lat['interval']:g} s", len(samples) + lat.get("misses", 0),
                                 sec(lat.get("median")), sec(lat.get("max")), lat.get("misses", 0),
                                 ", ".join(f"{x:.2f}" for x in samples)])
        if lat_rows:
            parts.append("\n**Detection latency** (`manage.py runmonitor --interval I` as a process; quote crosses a stop "
                         "at a random moment; until the exit order reaches the exchange)\n")
            parts.append(table(["positions", "interval", "samples", "median s", "max s", "missed", "all samples s"],
                               lat_rows))
    flat_rows = []
    for n, s in sizes.items():
        f = s.get("flatten")
        if f:
            flat_rows.append([f"{int(n):,}", f["symbols"], f["open_orders"], f["requests"], f["throttled"],
                              sec(f["flatten_call"]), sec(f["until_flat"]), f"{f['closed']}/{f['positions']}",
                              f["needs_review"], ", ".join(f"{k} ×{v}" for k, v in sorted(f["request_kinds"].items()))])
    if flat_rows:
        parts.append(f"\n**Flatten everything** (`risk.flatten.flatten` in the bench process, as the admin runs it, "
                     f"`runmonitor` at its default 30 s interval carrying on; positions adopted from the broker's "
                     f"holdings with one standalone OCO per symbol; exchange limit "
                     f"{next(iter(sizes.values())).get('flatten', {}).get('exchange_limit')}/min, console budget "
                     f"{next(iter(sizes.values())).get('flatten', {}).get('budget')}/min)\n")
        parts.append(table(["positions", "symbols", "open orders", "broker requests", "429s", "flatten call s",
                            "until flat s", "closed with a price", "needs review", "request kinds"], flat_rows))
    for label, key in (("before the bulk seed", "admin_small"), (f"{results.get('admin_rows_total', 0):,} positions "
                                                                  f"({results.get('admin_seed', {}).get('rows', 0):,} closed)", "admin")):
        pages = results.get(key)
        if not pages:
            continue
        rows = [[name, p["status"], ms(p["median"]), p["queries"], ms(p["db"]), f"{p['bytes'] / 1024:,.0f}"]
                for name, p in pages.items()]
        parts.append(f"\n**Admin pages, {label}** (test Client as a superuser, DEBUG off, warm-up then median of 3)\n")
        parts.append(table(["page", "status", "render ms", "queries", "SQL ms", "KiB"], rows))
    seed = results.get("admin_seed")
    if seed:
        parts.append(f"\nSeeded {seed['rows']:,} closed positions with {seed['method']} in {seed['insert_seconds']:.1f} s "
                     f"(+ ANALYZE {seed['analyze_seconds']:.1f} s).")
    events = results.get("broker_events")
    if events:
        rows = [["with the stream (`runstream`)", events["stream"]["samples"], sec(events["stream"]["median"]),
                 sec(events["stream"]["max"]), events["stream"]["misses"]],
                [f"without it (the monitor's broker sync, every {events['no_stream']['interval']} s)",
                 events["no_stream"]["samples"], sec(events["no_stream"]["median"]), sec(events["no_stream"]["max"]),
                 events["no_stream"]["misses"]]]
        parts.append("\n**Broker events**: a stop leg fills at the exchange → the position is closed in the database\n")
        parts.append(table(["", "samples", "median s", "max s", "missed"], rows))
    quote_runs = results.get("quotes")
    if quote_runs:
        rows = []
        for n, q in quote_runs.items():
            for what in ("streamed", "polled"):
                f = q.get(what) or {}
                label = (f"streamed ({q['max_symbols']} symbols nearest their stops)" if what == "streamed"
                         else f"polled (monitor every {q['interval']} s)")
                rows.append([f"{int(n):,}", label, f.get("samples", 0), ms(f.get("median")), ms(f.get("p99")),
                             ms(f.get("max")), f.get("misses", 0),
                             ", ".join(f"{k} ×{v}" for k, v in sorted((f.get("decided_by") or {}).items()))])
        parts.append("\n**Quote stream**: a quote crossing a stop at the exchange → the exit request at the exchange "
                     "(`runquotes` and `runmonitor` side by side, positions over 500 symbols)\n")
        parts.append(table(["positions", "symbols", "samples", "median ms", "p99 ms", "max ms", "missed",
                            "decided on"], rows))
        for n, q in quote_runs.items():
            silence = q.get("silence")
            if silence:
                parts.append(f"\nAt {int(n):,} positions, the stream silenced: noticed after "
                             f"{sec(silence['noticed'])} s (STREAM_SILENCE_SECONDS={silence['silence_seconds']}); "
                             f"a crossing it could not see exited by the monitor {sec(silence['exit'])} s after the "
                             f"silence began ({sec(silence['exit_after_noticed'])} s after it was noticed).")
    api = results.get("api")
    if api:
        parts.append(f"\n**API** `POST /api/v1/orders/test`, gunicorn ×{api['workers']} sync workers, DEBUG off, "
                     f"{api['clients']} concurrent clients, one user; DRF throttle rates raised (bench.api_settings), "
                     "market entries on 20 symbols\n")
        parts.append(table(["requests", "seconds", "req/s", "p50 ms", "p95 ms", "max ms", "errors", "statuses"],
                           [[api["requests"], f"{api['seconds']:.1f}", f"{api['rps']:.1f}" if api["rps"] else "-",
                             ms(api["p50"]), ms(api["p95"]), ms(api["max"]), api["errors"],
                             ", ".join(f"{k}×{v}" for k, v in api["statuses"].items())]]))
        if api.get("error_samples"):
            parts.append("\nFirst errors: " + "; ".join(api["error_samples"]))
    elif results.get("sizes") is not None and "api" not in results:
        parts.append("\n**API**: not measured (skipped or the suite stopped early).")
    if sizes:
        biggest = max(sizes, key=int)
        trig = sizes[biggest].get("trigger", {})
        if trig.get("query_kinds"):
            parts.append(f"\nQueries of the trigger cycle at {int(biggest):,} positions, by statement and table: "
                         + ", ".join(f"{k} ×{v}" for k, v in trig["query_kinds"].items()))
    if sizes:
        biggest = max(sizes, key=int)
        for what, figures in (("trigger cycle", sizes[biggest].get("trigger", {})),
                              ("steady housekeeping", sizes[biggest].get("housekeeping", {}).get("steady", {}))):
            if figures.get("top_sql"):
                parts.append(f"\nSlowest statements of the {what} at {int(biggest):,} positions (total ms × count):\n")
                parts += [f"- {q['ms']:,} ms × {q['count']:,}: `{' '.join(q['sql'].split())[:160]}…`"
                          for q in figures["top_sql"][:4]]
    for n, s in sizes.items():
        for key, what in (("profile_idle", "one idle cycle"), ("profile_trigger", "one cycle exiting 5 symbols' positions")):
            if s.get(key):
                parts.append(f"\n<details><summary>cProfile of {what} at {int(n):,} positions</summary>\n\n```\n"
                             + _trim_profile(s[key]) + "\n```\n</details>")
    return "\n".join(parts)


def _trim_profile(text: str, width: int = 150) -> str:
    lines = [line.replace(str(ROOT) + "/", "").replace(".venv/lib/python3.12/site-packages/", "")[:width]
             for line in text.splitlines()]
    return "\n".join(line for line in lines if line.strip())[:7000]


def _quote_targets(runs: dict) -> list[str]:
    """Issue 14: streamed median < 100 ms and p99 < 500 ms at every size; a silent stream noticed
    and polling resumed within one interval."""
    if not runs:
        return []
    streamed = {int(n): q.get("streamed") or {} for n, q in runs.items()}
    fast = all(f.get("median") is not None and f["median"] < 0.1 and f["p99"] < 0.5 for f in streamed.values())
    lines = [f"- Quote stream: crossing → exit, streamed median < 100 ms and p99 < 500 ms at every size: "
             f"**{'MET' if fast else 'MISSED'}** ("
             + ", ".join(f"{n:,}: {ms(f.get('median'))} / {ms(f.get('p99'))} ms" for n, f in streamed.items()) + ")"]
    silences = {int(n): q.get("silence") for n, q in runs.items() if q.get("silence")}
    if silences:
        ok = all(s["exit_after_noticed"] is not None and s["exit_after_noticed"] <= runs[str(n)]["interval"]
                 for n, s in silences.items())
        lines.append(f"- Quote stream silent: noticed, and a crossing it can't see exited within one interval of "
                     f"that: **{'MET' if ok else 'MISSED'}** ("
                     + ", ".join(f"{n:,}: noticed {sec(s['noticed'])} s, exit {sec(s['exit_after_noticed'])} s later"
                                 for n, s in silences.items()) + ")")
    return lines


def targets(results: dict) -> str:
    """Each target, met or missed, with the numbers behind it."""
    kind = results.get("db")
    sizes = results.get("sizes", {})
    lines = [f"**Targets ({kind})**\n"]
    lines += _quote_targets(results.get("quotes") or {})
    if sizes:
        idle_q = {int(n): s["idle"]["queries"] for n, s in sizes.items() if "idle" in s}
        flat = len(set(idle_q.values())) == 1
        lines.append(f"- Idle-cycle queries constant in positions: **{'MET' if flat else 'MISSED'}** "
                     f"({', '.join(f'{n:,}: {q}' for n, q in idle_q.items())})")
        per_exit = {}
        for n, s in sizes.items():
            trig, idle = s.get("trigger", {}), s.get("idle", {})
            if trig.get("crossing_positions"):
                per_exit[int(n)] = (trig["queries"] - idle["queries"]) / trig["crossing_positions"]
        if per_exit:  # netted exits: fewer per position as positions per symbol grow, never more
            ordered = [per_exit[n] for n in sorted(per_exit)]
            linear = all(later <= earlier * 1.1 + 1 for earlier, later in zip(ordered, ordered[1:]))
            lines.append(f"- Trigger-cycle queries at most linear in positions closed: **{'MET' if linear else 'MISSED'}** "
                         f"(extra queries per position: {', '.join(f'{n:,}: {q:.1f}' for n, q in per_exit.items())})")
        from math import ceil

        req_ok, req_txt = True, []
        for n, s in sizes.items():
            batches = ceil(s["seed"]["symbols"] / 200)
            got = s["idle"]["requests"]
            req_ok &= 1 + batches <= got <= 2 + batches
            req_txt.append(f"{int(n):,}: {got} (expected 1 + {batches}, + 1 when the clock is due)")
        # No trade_updates stream runs beside these cycles: the monitor's quick broker sync reads the
        # live orders each cycle (one page here), as it does in production whenever the stream is down.
        # The clock is kept until its next turn, at most 5 minutes (risk.market): an idle cycle
        # mostly reads none.
        lines.append(f"- Broker requests per idle cycle = at most 1 clock (kept until its next turn, at most 5 min) "
                     f"+ 1 live-orders page (the quick sync: no stream runs here) + 1 per quote batch: "
                     f"**{'MET' if req_ok else 'MISSED'}** ({', '.join(req_txt)})")
        lines += _budget_targets(sizes)
        biggest = max(sizes, key=int)
        idle = sizes[biggest]["idle"]
        own = idle["wall"] - idle["http"]
        lines.append(f"- No-action cycle over {int(biggest):,} positions well under 1 s of the monitor's own time: "
                     f"**{'MET' if own < 0.5 else 'MISSED'}** (wall {ms(idle['wall'])} ms, of which {ms(idle['http'])} ms "
                     f"waiting on the broker; own {ms(own)} ms, process CPU {ms(idle['cpu'])} ms)")
    admin, small = results.get("admin"), results.get("admin_small")
    if admin:
        fixed = all(small and small.get(name, {}).get("queries") == p["queries"] for name, p in admin.items())
        lines.append(f"- Admin pages: fixed number of queries, whatever the rows: **{'MET' if fixed else 'MISSED'}** ("
                     + ", ".join(f"{name}: {small.get(name, {}).get('queries', '?') if small else '?'} → {p['queries']}"
                                 for name, p in admin.items()) + ")")
        slow = {name: p["median"] for name, p in admin.items() if p["median"] >= 1}
        lines.append(f"- Admin pages render under 1 s at {results.get('admin_rows_total', 0):,} rows: "
                     f"**{'MET' if not slow else 'MISSED'}** (" + ", ".join(f"{name}: {ms(p['median'])} ms"
                                                                          for name, p in admin.items()) + ")")
    return "\n".join(lines)


def _budget_targets(sizes: dict) -> list[str]:
    """Issue 13's targets: the crash, housekeeping and flatten figures under the rate limit."""
    lines = []
    biggest = max(sizes, key=int)
    trig = sizes[biggest].get("trigger", {})
    if trig.get("crossing_symbols"):
        per_symbol = trig["trading_requests"] / trig["crossing_symbols"]
        met = per_symbol <= 2 and trig["throttled"] == 0 and trig["trading_requests"] <= trig["cycle_budget"]
        lines.append(f"- Crash at {int(biggest):,} ({trig['crossing_positions']:,} positions cross, "
                     f"{trig['crossing_symbols']} symbols): ≤ 2 requests per crossing symbol, no 429, every exit "
                     f"inside one cycle's budget: **{'MET' if met else 'MISSED'}** ({per_symbol:.2f} per symbol, "
                     f"{trig['trading_requests']} requests of the cycle's {trig['cycle_budget']}, {trig['throttled']} 429s, "
                     f"last exit accepted {sec(trig.get('to_last_exit'))} s after the cycle started)")
    steady = {int(n): s["housekeeping"]["steady"]["queries"] for n, s in sizes.items() if s.get("housekeeping")}
    if steady:
        met = max(steady.values()) <= 50 and len(set(steady.values())) == 1
        lines.append(f"- Housekeeping in ≤ 50 queries, the same at each size: **{'MET' if met else 'MISSED'}** ("
                     + ", ".join(f"{n:,}: {q}" for n, q in steady.items()) + ")")
    for n, s in sizes.items():
        f = s.get("flatten")
        if not f:
            continue
        if int(n) >= 10_000:
            met = f["requests"] <= 510 and f["throttled"] == 0 and f["until_flat"] <= 240 and not f["left_active"]
            goal = "≤ 510 requests, no 429, flat within 4 min"
        else:
            met = f["requests"] <= f["symbols"] + 10 and f["throttled"] == 0 and not f["left_active"]
            goal = f"≤ {f['symbols']} + 10 requests, no 429"
        lines.append(f"- Flatten everything, {int(n):,} positions over {f['symbols']} symbols: {goal}: "
                     f"**{'MET' if met else 'MISSED'}** ({f['requests']} requests, {f['throttled']} 429s, flat after "
                     f"{sec(f['until_flat'])} s, {f['left_active']} left)")
    return lines


def machine(args, dbs_results: list[dict], elapsed: float) -> str:
    import django

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    free = subprocess.run(["free", "-h"], capture_output=True, text=True).stdout.strip() if shutil.which("free") else "?"
    try:
        import gunicorn

        gunicorn_version = gunicorn.__version__
    except ImportError:
        gunicorn_version = "not installed"
    versions = ", ".join(f"{r.get('db')}: {r.get('server_version', '?')}" for r in dbs_results)
    return "\n".join([
        f"- Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- Command: `{' '.join(['python -m bench'] + sys.argv[1:])}` (took {elapsed / 60:.1f} min)",
        f"- CPU: {cpu}, nproc {os.cpu_count()}",
        f"- Python {platform.python_version()}, Django {django.get_version()}, gunicorn {gunicorn_version}, {versions}",
        "- Memory (`free -h`):\n\n```\n" + free + "\n```",
    ])


NOTES_MARKER = "<!-- bench: the notes below are written by hand and kept when the tables above are rewritten -->"


def write_docs(text: str, path: Path) -> None:
    """Write the tables; hand-written notes after NOTES_MARKER in the existing file are kept."""
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.read_text() if path.exists() else ""
    notes = old[old.index(NOTES_MARKER):] if NOTES_MARKER in old else NOTES_MARKER + "\n"
    path.write_text(text + "\n\n" + notes)
    log(f"wrote {path}")


DOC_HEADER = """# Benchmark results (issue 7)

Produced by `python -m bench` (see `bench/run.py` for what each figure is and how it is measured).
A benchmark, not a test: these are the latest figures from one machine, not limits.

How: a fresh database per engine (SQLite file in `var/bench/`, PostgreSQL database `catalyst_bench`),
migrated; the paper exchange in its own process on 127.0.0.1, over HTTP; positions spread over up
to 500 symbols, 10 shares each, the broker holding each symbol's total. Monitor cycles run
in-process (`risk.monitor.monitor_cycle`), queries counted with a `connection.execute_wrapper` (an unbounded `CaptureQueriesContext`), broker
requests from the exchange's request log; detection latency and peak memory with
`manage.py runmonitor` as a real process; admin pages with Django's test Client; the API with
gunicorn and 8 client threads. DEBUG is off everywhere.

Under Alpaca's limit (issue 13): the exchange allows 200 trading-API requests a minute (`--rate-limit`),
the console spends from its request budget (150 a minute, in the database: the bench sets no
`REDIS_URL`); each measurement starts with the budget and the exchange's window unspent. The API run
measures the web server: both limits are off for it. The crash and housekeeping positions have no
orders at the broker (the fallback's case: protection missing); the flatten positions were adopted
from the broker's holdings with one standalone OCO per symbol (Alpaca refuses a second bracket in a
symbol while the first one's legs work, its wash-trade rule, so twenty brackets a symbol can't be
seeded as they could not happen).
"""


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--sizes", default=None, help="open positions per run, e.g. 100,1000,10000 (the default)")
    parser.add_argument("--quick", action="store_true",
                        help="fast smoke run: 100 positions, 20,000 closed rows, 80 API requests, short latency runs")
    parser.add_argument("--latency", default=None, help="runmonitor interval:samples pairs (default 1:5,30:2)")
    parser.add_argument("--admin-rows", type=int, default=None, help="closed positions for the admin pages (1,000,000)")
    parser.add_argument("--api-requests", type=int, default=None, help="test orders sent to the API (400)")
    parser.add_argument("--api-clients", type=int, default=8)
    parser.add_argument("--api-workers", type=int, default=2 * (os.cpu_count() or 1) + 1, help="gunicorn workers")
    parser.add_argument("--skip", default="", help="comma list of: latency, admin, api, flatten, stream, quotes")
    parser.add_argument("--quote-sizes", default=None,
                        help="positions over 500 symbols for the quote-stream figure (100,1000,10000)")
    parser.add_argument("--quote-samples", default=None, help="streamed:polled crossings per size (30:5)")
    parser.add_argument("--rate-limit", type=int, default=200,
                        help="the exchange's trading-API requests a minute, as at Alpaca (0: off)")
    parser.add_argument("--profile", action="store_true", help="cProfile one idle cycle at the largest size")
    parser.add_argument("--pg-url", default="postgres://postgres@127.0.0.1:5432",
                        help="PostgreSQL server (no database name); the bench uses database catalyst_bench")
    parser.add_argument("--keep-db", action="store_true", help="leave the bench database(s) in place at the end")
    parser.add_argument("--write-docs", nargs="?", const=str(DOCS), default=None, metavar="PATH",
                        help=f"also write the tables to PATH (default {DOCS.relative_to(ROOT)})")
    args = parser.parse_args(argv)
    quick = args.quick
    args.sizes = [int(s) for s in (args.sizes or ("100" if quick else "100,1000,10000")).split(",") if s.strip()]
    args.latency = args.latency or ("1:3,30:1" if quick else "1:5,30:2")
    args.quote_sizes = [int(s) for s in (args.quote_sizes or ("100" if quick else "100,1000,10000")).split(",")
                        if s.strip()]
    args.quote_samples = args.quote_samples or ("10:2" if quick else "30:5")
    args.admin_rows = args.admin_rows if args.admin_rows is not None else (20_000 if quick else 1_000_000)
    args.api_requests = args.api_requests if args.api_requests is not None else (80 if quick else 400)
    if not args.pg_url.startswith(("postgres://", "postgresql://")) or "@127.0.0.1" not in args.pg_url:
        parser.error("--pg-url must be a postgres:// URL on 127.0.0.1")
    return args


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM stops the bench like Ctrl-C: every process it started is stopped


def main(argv=None) -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    args = parse_args(sys.argv[1:] if argv is None else argv)
    os.chdir(ROOT)
    BENCH_VAR.mkdir(parents=True, exist_ok=True)
    dbs = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    started = time.perf_counter()
    collected = []
    try:
        for kind in dbs:
            run_started = time.perf_counter()
            collected.append(run_database(kind, args))
            log(f"{kind}: finished in {(time.perf_counter() - run_started) / 60:.1f} min")
    except KeyboardInterrupt:
        log("interrupted: stopping everything started")
        return 130
    finally:
        procs.stop_all()
    elapsed = time.perf_counter() - started
    body = [machine(args, collected, elapsed)]
    for results in collected:
        body += ["", report(results), "", targets(results)]
    text = "\n".join(body)
    print(text)
    if args.write_docs:
        write_docs(DOC_HEADER + "\n## Machine\n\n" + text, Path(args.write_docs))
    return 1 if any(r.get("exit_code") for r in collected) else 0
