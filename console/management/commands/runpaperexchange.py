"""manage.py runpaperexchange --host 127.0.0.1 --port 5099 --state-file var/paper_exchange.json"""

from django.core.management.base import BaseCommand, CommandError

from paper_exchange.server import serve

DEMO_QUOTES = [
    ("AAPL", "189.98", "190.02"),
    ("MSFT", "414.95", "415.05"),
    ("NVDA", "131.97", "132.03"),
    ("SPY", "583.99", "584.01"),
    ("TSLA", "251.90", "252.10"),
]


class Command(BaseCommand):
    help = "Run the Alpaca-compatible paper exchange (trading + market data API) until SIGINT/SIGTERM."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=5099)
        parser.add_argument("--state-file", default="var/paper_exchange.json",
                            help="JSON file the state is persisted to (loaded at start if present)")
        parser.add_argument("--verbose-http", action="store_true", help="log every HTTP request")
        parser.add_argument("--demo-quotes", action="store_true",
                            help="start with a few quotes (AAPL, MSFT, NVDA, SPY, TSLA) when the exchange has none")

    def handle(self, *args, **options):
        def ready(server):
            if options["demo_quotes"] and not server.state.snapshot().get("quotes"):
                server.state.set_quotes([{"symbol": symbol, "bid": bid, "ask": ask} for symbol, bid, ask in DEMO_QUOTES])
            self.stdout.write(
                f"Paper exchange listening on {server.url} (state file: {options['state_file']}); "
                "Ctrl-C to stop."
            )
            self.stdout.flush()

        try:
            serve(options["host"], options["port"], options["state_file"],
                  verbose=options["verbose_http"], ready=ready)
        except OSError as exc:
            raise CommandError(f"cannot serve on {options['host']}:{options['port']}: {exc}") from exc
        except ValueError as exc:  # unreadable state file
            raise CommandError(f"cannot load state file {options['state_file']}: {exc}") from exc
        self.stdout.write("Paper exchange stopped.")
