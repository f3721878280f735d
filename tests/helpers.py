"""Small helpers the test modules share."""

import threading
import time

from django.contrib.auth.models import Permission, User
from django.test import Client

from trading.models import Order, OrderRole, Position, TradingMode
from risk.entries import submit_bracket_order
from risk.trading_state import trading_state_set
from trading.selectors import trading_state

LEVELS = {"AAPL": ("140", "160"), "MSFT": ("390", "410"), "TSLA": ("240", "260")}  # a long's stop, target


def open_bracket(symbol: str = "AAPL", quantity: int = 10, side: str = "buy") -> Position:
    """A protected bracket position, resuming trading first if need be."""
    if trading_state().mode != TradingMode.ACTIVE:
        trading_state_set(mode="ACTIVE", reason="test")
    stop, target = LEVELS[symbol]
    if side == "sell":
        stop, target = target, stop
    return submit_bracket_order(symbol=symbol, quantity=quantity, side=side, stop_loss=stop, take_profit=target)


def bracket(**kwargs) -> Position:
    spec = dict(symbol="AAPL", quantity=10, side="buy", stop_loss="140", take_profit="160")
    spec.update(kwargs)
    return submit_bracket_order(**spec)


def leg(position: Position, role: str) -> Order:
    return position.entry_order.legs.get(role=role)


def two_brackets_in_one_symbol(exchange, first: dict, second: dict) -> tuple[Position, Position]:
    """Two positions of ours in one symbol. Alpaca refuses a second bracket while the first's
    legs work (its wash-trade rule: an order that could trade against the account's own
    working opposite-side order); two positions in a symbol still happen there (one adopted
    from the broker and one of ours, or records that lag the broker), so the pair is built
    with the exchange's wash-trade rule off, then the rule is back on."""
    exchange.control.set_rules(wash_trade=False)
    try:
        return bracket(**first), bracket(**second)
    finally:
        exchange.control.set_rules(wash_trade=True)


def exit_posts(exchange) -> list[dict]:
    """The exit orders POSTed to the paper exchange (requests, in order)."""
    return [r for r in exchange.control.requests_log()
            if r["method"] == "POST" and r["path"] == "/v2/orders"
            and str((r["body"] or {}).get("client_order_id", "")).startswith("catalyst-exit-")]


def staff_client(username: str, perms: list[str], password: str = "pw-for-tests-only") -> Client:
    """A logged-in admin client (over HTTPS, as production settings want) of a staff user with
    just these permissions ("app_label.codename")."""
    user = User.objects.create_user(username, password=password, is_staff=True)
    for perm in perms:
        app_label, codename = perm.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    client = Client(HTTP_X_FORWARDED_PROTO="https")  # production settings redirect plain HTTP
    client.force_login(user)
    return client


def token_client(username: str, perms: list[str]):
    """An API client over HTTPS with a token for a new user holding `perms` ("app.codename")."""
    from django.contrib.auth.models import Permission, User
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    user = User.objects.create_user(username, password="pw-for-tests-only")
    for perm in perms:
        app_label, codename = perm.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    client = APIClient(HTTP_X_FORWARDED_PROTO="https")
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


def order_posts(exchange, client_order_id: str | None = None) -> list[dict]:
    """The order POSTs that reached the paper exchange (with this client_order_id)."""
    return [r for r in exchange.control.requests_log()
            if r["method"] == "POST" and r["path"] == "/v2/orders"
            and (client_order_id is None or (r["body"] or {}).get("client_order_id") == client_order_id)]


def crash_once_the_broker_accepts_an_exit(monkeypatch) -> None:
    """The process dies (SystemExit) right after the broker accepted an exit, before its answer
    is on record; `monkeypatch.undo()` brings it back to life."""
    from trading import orders as trading_orders

    real_apply = trading_orders.order_apply

    def crash_on_exit(*, order, remote):
        if order.role == OrderRole.EXIT:
            raise SystemExit("killed after the broker accepted the exit")
        return real_apply(order=order, remote=remote)

    monkeypatch.setattr(trading_orders, "order_apply", crash_on_exit)


def eventually(check, timeout: float = 10):
    """`check()`'s first truthy result within `timeout` seconds (its last result otherwise)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.05)


class StreamThread:
    """A risk.streaming.StreamRunner running in a thread, as its command runs it; `close()` stops it."""

    def __init__(self, runner):
        self.runner = runner
        self.stop = threading.Event()
        self.thread = threading.Thread(target=runner.run, args=(self.stop,), daemon=True)
        self.thread.start()

    def close(self):
        self.stop.set()
        self.thread.join(timeout=20)
        assert not self.thread.is_alive()
