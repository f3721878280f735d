"""What the monitor saw and did: risk events, its heartbeat, its lease, and alerts."""

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models

from trading.models import PRICE, QTY, Closer, Order, Position

MONITOR = "monitor"  # the monitor's heartbeat row and lease
STREAM = "stream"  # the trade_updates stream's heartbeat row (started_at: connected since; finished_at: last seen
#                    connected; cycles: events applied; consecutive_error_cycles: 1 while an outage lasts)
QUOTES = "quotes"  # the quote stream's heartbeat row and lease (finished_at: the last quote while the market is
#                    open, the last moment connected while it is closed; cycles: messages; stale = silent or down)


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
    LIMIT_REFUSED = "limit_refused", "Order refused by a pre-trade limit"
    ORDER_REFUSED = "order_refused", "Order refused by the broker"
    REDUCED = "reduced", "Position reduced"
    END_OF_DAY = "end_of_day", "End-of-day flatten"
    KILL_SWITCH = "kill_switch", "Daily-loss kill switch"
    STOP_LOSS_GUARD = "stop_loss_guard", "Stop-loss guard"
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


class StreamedSymbol(models.Model):
    """A symbol the quote stream asked the broker for (one row each, rewritten every second by
    `manage.py runquotes`): whether the broker accepted it, and what came of it. Symbols of
    watched positions without an accepted row are polled by the monitor at its normal interval."""

    symbol = models.CharField(max_length=16, unique=True)
    accepted = models.BooleanField(default=False, help_text="In the broker's last subscription answer.")
    requested_at = models.DateTimeField()
    last_quote_at = models.DateTimeField(null=True, blank=True, help_text="When the last quote arrived.")
    bid = models.DecimalField(**PRICE, null=True, blank=True)
    ask = models.DecimalField(**PRICE, null=True, blank=True)
    distance_pct = models.DecimalField(max_digits=12, decimal_places=4, null=True, blank=True,
                                       help_text="How near its nearest stop or target, in % of the price.")
    quotes = models.PositiveBigIntegerField(default=0)
    skipped = models.PositiveBigIntegerField(default=0, help_text="Quotes not acted on (crossed, zero, stale).")
    last_problem = models.CharField(max_length=255, blank=True)
    updated_at = models.DateTimeField()

    class Meta:
        ordering = ["symbol"]

    def __str__(self) -> str:
        return f"{self.symbol} ({'streamed' if self.accepted else 'requested'})"


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
    GATE_EXIT = "gate_exit", "Reduce by the trading service: exit sent"
    DAILY_LOSS = "daily_loss", "Daily loss limit hit"
    STOP_LOSS_GUARD = "stop_loss_guard", "Stop-loss guard tripped"


# Which alert an exit raises, by who closed the position.
EXIT_ALERT_KINDS = {
    Closer.MONITOR: AlertKind.FALLBACK_EXIT,
    Closer.OPERATOR: AlertKind.OPERATOR_CLOSE,
    Closer.FLATTEN: AlertKind.FLATTEN_EXIT,
    Closer.PROTECTION: AlertKind.PROTECTION_EXIT,
    Closer.RECONCILE: AlertKind.RECONCILE_EXIT,
    Closer.GATE: AlertKind.GATE_EXIT,
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


# --- The order gate: pre-trade limits, the requests it took, the trading day's P&L ------------------

MONEY = {"max_digits": 20, "decimal_places": 2}
PNL = {"max_digits": 24, "decimal_places": 4}
RISK_LIMITS_ROW = 1  # the one row of RiskLimits


class RiskLimits(models.Model):
    """The pre-trade limits in force: one row, created from the LIMIT_* settings, edited in the
    admin; every change is a RiskLimitsChange. A blank limit is no limit."""

    max_order_qty = models.DecimalField(**QTY, null=True, blank=True, verbose_name="max quantity per order")
    max_order_notional = models.DecimalField(**MONEY, null=True, blank=True, verbose_name="max notional per order",
                                             help_text="Quantity x entry price (the last price for a market entry).")
    max_order_loss = models.DecimalField(**MONEY, null=True, blank=True, verbose_name="max loss to the stop per order",
                                         help_text="Quantity x |entry - stop|.")
    max_open_positions = models.PositiveIntegerField(null=True, blank=True)
    max_symbol_exposure = models.DecimalField(**MONEY, null=True, blank=True, verbose_name="max exposure per symbol",
                                              help_text="Quantity held or being entered x entry price, in one symbol.")
    max_total_exposure = models.DecimalField(**MONEY, null=True, blank=True, verbose_name="max total exposure")
    max_orders_per_minute = models.PositiveIntegerField(null=True, blank=True,
                                                        help_text="Entries sent through the gate in the last 60 s.")
    symbols_allowed = models.TextField(blank=True, help_text="Comma-separated; blank: every symbol not refused.")
    symbols_refused = models.TextField(blank=True, help_text="Comma-separated.")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "pre-trade limits"
        verbose_name_plural = "pre-trade limits"

    def __str__(self) -> str:
        return "Pre-trade limits"


class RiskLimitsChange(models.Model):
    """Append-only history of the pre-trade limits: who changed what, when and why."""

    limits = models.ForeignKey(RiskLimits, on_delete=models.PROTECT, related_name="changes")
    changes = models.JSONField(default=dict, encoder=DjangoJSONEncoder, help_text="{field: [before, after]}")
    reason = models.TextField()
    changed_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT,
                                   related_name="+")
    changed_by_name = models.CharField(max_length=150, help_text="Who, kept even if the user is deleted.")
    changed_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-changed_at", "-id"]

    def __str__(self) -> str:
        return f"limits changed by {self.changed_by_name} at {self.changed_at:%Y-%m-%d %H:%M:%S}"


class OrderRequestKind(models.TextChoices):
    ENTRY = "entry", "Bracket entry"
    REDUCE = "reduce", "Reduce a position"


class OrderRequestState(models.TextChoices):
    PENDING = "pending", "Admitted, being sent"
    DONE = "done", "Sent and recorded"
    REFUSED = "refused", "Refused: nothing sent or held"
    NOT_PROTECTED = "not_protected", "Bracket not held with both legs"
    UNKNOWN = "unknown", "The broker's answer never came: a retry settles it"


class OrderRequest(models.Model):
    """One order the trading service sent through the gate, under its own client_order_id: the
    same id again gets the same answer, and never a second order."""

    client_order_id = models.CharField(max_length=48, unique=True)
    kind = models.CharField(max_length=6, choices=OrderRequestKind.choices)
    state = models.CharField(max_length=13, choices=OrderRequestState.choices, default=OrderRequestState.PENDING)
    fingerprint = models.CharField(max_length=64, help_text="SHA-256 of the request as normalised.")
    request = models.JSONField(encoder=DjangoJSONEncoder, help_text="The request as normalised.")
    expected_price = models.DecimalField(**PRICE, null=True, blank=True,
                                         help_text="A market entry's price: the ask for a buy, the bid for a sell.")
    notional = models.DecimalField(**MONEY, null=True, blank=True)
    position = models.ForeignKey(Position, null=True, blank=True, on_delete=models.PROTECT,
                                 related_name="order_requests")
    entry_order = models.ForeignKey(Order, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    refusal = models.CharField(max_length=32, blank=True, help_text="The refusal's code, when refused.")
    detail = models.TextField(blank=True)
    data = models.JSONField(default=dict, blank=True, encoder=DjangoJSONEncoder)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT,
                                     related_name="+")
    requested_by_name = models.CharField(max_length=150)
    claimed_until = models.DateTimeField(null=True, blank=True, help_text="While pending: when its worker's claim ends.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["kind", "created_at"], name="orderrequest_kind_created_idx")]

    def __str__(self) -> str:
        return f"{self.kind} {self.client_order_id} ({self.state})"


class TradingDay(models.Model):
    """One trading day as the daily-loss kill switch saw it: its P&L at the last evaluation, and
    when (if) the kill switch tripped. Tripping is a compare-and-set on tripped_at: once a day."""

    session_open = models.DateTimeField(unique=True, help_text="The regular session's open (09:30 New York).")
    realised_pnl = models.DecimalField(**PNL, default=0)
    unrealised_pnl = models.DecimalField(**PNL, default=0)
    unpriced = models.PositiveIntegerField(default=0, help_text="Open positions without a quote (counted at 0).")
    loss_limit = models.DecimalField(**MONEY, null=True, blank=True)
    evaluated_at = models.DateTimeField(null=True, blank=True)
    tripped_at = models.DateTimeField(null=True, blank=True)
    tripped_pnl = models.DecimalField(**PNL, null=True, blank=True)
    flattened = models.BooleanField(default=False)

    class Meta:
        ordering = ["-session_open"]

    def __str__(self) -> str:
        return f"trading day of {self.session_open:%Y-%m-%d}"

    @property
    def pnl(self):
        return self.realised_pnl + self.unrealised_pnl
