"""Pre-trade limits: one row in the database, its defaults from the LIMIT_* settings, every
change recorded (who, when, what, why) like the trading state's; and the check the order gate
runs on an entry before anything is sent.

A limit holds at its value: an order that takes a figure exactly to the limit passes, one that
takes it beyond is refused. Exposure is quantity x entry price of what the active positions
hold or their entries may still buy, plus the notional of entries admitted but not yet
recorded; the open positions count those entries too, so racing orders can't slip past.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from trading.validation import BracketSpec, OrderValidationError, normalize_symbol

from .daily import held_positions
from .models import RISK_LIMITS_ROW, OrderRequest, OrderRequestKind, OrderRequestState, RiskLimits, RiskLimitsChange

ZERO = Decimal("0")
SYMBOL_LISTS = ("symbols_allowed", "symbols_refused")
LIMIT_FIELDS = ("max_order_qty", "max_order_notional", "max_order_loss", "max_open_positions", "max_symbol_exposure",
                "max_total_exposure", "max_orders_per_minute", *SYMBOL_LISTS)
IN_FLIGHT = (OrderRequestState.PENDING, OrderRequestState.UNKNOWN)


def _off_at_zero(value):
    return value or None  # 0 in the environment: no limit


def limits_defaults() -> dict:
    """The LIMIT_* settings, as the row's fields."""
    return {
        "max_order_qty": _off_at_zero(settings.LIMIT_ORDER_MAX_QTY),
        "max_order_notional": _off_at_zero(settings.LIMIT_ORDER_MAX_NOTIONAL),
        "max_order_loss": _off_at_zero(settings.LIMIT_ORDER_MAX_LOSS),
        "max_open_positions": _off_at_zero(settings.LIMIT_MAX_OPEN_POSITIONS),
        "max_symbol_exposure": _off_at_zero(settings.LIMIT_SYMBOL_MAX_EXPOSURE),
        "max_total_exposure": _off_at_zero(settings.LIMIT_TOTAL_MAX_EXPOSURE),
        "max_orders_per_minute": _off_at_zero(settings.LIMIT_MAX_ORDERS_PER_MINUTE),
        "symbols_allowed": ", ".join(s.upper() for s in settings.LIMIT_SYMBOLS_ALLOWED),
        "symbols_refused": ", ".join(s.upper() for s in settings.LIMIT_SYMBOLS_REFUSED),
    }


def _text(value) -> str | None:
    if value is None:
        return None
    return f"{value.normalize():f}" if isinstance(value, Decimal) else str(value)


def limits_current() -> RiskLimits:
    """The limits in force (the row is created from the settings on first use)."""
    try:
        return RiskLimits.objects.get_or_create(pk=RISK_LIMITS_ROW, defaults=limits_defaults())[0]
    except IntegrityError:  # created by a concurrent caller
        return RiskLimits.objects.get(pk=RISK_LIMITS_ROW)


def symbols_parse(text: str, field: str) -> list[str]:
    """"aapl, MSFT" -> ["AAPL", "MSFT"]; a bad symbol is an error on `field`."""
    symbols, bad = [], []
    for item in (text or "").split(","):
        if not item.strip():
            continue
        try:
            symbols.append(normalize_symbol(item))
        except OrderValidationError:
            bad.append(item.strip()[:20])
    if bad:
        raise OrderValidationError({field: f"not US equity symbols: {', '.join(map(repr, bad))}"})
    return sorted(set(symbols))


def limits_update(*, values: dict, reason: str, user=None) -> RiskLimitsChange | None:
    """Change the limits and record the change (None when nothing changed). Raises
    OrderValidationError naming each bad field (an unknown one, a bad symbol, no reason)."""
    errors = {name: "not a limit" for name in values if name not in LIMIT_FIELDS}
    if not (reason or "").strip():
        errors["reason"] = "a reason is required"
    cleaned = dict(values)
    for name in SYMBOL_LISTS:
        if name in values:
            try:
                cleaned[name] = ", ".join(symbols_parse(values[name], name))
            except OrderValidationError as exc:
                errors.update(exc.errors)
    if errors:
        raise OrderValidationError(errors)
    with transaction.atomic():
        limits = RiskLimits.objects.select_for_update().get(pk=limits_current().pk)
        changed = {name: value for name, value in cleaned.items() if getattr(limits, name) != value}
        if not changed:
            return None
        changes = {name: [_text(getattr(limits, name)), _text(value)] for name, value in changed.items()}
        for name, value in changed.items():
            setattr(limits, name, value)
        limits.save()
        return RiskLimitsChange.objects.create(
            limits=limits, changes=changes, reason=reason.strip(),
            changed_by=user if user is not None and user.is_authenticated else None,
            changed_by_name=getattr(user, "username", "") or "system",
        )


def limits_history(*, limit: int = 50) -> list[RiskLimitsChange]:
    return list(RiskLimitsChange.objects.select_related("changed_by").order_by("-changed_at", "-id")[:limit])


# --- The check -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Breach:
    """One limit an order would break: the limit, its value, and the order's figure."""

    limit: str
    value: str
    requested: str

    @property
    def text(self) -> str:
        return f"{self.limit} is {self.value}: this order makes it {self.requested}"


@dataclass(frozen=True)
class Usage:
    """What the account holds and has in flight, for the account-wide limits."""

    open_positions: int
    exposure: dict[str, Decimal]
    entries_last_minute: int

    @property
    def total_exposure(self) -> Decimal:
        return sum(self.exposure.values(), ZERO)


def usage_now(*, now: datetime | None = None) -> Usage:
    """A handful of queries, whatever the number of positions. Entries admitted but not yet
    settled are read first and counted by their request; a position recorded for one of them
    meanwhile is skipped, so each counts once however the queries interleave with its sending."""
    now = now or timezone.now()
    in_flight = {cid: (symbol, notional or ZERO) for cid, symbol, notional in OrderRequest.objects.filter(
        kind=OrderRequestKind.ENTRY, state__in=IN_FLIGHT).values_list("client_order_id", "request__symbol", "notional")}
    exposure: dict[str, Decimal] = {}
    for symbol, notional in in_flight.values():
        exposure[symbol] = exposure.get(symbol, ZERO) + notional
    holdings = [h for h in held_positions() if h.held + h.working > 0 and h.entry_client_order_id not in in_flight]
    for item in holdings:
        symbol = item.position.symbol
        exposure[symbol] = exposure.get(symbol, ZERO) + (item.held + item.working) * item.position.entry_price
    entries = OrderRequest.objects.filter(kind=OrderRequestKind.ENTRY, created_at__gt=now - timedelta(minutes=1))
    return Usage(open_positions=len(holdings) + len(in_flight), exposure=exposure,
                 entries_last_minute=entries.count())


def limits_breaches(*, limits: RiskLimits, spec: BracketSpec, base: Decimal, usage: Usage) -> list[Breach]:
    """Every limit this entry would break, in a fixed order. `base`: its limit price, or the price a
    market entry trades at (the ask for a buy, the bid for a sell)."""
    notional = spec.quantity * base
    loss = spec.quantity * abs(base - spec.stop_loss)
    symbol_exposure = usage.exposure.get(spec.symbol, ZERO) + notional
    checks = [
        ("max_order_qty", limits.max_order_qty, spec.quantity),
        ("max_order_notional", limits.max_order_notional, notional),
        ("max_order_loss", limits.max_order_loss, loss),
        ("max_open_positions", limits.max_open_positions, usage.open_positions + 1),
        ("max_symbol_exposure", limits.max_symbol_exposure, symbol_exposure),
        ("max_total_exposure", limits.max_total_exposure, usage.total_exposure + notional),
        ("max_orders_per_minute", limits.max_orders_per_minute, usage.entries_last_minute + 1),
    ]
    breaches = [Breach(name, _text(value), _text(figure)) for name, value, figure in checks
                if value is not None and figure > value]
    refused = symbols_parse(limits.symbols_refused, "symbols_refused")
    allowed = symbols_parse(limits.symbols_allowed, "symbols_allowed")
    if spec.symbol in refused:
        breaches.append(Breach("symbols_refused", ", ".join(refused), spec.symbol))
    elif allowed and spec.symbol not in allowed:
        breaches.append(Breach("symbols_allowed", ", ".join(allowed), spec.symbol))
    return breaches
