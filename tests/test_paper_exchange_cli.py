"""``python -m paper_exchange``: flags, demo quotes, and a clean stop on SIGINT/SIGTERM."""

import json
import os
import pathlib
import signal
import subprocess
import sys
from decimal import Decimal

import pytest
import requests

from paper_exchange.cli import DEMO_QUOTES, build_parser
from paper_exchange.control import PaperExchangeControl

ROOT = pathlib.Path(__file__).resolve().parent.parent
HEADERS = {"APCA-API-KEY-ID": "k", "APCA-API-SECRET-KEY": "s"}


def _start(*argv):
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    proc = subprocess.Popen([sys.executable, "-m", "paper_exchange", "--port", "0", *argv], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise AssertionError(f"no start line: {line!r} {proc.stderr.read()}")
    return proc, line.split("listening on ")[1].split()[0]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_module_runs_with_flags_and_stops_on_signal(tmp_path, sig):
    state_file = tmp_path / "var" / "paper.json"
    proc, url = _start("--state-file", str(state_file), "--demo-quotes", "--rate-limit", "200", "--cash", "5000")
    try:
        quotes = PaperExchangeControl(url).state()["quotes"]
        assert {s: (Decimal(q["bid"]), Decimal(q["ask"])) for s, q in quotes.items()} == {
            s: (Decimal(b), Decimal(a)) for s, b, a in DEMO_QUOTES}
        resp = requests.get(f"{url}/v2/account", headers=HEADERS, timeout=10)
        assert resp.json()["cash"] == "5000.00" and resp.headers["X-RateLimit-Limit"] == "200"
        proc.send_signal(sig)
        assert proc.wait(timeout=10) == 0
        assert "stopped" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    saved = json.loads(state_file.read_text())
    assert saved["quotes"]["AAPL"]["ask"] == "190.02" and saved["account"]["cash"] == "5000"


def test_parser_defaults_follow_alpaca():
    args = build_parser().parse_args([])
    assert (args.port, args.rate_limit, args.data_rate_limit, args.demo_quotes) == (5099, 200, None, False)
    assert build_parser().parse_args(["--rate-limit", "0"]).rate_limit is None
