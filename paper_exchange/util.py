"""Shared helpers of the paper exchange: errors, timestamps, decimals, formatting.

Standard library only.  Money and quantities are ``decimal.Decimal`` everywhere and
are serialised as strings, like Alpaca's trading API does; datetimes are aware UTC
and written as RFC3339 with a ``Z``.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation

__all__ = [
    "ExchangeError", "unprocessable", "forbidden", "not_found",
    "format_ts", "now_ts", "parse_ts", "epoch_seconds",
    "parse_decimal", "plain", "fmt_qty", "fmt_price", "fmt_money", "fmt_ratio",
    "decimals", "check_increment", "is_truthy", "asset_id_for",
    "CENT", "ZERO", "FINAL_STATUSES",
]

CENT = Decimal("0.01")
ZERO = Decimal("0")
FINAL_STATUSES = frozenset({"filled", "canceled", "expired", "rejected", "replaced", "done_for_day"})
ASSET_NAMESPACE = uuid.UUID("6f1f7d2e-2b6c-4c39-9a51-3f2d5c0e8a11")


class ExchangeError(Exception):
    """An error answered to the client as JSON ``payload`` with ``status``."""

    def __init__(self, status: int, code: int | None, message: str, **extra):
        super().__init__(message)
        self.status = status
        self.payload = {"message": message, **extra} if code is None else {"code": code, "message": message, **extra}


def unprocessable(message: str, code: int = 42210000, **extra) -> ExchangeError:
    """422, Alpaca's answer to a well-formed request it will not carry out."""
    return ExchangeError(422, code, message, **extra)


def forbidden(message: str, **extra) -> ExchangeError:
    """403 with Alpaca's code 40310000 (buying power, wash trade, qty held...)."""
    return ExchangeError(403, 40310000, message, **extra)


def not_found(message: str) -> ExchangeError:
    return ExchangeError(404, 40410000, message)


# ---------------------------------------------------------------- timestamps


def format_ts(dt: datetime) -> str:
    """RFC3339 UTC with microseconds and 'Z'."""
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def now_ts() -> str:
    return format_ts(datetime.now(timezone.utc))


def parse_ts(value: str) -> datetime:
    dt = datetime.fromisoformat(str(value).strip().replace("z", "Z").replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt


def epoch_seconds(value: str) -> float:
    return parse_ts(value).timestamp()


# ---------------------------------------------------------------- decimals


def parse_decimal(value, field: str) -> Decimal:
    """Decimal from a JSON string/number (floats via str(), never binary)."""
    if isinstance(value, bool) or value is None or isinstance(value, (dict, list)):
        raise unprocessable(f"invalid {field}", 40010001)
    try:
        d = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        raise unprocessable(f"invalid {field}", 40010001) from None
    if not d.is_finite():
        raise unprocessable(f"invalid {field}", 40010001)
    return d


def plain(d: Decimal) -> str:
    """Decimal as a plain string without exponent ("10", "1.5", "0.1234")."""
    if d == 0:
        return "0"
    return format(d.normalize(), "f")


def fmt_qty(d):
    return None if d is None else plain(d)


def fmt_price(d):
    """Price with at least two decimals ("150.00", "0.1234")."""
    if d is None:
        return None
    if d.as_tuple().exponent > -2:
        d = d.quantize(CENT)
    return format(d, "f")


def fmt_money(d: Decimal) -> str:
    return format(d.quantize(CENT), "f")


def fmt_ratio(d: Decimal) -> str:
    return plain(d.quantize(Decimal("0.000001")))


def decimals(d: Decimal) -> int:
    exp = d.normalize().as_tuple().exponent
    return -exp if exp < 0 else 0


def check_increment(value: Decimal, field: str, raw) -> None:
    """Alpaca's sub-penny rule: 2 decimals at or above $1, 4 below."""
    allowed = 2 if value >= 1 else 4
    if decimals(value) > allowed:
        shown = raw if isinstance(raw, str) else plain(value)
        raise unprocessable(
            f"invalid {field} {shown}. sub-penny increment does not fulfill minimum pricing criteria"
        )


def is_truthy(value) -> bool:
    if isinstance(value, bool):
        return value
    if value is None:
        return False
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def asset_id_for(symbol: str) -> str:
    """A stable asset id per symbol (the same on every run)."""
    return str(uuid.uuid5(ASSET_NAMESPACE, symbol))
