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
    browser_skips = [report for report in terminalreporter.stats.get("skipped", [])
                     if "test_browser.py" in report.nodeid]
    if browser_skips:
        reason = browser_skips[0].longrepr[2] if isinstance(browser_skips[0].longrepr, tuple) else ""
        terminalreporter.section("THE BROWSER TEST DID NOT RUN", sep="!", red=True, bold=True)
        terminalreporter.write_line(f"{len(browser_skips)} browser test(s) skipped: {reason}", red=True, bold=True)
        terminalreporter.write_line("The console pages were not checked in a browser. Install Debian's Chromium "
                                    "(apt-get install -y chromium); .ci/run fails on this.", red=True, bold=True)
    if not _COUNTS:
        return
    terminalreporter.section("reliability figures")
    for area, *names in ROWS:
        cells = " | ".join(f"{name}: {_COUNTS.get(name, 0)}" for name in names)
        terminalreporter.write_line(f"| {area:<11} | {cells} |")
