"""Counts the reliability suite keeps (faults injected/survived, duplicate exits, ...) and
the table it prints at the end of the run."""

from collections import Counter

import pytest

_COUNTS: Counter = Counter()

ROWS = [
    ("faults", "faults injected", "faults survived"),
    ("concurrency", "concurrent actors", "duplicate exits"),
    ("bad input", "bad inputs tried", "5xx responses", "unhandled errors"),
    ("security", "endpoints checked", "open to anonymous"),
]


class Figures:
    def add(self, name: str, amount: int = 1) -> None:
        _COUNTS[name] += amount


@pytest.fixture
def figures() -> Figures:
    return Figures()


def pytest_terminal_summary(terminalreporter):
    if not _COUNTS:
        return
    terminalreporter.section("reliability figures")
    for area, *names in ROWS:
        cells = " | ".join(f"{name}: {_COUNTS.get(name, 0)}" for name in names)
        terminalreporter.write_line(f"| {area:<11} | {cells} |")
