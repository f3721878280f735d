"""Benchmarks: how the fallback monitor and the console scale with open positions (issue 7).

    python -m bench [--db sqlite|postgres|both] [--sizes 100,1000,10000] [--quick] [--write-docs]

It seeds a FRESH database (var/bench/catalyst_bench.sqlite3 or PostgreSQL `catalyst_bench`),
runs against the paper exchange over HTTP on 127.0.0.1 and prints tables. It is a benchmark,
not a test: it reports figures and never fails on a time. See bench/run.py.
"""
