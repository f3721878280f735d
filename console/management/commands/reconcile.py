"""`manage.py reconcile`: bring the database in step with what the broker holds and did."""

from django.core.management.base import BaseCommand, CommandError

from risk.alerts import alert_threads_join
from risk.reconcile import reconcile_run
from trading.broker import describe


class Command(BaseCommand):
    help = ("Compare positions and orders with the broker: adopt unknown broker positions, close the ones "
            "the broker no longer holds from their fills, flag mismatches, sync order statuses.")

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true", help="report what would be done; change nothing")

    def handle(self, *args, dry_run, **options):
        self.stdout.write(f"reconciliation{' (DRY RUN)' if dry_run else ''} on {describe()}")
        try:
            report = reconcile_run(dry_run=dry_run)
        finally:
            alert_threads_join(timeout=15)
        for finding in report.findings:
            self.stdout.write(finding.line(dry_run=report.dry_run))
        if not report.findings:
            self.stdout.write("nothing to do: the database agrees with the broker")
        self.stdout.write(report.summary())
        if report.errors:
            raise CommandError(f"reconciliation finished with {len(report.errors)} error(s)")
