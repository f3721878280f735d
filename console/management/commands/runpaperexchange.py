"""`manage.py runpaperexchange [--port 5099] [--state-file F] [--demo-quotes] [--rate-limit 200] ...`:
the paper exchange, exactly as `python -m paper_exchange` runs it (same flags, same exit codes)."""

import sys

from django.core.management.base import BaseCommand

import paper_exchange


class Command(BaseCommand):
    help = "Run the Alpaca-compatible paper exchange (trading + market data API, streams) until SIGINT/SIGTERM."

    def run_from_argv(self, argv):
        sys.exit(paper_exchange.main(argv[2:]))
