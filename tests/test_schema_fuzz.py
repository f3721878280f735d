"""Schema fuzzing: Schemathesis against the API's own OpenAPI schema, in-process (WSGI), as a
superuser with a token, the paper exchange behind the broker.

For every operation, a bounded number of schema-conforming ("positive") and non-conforming
("negative") requests: none may be a 5xx, and every answer must conform to the schema (its
status code documented, its content type and body as documented, negative data refused).
"""

import logging
import time
from collections import Counter
from urllib.parse import parse_qs, urlsplit

import pytest
import schemathesis
from django.contrib.auth.models import User
from django.core.cache import cache
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from rest_framework.authtoken.models import Token
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from risk.entries import submit_bracket_order
from risk.trading_state import trading_state_set

pytestmark = [pytest.mark.reliability, pytest.mark.django_db]

# Examples per operation and generation mode. 9 operations x 2 modes x this many requests:
# the file stays well under a minute on SQLite and PostgreSQL.
EXAMPLES = 200

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]

# A rate no fuzz run reaches: throttling is tested in test_security.py, not here.
UNTHROTTLED = {"user": "100000/min", "orders": "100000/min", "flatten": "100000/min",
               "trading_state": "100000/min", "order_gate": "100000/min"}


class _Unhandled(logging.Handler):
    """Counts the exceptions Django turned into a 500 ("Internal Server Error" with a traceback)."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.seen: list[str] = []

    def emit(self, record):
        if record.exc_info:
            self.seen.append(record.getMessage())


@pytest.fixture
def unhandled():
    handler = _Unhandled()
    logger = logging.getLogger("django.request")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


@pytest.fixture
def wsgi_app():
    """Django's own WSGI handler. It closes "old" database connections at the start and end
    of every request, which inside the test's transaction would drop it: Django's test
    client disconnects the same receivers, so do we, for the length of the test."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield WSGIHandler()
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


@pytest.fixture
def exchange(paper_exchange):
    for symbol, bid, ask in [("AAPL", "149.99", "150.01"), ("MSFT", "399.99", "400.01")]:
        paper_exchange.control.set_quote(symbol, bid, ask)
    return paper_exchange


@pytest.fixture
def api(wsgi_app, exchange, settings):
    """The schema as the app serves it, loaded over WSGI, and the headers of a superuser."""
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": UNTHROTTLED}
    cache.clear()
    admin = User.objects.create_superuser("fuzzer", password="pw-for-tests-only")
    headers = {"Authorization": f"Token {Token.objects.create(user=admin).key}",
               "X-Forwarded-Proto": "https"}  # production settings redirect plain HTTP
    schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", wsgi_app, headers=headers)
    yield schema, headers
    cache.clear()


def _fuzz(operation, mode: GenerationMode, headers: dict, statuses: Counter, failures: list[str], figures) -> None:
    """EXAMPLES requests of one operation in one mode; each distinct failure kept once."""
    seen: set[str] = set()

    @given(case=operation.as_strategy(generation_mode=mode))
    @hypothesis_settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=False,
                         phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    def run(case):
        response = case.call(headers=headers)
        statuses[(operation.label, response.status_code)] += 1
        if mode is GenerationMode.NEGATIVE:
            figures.add("bad inputs tried")
        if response.status_code >= 500:
            figures.add("5xx responses")
        try:
            case.validate_response(response, checks=CHECKS, headers=headers)
        except FailureGroup as exc:
            key = f"{operation.label} [{mode.value}]: " + "; ".join(
                sorted({type(f).__name__ + ": " + f.title for f in exc.exceptions}))
            if key not in seen:
                seen.add(key)
                failures.append(key + "\n" + str(exc)[:3000])

    run()


def test_every_operation_survives_fuzzing_and_answers_as_documented(api, unhandled, figures):
    schema, headers = api
    # Something to find: an open position with its entry and legs (ids 1.. exist).
    trading_state_set(mode="ACTIVE", reason="fuzzing")
    submit_bracket_order(symbol="AAPL", quantity=1, side="buy", stop_loss="140", take_profit="160")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 9

    statuses: Counter = Counter()
    failures: list[str] = []
    started = time.monotonic()
    for operation in operations:
        raw = operation.definition.raw
        takes_input = bool(raw.get("parameters") or raw.get("requestBody"))
        # An operation without parameters or body has no input to get wrong.
        for mode in [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if takes_input else []):
            _fuzz(operation, mode, headers, statuses, failures, figures)
    elapsed = time.monotonic() - started
    print(f"fuzzed {sum(statuses.values())} requests in {elapsed:.1f}s: {dict(statuses)}")
    figures.add("unhandled errors", len(unhandled.seen))
    assert not failures, "\n\n".join(failures)
    assert not unhandled.seen, unhandled.seen


GOOD_ORDER = {"symbol": "AAPL", "quantity": 1, "side": "buy", "stop_loss": "140", "take_profit": "160"}


def test_the_answers_fuzzing_rarely_reaches_conform_too(api, exchange, unhandled):
    """Random input almost never makes a valid bracket or flattens: the successes, the broker
    failures and the refusals with a checklist are sent by hand and checked the same way."""
    schema, headers = api
    checks = [c for c in CHECKS if c is not negative_data_rejection]
    seen: list[tuple[str, int]] = []

    def send(method: str, path: str, expected: int, **kwargs):
        case = schema[path][method].Case(media_type="application/json" if "body" in kwargs else None, **kwargs)
        response = case.call(headers=headers)
        seen.append((f"{method} {path}", response.status_code))
        assert response.status_code == expected, response.text
        # A 502 here is the documented answer to a broker failure: its body is still checked.
        wanted = [c for c in checks if c is not not_a_server_error] if expected >= 500 else checks
        case.validate_response(response, checks=wanted, headers=headers)
        return response.json()

    created = send("POST", "/api/v1/orders/test", 201, body=GOOD_ORDER)
    send("POST", "/api/v1/orders/test", 201, body={**GOOD_ORDER, "symbol": "MSFT", "side": "sell",
                                                    "entry_price": 400.5, "stop_loss": 410.25, "take_profit": 390})
    send("GET", "/api/v1/orders/{id}", 200, path_parameters={"id": created["order"]["id"]})
    send("GET", "/api/v1/orders/{id}", 404, path_parameters={"id": 10**30})

    exchange.control.set_quote("TSLA", "249.99", "250.01")
    exchange.control.add_fault("drop_legs", count=1)  # a symbol of its own: AAPL's first bracket still works
    send("POST", "/api/v1/orders/test", 502, body={**GOOD_ORDER, "symbol": "TSLA", "stop_loss": "240",
                                                    "take_profit": "260"})
    for fault, answer in (("http_500", 502), ("non_json_error", 502), ("reject", 422)):
        exchange.control.add_fault(fault, method="POST", path="/v2/orders")
        send("POST", "/api/v1/orders/test", answer, body=GOOD_ORDER)
        exchange.control.clear_faults()

    # Alpaca refuses a second bracket in a symbol while the first's legs work: a symbol of its own.
    exchange.control.set_quote("NVDA", "99.99", "100.01")
    nvda = {**GOOD_ORDER, "symbol": "NVDA", "stop_loss": "95", "take_profit": "110"}
    gate_order = {**nvda, "client_order_id": "fuzz-by-hand-1"}
    send("POST", "/api/v1/orders", 409, body=gate_order)  # trading is halted
    trading_state_set(mode="ACTIVE", reason="the order gate by hand")
    sent = send("POST", "/api/v1/orders", 201, body=gate_order)
    send("POST", "/api/v1/orders", 200, body=gate_order)
    send("POST", "/api/v1/orders", 409, body={**gate_order, "quantity": 2})
    send("POST", "/api/v1/orders", 422, body={**nvda, "client_order_id": "fuzz-by-hand-2", "quantity": 5000})
    send("POST", "/api/v1/orders", 422, body={**GOOD_ORDER, "client_order_id": "fuzz-by-hand-3"})  # a wash trade
    exchange.control.add_fault("http_500", method="POST", path="/v2/orders", count=1)
    send("POST", "/api/v1/orders", 502, body={**nvda, "client_order_id": "fuzz-by-hand-4"})
    send("POST", "/api/v1/positions/{id}/reduce", 400, path_parameters={"id": sent["position_id"]},
         body={"client_order_id": "fuzz-reduce-0", "quantity": 2})
    send("POST", "/api/v1/positions/{id}/reduce", 201, path_parameters={"id": sent["position_id"]},
         body={"client_order_id": "fuzz-reduce-1", "quantity": 1})
    send("POST", "/api/v1/positions/{id}/reduce", 200, path_parameters={"id": sent["position_id"]},
         body={"client_order_id": "fuzz-reduce-1", "quantity": 1})
    send("POST", "/api/v1/positions/{id}/reduce", 404, path_parameters={"id": 10**30},
         body={"client_order_id": "fuzz-reduce-2", "quantity": 1})

    first = send("GET", "/api/v1/positions", 200, query={"page_size": 1})
    cursor = parse_qs(urlsplit(first["next"]).query)["cursor"][0]
    send("GET", "/api/v1/positions", 200, query={"cursor": cursor, "page_size": 1})
    send("POST", "/api/v1/trading-state", 400, body={"mode": "ACTIVE", "reason": "resume"})
    send("POST", "/api/v1/trading-state", 200, body={"mode": "ACTIVE", "reason": "resume", "override": True})
    send("POST", "/api/v1/positions/flatten", 200, body={"confirm": "FLATTEN", "positions": [created["position_id"]]})
    flattened = send("POST", "/api/v1/positions/flatten", 200, body={"confirm": "FLATTEN"})
    assert flattened["results"] and all(r["state"] in ("closed", "skipped", "cancelled") for r in flattened["results"])
    send("POST", "/api/v1/positions/flatten", 400, body={"confirm": "FLATTEN", "position": [1]})
    send("GET", "/api/v1/monitor", 200)
    send("GET", "/api/v1/trading-state", 200)
    assert not unhandled.seen, unhandled.seen


def test_refused_names_cannot_pose_as_the_answers_own_keys(api):
    """Unknown fields and parameters are refused under non_field_errors, never under the name
    sent: a body field called "detail" or "checklist" must not reshape the 400."""
    schema, headers = api
    for path, method, kwargs in [
        ("/api/v1/trading-state", "POST", {"body": {"mode": "HALTED", "reason": "x", "checklist": False,
                                                    "detail": 1}}),
        ("/api/v1/positions/flatten", "POST", {"body": {"confirm": "FLATTEN", "position": [1]}}),
        ("/api/v1/positions", "GET", {"query": {"detail": "x", "stauts": "open"}}),
    ]:
        case = schema[path][method].Case(media_type="application/json" if "body" in kwargs else None, **kwargs)
        response = case.call(headers=headers)
        assert response.status_code == 400
        assert list(response.json()) == ["non_field_errors"], response.json()
        case.validate_response(response, checks=[c for c in CHECKS if c is not negative_data_rejection],
                               headers=headers)
