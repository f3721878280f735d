"""What the monitor saw and did: risk events, its heartbeat, its lease, and alerts."""

from django.core.serializers.json import DjangoJSONEncoder
from django.db import models

from trading.models import PRICE, Closer, Position

MONITOR = "monitor"  # the monitor's heartbeat row and lease
STREAM = "stream"  # the trade_updates stream's heartbeat row (started_at: connected since; finished_at: last seen
#                    connected; cycles: events applied; consecutive_error_cycles: 1 while an outage lasts)


class RiskEventKind(models.TextChoices):
    CYCLE = "cycle", "Cycle checked positions"
    TRIGGERED = "triggered"
    SKIPPED = "skipped"
    CLAIMED = "claimed"
    LEGS_CANCELLED = "legs_cancelled"
    EXIT_SENT = "exit_sent"
    EXIT_FILLED = "exit_filled"
    EXIT_REJECTED = "exit_rejected"
    CLOSED = "closed", "Position closed"
    ERROR = "error"
    MARKET_CLOSED = "market_closed"
    ADOPTED = "adopted"
    MISMATCH = "mismatch"
    UNPROTECTED = "unprotected"
    PROTECTED = "protected"
    ORDER_SYNCED = "order_synced"
    RECONCILED = "reconciled"
    BRACKET_NOT_PROTECTED = "bracket_not_protected"
    TRADING_STATE = "trading_state"
    ENTRY_FILLED = "entry_filled", "Entry filled: position open"
    ENTRY_CANCELLED = "entry_cancelled", "Entry ended unfilled"
    BROKER_EVENT = "broker_event", "Order event from the broker"


class RiskEventQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise TypeError("risk events are append-only")

    def delete(self):
        raise TypeError("risk events are append-only")


class RiskEvent(models.Model):
    """Append-only: rows are inserted, never changed or removed."""

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    kind = models.CharField(max_length=24, choices=RiskEventKind.choices, db_index=True)
    position = models.ForeignKey(
        Position, null=True, blank=True, on_delete=models.PROTECT, related_name="risk_events"
    )
    symbol = models.CharField(max_length=16, blank=True)
    price = models.DecimalField(**PRICE, null=True, blank=True)
    quote_time = models.DateTimeField(null=True, blank=True)
    reason = models.CharField(max_length=255, blank=True)
    message = models.TextField(blank=True)
    data = models.JSONField(default=dict, blank=True, encoder=DjangoJSONEncoder)

    objects = RiskEventQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.kind} {self.symbol} {self.reason}".strip()

    def save(self, *args, **kwargs):
        if self.pk is not None:
            raise TypeError("risk events are append-only")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise TypeError("risk events are append-only")


class Heartbeat(models.Model):
    """One row per monitor (name), overwritten each cycle."""

    name = models.CharField(max_length=32, unique=True, default=MONITOR)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    positions_checked = models.PositiveIntegerField(default=0)
    actions = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0)
    consecutive_error_cycles = models.PositiveIntegerField(default=0)
    cycles = models.PositiveBigIntegerField(default=0)
    last_error = models.TextField(blank=True)
    last_error_at = models.DateTimeField(null=True, blank=True, help_text="When the last failing cycle ended.")
    stale_alerted_at = models.DateTimeField(
        null=True, blank=True, help_text="Set while a staleness alert is out for this heartbeat; cleared when it beats again.")
    market_open = models.BooleanField(null=True)
    last_reconcile_at = models.DateTimeField(null=True, blank=True)
    last_reconcile_summary = models.TextField(blank=True)
    last_broker_sync_at = models.DateTimeField(
        null=True, blank=True, help_text="When the quick sync last read every live order from the broker.")

    def __str__(self) -> str:
        return f"{self.name} heartbeat"


class Lease(models.Model):
    """A named lock with an expiry, taken by compare-and-set so a dead holder loses it."""

    name = models.CharField(max_length=32, unique=True)
    holder = models.CharField(max_length=128, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.name} held by {self.holder or 'nobody'}"


class AlertKind(models.TextChoices):
    # An exit sent, named for who closed the position (Position.closed_by): see EXIT_ALERT_KINDS.
    FALLBACK_EXIT = "fallback_exit", "Fallback exit by the monitor"
    OPERATOR_CLOSE = "operator_close", "Operator close: exit sent"
    FLATTEN_EXIT = "flatten_exit", "Emergency flatten: exit sent"
    PROTECTION_EXIT = "protection_exit", "Protection-audit exit"
    RECONCILE_EXIT = "reconcile_exit", "Reconciliation exit"
    EXIT_REJECTED = "exit_rejected", "Exit rejected"
    EXIT_REFUSED = "exit_refused", "Exits refused: re-protected, left to an operator"
    UNPROTECTED = "unprotected", "Unprotected position"
    ADOPTED = "adopted", "Position adopted from the broker"
    MISMATCH = "mismatch", "Reconciliation mismatch"
    MONITOR_ERRORS = "monitor_errors", "Monitor failing"
    BRACKET_NOT_PROTECTED = "bracket_not_protected", "Bracket without legs"
    HEARTBEAT_STALE = "heartbeat_stale", "Heartbeat stale"
    HEARTBEAT_BACK = "heartbeat_back", "Heartbeat back"


# Which alert an exit raises, by who closed the position.
EXIT_ALERT_KINDS = {
    Closer.MONITOR: AlertKind.FALLBACK_EXIT,
    Closer.OPERATOR: AlertKind.OPERATOR_CLOSE,
    Closer.FLATTEN: AlertKind.FLATTEN_EXIT,
    Closer.PROTECTION: AlertKind.PROTECTION_EXIT,
    Closer.RECONCILE: AlertKind.RECONCILE_EXIT,
}


class DeliveryStatus(models.TextChoices):
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"
    SKIPPED = "skipped", "Not configured"


class Alert(models.Model):
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    kind = models.CharField(max_length=24, choices=AlertKind.choices)
    message = models.TextField()
    position = models.ForeignKey(Position, null=True, blank=True, on_delete=models.PROTECT, related_name="alerts")
    email_status = models.CharField(max_length=8, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    apprise_status = models.CharField(max_length=8, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING,
                                      verbose_name="Apprise status", help_text="Delivery to the ALERT_APPRISE_URLS.")
    attempts = models.PositiveSmallIntegerField(default=0)
    last_error = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.get_kind_display()}: {self.message[:60]}"
