"""Positions, the broker orders behind them, and the persisted trading state."""

from decimal import Decimal

from django.conf import settings
from django.db import models
from django.db.models import Case, DecimalField, ExpressionWrapper, F, Q, When
from django.utils import timezone

PRICE = {"max_digits": 18, "decimal_places": 4}
EXIT_CLIENT_ORDER_PREFIX = "catalyst-exit-"
QTY = {"max_digits": 20, "decimal_places": 9}


class Side(models.TextChoices):
    LONG = "long"
    SHORT = "short"


class OrderSide(models.TextChoices):
    BUY = "buy"
    SELL = "sell"


class PositionStatus(models.TextChoices):
    PENDING = "pending", "Entry working (nothing filled yet)"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"
    CANCELLED = "cancelled", "Entry ended unfilled (never a position)"


class LevelsSource(models.TextChoices):
    """Where a position's stop and target came from. Defaults only ever place protection:
    no exit is sent on a level that nobody set."""

    ORDER = "order", "Set with the order"
    BROKER = "broker", "Read from the broker's orders"
    DEFAULT = "default", "Percent defaults from the entry (protection only)"


class CloseReason(models.TextChoices):
    STOP_LOSS_HIT = "STOP_LOSS_HIT", "Stop-loss hit"
    TAKE_PROFIT_HIT = "TAKE_PROFIT_HIT", "Take-profit hit"
    MANUAL = "MANUAL", "Closed by an operator"
    EMERGENCY_STOP = "EMERGENCY_STOP", "Emergency flattening"
    MARKET_CLOSE = "MARKET_CLOSE", "Closed at the market close"
    REDUCED = "REDUCED", "Reduced by the trading service"


class Closer(models.TextChoices):
    """Who claimed a position for closing (the claim's owner, kept after the lock is gone)."""

    MONITOR = "monitor", "The fallback monitor"
    OPERATOR = "operator", "An operator (manual close)"
    FLATTEN = "flatten", "An emergency flatten"
    PROTECTION = "protection", "The protection audit"
    RECONCILE = "reconcile", "Reconciliation"
    BROKER = "broker", "The broker (its own orders filled)"
    GATE = "gate", "The trading service (a reduce through the order gate)"


class Protection(models.TextChoices):
    UNKNOWN = "unknown"
    PROTECTED = "protected"
    UNPROTECTED = "unprotected"


# Open positions the monitor decides on: a stop somebody set (not a default), and not left to an
# operator after refused exits (the broker's OCO guards those).
WATCHED = (Q(status=PositionStatus.OPEN, stop_loss__isnull=False, exit_refused_at__isnull=True)
           & ~Q(levels_source=LevelsSource.DEFAULT))


class PositionQuerySet(models.QuerySet):
    def update(self, **kwargs):
        """`updated_at` moves with every change: a queryset update() skips auto_now."""
        kwargs.setdefault("updated_at", timezone.now())
        return super().update(**kwargs)

    def open(self):
        return self.filter(status=PositionStatus.OPEN)

    def closing(self):
        return self.filter(status=PositionStatus.CLOSING)

    def active(self):
        """Positions the broker may still hold: open or being closed."""
        return self.filter(status__in=[PositionStatus.OPEN, PositionStatus.CLOSING])

    def pending(self):
        """Entries still working: not positions until they fill."""
        return self.filter(status=PositionStatus.PENDING)

    def watched(self):
        """Open positions the monitor decides on (WATCHED)."""
        return self.filter(WATCHED)

    def with_pnl(self):
        """Annotate realised P&L in the database, so lists and sums need no per-row work."""
        diff = Case(
            When(side=Side.LONG, then=F("exit_price") - F("entry_price")),
            default=F("entry_price") - F("exit_price"),
        )
        return self.annotate(
            pnl=ExpressionWrapper(diff * F("quantity"), output_field=DecimalField(max_digits=30, decimal_places=4))
        )


class Position(models.Model):
    symbol = models.CharField(max_length=16, db_index=True)
    side = models.CharField(max_length=5, choices=Side.choices)
    quantity = models.DecimalField(**QTY)
    entry_price = models.DecimalField(**PRICE)
    stop_loss = models.DecimalField(**PRICE, null=True, blank=True)
    take_profit = models.DecimalField(**PRICE, null=True, blank=True)
    levels_source = models.CharField(max_length=7, choices=LevelsSource.choices, default=LevelsSource.ORDER)
    status = models.CharField(max_length=9, choices=PositionStatus.choices, default=PositionStatus.OPEN)
    opened_at = models.DateTimeField()
    closed_at = models.DateTimeField(null=True, blank=True)
    exit_price = models.DecimalField(**PRICE, null=True, blank=True)
    close_reason = models.CharField(max_length=255, choices=CloseReason.choices, null=True, blank=True)
    closed_by = models.CharField(max_length=10, choices=Closer.choices, blank=True,
                                 help_text="Who claimed it for closing; blank while open.")
    entry_order = models.OneToOneField(
        "Order", null=True, blank=True, on_delete=models.PROTECT, related_name="entry_for"
    )
    protection = models.CharField(max_length=11, choices=Protection.choices, default=Protection.UNKNOWN)
    protection_checked_at = models.DateTimeField(null=True, blank=True)
    adopted = models.BooleanField(default=False, help_text="Found at the broker with no record here.")
    needs_review = models.BooleanField(default=False)
    review_note = models.TextField(blank=True)
    is_test = models.BooleanField(default=False, help_text="Opened by a test bracket order.")
    intraday = models.BooleanField(null=True, blank=True,
                                   help_text="Yes: closed before the market close (EOD_FLATTEN). No: stays overnight. "
                                             "Unknown: as EOD_FLATTEN says.")
    keep_quantity = models.DecimalField(**QTY, null=True, blank=True,
                                        help_text="While closing for a reduce: the quantity that stays open.")
    exit_refusals = models.PositiveSmallIntegerField(default=0, help_text="Exits the broker refused since it was claimed.")
    exit_refused_at = models.DateTimeField(
        null=True, blank=True,
        help_text="When the close gave up after refused exits and re-protected it: left to an operator, "
                  "not re-triggered by the monitor.")
    lock_owner = models.CharField(max_length=64, blank=True, help_text="Who is working on closing it.")
    locked_until = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = PositionQuerySet.as_manager()

    class Meta:
        indexes = [
            models.Index(
                fields=["close_reason"],
                name="position_close_reason_idx",
                condition=Q(close_reason__isnull=False),
            ),
            models.Index(fields=["status", "symbol"], name="position_status_symbol_idx"),
            models.Index(fields=["-closed_at", "-id"], name="position_closed_at_idx"),
            # covers the close-reason review's aggregate: read from the index alone, no table rows
            models.Index(fields=["status", "closed_at", "close_reason", "side", "entry_price", "exit_price", "quantity"],
                         name="position_close_review_idx"),
        ]
        permissions = [
            ("flatten_positions", "Can flatten positions in an emergency"),
            ("close_positions", "Can close positions manually"),
            ("protect_positions", "Can place protective orders for positions"),
        ]

    def __str__(self) -> str:
        return f"{self.side} {self.quantity} {self.symbol} #{self.pk}"

    @property
    def exit_side(self) -> str:
        return OrderSide.SELL if self.side == Side.LONG else OrderSide.BUY

    @property
    def entry_side(self) -> str:
        return OrderSide.BUY if self.side == Side.LONG else OrderSide.SELL

    @property
    def realised_pnl(self) -> Decimal | None:
        if self.exit_price is None:
            return None
        diff = self.exit_price - self.entry_price
        return (diff if self.side == Side.LONG else -diff) * self.quantity

    @property
    def exit_client_order_id(self) -> str:
        """Deterministic: the broker rejects a second order with it, so an exit is sent once."""
        return f"{EXIT_CLIENT_ORDER_PREFIX}{self.pk}"


class OrderRole(models.TextChoices):
    ENTRY = "entry"
    STOP_LOSS = "stop_loss"
    TAKE_PROFIT = "take_profit"
    EXIT = "exit"


class OrderType(models.TextChoices):
    MARKET = "market"
    LIMIT = "limit"
    STOP = "stop"
    STOP_LIMIT = "stop_limit"


STOP_TYPES = frozenset({OrderType.STOP, OrderType.STOP_LIMIT})


def leg_role(order_type: str) -> str:
    """A bracket or OCO leg's role from its type: the stop is the stop-loss, the limit the target."""
    return OrderRole.STOP_LOSS if order_type in STOP_TYPES else OrderRole.TAKE_PROFIT


# Which close reason a leg's fill means.
LEG_CLOSE_REASONS = {OrderRole.STOP_LOSS: CloseReason.STOP_LOSS_HIT, OrderRole.TAKE_PROFIT: CloseReason.TAKE_PROFIT_HIT}


class OrderClass(models.TextChoices):
    SIMPLE = "simple"
    BRACKET = "bracket"
    OCO = "oco"
    OTO = "oto"


class OrderStatus(models.TextChoices):
    """Alpaca's order statuses, plus two of ours for orders the broker never acknowledged."""

    PENDING_SUBMIT = "pending_submit", "Pending submit (not yet acknowledged)"
    SUBMIT_FAILED = "submit_failed", "Submit failed"
    NEW = "new"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    DONE_FOR_DAY = "done_for_day"
    CANCELED = "canceled"
    EXPIRED = "expired"
    REPLACED = "replaced"
    PENDING_CANCEL = "pending_cancel"
    PENDING_REPLACE = "pending_replace"
    PENDING_REVIEW = "pending_review"
    ACCEPTED = "accepted"
    PENDING_NEW = "pending_new"
    ACCEPTED_FOR_BIDDING = "accepted_for_bidding"
    STOPPED = "stopped"
    REJECTED = "rejected"
    SUSPENDED = "suspended"
    CALCULATED = "calculated"
    HELD = "held"
    UNKNOWN = "unknown", "Unknown (see raw payload)"


FINAL_ORDER_STATUSES = frozenset(
    {
        OrderStatus.FILLED,
        OrderStatus.CANCELED,
        OrderStatus.EXPIRED,
        OrderStatus.REPLACED,
        OrderStatus.REJECTED,
        OrderStatus.DONE_FOR_DAY,
        OrderStatus.SUBMIT_FAILED,
    }
)


class OrderQuerySet(models.QuerySet):
    def live(self):
        """Orders the broker may still act on."""
        return self.exclude(status__in=FINAL_ORDER_STATUSES)


class Order(models.Model):
    position = models.ForeignKey(
        Position, null=True, blank=True, on_delete=models.PROTECT, related_name="orders"
    )
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="legs")
    broker_order_id = models.CharField(max_length=64, unique=True, null=True, blank=True)
    client_order_id = models.CharField(max_length=48, unique=True)
    role = models.CharField(max_length=11, choices=OrderRole.choices)
    symbol = models.CharField(max_length=16)
    side = models.CharField(max_length=4, choices=OrderSide.choices)
    qty = models.DecimalField(**QTY)
    type = models.CharField(max_length=10, choices=OrderType.choices)
    order_class = models.CharField(max_length=7, choices=OrderClass.choices, default=OrderClass.SIMPLE)
    time_in_force = models.CharField(max_length=4)
    limit_price = models.DecimalField(**PRICE, null=True, blank=True)
    stop_price = models.DecimalField(**PRICE, null=True, blank=True)
    status = models.CharField(max_length=20, choices=OrderStatus.choices, default=OrderStatus.PENDING_SUBMIT)
    filled_qty = models.DecimalField(**QTY, default=Decimal("0"))
    filled_avg_price = models.DecimalField(**PRICE, null=True, blank=True)
    submitted_at = models.DateTimeField(null=True, blank=True)
    filled_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(null=True, blank=True, help_text="Last change at the broker.")
    raw = models.JSONField(null=True, blank=True, help_text="The broker's last answer for this order.")
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    synced_at = models.DateTimeField(auto_now=True)

    objects = OrderQuerySet.as_manager()

    class Meta:
        indexes = [models.Index(fields=["position", "role"], name="order_position_role_idx")]
        permissions = [("submit_order", "Can send orders through the order gate")]

    def __str__(self) -> str:
        return f"{self.role} {self.side} {self.qty} {self.symbol} ({self.status})"

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_ORDER_STATUSES


class ExitShare(models.Model):
    """A position's part of an exit order. Positions of one symbol and side that close together
    go out as ONE market order for the sum; each is closed from that order's fill, at its
    price, for its own reason. The fill is shared out in the order of the shares (oldest
    position first), so a partial fill closes whole positions first. A single position's
    exit has one share (and its Order.position is that position; a netted exit's is empty)."""

    order = models.ForeignKey(Order, on_delete=models.PROTECT, related_name="shares")
    position = models.ForeignKey(Position, on_delete=models.PROTECT, related_name="exit_shares")
    qty = models.DecimalField(**QTY, help_text="What this position asked of the order.")
    filled_qty = models.DecimalField(**QTY, default=Decimal("0"), help_text="Its part of the order's fill.")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["order", "position"], name="exit_share_unique")]
        ordering = ["order", "id"]

    def __str__(self) -> str:
        return f"#{self.position_id}: {self.filled_qty.normalize():f} of {self.qty.normalize():f} ({self.order})"


class TradingMode(models.TextChoices):
    ACTIVE = "ACTIVE", "Active"
    HALTED = "HALTED", "Halted: no new entries"
    REDUCING = "REDUCING", "Reducing: exits only"


class TradingStateChange(models.Model):
    """Append-only history of the trading state; the latest row is the state in force."""

    mode = models.CharField(max_length=8, choices=TradingMode.choices)
    reason = models.TextField()
    changed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    changed_by_name = models.CharField(max_length=150, help_text="Who, kept even if the user is deleted.")
    overrode_checklist = models.BooleanField(default=False)
    changed_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-changed_at", "-id"]
        permissions = [("change_trading_mode", "Can halt and resume trading")]

    def __str__(self) -> str:
        return f"{self.mode} by {self.changed_by_name} at {self.changed_at:%Y-%m-%d %H:%M:%S}"


class BrokerEvent(models.Model):
    """Append-only journal of the broker's order events (the trade_updates stream), keyed by
    their execution id so a repeated event changes nothing."""

    key = models.CharField(max_length=128, unique=True, help_text="The execution id, or event + order + time.")
    event = models.CharField(max_length=32, db_index=True)
    broker_order_id = models.CharField(max_length=64, blank=True, db_index=True)
    symbol = models.CharField(max_length=16, blank=True)
    at = models.DateTimeField(null=True, blank=True, help_text="When the broker says it happened.")
    received_at = models.DateTimeField(auto_now_add=True, db_index=True)
    order = models.ForeignKey(Order, null=True, blank=True, on_delete=models.PROTECT, related_name="events")
    outcome = models.TextField(blank=True, help_text="What the console did with it.")
    payload = models.JSONField(default=dict, help_text="The event as the broker sent it (credentials scrubbed).")

    class Meta:
        ordering = ["-received_at", "-id"]

    def __str__(self) -> str:
        return f"{self.event} {self.symbol} {self.broker_order_id}"


class BrokerBudget(models.Model):
    """The broker request budget shared by every process when REDIS_URL is not set
    (trading/budget.py): one row per account, holding the send times of the last minute."""

    name = models.CharField(max_length=64, unique=True)
    sent_ms = models.JSONField(default=list, help_text="Epoch milliseconds of the requests of the last minute.")
    paused_until_ms = models.BigIntegerField(default=0, help_text="The broker refused with 429 until then.")

    def __str__(self) -> str:
        return f"broker budget {self.name}"
