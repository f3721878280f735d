"""`manage.py protect`: find open positions without a live stop at the broker and apply the policy."""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from risk.alerts import alert_threads_join
from risk.protection import POLICIES, ProtectionPolicyError, protection_audit
from trading.broker import BrokerError, describe


class Command(BaseCommand):
    help = ("Check every open position for a live stop order at the broker; protect (OCO), flatten or "
            "only alert the ones without, as the policy says.")

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true", help="report what would be done; change nothing")
        parser.add_argument("--policy", default=None,
                            help=f"{' | '.join(POLICIES)} (default PROTECTION_POLICY={settings.PROTECTION_POLICY})")
        parser.add_argument("--position", type=int, action="append", dest="position_ids", metavar="ID",
                            help="audit only this position (repeatable)")

    def handle(self, *args, dry_run, policy, position_ids, **options):
        if policy is not None and policy not in POLICIES:
            raise CommandError(f"unknown --policy {policy!r}: use one of {', '.join(POLICIES)}")
        policy = policy or settings.PROTECTION_POLICY
        self.stdout.write(f"protection audit{' (DRY RUN)' if dry_run else ''}, policy {policy}, on {describe()}")
        try:
            results = protection_audit(policy=policy, dry_run=dry_run, positions=position_ids)
        except ProtectionPolicyError as exc:
            raise CommandError(str(exc)) from None
        except BrokerError as exc:
            raise CommandError(f"broker unavailable, nothing judged: {exc}") from None
        finally:
            alert_threads_join(timeout=15)
        for result in results:
            self.stdout.write(result.line())
        counts = {}
        for result in results:
            action = "ok" if result.action == "none" else result.action
            counts[action] = counts.get(action, 0) + 1
        unprotected = sum(1 for r in results if r.found == "unprotected")
        self.stdout.write(f"{len(results)} position(s): {unprotected} found unprotected; "
                          + (", ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "nothing to do"))
        failed = counts.get("failed", 0)
        if failed:
            raise CommandError(f"{failed} position(s) could not be handled")
