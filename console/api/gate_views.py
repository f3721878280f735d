"""The order gate's endpoints: the trading service's orders (POST /api/v1/orders) and reduces
(POST /api/v1/positions/{id}/reduce). Thin: risk.gate decides."""

import logging

from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.response import Response

from risk.entries import TradingHalted
from risk.gate import GateRefused, GateResult, Refusal, order_submit, position_reduce_submit
from trading.broker import BrokerError
from trading.holdings import holding, position_orders
from trading.models import Position
from trading.selectors import order_with_legs, positions_list
from trading.validation import OrderValidationError

from . import permissions as perms
from . import throttling
from .gate_serializers import (
    GateRefusalSerializer,
    OrderGateRequestSerializer,
    OrderGateResponseSerializer,
    ReduceRequestSerializer,
    ReduceResponseSerializer,
)
from .serializers import MAX_ID, ErrorSerializer, OrderSerializer
from .views import BAD_INPUT, FORBIDDEN, THROTTLED, UNAUTHENTICATED, UNSUPPORTED_MEDIA, ConsoleAPIView, _field_errors

log = logging.getLogger(__name__)

REFUSAL_STATUS = {
    Refusal.TRADING_HALTED: status.HTTP_409_CONFLICT,
    Refusal.IDEMPOTENCY_CONFLICT: status.HTTP_409_CONFLICT,
    Refusal.IN_PROGRESS: status.HTTP_409_CONFLICT,
    Refusal.POSITION_NOT_OPEN: status.HTTP_409_CONFLICT,
    Refusal.LIMIT_EXCEEDED: status.HTTP_422_UNPROCESSABLE_ENTITY,
    Refusal.BROKER_REFUSED: status.HTTP_422_UNPROCESSABLE_ENTITY,
    Refusal.BROKER_FAILED: status.HTTP_502_BAD_GATEWAY,
    Refusal.BRACKET_NOT_PROTECTED: status.HTTP_502_BAD_GATEWAY,
}

CONFLICT = OpenApiResponse(GateRefusalSerializer, description=(
    "`trading_halted`: trading is HALTED (or REDUCING, for entries); `idempotency_conflict`: the client_order_id "
    "was used for a different request; `in_progress`: a request with this id is still being sent (ask again); "
    "`position_not_open` (reduces)."))
REFUSED = OpenApiResponse(GateRefusalSerializer, description=(
    "`limit_exceeded`: each pre-trade limit broken, with its value (`limits`); `broker_refused`: the broker refused "
    "the order (wash trade, buying power, a bracket that would reduce a position, an unknown symbol...), naming "
    "the symbol's working orders and open position. Nothing is held."))
BROKER_FAILED = OpenApiResponse(GateRefusalSerializer, description=(
    "`broker_failed`: the broker did not answer in time; the order may be there: ask again with the same "
    "client_order_id to settle it. `bracket_not_protected`: the broker did not hold both legs (the entry was "
    "cancelled, or its fill is an unprotected position the monitor guards)."))

ORDER_EXAMPLES = [
    OpenApiExample("Market long", request_only=True, value={
        "client_order_id": "momentum-20261127-0001", "symbol": "AAPL", "side": "buy", "quantity": 10,
        "stop_loss": "145.00", "take_profit": "160.00", "intraday": True}),
    OpenApiExample("Limit short held overnight", request_only=True, value={
        "client_order_id": "meanrev-20261127-0042", "symbol": "MSFT", "side": "sell", "quantity": 5,
        "entry_price": "401.50", "stop_loss": "410.00", "take_profit": "385.00", "intraday": False}),
    OpenApiExample("A limit broken", response_only=True, status_codes=["422"], value={
        "detail": "refused by the pre-trade limits: max_order_notional is 50000: this order makes it 75015",
        "code": "limit_exceeded",
        "limits": [{"limit": "max_order_notional", "value": "50000", "requested": "75015"}]}),
    OpenApiExample("The broker refused", response_only=True, status_codes=["422"], value={
        "detail": "the broker refused the order: submit order: potential wash trade detected. use complex orders "
                  "(HTTP 403); working orders: sell 10 stop 61e69015-8549-4bfd-b9c3-01e75843f47d (order #12, "
                  "position #4)",
        "code": "broker_refused", "client_order_id": "momentum-20261127-0002", "broker_status": 403,
        "working_orders": [{"broker_order_id": "61e69015-8549-4bfd-b9c3-01e75843f47d",
                            "client_order_id": "4f4a3c9e-0a0e-4b7e-9d56-2c1f8f0b6a51", "side": "sell", "type": "stop",
                            "qty": "10", "status": "held", "order_id": 12, "position_id": 4}],
        "positions": [{"symbol": "AAPL", "side": "long", "qty": "10", "position_ids": [4]}]}),
    OpenApiExample("Same id, different order", response_only=True, status_codes=["409"], value={
        "detail": "client_order_id 'momentum-20261127-0001' was used for a different request (quantity '10'); "
                  "use a new client_order_id for a new order",
        "code": "idempotency_conflict", "client_order_id": "momentum-20261127-0001",
        "conflicting_fields": ["quantity"]}),
]


def _refusal(exc: GateRefused | TradingHalted) -> Response:
    if isinstance(exc, TradingHalted):
        return Response({"detail": str(exc), "code": Refusal.TRADING_HALTED}, status=status.HTTP_409_CONFLICT)
    body = {"detail": str(exc), "code": exc.code, **exc.data}
    request = exc.request
    if request is not None:
        body["client_order_id"] = request.client_order_id
        if request.entry_order_id is not None:
            body["order"] = order_with_legs(order_id=request.entry_order_id)
        if request.position_id is not None:
            body["position_id"] = request.position_id
    return Response(GateRefusalSerializer(body).data, status=REFUSAL_STATUS[exc.code])


class OrderGateView(ConsoleAPIView):
    """A bracket entry of the trading service, through the order gate."""

    required_perms = {"POST": perms.SUBMIT_ORDER}
    throttle_scope = throttling.ORDER_GATE

    @extend_schema(
        operation_id="orders_create",
        request=OrderGateRequestSerializer,
        examples=ORDER_EXAMPLES,
        responses={
            200: OpenApiResponse(OrderGateResponseSerializer,
                                 description="This client_order_id was sent before: the same order, nothing sent now."),
            201: OpenApiResponse(OrderGateResponseSerializer, description="Sent: the entry with both legs."),
            400: BAD_INPUT, 401: UNAUTHENTICATED, 403: FORBIDDEN, 409: CONFLICT, 415: UNSUPPORTED_MEDIA,
            422: REFUSED, 429: THROTTLED, 502: BROKER_FAILED,
        },
        description=(
            f"Needs `{perms.SUBMIT_ORDER}`. A bracket (entry + stop-loss + take-profit; market without `entry_price`, "
            "limit with it; buy/long or sell/short) for real: refused while trading is not ACTIVE and when a "
            "pre-trade limit would break, then sent under your client_order_id and read back with both legs. "
            "Idempotent: send the same client_order_id again after a timeout or a 5xx."
        ),
    )
    def post(self, request):
        given = OrderGateRequestSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        try:
            result = order_submit(**given.validated_data, user=request.user)
        except OrderValidationError as exc:
            return Response(_field_errors(exc), status=status.HTTP_400_BAD_REQUEST)
        except (GateRefused, TradingHalted) as exc:
            return _refusal(exc)
        except BrokerError as exc:  # before anything was recorded: nothing sent
            log.error("order gate: broker error: %s", exc)
            return Response({"detail": f"broker error, nothing sent: {exc}", "code": Refusal.BROKER_FAILED},
                            status=status.HTTP_502_BAD_GATEWAY)
        return self._answer(result)

    @staticmethod
    def _answer(result: GateResult) -> Response:
        gate_request = result.request
        body = {"client_order_id": gate_request.client_order_id, "replayed": result.replayed,
                "position_id": gate_request.position_id,
                "order": OrderSerializer(order_with_legs(order_id=gate_request.entry_order_id)).data}
        return Response(body, status=status.HTTP_200_OK if result.replayed else status.HTTP_201_CREATED)


class PositionReduceView(ConsoleAPIView):
    """Reduce (or close) an open position for the trading service, through the order gate."""

    required_perms = {"POST": perms.SUBMIT_ORDER}
    throttle_scope = throttling.ORDER_GATE

    @extend_schema(
        operation_id="positions_reduce",
        request=ReduceRequestSerializer,
        parameters=[OpenApiParameter("id", int, OpenApiParameter.PATH, description="The position's id.")],
        examples=[OpenApiExample("Sell half", request_only=True,
                                 value={"client_order_id": "momentum-20261127-0001-r1", "quantity": 5})],
        responses={
            200: OpenApiResponse(ReduceResponseSerializer, description="This client_order_id was sent before."),
            201: OpenApiResponse(ReduceResponseSerializer, description="Carried out (see `outcome`)."),
            400: BAD_INPUT, 401: UNAUTHENTICATED, 403: FORBIDDEN,
            404: OpenApiResponse(ErrorSerializer, description="No such position (or not a position id)."),
            409: CONFLICT, 415: UNSUPPORTED_MEDIA, 429: THROTTLED,
        },
        description=(
            f"Needs `{perms.SUBMIT_ORDER}`. Allowed while ACTIVE or REDUCING (refused while HALTED). Through the "
            "monitor's safe exit path: the position's legs are cancelled, ONE market exit goes out for the quantity "
            "(never more than it holds), and what stays open is re-protected at once with an OCO at its stop and "
            "target. Idempotent like POST /api/v1/orders."
        ),
    )
    def post(self, request, pk: str):
        position_id = int(pk) if pk.isascii() and pk.isdigit() else 0
        given = ReduceRequestSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        try:
            if not 1 <= position_id <= MAX_ID:
                raise Position.DoesNotExist
            result = position_reduce_submit(position_id=position_id, **given.validated_data, user=request.user)
        except Position.DoesNotExist:
            return Response({"detail": "No such position."}, status=status.HTTP_404_NOT_FOUND)
        except OrderValidationError as exc:
            return Response(_field_errors(exc), status=status.HTTP_400_BAD_REQUEST)
        except (GateRefused, TradingHalted) as exc:
            return _refusal(exc)
        position = positions_list().get(pk=result.request.position_id)
        data = result.request.data
        body = {"client_order_id": result.request.client_order_id, "replayed": result.replayed,
                "outcome": data.get("outcome", ""), "detail": data.get("detail", ""),
                "held": holding(position, position_orders(position)).held, "position": position}
        return Response(ReduceResponseSerializer(body).data,
                        status=status.HTTP_200_OK if result.replayed else status.HTTP_201_CREATED)
