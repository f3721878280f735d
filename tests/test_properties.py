"""Property tests: any input to order validation and rounding gives a valid order or a
clear validation error, never an escaping exception."""

from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trading.validation import (
    CENT,
    SUB_DOLLAR_TICK,
    OrderValidationError,
    normalize_side,
    round_price,
    validate_bracket,
)

pytestmark = pytest.mark.reliability

decimals = st.decimals(allow_nan=True, allow_infinity=True)
plausible = st.decimals(min_value=Decimal("0.01"), max_value=Decimal("500"), places=3)
numbers = st.one_of(
    plausible,
    plausible.map(str),
    st.integers(min_value=1, max_value=500),
    decimals,
    st.integers(),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.none(),
    st.booleans(),
    decimals.map(str),
)
symbols = st.one_of(st.text(max_size=12), st.from_regex(r"[A-Za-z]{1,5}(\.[A-Z])?", fullmatch=True), st.none(), st.integers())
sides = st.one_of(st.sampled_from(["buy", "BUY", "Long", "sell", "short", "SHORT "]), st.text(max_size=8), st.none())


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture], deadline=None)
@given(symbol=symbols, quantity=numbers, side=sides, stop=numbers, target=numbers, entry=numbers,
       bid=st.one_of(st.none(), st.decimals(min_value=Decimal("0.0001"), max_value=Decimal("100000"), places=4)),
       spread=st.decimals(min_value=Decimal("0"), max_value=Decimal("5"), places=2))
def test_bracket_validation_gives_an_order_or_a_clear_error(figures, symbol, quantity, side, stop, target, entry, bid,
                                                            spread):
    figures.add("bad inputs tried")
    ask = None if bid is None else bid + spread
    try:
        spec = validate_bracket(symbol=symbol, quantity=quantity, side=side, stop_loss=stop, take_profit=target,
                                entry_price=entry, bid=bid, ask=ask)
    except OrderValidationError as exc:
        assert exc.errors and all(isinstance(m, str) and m for m in exc.errors.values())
        assert set(exc.errors) <= {"symbol", "quantity", "side", "stop_loss", "take_profit", "entry_price"}
        return
    except Exception:  # anything else escaping is the defect this test hunts
        figures.add("unhandled errors")
        raise
    figures.add("valid orders generated")
    # a limit entry is judged on its price; a market entry on the side of the quote it meets
    low = spec.entry_price if spec.entry_price is not None else round_price(bid)
    high = spec.entry_price if spec.entry_price is not None else round_price(ask)
    assert spec.quantity > 0 and spec.quantity == spec.quantity.to_integral_value()
    if spec.side == "buy":
        assert spec.stop_loss <= low - CENT and spec.take_profit >= high + CENT
    else:
        assert spec.stop_loss >= high + CENT and spec.take_profit <= low - CENT
    for price in (spec.stop_loss, spec.take_profit):
        assert price == round_price(price)


@settings(max_examples=500, deadline=None)
@given(price=st.decimals(min_value=Decimal("0.00001"), max_value=Decimal("1e8"), allow_nan=False, allow_infinity=False))
def test_rounding_lands_on_alpacas_increments(price):
    rounded = round_price(price)
    tick = CENT if rounded >= 1 else SUB_DOLLAR_TICK
    assert rounded % tick == 0
    assert abs(rounded - price) <= tick / 2 + SUB_DOLLAR_TICK / 2


@given(side=st.one_of(st.text(max_size=10), st.none(), st.integers()))
def test_side_is_normalised_or_refused_by_name(side):
    try:
        result = normalize_side(side)
    except ValueError as exc:
        assert "side" in str(exc) and repr(side) in str(exc)
    else:
        assert side.strip().lower() in ("buy", "long", "sell", "short")
        assert result == ("buy" if side.strip().lower() in ("buy", "long") else "sell")


@pytest.mark.parametrize(
    "price,expected",
    [("1.005", "1.01"), ("1.004", "1.00"), ("0.99994", "0.9999"), ("0.99995", "1.00"), ("0.12345", "0.1235"),
     ("12.345", "12.35"), ("0.0001", "0.0001")],
)
def test_rounding_on_both_sides_of_a_dollar(price, expected):
    assert round_price(Decimal(price)) == Decimal(expected)


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"quantity": 0}, "quantity"),
        ({"quantity": -1}, "quantity"),
        ({"quantity": "1.5"}, "quantity"),
        ({"quantity": "ten"}, "quantity"),
        ({"symbol": ""}, "symbol"),
        ({"symbol": "TOOLONG"}, "symbol"),
        ({"symbol": "AA PL"}, "symbol"),
        ({"side": "hold"}, "side"),
        ({"stop_loss": "150"}, "stop_loss"),
        ({"stop_loss": "149.995"}, "stop_loss"),  # rounds to 150.00: not a cent below
        ({"take_profit": "150.00"}, "take_profit"),
        ({"take_profit": "-1"}, "take_profit"),
        ({"entry_price": "0"}, "entry_price"),
        ({"entry_price": None}, "entry_price"),  # market entry with no last price
    ],
)
def test_each_validation_error_names_its_field(kwargs, field):
    order = {"symbol": "AAPL", "quantity": 1, "side": "buy", "stop_loss": "140", "take_profit": "160",
             "entry_price": "150"} | kwargs
    with pytest.raises(OrderValidationError) as caught:
        validate_bracket(**order)
    assert field in caught.value.errors


def test_short_prices_are_checked_the_other_way():
    with pytest.raises(OrderValidationError) as caught:
        validate_bracket(symbol="AAPL", quantity=1, side="short", stop_loss="140", take_profit="160", entry_price="150")
    assert set(caught.value.errors) == {"stop_loss", "take_profit"}
    spec = validate_bracket(symbol="aapl", quantity=1, side="short", stop_loss="160", take_profit="140", entry_price="150")
    assert (spec.side, spec.symbol) == ("sell", "AAPL")


def test_side_error_names_the_value():
    with pytest.raises(ValueError, match="'hold'"):
        normalize_side("hold")
