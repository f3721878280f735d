"""`manage.py runstream`: the broker's order events (Alpaca's trade_updates stream) applied to
orders and positions as they happen. One per account: a second process waits for the first.
Stops cleanly on SIGINT/SIGTERM."""

from django.conf import settings
from django.core.management.base import BaseCommand

from risk.broker_events import trade_update_apply
from risk.broker_sync import broker_sync
from risk.models import STREAM
from risk.streaming import StreamRunner
from trading.broker import describe, trade_updates_stream

from ...stream_process import stream_process_run


class Command(BaseCommand):
    help = "Apply the broker's order events (trade_updates) to orders and positions within a second."

    def handle(self, *args, **options):
        self.stdout.write(f"trade_updates stream on {describe()}")
        stream_process_run(command="runstream", say=self.stdout.write, make_runner=lambda holder: StreamRunner(
            name=STREAM, holder=holder,
            make_stream=lambda handler: trade_updates_stream(handler, ping_seconds=settings.STREAM_PING_SECONDS),
            apply=lambda message: trade_update_apply(message=message),
            on_connect=lambda: broker_sync(by=STREAM),
        ))
