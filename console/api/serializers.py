"""Request and response shapes of the API. Validation of orders stays in
trading.validation (through the services), so the API judges an order as the rest does."""

from decimal import Decimal

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.settings import api_settings

from risk.finalize import CloseState
from risk.timeline import Source
from trading.models import Closer, ExitShare, Order, Position, PositionStatus, TradingMode


class StrictCharField(serializers.CharField):
    """A JSON string and nothing else (DRF's CharField would take the number 12 for "12")."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    """A JSON true or false (DRF's BooleanField also takes 1, "yes", "on", ...)."""

    default_error_messages = {"invalid": "Must be true or false."}

    def to_internal_value(self, data):
        if not isinstance(data, bool):
            self.fail("invalid")
        return data


class StrictIntegerField(serializers.IntegerField):
    """A JSON integer (DRF's IntegerField also takes "12" and 12.0)."""

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class RequestSerializer(serializers.Serializer):
    """A request body: a field it does not know is refused by name, not ignored, so a typo
    cannot silently change what happens (a misspelt `positions` would flatten everything)."""

    def to_internal_value(self, data):
        if isinstance(data, dict):
            unknown = sorted(str(key) for key in data if key not in self.fields)
            if unknown:
                # Under non_field_errors, not under the names sent: those are the caller's, and
                # could be "detail" or "checklist", which mean something else in a 400.
                names = ", ".join(repr(name[:40]) for name in unknown[:10]) + (", ..." if len(unknown) > 10 else "")
                raise serializers.ValidationError({api_settings.NON_FIELD_ERRORS_KEY: [f"unknown fields: {names}"]})
        return super().to_internal_value(data)


@extend_schema_field({
    "oneOf": [{"type": "string", "format": "decimal"}, {"type": "number"}],
    "example": "150.00",
})
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


class TestOrderRequestSerializer(RequestSerializer):
    symbol = StrictCharField(max_length=16)
    quantity = DecimalInputField(help_text="Whole shares, at most TEST_ORDER_MAX_QTY.")
    side = StrictCharField(max_length=8, help_text="buy, sell, long or short.")
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


class ShareSerializer(serializers.ModelSerializer):
    """A position's share of an exit order (an exit netted over several positions has one each)."""

    class Meta:
        model = ExitShare
        fields = ["position", "qty", "filled_qty"]
        read_only_fields = fields


class OrderSerializer(serializers.ModelSerializer):
    legs = LegSerializer(many=True, read_only=True)
    shares = ShareSerializer(many=True, read_only=True)

    class Meta:
        model = Order
        fields = ["id", "broker_order_id", "client_order_id", "role", "symbol", "side", "type", "order_class",
                  "time_in_force", "qty", "limit_price", "stop_price", "status", "filled_qty", "filled_avg_price",
                  "submitted_at", "filled_at", "error", "position", "parent", "legs", "shares"]
        read_only_fields = fields


class TestOrderResponseSerializer(serializers.Serializer):
    position_id = serializers.IntegerField()
    order = OrderSerializer()


class BrokerRefusalSerializer(serializers.Serializer):
    """A 422: the broker answered and refused the order (its 4xx)."""

    detail = serializers.CharField()
    broker_status = serializers.IntegerField(help_text="The broker's HTTP status (403, 422, 429...).")


class BracketFailureSerializer(serializers.Serializer):
    """A 502: `order` and `position_id` when the bracket was sent but not held; any other broker
    failure (unreachable, an error page, no answer in time) has `detail` only."""

    detail = serializers.CharField()
    order = OrderSerializer(required=False,
                            help_text="The entry order as recorded, with its error and status (not held brackets).")
    position_id = serializers.IntegerField(required=False, allow_null=True,
                                           help_text="Set when the entry had filled (not held brackets).")


class ErrorSerializer(serializers.Serializer):
    detail = serializers.CharField()


# The largest id a database row can have (BIGINT / SQLite INTEGER): anything larger is refused
# before it reaches a query, where it would overflow (a 500 on SQLite).
MAX_ID = 2**63 - 1

_MESSAGES = {"type": "array", "items": {"type": "string"}}

FIELD_ERRORS_SCHEMA = {
    "type": "object",
    "description": "One key per bad field, each with its messages (for a list field, the messages of "
                   "each bad item by its index). A body that cannot be parsed at all: only `detail`.",
    "properties": {"detail": {"type": "string", "description": "The body could not be parsed."}},
    "additionalProperties": {
        "anyOf": [_MESSAGES, {"type": "object", "additionalProperties": _MESSAGES}],
    },
    "example": {"stop_loss": ["a long's stop 151 must be at least $0.01 below the entry 150.00"]},
}


class PositionSerializer(serializers.ModelSerializer):
    closed_by = serializers.ChoiceField(choices=Closer.choices, allow_blank=True, read_only=True,
                                        help_text="Who claimed it for closing; blank while open.")
    realised_pnl = serializers.DecimalField(source="pnl", max_digits=30, decimal_places=4, read_only=True,
                                            allow_null=True)

    class Meta:
        model = Position
        fields = ["id", "symbol", "side", "quantity", "entry_price", "stop_loss", "take_profit", "status",
                  "protection", "protection_checked_at", "opened_at", "closed_at", "exit_price", "close_reason",
                  "closed_by", "realised_pnl", "adopted", "needs_review", "is_test", "entry_order"]
        read_only_fields = fields


class PositionFilterSerializer(serializers.Serializer):
    """The query of GET /positions. Each parameter at most once; an unknown one is refused too,
    so a misspelt filter is a 400 rather than every position."""

    status = serializers.ChoiceField(choices=PositionStatus.choices, required=False)
    symbol = serializers.CharField(required=False, max_length=16)
    cursor = serializers.CharField(required=False, max_length=1000)
    page_size = serializers.IntegerField(required=False, min_value=1, max_value=500)

    def to_internal_value(self, data):
        if hasattr(data, "getlist"):
            errors = {}
            unknown = sorted(key for key in data if key not in self.fields)
            if unknown:  # not keyed by the caller's names (see RequestSerializer)
                names = ", ".join(repr(name[:40]) for name in unknown[:10]) + (", ..." if len(unknown) > 10 else "")
                errors[api_settings.NON_FIELD_ERRORS_KEY] = [f"unknown parameters: {names}"]
            for key in self.fields:
                if len(data.getlist(key)) > 1:
                    errors[key] = ["give it at most once"]
                elif data.get(key) == "":  # DRF would take "?status=" for "no filter"
                    errors[key] = ["This field may not be blank."]
            if errors:
                raise serializers.ValidationError(errors)
        return super().to_internal_value(data)


class FlattenRequestSerializer(RequestSerializer):
    confirm = StrictCharField(help_text='Must be exactly "FLATTEN".')
    positions = serializers.ListField(child=StrictIntegerField(min_value=1, max_value=MAX_ID), required=False,
                                      allow_empty=False,
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
    state = serializers.ChoiceField(choices=[state.value for state in CloseState])
    detail = serializers.CharField()
    summary = serializers.CharField()
    status = serializers.CharField(source="position.status")
    close_reason = serializers.CharField(source="position.close_reason", allow_null=True)
    exit_price = serializers.DecimalField(source="position.exit_price", max_digits=18, decimal_places=4,
                                          allow_null=True)


class FlattenResponseSerializer(serializers.Serializer):
    halted = serializers.BooleanField(help_text="Trading is HALTED after this call (always, as a flatten halts it).")
    halted_now = serializers.BooleanField(help_text="This call set trading to HALTED (false: it was already halted).")
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


class ModeField(serializers.ChoiceField):
    """A trading mode in any case ("halted", "Halted"); a bad one is refused with the valid ones."""

    default_error_messages = {"invalid_choice": "{input!r} is not a trading mode; give one of {modes}."}

    def __init__(self, **kwargs):
        super().__init__(choices=TradingMode.choices, **kwargs)

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid_choice", input=data, modes=", ".join(TradingMode.values))
        value = data.strip().upper()
        if value not in TradingMode.values:
            self.fail("invalid_choice", input=data[:40], modes=", ".join(TradingMode.values))
        return value


class TradingStateRequestSerializer(RequestSerializer):
    mode = ModeField(help_text="ACTIVE, HALTED or REDUCING, in any case.")
    # Not trimmed here, so the 2000 of the schema is the length sent; trading_mode_change strips
    # it and refuses a blank one.
    reason = StrictCharField(max_length=2000, trim_whitespace=False)
    override = StrictBooleanField(default=False, help_text="Resume although checklist items fail.")


# POST /trading-state's 400: bad fields (as everywhere), or the refusal to resume (`override`
# says why, `checklist` lists the items). The Checklist component is TradingState's.
TRADING_STATE_REFUSED_SCHEMA = {
    **FIELD_ERRORS_SCHEMA,
    "description": "Bad fields, each with its messages; or resuming refused while checklist items fail: "
                   "then `override` says why and `checklist` lists the items.",
    "properties": {
        **FIELD_ERRORS_SCHEMA["properties"],
        "override": _MESSAGES,
        "checklist": {"$ref": "#/components/schemas/Checklist"},
    },
    "example": {"override": [("the re-enable checklist fails (The monitor finished a cycle within 60s: the monitor "
                              "has never finished a cycle); override with a reason to resume anyway")]},
}


class StreamSerializer(serializers.Serializer):
    healthy = serializers.BooleanField(help_text="Connected and seen within STREAM_HEALTHY_SECONDS: broker events "
                                                 "are applied as they happen. Otherwise every monitor cycle reconciles.")
    connected_since = serializers.DateTimeField(allow_null=True)
    last_seen_connected = serializers.DateTimeField(allow_null=True)
    age_seconds = serializers.IntegerField(allow_null=True, help_text="Since it was last seen connected.")
    events_applied = serializers.IntegerField()


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
    last_error_at = serializers.DateTimeField(allow_null=True, help_text="When the cycle with last_error ended.")
    market_open = serializers.BooleanField(allow_null=True)
    protection_confirmed_at = serializers.DateTimeField(
        allow_null=True, help_text="When the broker last confirmed the positions' protection (the stream, or the "
                                   "monitor's broker sync).")
    protection_confirmed_stale = serializers.BooleanField(help_text="Older than two monitor intervals.")
    stream = StreamSerializer()


class StreamedSymbolSerializer(serializers.Serializer):
    symbol = serializers.CharField()
    streamed = serializers.BooleanField(help_text="Decided on each quote now: the broker accepted it and the stream "
                                                  "is healthy.")
    accepted = serializers.BooleanField(help_text="In the broker's last subscription answer.")
    last_quote_at = serializers.DateTimeField(allow_null=True)
    bid = serializers.DecimalField(max_digits=18, decimal_places=4, allow_null=True)
    ask = serializers.DecimalField(max_digits=18, decimal_places=4, allow_null=True)
    distance_pct = serializers.DecimalField(max_digits=12, decimal_places=4, allow_null=True,
                                            help_text="How near its nearest stop or target, in % of the price.")
    quotes = serializers.IntegerField()
    skipped = serializers.IntegerField(help_text="Quotes not acted on (crossed, zero, stale).")
    last_problem = serializers.CharField(allow_blank=True)


class QuoteStreamSerializer(serializers.Serializer):
    healthy = serializers.BooleanField(help_text="Quotes arrived within STREAM_SILENCE_SECONDS (while the market is "
                                                 "open). Otherwise the monitor polls every symbol at its interval.")
    last_beat = serializers.DateTimeField(allow_null=True, help_text="The last quote (market open) or moment "
                                                                      "connected (market closed).")
    age_seconds = serializers.IntegerField(allow_null=True)
    stale_after_seconds = serializers.IntegerField()
    messages = serializers.IntegerField()
    last_error = serializers.CharField(allow_blank=True)
    symbols = StreamedSymbolSerializer(many=True)
    polled = serializers.ListField(child=serializers.CharField(),
                                   help_text="Watched symbols not streamed: polled at MONITOR_INTERVAL_SECONDS.")


def quote_stream_payload(status) -> dict:
    heartbeat, streamed = status.heartbeat, status.streamed
    row = heartbeat.heartbeat
    return {
        "healthy": not heartbeat.stale, "last_beat": heartbeat.finished_at, "age_seconds": heartbeat.age_seconds,
        "stale_after_seconds": heartbeat.stale_after_seconds, "messages": row.cycles if row else 0,
        "last_error": row.last_error if row else "",
        "symbols": [{"symbol": s.symbol, "streamed": s.symbol in streamed, "accepted": s.accepted,
                     "last_quote_at": s.last_quote_at, "bid": s.bid, "ask": s.ask, "distance_pct": s.distance_pct,
                     "quotes": s.quotes, "skipped": s.skipped, "last_problem": s.last_problem}
                    for s in status.symbols],
        "polled": status.polled(),
    }


def monitor_payload(status, stream, as_of) -> dict:
    heartbeat = status.heartbeat
    return {
        "protection_confirmed_at": as_of.at,
        "protection_confirmed_stale": as_of.stale,
        "stream": {"healthy": not stream.stale,
                   "connected_since": stream.heartbeat.started_at if stream.heartbeat and not stream.stale else None,
                   "last_seen_connected": stream.heartbeat.finished_at if stream.heartbeat else None,
                   "age_seconds": stream.age_seconds, "events_applied": stream.heartbeat.cycles if stream.heartbeat else 0},
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
        "last_error_at": heartbeat.last_error_at if heartbeat else None,
        "market_open": heartbeat.market_open if heartbeat else None,
    }



class TimelineEntrySerializer(serializers.Serializer):
    at = serializers.DateTimeField()
    source = serializers.ChoiceField(choices=[source.value for source in Source])
    title = serializers.CharField()
    detail = serializers.CharField(allow_blank=True)
    order = serializers.IntegerField(source="order_id", allow_null=True, help_text="The order it is about, if any.")


class PositionTimelineSerializer(serializers.Serializer):
    position = serializers.IntegerField(source="position.pk")
    entries = TimelineEntrySerializer(many=True, help_text="Oldest first.")
