"""Request and response shapes of the API. Validation of orders stays in
trading.validation (through the services), so the API judges an order as the rest does."""

from decimal import Decimal

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from trading.models import Order, Position, PositionStatus, TradingMode


@extend_schema_field({"type": "string", "format": "decimal", "example": "150.00"})
class DecimalInputField(serializers.Field):
    """A number given as a decimal string or a JSON number, handed on as a string so the
    order validation (Decimal, no binary floats) judges it."""

    default_error_messages = {"invalid": "must be a decimal string or a number"}

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, (str, int, float, Decimal)):
            self.fail("invalid")
        return data if isinstance(data, str) else str(data)  # str(float) is its shortest exact repr

    def to_representation(self, value):
        return str(value)


class TestOrderRequestSerializer(serializers.Serializer):
    symbol = serializers.CharField(max_length=16)
    quantity = DecimalInputField(help_text="Whole shares, at most TEST_ORDER_MAX_QTY.")
    side = serializers.CharField(max_length=8, help_text="buy, sell, long or short.")
    entry_price = DecimalInputField(required=False, allow_null=True,
                                    help_text="Limit entry; leave out for a market entry.")
    stop_loss = DecimalInputField()
    take_profit = DecimalInputField()


@extend_schema_field({"type": "string", "description": "buy or sell"})
class LegSideField(serializers.CharField):
    """A leg's side, a plain string in the schema: one enum component per field name
    (`side`, `status`) stays with the order, so the schema names them without hashes."""


@extend_schema_field({"type": "string", "description": "An Alpaca order status, or pending_submit / submit_failed."})
class LegStatusField(serializers.CharField):
    pass


class LegSerializer(serializers.ModelSerializer):
    side = LegSideField(read_only=True)
    status = LegStatusField(read_only=True)

    class Meta:
        model = Order
        fields = ["id", "broker_order_id", "client_order_id", "role", "side", "type", "qty", "limit_price",
                  "stop_price", "status", "filled_qty", "filled_avg_price"]
        read_only_fields = fields


class OrderSerializer(serializers.ModelSerializer):
    legs = LegSerializer(many=True, read_only=True)

    class Meta:
        model = Order
        fields = ["id", "broker_order_id", "client_order_id", "role", "symbol", "side", "type", "order_class",
                  "time_in_force", "qty", "limit_price", "stop_price", "status", "filled_qty", "filled_avg_price",
                  "submitted_at", "filled_at", "error", "position", "parent", "legs"]
        read_only_fields = fields


class TestOrderResponseSerializer(serializers.Serializer):
    position_id = serializers.IntegerField()
    order = OrderSerializer()


class BracketFailureSerializer(serializers.Serializer):
    detail = serializers.CharField()
    order = OrderSerializer(help_text="The entry order as recorded, with its error and status.")
    position_id = serializers.IntegerField(allow_null=True, help_text="Set when the entry had filled.")


class ErrorSerializer(serializers.Serializer):
    detail = serializers.CharField()


FIELD_ERRORS_SCHEMA = {
    "type": "object",
    "description": "One key per bad field, each with its messages.",
    "additionalProperties": {"type": "array", "items": {"type": "string"}},
    "example": {"stop_loss": ["a long's stop 151 must be at least $0.01 below the entry 150.00"]},
}


class PositionSerializer(serializers.ModelSerializer):
    realised_pnl = serializers.DecimalField(source="pnl", max_digits=30, decimal_places=4, read_only=True,
                                            allow_null=True)

    class Meta:
        model = Position
        fields = ["id", "symbol", "side", "quantity", "entry_price", "stop_loss", "take_profit", "status",
                  "protection", "protection_checked_at", "opened_at", "closed_at", "exit_price", "close_reason",
                  "realised_pnl", "adopted", "needs_review", "is_test", "entry_order"]
        read_only_fields = fields


class PositionFilterSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=PositionStatus.choices, required=False)
    symbol = serializers.CharField(required=False, max_length=16)


class FlattenRequestSerializer(serializers.Serializer):
    confirm = serializers.CharField(help_text='Must be exactly "FLATTEN".')
    positions = serializers.ListField(child=serializers.IntegerField(min_value=1), required=False, allow_empty=False,
                                      help_text="Position ids; leave out to flatten everything.")

    def validate_confirm(self, value: str) -> str:
        if value != "FLATTEN":
            raise serializers.ValidationError('type FLATTEN to confirm')
        return value

    def validate_positions(self, value: list[int]) -> list[int]:
        ids = sorted(set(value))
        found = set(Position.objects.filter(pk__in=ids).values_list("pk", flat=True))
        missing = [pk for pk in ids if pk not in found]
        if missing:
            raise serializers.ValidationError(f"no such positions: {', '.join(map(str, missing))}")
        return ids


class CloseResultSerializer(serializers.Serializer):
    position = serializers.IntegerField(source="position.pk")
    symbol = serializers.CharField(source="position.symbol")
    side = serializers.CharField(source="position.side")
    quantity = serializers.DecimalField(source="position.quantity", max_digits=20, decimal_places=9)
    state = serializers.ChoiceField(choices=["closed", "exit_pending", "waiting", "error", "skipped", "locked"])
    detail = serializers.CharField()
    summary = serializers.CharField()
    status = serializers.CharField(source="position.status")
    close_reason = serializers.CharField(source="position.close_reason", allow_null=True)
    exit_price = serializers.DecimalField(source="position.exit_price", max_digits=18, decimal_places=4,
                                          allow_null=True)


class FlattenResponseSerializer(serializers.Serializer):
    halted = serializers.BooleanField(help_text="True when this call set trading to HALTED.")
    cancelled_orders = serializers.IntegerField(allow_null=True)
    errors = serializers.ListField(child=serializers.CharField())
    results = CloseResultSerializer(many=True)


class ChecklistItemSerializer(serializers.Serializer):
    key = serializers.CharField()
    label = serializers.CharField()
    ok = serializers.BooleanField()
    detail = serializers.CharField()


class ChecklistSerializer(serializers.Serializer):
    passed = serializers.BooleanField()
    checked_at = serializers.DateTimeField()
    items = ChecklistItemSerializer(many=True)


class TradingStateChangeSerializer(serializers.Serializer):
    mode = serializers.ChoiceField(choices=TradingMode.choices)
    reason = serializers.CharField()
    changed_by = serializers.CharField(source="changed_by_name")
    changed_at = serializers.DateTimeField(allow_null=True)
    overrode_checklist = serializers.BooleanField()


class TradingStateSerializer(serializers.Serializer):
    state = TradingStateChangeSerializer()
    checklist = ChecklistSerializer()
    history = TradingStateChangeSerializer(many=True)


class TradingStateRequestSerializer(serializers.Serializer):
    mode = serializers.ChoiceField(choices=TradingMode.choices)
    reason = serializers.CharField(max_length=2000)
    override = serializers.BooleanField(default=False, help_text="Resume although checklist items fail.")


class TradingStateRefusedSerializer(serializers.Serializer):
    override = serializers.ListField(child=serializers.CharField())
    checklist = ChecklistSerializer()


class MonitorSerializer(serializers.Serializer):
    name = serializers.CharField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    age_seconds = serializers.IntegerField(allow_null=True, help_text="Since the last cycle finished.")
    stale = serializers.BooleanField(help_text="No cycle finished within stale_after_seconds.")
    stale_after_seconds = serializers.IntegerField()
    positions_checked = serializers.IntegerField()
    actions = serializers.IntegerField()
    errors = serializers.IntegerField()
    consecutive_error_cycles = serializers.IntegerField()
    cycles = serializers.IntegerField()
    last_error = serializers.CharField(allow_blank=True)
    market_open = serializers.BooleanField(allow_null=True)


def monitor_payload(status) -> dict:
    heartbeat = status.heartbeat
    return {
        "name": heartbeat.name if heartbeat else "monitor",
        "started_at": heartbeat.started_at if heartbeat else None,
        "finished_at": heartbeat.finished_at if heartbeat else None,
        "age_seconds": status.age_seconds,
        "stale": status.stale,
        "stale_after_seconds": status.stale_after_seconds,
        "positions_checked": heartbeat.positions_checked if heartbeat else 0,
        "actions": heartbeat.actions if heartbeat else 0,
        "errors": heartbeat.errors if heartbeat else 0,
        "consecutive_error_cycles": heartbeat.consecutive_error_cycles if heartbeat else 0,
        "cycles": heartbeat.cycles if heartbeat else 0,
        "last_error": heartbeat.last_error if heartbeat else "",
        "market_open": heartbeat.market_open if heartbeat else None,
    }

