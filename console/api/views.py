"""API views: thin. Reads go through the selectors, changes through the services."""

import logging

from django.urls import Resolver404, resolve

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.pagination import CursorPagination
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from risk.checklist import checklist_run
from risk.entries import BracketNotProtected, TradingHalted, submit_bracket_order
from risk.flatten import flatten, outcome_summary
from risk.selectors import monitor_status, protection_as_of, quote_stream_status, stream_status
from risk.timeline import position_timeline
from risk.trading_state import ChecklistNotPassed, trading_mode_change
from trading.broker import BrokerError
from trading.models import Order, Position, TradingMode
from trading.selectors import (
    order_with_legs,
    positions_list,
    trading_state,
    trading_state_history,
)
from trading.validation import OrderValidationError

from ..audit import flatten_history, history_add
from . import permissions as perms
from . import throttling
from .parsers import StrictJSONParser
from .serializers import (
    FIELD_ERRORS_SCHEMA,
    MAX_ID,
    TRADING_STATE_REFUSED_SCHEMA,
    BracketFailureSerializer,
    BrokerRefusalSerializer,
    ChecklistSerializer,
    CloseResultSerializer,
    ErrorSerializer,
    FlattenRequestSerializer,
    FlattenResponseSerializer,
    MonitorSerializer,
    OrderSerializer,
    PositionFilterSerializer,
    PositionSerializer,
    PositionTimelineSerializer,
    QuoteStreamSerializer,
    TestOrderRequestSerializer,
    TestOrderResponseSerializer,
    TradingStateRequestSerializer,
    TradingStateSerializer,
    monitor_payload,
    quote_stream_payload,
)

log = logging.getLogger(__name__)

BAD_INPUT = OpenApiResponse(FIELD_ERRORS_SCHEMA, description="Invalid input: every bad field, by name.")
UNAUTHENTICATED = OpenApiResponse(ErrorSerializer, description="No or bad credentials (token or session).")
FORBIDDEN = OpenApiResponse(ErrorSerializer, description="Authenticated, but without the permission this needs.")
BROKER_FAILED = OpenApiResponse(ErrorSerializer, description="The broker failed or could not be reached.")
UNSUPPORTED_MEDIA = OpenApiResponse(ErrorSerializer, description="The body is not JSON (Content-Type).")
THROTTLED = OpenApiResponse(
    ErrorSerializer,
    description="Too many requests (the user's rate, or this write's own): wait for Retry-After seconds.",
)


def _field_errors(exc: OrderValidationError) -> dict[str, list[str]]:
    return {field: [message] for field, message in exc.errors.items()}


class ConsoleAPIView(APIView):
    permission_classes = perms.PERMISSIONS
    # JSON bodies only: one way to say a thing (a form cannot say null, a list or a number),
    # and a smaller surface. Anything else is a 415.
    parser_classes = [StrictJSONParser]
    required_perms: dict[str, str] = {}


class TestOrderView(ConsoleAPIView):
    """Send a test bracket order (entry + stop + target), capped at TEST_ORDER_MAX_QTY shares."""

    required_perms = {"POST": perms.ADD_ORDER}
    throttle_scope = throttling.ORDERS

    @extend_schema(
        operation_id="orders_test_create",
        request=TestOrderRequestSerializer,
        responses={
            201: TestOrderResponseSerializer,
            400: BAD_INPUT,
            401: UNAUTHENTICATED,
            403: FORBIDDEN,
            415: UNSUPPORTED_MEDIA,
            429: THROTTLED,
            422: OpenApiResponse(
                BrokerRefusalSerializer,
                description="The broker refused the order (wash trade, buying power, an unknown symbol...): "
                            "`detail` and the broker's HTTP status. The order is recorded as submit_failed.",
            ),
            502: OpenApiResponse(
                BracketFailureSerializer,
                description="The broker did not hold both legs (the entry was cancelled, or its fill is an "
                            "unprotected position), or it failed, did not answer or refused the console's keys (then "
                            "only `detail`).",
            ),
        },
        description=f"Needs `{perms.ADD_ORDER}`. Quantity above TEST_ORDER_MAX_QTY is a 400 on `quantity`.",
    )
    def post(self, request):
        given = TestOrderRequestSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        try:
            position = submit_bracket_order(**given.validated_data, is_test=True)
        except OrderValidationError as exc:
            return Response(_field_errors(exc), status=status.HTTP_400_BAD_REQUEST)
        except BracketNotProtected as exc:
            entry = order_with_legs(order_id=exc.entry.pk)
            return Response(
                {"detail": str(exc), "order": OrderSerializer(entry).data,
                 "position_id": exc.position.pk if exc.position else None},
                status=status.HTTP_502_BAD_GATEWAY,
            )
        except TradingHalted as exc:  # test orders are allowed while halted; kept for safety
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        except BrokerError as exc:
            log.error("test order: broker error: %s", exc)
            if exc.outcome_unknown or exc.status == 401:  # no answer, or our own keys refused: not the order
                return Response({"detail": f"broker error: {exc}"}, status=status.HTTP_502_BAD_GATEWAY)
            return Response({"detail": f"the broker refused the order: {exc}", "broker_status": exc.status},
                            status=status.HTTP_422_UNPROCESSABLE_ENTITY)
        entry = order_with_legs(order_id=position.entry_order_id)
        return Response({"position_id": position.pk, "order": OrderSerializer(entry).data},
                        status=status.HTTP_201_CREATED)


def _path_id(pk: str) -> int | None:
    """A row id from the URL. The URL takes any segment, so that "-1", "abc" or an id too large
    for the database are this API's JSON 404 rather than Django's HTML page (or an overflow)."""
    value = int(pk) if pk.isascii() and pk.isdigit() else 0
    return value if 1 <= value <= MAX_ID else None


def _one_row_schema(*, operation_id: str, noun: str, response, description: str):
    return extend_schema(
        operation_id=operation_id,
        parameters=[OpenApiParameter("id", int, OpenApiParameter.PATH, description=f"The {noun}'s id.")],
        responses={200: response, 401: UNAUTHENTICATED, 403: FORBIDDEN,
                   404: OpenApiResponse(ErrorSerializer, description=f"No such {noun} (or not an id)."),
                   429: THROTTLED},
        description=description,
    )


class OrderDetailView(ConsoleAPIView):
    required_perms = {"GET": perms.VIEW_ORDER}

    @_one_row_schema(operation_id="orders_retrieve", noun="order", response=OrderSerializer,
                     description=f"One order with its legs. Needs `{perms.VIEW_ORDER}`.")
    def get(self, request, pk: str):
        order_id = _path_id(pk)
        try:
            if order_id is None:
                raise Order.DoesNotExist
            order = order_with_legs(order_id=order_id)
        except Order.DoesNotExist:
            return Response({"detail": "No such order."}, status=status.HTTP_404_NOT_FOUND)
        return Response(OrderSerializer(order).data)


class PositionPagination(CursorPagination):
    """Cursor pages: no COUNT over the whole table, stable while rows are added."""

    ordering = "-id"
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500

    def decode_cursor(self, request):
        # A cursor we did not hand out is bad input (400 on `cursor`), not a missing page.
        try:
            return super().decode_cursor(request)
        except NotFound:
            raise ValidationError({"cursor": [self.invalid_cursor_message]}) from None


class PositionListView(ConsoleAPIView):
    required_perms = {"GET": perms.VIEW_POSITION}

    @extend_schema(
        operation_id="positions_list",
        parameters=[
            OpenApiParameter("status", str, enum=["open", "closing", "closed"]),
            OpenApiParameter("symbol", str),
            OpenApiParameter("cursor", str, description="From `next` / `previous`."),
            OpenApiParameter("page_size", {"type": "integer", "minimum": 1, "maximum": 500},
                             description="At most 500; default 50."),
        ],
        responses={200: PositionSerializer(many=True), 400: BAD_INPUT, 401: UNAUTHENTICATED, 403: FORBIDDEN,
                   429: THROTTLED},
        description=f"Positions, newest first, with protection and realised P&L. Needs `{perms.VIEW_POSITION}`.",
    )
    def get(self, request):
        filters = PositionFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        given = filters.validated_data
        queryset = positions_list(status=given.get("status"), symbol=given.get("symbol"))
        paginator = PositionPagination()
        page = paginator.paginate_queryset(queryset, request, view=self)
        return paginator.get_paginated_response(PositionSerializer(page, many=True).data)

    # Lets drf-spectacular describe the paginated envelope.
    pagination_class = PositionPagination


class PositionTimelineView(ConsoleAPIView):
    required_perms = {"GET": perms.VIEW_POSITION}

    @_one_row_schema(
        operation_id="positions_timeline", noun="position", response=PositionTimelineSerializer,
        description=f"Everything that happened to one position, oldest first: its entry, legs, fills and exit, "
                    f"risk events, alerts, operators' actions and the trading-state changes while it was open. "
                    f"Needs `{perms.VIEW_POSITION}`.",
    )
    def get(self, request, pk: str):
        position_id = _path_id(pk)
        position = Position.objects.filter(pk=position_id).first() if position_id else None
        if position is None:
            return Response({"detail": "No such position."}, status=status.HTTP_404_NOT_FOUND)
        return Response(PositionTimelineSerializer({"position": position,
                                                    "entries": position_timeline(position=position)}).data)


class FlattenView(ConsoleAPIView):
    required_perms = {"POST": perms.FLATTEN}
    throttle_scope = throttling.FLATTEN

    @extend_schema(
        operation_id="positions_flatten",
        request=FlattenRequestSerializer,
        responses={200: FlattenResponseSerializer, 400: BAD_INPUT, 401: UNAUTHENTICATED, 403: FORBIDDEN,
                   415: UNSUPPORTED_MEDIA, 429: THROTTLED},
        description=(
            f"EMERGENCY_STOP. Needs `{perms.FLATTEN}` and `confirm: \"FLATTEN\"`. Sets trading to HALTED "
            "(unless halted), cancels open orders (all of them when `positions` is left out), then closes each "
            "position. Repeating it closes nothing twice: a position already closing or closed is `skipped`. "
            "Broker failures are reported per position (`state: error`), never as a 502."
        ),
    )
    def post(self, request):
        given = FlattenRequestSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        result = flatten(user=request.user, positions=given.validated_data.get("positions"))
        flatten_history(user=request.user, result=result)
        results = [
            {"position": o.position, "state": o.state, "detail": o.detail, "summary": outcome_summary(o)}
            for o in result.outcomes
        ]
        return Response({
            "halted": trading_state().mode == TradingMode.HALTED,
            "halted_now": result.halted is not None,
            "cancelled_orders": result.cancelled_orders,
            "errors": result.errors,
            "results": CloseResultSerializer(results, many=True).data,
        })


def _state_payload(change) -> dict:
    return {"mode": change.mode, "reason": change.reason, "changed_by_name": change.changed_by_name,
            "changed_at": change.changed_at, "overrode_checklist": change.overrode_checklist}


def _checklist_payload(checklist) -> dict:
    return {"passed": checklist.passed, "checked_at": checklist.checked_at,
            "items": [vars(item) for item in checklist.items]}


class TradingStateView(ConsoleAPIView):
    required_perms = {"GET": perms.VIEW_TRADING_STATE, "POST": perms.CHANGE_TRADING_MODE}
    throttle_scope = throttling.TRADING_STATE  # the POST only (WriteScopedThrottle skips reads)

    def _current(self) -> dict:
        payload = {
            "state": _state_payload(trading_state()),
            "checklist": _checklist_payload(checklist_run()),
            "history": [_state_payload(c) for c in trading_state_history(limit=20)],
        }
        return TradingStateSerializer(payload).data

    @extend_schema(
        operation_id="trading_state_retrieve",
        responses={200: TradingStateSerializer, 401: UNAUTHENTICATED, 403: FORBIDDEN, 429: THROTTLED},
        description=f"The state in force, the re-enable checklist (computed now) and the last 20 changes. "
                    f"Needs `{perms.VIEW_TRADING_STATE}`.",
    )
    def get(self, request):
        return Response(self._current())

    @extend_schema(
        operation_id="trading_state_update",
        request=TradingStateRequestSerializer,
        responses={
            200: TradingStateSerializer,
            400: OpenApiResponse(
                TRADING_STATE_REFUSED_SCHEMA,
                description="Bad field, or resuming (ACTIVE) while checklist items fail without `override`: "
                            "then `override` says why and `checklist` lists the items.",
            ),
            401: UNAUTHENTICATED,
            403: FORBIDDEN,
            415: UNSUPPORTED_MEDIA,
            429: THROTTLED,
        },
        description=f"ACTIVE, HALTED or REDUCING, with a reason. Needs `{perms.CHANGE_TRADING_MODE}`. Resuming "
                    "runs the checklist; `override: true` resumes anyway and is recorded.",
    )
    def post(self, request):
        given = TradingStateRequestSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        data = given.validated_data
        try:
            change = trading_mode_change(mode=data["mode"], reason=data["reason"], user=request.user,
                                         override=data["override"])
        except ChecklistNotPassed as exc:
            body = _field_errors(exc)
            body["checklist"] = ChecklistSerializer(_checklist_payload(exc.checklist)).data
            return Response(body, status=status.HTTP_400_BAD_REQUEST)
        except OrderValidationError as exc:
            return Response(_field_errors(exc), status=status.HTTP_400_BAD_REQUEST)
        history_add(user=request.user, obj=change, message=f"Trading set to {change.mode}: {change.reason}")
        return Response(self._current())


class MonitorView(ConsoleAPIView):
    required_perms = {"GET": perms.VIEW_MONITOR}

    @extend_schema(
        operation_id="monitor_retrieve",
        responses={200: MonitorSerializer, 401: UNAUTHENTICATED, 403: FORBIDDEN, 429: THROTTLED},
        description=f"The monitor's heartbeat: last cycle, its age and whether it is stale (no cycle finished "
                    f"within 2 x MONITOR_INTERVAL_SECONDS); the order stream's health; when the broker last "
                    f"confirmed the positions' protection. Needs `{perms.VIEW_MONITOR}`.",
    )
    def get(self, request):
        monitor, stream = monitor_status(), stream_status()
        as_of = protection_as_of(monitor=monitor, stream=stream)
        return Response(MonitorSerializer(monitor_payload(monitor, stream, as_of)).data)


class QuoteStreamView(ConsoleAPIView):
    required_perms = {"GET": perms.VIEW_MONITOR}

    @extend_schema(
        operation_id="quote_stream_retrieve",
        responses={200: QuoteStreamSerializer, 401: UNAUTHENTICATED, 403: FORBIDDEN, 429: THROTTLED},
        description=f"The quote stream's health (`manage.py runquotes`), per symbol: which symbols are decided on "
                    f"each quote, which are polled, what the broker accepted or refused. Needs "
                    f"`{perms.VIEW_MONITOR}`.",
    )
    def get(self, request):
        return Response(QuoteStreamSerializer(quote_stream_payload(quote_stream_status())).data)


class NotFoundView(APIView):
    """Any /api/ path that is no endpoint (a trailing slash, a typo, an old version): a JSON 404,
    never Django's HTML page, naming the endpoint meant when only the trailing slash differs.
    Anonymous callers get the API's 401 first, so paths can't be probed without credentials."""

    permission_classes = [IsAuthenticated]
    schema = None  # not an endpoint: left out of the OpenAPI schema

    def _not_found(self, request, *args, **kwargs):
        detail = "No such API endpoint."
        path = request.path
        if path.endswith("/") and path.rstrip("/"):
            try:
                match = resolve(path.rstrip("/"))
            except Resolver404:
                match = None
            if match is not None and match.func.__name__ != NotFoundView.__name__:
                detail += f" The endpoint is {path.rstrip('/')} (no trailing slash)."
        return Response({"detail": detail}, status=status.HTTP_404_NOT_FOUND)

    get = post = put = patch = delete = options = _not_found
