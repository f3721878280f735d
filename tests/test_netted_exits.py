"""Exits netted per symbol: positions of one symbol and side that close together go out as ONE
market order for the sum; each is closed from that order's fill at its price, with its own
close_reason; a partial fill closes whole positions first; nothing is ever sent twice."""

from decimal import Decimal

import pytest
from django.utils import timezone

from risk.flatten import close_manually, flatten
from risk.monitor import monitor_cycle
from tests.helpers import crash_once_the_broker_accepts_an_exit, exit_posts
from trading.selectors import protection_summary
from trading.models import CloseReason, ExitShare, Order, OrderRole, OrderStatus, Position, PositionStatus, Side

pytestmark = pytest.mark.django_db


def _held(exchange, symbol: str, side: str, sizes: list[int], levels: list[tuple[str, str]]) -> list[Position]:
    """Positions of ours in one symbol, oldest first, the broker holding their total (as when
    adopted from the broker's holdings): no orders of their own at the broker."""
    sign = 1 if side == Side.LONG else -1
    exchange.control.set_position(symbol, sign * sum(sizes), "150.00")
    now = timezone.now()
    return [Position.objects.create(symbol=symbol, side=side, quantity=Decimal(size), entry_price=Decimal("150"),
                                    stop_loss=Decimal(stop), take_profit=Decimal(target), opened_at=now,
                                    adopted=True)
            for size, (stop, target) in zip(sizes, levels)]


def _exits(exchange) -> list[dict]:
    """The bodies of the exits POSTed to the exchange, in order."""
    return [r["body"] for r in exit_posts(exchange)]


def _fresh(positions: list[Position]) -> list[Position]:
    return [Position.objects.get(pk=p.pk) for p in positions]


@pytest.mark.parametrize("side,bid,levels,reasons", [
    (Side.LONG, "138.00", [("140", "160"), ("130", "137"), ("139", "170")],
     [CloseReason.STOP_LOSS_HIT, CloseReason.TAKE_PROFIT_HIT, CloseReason.STOP_LOSS_HIT]),
    (Side.SHORT, "161.98", [("160", "140"), ("170", "163"), ("162", "120")],
     [CloseReason.STOP_LOSS_HIT, CloseReason.TAKE_PROFIT_HIT, CloseReason.STOP_LOSS_HIT]),
])
def test_one_cycles_triggers_in_one_symbol_go_out_as_one_order(exchange, active, side, bid, levels, reasons):
    positions = _held(exchange, "AAPL", side, [5, 3, 2], levels)
    exchange.control.set_quote("AAPL", bid, str(Decimal(bid) + Decimal("0.02")))

    monitor_cycle()

    (body,) = _exits(exchange)
    assert body["side"] == ("sell" if side == Side.LONG else "buy") and Decimal(str(body["qty"])) == 10
    assert body["client_order_id"] == f"catalyst-exit-{positions[0].pk}-0-of3"
    price = Decimal(bid) if side == Side.LONG else Decimal(bid) + Decimal("0.02")
    for position, reason in zip(_fresh(positions), reasons):
        assert position.status == PositionStatus.CLOSED and not position.needs_review
        assert position.exit_price == price and position.close_reason == reason
    order = Order.objects.get(role=OrderRole.EXIT)
    assert order.position is None  # netted: its positions are its shares
    assert [(s.position_id, s.qty, s.filled_qty) for s in order.shares.all()] == [
        (p.pk, Decimal(q), Decimal(q)) for p, q in zip(positions, (5, 3, 2))]
    assert exchange.control.state()["positions"] in ({}, [])


@pytest.mark.parametrize("side", [Side.LONG, Side.SHORT])
def test_a_partial_fill_closes_whole_positions_oldest_first_and_the_rest_goes_out_again(exchange, active, side):
    levels = [("140", "160")] * 3 if side == Side.LONG else [("160", "140")] * 3
    positions = _held(exchange, "MSFT", side, [4, 4, 2], levels)
    exchange.control.set_quote("MSFT", "138.00" if side == Side.LONG else "161.00",
                               "138.02" if side == Side.LONG else "161.02")
    exchange.control.add_fault("partial_fill", count=1)  # 5 of 10 fill; the order keeps working

    monitor_cycle()

    first, second, third = _fresh(positions)
    assert first.status == PositionStatus.CLOSED  # its 4 came from the 5 filled
    assert second.status == PositionStatus.CLOSING and third.status == PositionStatus.CLOSING
    working = Order.objects.get(role=OrderRole.EXIT)
    assert working.status == OrderStatus.PARTIALLY_FILLED
    assert [s.filled_qty for s in working.shares.all()] == [4, 1, 0]
    assert protection_summary().unprotected == 0  # the netted exit still working covers both

    exchange.control.expire_day_orders()  # the rest never fills today
    monitor_cycle()

    assert all(p.status == PositionStatus.CLOSED for p in _fresh(positions))
    bodies = _exits(exchange)
    assert [Decimal(str(b["qty"])) for b in bodies] == [10, 5]  # the remainder, once
    assert bodies[1]["client_order_id"] == f"catalyst-exit-{positions[1].pk}-1-of2"
    assert ExitShare.objects.filter(position=positions[1]).count() == 2
    assert exchange.control.state()["positions"] in ({}, [])


def test_a_restart_after_the_broker_accepted_a_netted_exit_finds_it_instead_of_sending_again(
        exchange, active, monkeypatch):
    positions = _held(exchange, "TSLA", Side.LONG, [3, 3, 4], [("240", "260")] * 3)
    exchange.control.set_quote("TSLA", "238.00", "238.02")
    crash_once_the_broker_accepts_an_exit(monkeypatch)
    with pytest.raises(SystemExit):
        monitor_cycle()
    monkeypatch.undo()
    assert all(p.status == PositionStatus.CLOSING for p in _fresh(positions))
    Position.objects.update(locked_until=None, lock_owner="")  # the killed process's locks, expired

    monitor_cycle()

    assert len(_exits(exchange)) == 1  # found by its client_order_id, never sent again
    assert all(p.status == PositionStatus.CLOSED and p.exit_price == Decimal("238.00") for p in _fresh(positions))
    assert Order.objects.get(role=OrderRole.EXIT).status == OrderStatus.FILLED


def test_a_manual_close_of_several_nets_each_symbol_and_never_sells_anothers_shares(exchange, active):
    mine = _held(exchange, "AAPL", Side.LONG, [5, 5], [("140", "160")] * 2)
    other = Position.objects.create(symbol="AAPL", side=Side.LONG, quantity=Decimal("5"), entry_price=Decimal("150"),
                                    stop_loss=Decimal("140"), take_profit=Decimal("160"), opened_at=timezone.now())
    exchange.control.set_position("AAPL", 15, "150.00")  # the broker also holds the third one's 5
    tsla = _held(exchange, "TSLA", Side.LONG, [2], [("240", "260")])

    outcomes = close_manually(user=None, positions=[*mine, *tsla])

    assert [o.state for o in outcomes] == ["closed"] * 3
    assert sorted((b["symbol"], Decimal(str(b["qty"]))) for b in _exits(exchange)) == [("AAPL", 10), ("TSLA", 2)]
    assert {p.close_reason for p in _fresh([*mine, *tsla])} == {CloseReason.MANUAL}
    assert Position.objects.get(pk=other.pk).status == PositionStatus.OPEN
    assert Decimal(exchange.control.state()["positions"]["AAPL"]["qty"]) == 5


def test_flatten_everything_reads_and_cancels_in_one_request_each_and_exits_once_per_symbol(paper_exchange, settings):
    """At the budget (the exchange allowing 20 a minute, the console 12): a request per
    symbol plus four (cancel all, orders, positions, the clock once: no exit while the market
    is closed), and no 429."""
    settings.BROKER_REQUESTS_PER_MINUTE = 12
    paper_exchange.control.set_rate_limit(20)
    symbols = ["NA", "NB", "NC", "ND", "NE"]
    paper_exchange.control.set_quotes([{"symbol": s, "bid": "99.99", "ask": "100.01"} for s in symbols])
    for i, symbol in enumerate(symbols):
        _held(paper_exchange, symbol, Side.LONG if i % 2 == 0 else Side.SHORT, [1, 2, 3, 4],
              [("90", "110") if i % 2 == 0 else ("110", "90")] * 4)
    paper_exchange.control.clear_requests_log()

    result = flatten(user=None)

    assert {o.state for o in result.outcomes} == {"closed"} and len(result.outcomes) == 20
    kinds = [(r["method"], r["path"]) for r in paper_exchange.control.requests_log()]
    assert kinds.count(("DELETE", "/v2/orders")) == 1 and kinds.count(("GET", "/v2/positions")) == 1
    assert kinds.count(("GET", "/v2/clock")) == 1, kinds
    assert kinds.count(("POST", "/v2/orders")) == len(symbols) and len(kinds) == len(symbols) + 4, kinds
    assert paper_exchange.control.rate_limit()["throttled"] == 0
    assert paper_exchange.control.state()["positions"] in ({}, [])


def test_a_429_storm_during_a_flatten_loses_nothing_and_sends_nothing_twice(exchange, settings):
    settings.BROKER_RETRY_ATTEMPTS = 1
    symbols = ["SA", "SB", "SC", "SD"]
    exchange.control.set_quotes([{"symbol": s, "bid": "99.99", "ask": "100.01"} for s in symbols])
    positions = [p for s in symbols for p in _held(exchange, s, Side.LONG, [2, 3], [("90", "110")] * 2)]
    exchange.control.add_fault("http_429", method="POST", path="/v2/orders", count=5)
    exchange.control.add_fault("http_429", method="GET", path="/v2/positions", count=1)
    exchange.control.add_fault("http_429", method="DELETE", path="/v2/orders", count=1)

    result = flatten(user=None)

    assert {o.state for o in result.outcomes} <= {"closed", "error", "waiting"}
    for _ in range(4):  # the monitor carries on what the storm held up
        if not Position.objects.active().exists():
            break
        monitor_cycle()
    positions = _fresh(positions)
    assert all(p.status == PositionStatus.CLOSED and p.exit_price == Decimal("99.99") for p in positions)
    assert {p.close_reason for p in positions} == {CloseReason.EMERGENCY_STOP} and not any(p.needs_review for p in positions)
    accepted = [o for o in exchange.control.state()["orders"] if o["client_order_id"].startswith("catalyst-exit-")]
    assert sorted(o["symbol"] for o in accepted) == symbols  # one exit per symbol reached the broker
    assert all(Decimal(o["filled_qty"]) == 5 for o in accepted)
    assert exchange.control.state()["positions"] in ({}, [])
