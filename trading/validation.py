"""Order checks done before anything reaches the broker: sides, symbols, quantities, prices.

Pure functions on Decimal, shared by the broker services, the API serializers and the
monitor, so an order is judged the same way wherever it comes from.
"""

import re
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from .models import OrderSide, Side

CENT = Decimal("0.01")
SUB_DOLLAR_TICK = Decimal("0.0001")
MAX_QTY_PLACES = 9
SYMBOL_RE = re.compile(r"^[A-Z]{1,5}([./][A-Z]{1,2})?$")
# A plain ASCII decimal: no underscores ("1_0"), no other scripts' digits, no spaces inside.
NUMBER_RE = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$", re.ASCII)

_SIDES = {"buy": OrderSide.BUY, "long": OrderSide.BUY, "sell": OrderSide.SELL, "short": OrderSide.SELL}


class OrderValidationError(ValueError):
    """Bad order input. `errors` maps each offending field to a message."""

    def __init__(self, errors: dict[str, str]):
        self.errors = errors
        super().__init__("; ".join(f"{field}: {message}" for field, message in errors.items()))


def normalize_side(side: object) -> OrderSide:
    """buy/long -> BUY, sell/short -> SELL, in any case; anything else is refused by name."""
    key = side.strip().lower() if isinstance(side, str) else None
    if key not in _SIDES:
        raise OrderValidationError({"side": f"invalid order side {side!r}: use buy, sell, long or short"})
    return _SIDES[key]


def position_side(order_side: OrderSide) -> Side:
    return Side.LONG if order_side == OrderSide.BUY else Side.SHORT


def to_decimal(value: object, field: str) -> Decimal:
    """Decimal from str/int/Decimal; floats are refused so no binary rounding sneaks in."""
    if isinstance(value, bool) or isinstance(value, float):
        raise OrderValidationError({field: f"must be a decimal string or integer, not {type(value).__name__}"})
    if isinstance(value, str) and not NUMBER_RE.match(value.strip()):
        raise OrderValidationError({field: f"{value!r} is not a number (plain decimal digits only)"})
    try:
        result = Decimal(value.strip()) if isinstance(value, str) else Decimal(value)
    except (InvalidOperation, TypeError, ValueError):
        raise OrderValidationError({field: f"{value!r} is not a number"}) from None
    if not result.is_finite():
        raise OrderValidationError({field: f"{value!r} is not a finite number"})
    return result


def round_price(price: Decimal) -> Decimal:
    """Alpaca's increments: cents at or above $1.00, hundredths of a cent below."""
    tick = CENT if price >= 1 else SUB_DOLLAR_TICK
    rounded = price.quantize(tick, rounding=ROUND_HALF_UP)
    if rounded >= 1 and tick == SUB_DOLLAR_TICK:
        rounded = rounded.quantize(CENT, rounding=ROUND_HALF_UP)
    return rounded


def normalize_symbol(symbol: object) -> str:
    """Checked before it is upper-cased: "ſpy".upper() is "SPY", a look-alike must not trade it."""
    value = symbol.strip() if isinstance(symbol, str) and symbol.isascii() else ""
    if not SYMBOL_RE.match(value.upper()):
        raise OrderValidationError({"symbol": f"{symbol!r} is not a valid US equity symbol"})
    return value.upper()


def normalize_quantity(quantity: object, *, whole: bool) -> Decimal:
    qty = to_decimal(quantity, "quantity")
    if qty <= 0:
        raise OrderValidationError({"quantity": f"must be greater than 0, got {qty}"})
    if whole and qty != qty.to_integral_value():
        raise OrderValidationError({"quantity": f"bracket orders take whole shares, got {qty}"})
    if qty >= Decimal("1e9"):
        raise OrderValidationError({"quantity": f"{qty} is too large"})
    if qty == qty.to_integral_value():
        return Decimal(int(qty))
    if -qty.normalize().as_tuple().exponent > MAX_QTY_PLACES:
        raise OrderValidationError({"quantity": f"at most {MAX_QTY_PLACES} decimal places, got {qty}"})
    return qty.normalize()


@dataclass(frozen=True)
class BracketSpec:
    """A bracket order that passed every check, with prices on Alpaca's increments."""

    symbol: str
    side: OrderSide
    quantity: Decimal
    stop_loss: Decimal
    take_profit: Decimal
    entry_price: Decimal | None  # None: market entry


def _price(value: object, field: str) -> Decimal:
    """A price on Alpaca's increments, judged after rounding: 0.00001 rounds to 0 and is refused."""
    price = to_decimal(value, field)
    if price <= 0:
        raise OrderValidationError({field: f"must be greater than 0, got {price}"})
    if price >= Decimal("1e9"):
        raise OrderValidationError({field: f"{price} is too large"})
    rounded = round_price(price)
    if rounded <= 0:
        raise OrderValidationError({field: f"must be at least {SUB_DOLLAR_TICK} (Alpaca's smallest tick), got {price}"})
    return rounded


def validate_bracket(
    *,
    symbol: object,
    quantity: object,
    side: object,
    stop_loss: object,
    take_profit: object,
    entry_price: object = None,
    bid: Decimal | None = None,
    ask: Decimal | None = None,
) -> BracketSpec:
    """Check a bracket before it is sent; every bad field is reported at once.

    A limit entry is judged against its entry price. A market entry is judged against the
    quote it would trade on: a long's stop below the bid and its target above the ask, a
    short's stop above the ask and its target below the bid, each by at least a cent, so
    a stop inside the spread (which would fill at once) is refused.
    """
    errors: dict[str, str] = {}
    values: dict[str, object] = {}
    checks = {
        "symbol": lambda: normalize_symbol(symbol),
        "side": lambda: normalize_side(side),
        "quantity": lambda: normalize_quantity(quantity, whole=True),
        "stop_loss": lambda: _price(stop_loss, "stop_loss"),
        "take_profit": lambda: _price(take_profit, "take_profit"),
        "entry_price": lambda: None if entry_price is None else _price(entry_price, "entry_price"),
    }
    for field, check in checks.items():
        try:
            values[field] = check()
        except OrderValidationError as exc:
            errors.update(exc.errors)
    if errors:
        raise OrderValidationError(errors)

    stop, target, entry = values["stop_loss"], values["take_profit"], values["entry_price"]
    if entry is not None:
        bid = ask = entry
        where = "the entry"
    elif bid is None or ask is None:
        raise OrderValidationError({"entry_price": "no bid and ask to check a market entry against; give an entry_price"})
    else:
        bid, ask = round_price(bid), round_price(ask)
        where = None
    if values["side"] == OrderSide.BUY:
        if stop > bid - CENT:
            errors["stop_loss"] = f"a long's stop {stop} must be at least $0.01 below {where or 'the bid'} {bid}"
        if target < ask + CENT:
            errors["take_profit"] = f"a long's target {target} must be at least $0.01 above {where or 'the ask'} {ask}"
    else:
        if stop < ask + CENT:
            errors["stop_loss"] = f"a short's stop {stop} must be at least $0.01 above {where or 'the ask'} {ask}"
        if target > bid - CENT:
            errors["take_profit"] = f"a short's target {target} must be at least $0.01 below {where or 'the bid'} {bid}"
    if errors:
        raise OrderValidationError(errors)
    return BracketSpec(symbol=values["symbol"], side=values["side"], quantity=values["quantity"], stop_loss=stop,
                       take_profit=target, entry_price=entry)
