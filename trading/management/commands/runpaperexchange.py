"""manage.py runpaperexchange --host 127.0.0.1 --port 5099 --state-file var/paper_exchange.json"""

from django.core.management.base import BaseCommand, CommandError

from trading.paper_exchange.server import serve


class Command(BaseCommand):
    help = "Run the Alpaca-compatible paper exchange (trading + market data API) until SIGINT/SIGTERM."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=5099)
        parser.add_argument("--state-file", default="var/paper_exchange.json",
                            help="JSON file the state is persisted to (loaded at start if present)")
        parser.add_argument("--verbose-http", action="store_true", help="log every HTTP request")

    def handle(self, *args, **options):
        def ready(server):
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
