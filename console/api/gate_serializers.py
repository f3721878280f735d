"""Request and response shapes of the order gate (POST /api/v1/orders, POST
/api/v1/positions/{id}/reduce). The orders are judged by risk.gate, as everywhere else."""

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from risk.gate import CLIENT_ORDER_ID_MAX, Refusal

from .serializers import (
    DecimalInputField,
    OrderSerializer,
    PositionSerializer,
    RequestSerializer,
    StrictBooleanField,
    StrictCharField,
    TestOrderRequestSerializer,
)


@extend_schema_field({"type": "string", "minLength": 1, "maxLength": CLIENT_ORDER_ID_MAX,
                      "pattern": r"^[A-Za-z0-9][A-Za-z0-9._:-]*$", "example": "momentum-20261127-0001"})
class ClientOrderIdField(StrictCharField):
    """The caller's own id, its idempotency key (checked in full by risk.gate)."""

    def __init__(self, **kwargs):
        super().__init__(max_length=CLIENT_ORDER_ID_MAX, trim_whitespace=False, **kwargs)


CLIENT_ORDER_ID_HELP = (f"Your id for this order, its idempotency key: 1 to {CLIENT_ORDER_ID_MAX} ASCII letters, "
                        "digits, '.', '_', ':' or '-', not starting with 'catalyst-'. The same id again returns the "
                        "same answer and sends nothing; a different request under it is a 409.")


class OrderGateRequestSerializer(TestOrderRequestSerializer):
    client_order_id = ClientOrderIdField(help_text=CLIENT_ORDER_ID_HELP + " Sent to the broker as the entry's "
                                                                          "client_order_id.")
    quantity = DecimalInputField(help_text="Whole shares.")
    intraday = StrictBooleanField(default=None, allow_null=True,
                                  help_text="true: closed before the market close (EOD_FLATTEN). false: stays "
                                            "overnight (its legs are GTC). Left out: as EOD_FLATTEN says.")


class OrderGateResponseSerializer(serializers.Serializer):
    client_order_id = serializers.CharField()
    replayed = serializers.BooleanField(help_text="true: the answer to an earlier request with this client_order_id; "
                                                  "nothing was sent now.")
    position_id = serializers.IntegerField()
    order = OrderSerializer(help_text="The entry with both legs (stop-loss and take-profit).")


class LimitBreachSerializer(serializers.Serializer):
    limit = serializers.CharField(help_text="max_order_qty, max_order_notional, max_order_loss, max_open_positions, "
                                            "max_symbol_exposure, max_total_exposure, max_orders_per_minute, "
                                            "symbols_allowed or symbols_refused.")
    value = serializers.CharField(help_text="The limit in force.")
    requested = serializers.CharField(help_text="What this order would make it.")


class WorkingOrderSerializer(serializers.Serializer):
    broker_order_id = serializers.CharField()
    client_order_id = serializers.CharField()
    side = serializers.CharField()
    type = serializers.CharField()
    qty = serializers.CharField()
    status = serializers.CharField()
    order_id = serializers.IntegerField(allow_null=True, help_text="Ours, when it is.")
    position_id = serializers.IntegerField(allow_null=True)


class BrokerPositionSerializer(serializers.Serializer):
    symbol = serializers.CharField()
    side = serializers.CharField()
    qty = serializers.CharField()
    position_ids = serializers.ListField(child=serializers.IntegerField(), help_text="Our open positions in it.")


class GateRefusalSerializer(serializers.Serializer):
    """Why the gate did not (or not yet) carry the order out. `code` says which refusal it is."""

    detail = serializers.CharField()
    code = serializers.ChoiceField(choices=[refusal.value for refusal in Refusal])
    client_order_id = serializers.CharField(required=False, help_text="Set once the request was recorded.")
    limits = LimitBreachSerializer(many=True, required=False, help_text="limit_exceeded: each limit broken.")
    conflicting_fields = serializers.ListField(child=serializers.CharField(), required=False,
                                               help_text="idempotency_conflict: what differs from the first request.")
    broker_status = serializers.IntegerField(required=False, allow_null=True,
                                             help_text="broker_refused: the broker's HTTP status.")
    working_orders = WorkingOrderSerializer(many=True, required=False,
                                            help_text="broker_refused: the symbol's working orders at the broker.")
    positions = BrokerPositionSerializer(many=True, required=False,
                                         help_text="broker_refused: the broker's open position in the symbol.")
    order = OrderSerializer(required=False, help_text="The entry as recorded, when one was sent.")
    position_id = serializers.IntegerField(required=False, allow_null=True)


class ReduceRequestSerializer(RequestSerializer):
    client_order_id = ClientOrderIdField(help_text=CLIENT_ORDER_ID_HELP)
    quantity = DecimalInputField(help_text="Shares to sell (a long) or buy back (a short), at most what the position "
                                           "holds; all of it closes the position.")


class ReduceResponseSerializer(serializers.Serializer):
    client_order_id = serializers.CharField()
    replayed = serializers.BooleanField()
    outcome = serializers.CharField(help_text="reduced (the rest is open and re-protected), closed, exit_pending (the "
                                              "monitor finishes it), waiting, error (the monitor retries each cycle), "
                                              "resumed (a retry found the reduce under way).")
    detail = serializers.CharField(allow_blank=True)
    held = serializers.DecimalField(max_digits=20, decimal_places=9, help_text="What the position holds now.")
    position = PositionSerializer()
