"""`manage.py runquotes`: sub-second detection. Streams quotes for the symbols of the watched
positions (the STREAM_MAX_SYMBOLS nearest their stop or target) and decides each quote as the
monitor would, through the same claim and close. One per account (a second process waits);
the monitor keeps polling as the backstop. Stops cleanly on SIGINT/SIGTERM."""

from django.conf import settings
from django.core.management.base import BaseCommand

from risk.quote_watch import quote_stream_runner
from trading.broker import describe

from ...stream_process import stream_process_run


class Command(BaseCommand):
    help = "Decide stops and targets on streamed quotes, within a second of the quote."

    def handle(self, *args, **options):
        self.stdout.write(f"quote stream on {describe()}, at most {settings.STREAM_MAX_SYMBOLS or 'any'} symbols")
        stream_process_run(command="runquotes", say=self.stdout.write,
                           make_runner=lambda holder: quote_stream_runner(holder=holder)[0])
