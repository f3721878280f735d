"""Quote crossing a level at the exchange → the exit request reaching the exchange, with the quote
stream (`runquotes`, STREAM_MAX_SYMBOLS symbols nearest their stops) and the monitor
(`runmonitor` at its default interval) running side by side, as in production: streamed
symbols are decided on the quote, the others when the monitor polls. Then the stream goes
silent: how long until that is noticed, and until a crossing the stream can't see is exited by
the monitor. Run inside bench.suite (Django set up, the exchange at PAPER_EXCHANGE_URL).
Never fails on a time."""

import random
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal

from bench import procs
from bench.run import BENCH_VAR
from bench.suite import SYMBOLS, crossing_quote, epoch, is_long, progress, quote, reset_everything, seed_open_positions

NEAR = Decimal("1.5")  # the streamed symbols' price: this far from their stop (stops are 5 % away)
SYMBOL_COUNT = 500


def _near_price(symbol: str) -> Decimal:
    return Decimal("95") + NEAR if is_long(symbol) else Decimal("105") - NEAR


def _streamed() -> set[str]:
    from risk.selectors import streamed_symbols

    return streamed_symbols()


def _wait(check, timeout: float, what: str, proc=None):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline or (proc is not None and proc.poll() is not None):
            raise RuntimeError(f"bench quotes: {what} never happened")
        time.sleep(0.1)


def _exit_arrival(control, symbol: str, timeout: float) -> float | None:
    """The exchange's request-log time of the first exit order for the symbol."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in control.requests_log():
            body = entry.get("body") or {}
            if entry["method"] == "POST" and entry["path"] == "/v2/orders" and body.get("symbol") == symbol:
                return epoch(entry["time"])
        time.sleep(0.005)
    return None


class Ticker:
    """Quotes for the streamed symbols twice a second (a wiggle short of any level), so the stream
    is live as it is during market hours."""

    def __init__(self, control, symbols: list[str]):
        self.control, self.symbols, self.stop = control, symbols, threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.frozen: set[str] = set()

    def run(self):
        step = 0
        while not self.stop.wait(0.5):
            step += 1
            wiggle = Decimal("0.05") if step % 2 else Decimal("0")
            live = [s for s in self.symbols if s not in self.frozen]
            if live:
                try:
                    self.control.set_quotes([quote(s, _near_price(s) + wiggle) for s in live])
                except Exception:  # noqa: BLE001 - a missed tick is only a quieter stream
                    pass

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=5)


def _decided_by(symbol: str) -> str:
    """What the exit of the symbol was decided on: `stream` or `poll` (the triggered event's data)."""
    from risk.models import RiskEvent, RiskEventKind

    event = RiskEvent.objects.filter(kind=RiskEventKind.TRIGGERED, position__symbol=symbol).order_by("id").first()
    return (event.data or {}).get("via", "?") if event else "?"


@dataclass
class Samples:
    latencies: list[float] = field(default_factory=list)
    misses: int = 0
    via: list[str] = field(default_factory=list)


def _cross(control, symbol: str, *, timeout: float, into: Samples) -> None:
    """Cross the symbol's stop at the exchange; the time until its exit request arrives there,
    and what it was decided on."""
    control.clear_requests_log()
    crossed_at = time.time()
    control.set_quotes([crossing_quote(symbol)])
    arrival = _exit_arrival(control, symbol, timeout=timeout)
    if arrival is None:
        into.misses += 1
        return
    into.latencies.append(arrival - crossed_at)
    time.sleep(0.3)  # the deciding process writes its records meanwhile
    into.via.append(_decided_by(symbol))


def _summary(samples: Samples) -> dict:
    ordered, via = sorted(samples.latencies), samples.via

    def pct(q: float):
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else None

    return {"samples": len(ordered), "misses": samples.misses, "median": pct(0.5), "p99": pct(0.99),
            "max": ordered[-1] if ordered else None, "decided_by": {v: list(via).count(v) for v in set(via)}}


def quotes_figure(control, env: dict, *, n: int, streamed_samples: int, polled_samples: int, interval: int,
                  max_symbols: int = 30, silence_seconds: int = 10) -> dict:
    """n positions over 500 symbols; the max_symbols nearest their stops are streamed."""
    from risk.models import QUOTES, Heartbeat

    reset_everything(control)
    seed = seed_open_positions(n, control, symbols=SYMBOL_COUNT)
    held = SYMBOLS[:min(n, SYMBOL_COUNT)]  # the symbols holding positions (seeded round-robin)
    rng = random.Random(n)
    near = rng.sample(held, min(len(held), max_symbols + streamed_samples))
    control.set_quotes([quote(s, _near_price(s)) for s in near])  # nearer their stops than the rest (5 %)
    env = {**env, "STREAM_MAX_SYMBOLS": str(max_symbols), "STREAM_SILENCE_SECONDS": str(silence_seconds),
           "MONITOR_INTERVAL_SECONDS": str(interval)}
    tag = f"{env.get('BENCH_DB', 'db')}-{n}"
    with open(BENCH_VAR / f"runquotes-{tag}.log", "wb") as log:
        stream = procs.start([procs.PYTHON, "manage.py", "runquotes"], env=env, stdout=log, stderr=log)
    with open(BENCH_VAR / f"runmonitor-quotes-{tag}.log", "wb") as log:
        monitor = procs.start([procs.PYTHON, "manage.py", "runmonitor"], env=env, stdout=log, stderr=log)
    figures = {"positions": n, "symbols": seed["symbols"], "max_symbols": max_symbols, "interval": interval}
    try:
        with Ticker(control, near) as ticker:
            started = time.monotonic()
            _wait(lambda: len(_streamed()) >= min(max_symbols, len(held)), 120, "the first subscription", stream)
            figures["subscribed_seconds"] = time.monotonic() - started
            # streamed: one crossing at a time, each on a symbol streamed at that moment
            samples = Samples()
            for _ in range(streamed_samples):
                candidates = sorted(_streamed() - ticker.frozen)
                if not candidates:
                    break
                symbol = rng.choice(candidates)
                ticker.frozen.add(symbol)
                time.sleep(rng.uniform(0, 0.2))
                _cross(control, symbol, timeout=interval + 30, into=samples)
            figures["streamed"] = _summary(samples)
            # polled, in the same run: symbols the stream does not watch, at a random phase of the interval
            samples = Samples()
            polled = [s for s in held if s not in near]
            rng.shuffle(polled)
            for symbol in polled[:polled_samples]:
                time.sleep(rng.uniform(0, interval))
                _cross(control, symbol, timeout=2 * interval + 60, into=samples)
            figures["polled"] = _summary(samples)
            # the stream goes silent: noticed (the heartbeat stale) and a crossing it can't see exited
            candidates = sorted(_streamed() - ticker.frozen)
            if candidates:
                symbol = candidates[0]
                ticker.frozen.add(symbol)
                control.clear_requests_log()
                silent_at = time.time()
                control.add_fault("ws_silence", path="/v2/")
                control.set_quotes([crossing_quote(symbol)])

                def stale():
                    row = Heartbeat.objects.filter(name=QUOTES).first()
                    return row is None or row.finished_at is None or \
                        time.time() - row.finished_at.timestamp() > silence_seconds

                _wait(stale, silence_seconds + interval + 60, "the silence noticed")
                noticed = time.time()
                arrival = _exit_arrival(control, symbol, timeout=silence_seconds + 2 * interval + 60)
                figures["silence"] = {"silence_seconds": silence_seconds, "noticed": noticed - silent_at,
                                      "exit": (arrival - silent_at) if arrival else None,
                                      "exit_after_noticed": (arrival - noticed) if arrival else None}
                control.clear_faults()
    finally:
        procs.stop(stream)
        procs.stop(monitor, timeout=interval + 60)
    progress(f"quotes at {n}: streamed {figures.get('streamed')}, polled {figures.get('polled')}")
    return figures
