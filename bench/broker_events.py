"""Leg fill at the exchange → position closed in the database: with the trade_updates stream
(`runstream`) and without it (the monitor's per-cycle broker sync at its default interval).
Run inside bench.suite (Django set up, the exchange at PAPER_EXCHANGE_URL)."""

import time
from decimal import Decimal

from bench import procs
from bench.run import BENCH_VAR

SYMBOLS = [f"S{chr(65 + i)}X" for i in range(20)]


def _brackets(control, count: int) -> list:
    from risk.entries import submit_bracket_order
    from risk.trading_state import trading_state_set

    trading_state_set(mode="ACTIVE", reason="bench: broker events")
    positions = []
    for symbol in SYMBOLS[:count]:
        control.set_quote(symbol, "99.99", "100.01")
        positions.append(submit_bracket_order(symbol=symbol, quantity=1, side="buy", stop_loss="95",
                                              take_profit="110"))
    return positions


def _stop_leg(position):
    return position.entry_order.legs.get(role="stop_loss")


def _closed_at(position_id: int, deadline: float) -> float | None:
    from trading.models import Position, PositionStatus

    while time.monotonic() < deadline:
        if Position.objects.filter(pk=position_id, status=PositionStatus.CLOSED).exists():
            return time.time()
        time.sleep(0.01)
    return None


def _wait_stream_connected(proc, timeout: float = 60) -> None:
    from risk.selectors import stream_status

    deadline = time.monotonic() + timeout
    while stream_status().stale:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("runstream never connected")
        time.sleep(0.1)


def _summary(latencies: list[float], misses: int) -> dict:
    ordered = sorted(latencies)
    return {"samples": len(latencies), "misses": misses, "median": ordered[len(ordered) // 2] if ordered else None,
            "max": ordered[-1] if ordered else None}


def with_stream(control, env: dict, samples: int) -> dict:
    """One fill at a time, each timed from the fill to the row saying CLOSED."""
    positions = _brackets(control, samples)
    latencies, misses = [], 0
    with open(BENCH_VAR / "runstream.log", "wb") as log:
        proc = procs.start([procs.PYTHON, "manage.py", "runstream"], env=env, stdout=log, stderr=log)
    try:
        _wait_stream_connected(proc)
        for position in positions:
            leg_id = _stop_leg(position).broker_order_id
            started = time.time()
            control.fill_order(leg_id, price="94.90")
            done = _closed_at(position.pk, time.monotonic() + 30)
            if done is None:
                misses += 1
            else:
                latencies.append(done - started)
    finally:
        procs.stop(proc)
    return _summary(latencies, misses)


def without_stream(control, env: dict, samples: int, interval: int) -> dict:
    """All legs fill at once at a random phase of the monitor's cycle; each timed to CLOSED."""
    from risk.models import STREAM, Heartbeat

    Heartbeat.objects.filter(name=STREAM).delete()  # no stream: the monitor syncs every cycle
    positions = _brackets(control, samples)
    with open(BENCH_VAR / "runmonitor-sync.log", "wb") as log:
        proc = procs.start([procs.PYTHON, "manage.py", "runmonitor", "--interval", str(interval)], env=env,
                           stdout=log, stderr=log)
    latencies, misses = [], 0
    try:
        time.sleep(interval / 2)
        started = time.time()
        for position in positions:
            control.fill_order(_stop_leg(position).broker_order_id, price=Decimal("94.90"))
        deadline = time.monotonic() + 3 * interval + 60
        for position in positions:
            done = _closed_at(position.pk, deadline)
            if done is None:
                misses += 1
            else:
                latencies.append(done - started)
    finally:
        procs.stop(proc, timeout=interval + 60)
    return {**_summary(latencies, misses), "interval": interval}
