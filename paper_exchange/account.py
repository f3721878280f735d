"""The account: cash, positions, market value, buying power and the /v2/account JSON.

Buying power follows https://docs.alpaca.markets/docs/orders-at-alpaca ("Buying Power"):
a 2x margin account (``2 * equity - gross market value``) reduced by every working order
that opens or adds to a position (buy long, sell short); exits release nothing until
they fill.  An opening buy is valued at its limit (stop) price or the ask, an opening
short at max(limit price, ask + 3%).
"""

from __future__ import annotations

from decimal import Decimal

from .util import (
    ZERO, FINAL_STATUSES, asset_id_for, decimals, fmt_money, fmt_price, fmt_ratio,
    not_found, parse_decimal, plain, unprocessable,
)

__all__ = ["AccountMixin"]

MARGIN_MULTIPLIER = Decimal("2")
SHORT_COLLAR = Decimal("1.03")


def _round6(d: Decimal) -> Decimal:
    return d.quantize(Decimal("0.000001")) if decimals(d) > 6 else d


class AccountMixin:

    # ------------------------------------------------------------ positions

    def _apply_position(self, symbol: str, delta: Decimal, price: Decimal) -> None:
        pos = self.positions.get(symbol)
        old = pos["qty"] if pos else ZERO
        avg = pos["avg_entry_price"] if pos else ZERO
        new = old + delta
        if new == 0:
            self.positions.pop(symbol, None)
            return
        if old == 0 or (old > 0) == (delta > 0):
            avg = _round6((abs(old) * avg + abs(delta) * price) / abs(new))
        elif (old > 0) != (new > 0):
            avg = price  # flipped through zero
        self.positions[symbol] = {"symbol": symbol, "qty": new, "avg_entry_price": avg}

    def _current_price(self, symbol: str, pos: dict) -> Decimal:
        q = self.quotes.get(symbol)
        if q:
            bid, ask = q["bid"], q["ask"]
            if bid > 0 and ask > 0:
                return (bid + ask) / 2
            if bid > 0 or ask > 0:
                return bid if bid > 0 else ask
        return pos["avg_entry_price"]

    def _held_for_orders(self, symbol: str, side: str) -> Decimal:
        """Qty held by open live orders on ``side``; a leg group counts once."""
        groups: dict[str, Decimal] = {}
        for o in self.orders.values():
            if o["symbol"] != symbol or o["side"] != side or not self._is_live(o):
                continue
            key = o.get("parent_id") or o["id"]  # legs group under their entry / OCO parent
            groups[key] = max(groups.get(key, ZERO), o["qty"] - o["filled_qty"])
        return sum(groups.values(), ZERO)

    def _position_json(self, symbol: str) -> dict:
        p = self.positions[symbol]
        qty, avg = p["qty"], p["avg_entry_price"]
        available = max(ZERO, abs(qty) - self._held_for_orders(symbol, "sell" if qty > 0 else "buy"))
        price = self._current_price(symbol, p)
        market_value, cost_basis = qty * price, qty * avg
        pl = market_value - cost_basis
        plpc = pl / abs(cost_basis) if cost_basis else ZERO
        shown_price = fmt_price(price.quantize(Decimal("0.0001")).normalize())
        return {
            "asset_id": asset_id_for(symbol), "symbol": symbol, "exchange": "NASDAQ",
            "asset_class": "us_equity", "asset_marginable": True, "avg_entry_price": fmt_price(avg),
            "qty": plain(qty), "side": "long" if qty > 0 else "short",
            "market_value": fmt_money(market_value), "cost_basis": fmt_money(cost_basis),
            "unrealized_pl": fmt_money(pl), "unrealized_plpc": fmt_ratio(plpc),
            "unrealized_intraday_pl": fmt_money(pl), "unrealized_intraday_plpc": fmt_ratio(plpc),
            "current_price": shown_price, "lastday_price": shown_price, "change_today": "0",
            "qty_available": plain(available if qty > 0 else -available),
        }

    def positions_json(self) -> list:
        with self.lock:
            return [self._position_json(s) for s in sorted(self.positions)]

    def position_json(self, symbol: str) -> dict:
        with self.lock:
            symbol = symbol.upper()
            if symbol not in self.positions:
                raise not_found("position does not exist")
            return self._position_json(symbol)

    def set_position(self, spec) -> dict | None:
        """Control API: a position the exchange holds without any order (broker-only)."""
        if not isinstance(spec, dict):
            raise unprocessable("position must be an object", 40010001)
        symbol = spec.get("symbol")
        if not isinstance(symbol, str) or not symbol.strip():
            raise unprocessable("symbol is required", 40010001)
        symbol = symbol.strip().upper()
        qty = parse_decimal(spec.get("qty"), "qty")
        with self.lock:
            self._ensure_asset(symbol)
            if qty == 0:
                self.positions.pop(symbol, None)
                result = None
            else:
                price = parse_decimal(spec.get("avg_entry_price"), "avg_entry_price")
                if price <= 0:
                    raise unprocessable("avg_entry_price must be > 0", 40010001)
                self.positions[symbol] = {"symbol": symbol, "qty": qty, "avg_entry_price": price}
                result = self._position_json(symbol)
            self._record_equity()
            self._persist()
            return result

    # ------------------------------------------------------------ money

    def _market_values(self) -> tuple[Decimal, Decimal]:
        long_mv = short_mv = ZERO
        for s, p in self.positions.items():
            mv = p["qty"] * self._current_price(s, p)
            if mv >= 0:
                long_mv += mv
            else:
                short_mv += mv
        return long_mv, short_mv

    def _equity(self) -> Decimal:
        long_mv, short_mv = self._market_values()
        return self.cash + long_mv + short_mv

    def _opening_qty(self, symbol: str, side: str, qty: Decimal) -> Decimal:
        """The part of an order that opens or adds to a position (the rest closes one)."""
        held = self._position_qty(symbol)
        closable = max(ZERO, -held) if side == "buy" else max(ZERO, held)
        return max(ZERO, qty - closable)

    def _order_cost(self, symbol, side, otype, limit_price, stop_price, qty) -> Decimal:
        qty = self._opening_qty(symbol, side, qty)
        if qty <= 0:
            return ZERO
        q = self.quotes.get(symbol)
        ask = q["ask"] if q and q["ask"] > 0 else None
        if side == "buy":
            price = limit_price if otype in ("limit", "stop_limit") else stop_price if otype == "stop" else ask
        else:
            collar = ask * SHORT_COLLAR if ask else None
            price = max((p for p in (limit_price, stop_price, collar) if p), default=None)
        return qty * (price or ZERO)  # no price known (no quote): nothing to reserve yet

    def _reserved_buying_power(self) -> Decimal:
        total = ZERO
        for o in self.orders.values():
            if o["status"] in FINAL_STATUSES or o.get("parent_id") or o["order_class"] == "oco":
                continue
            total += self._order_cost(o["symbol"], o["side"], o["type"], o["limit_price"],
                                      o["stop_price"], o["qty"] - o["filled_qty"])
        return total

    def _available_buying_power(self) -> Decimal:
        long_mv, short_mv = self._market_values()
        equity = self.cash + long_mv + short_mv
        gross = long_mv - short_mv
        return max(ZERO, MARGIN_MULTIPLIER * equity - gross - self._reserved_buying_power())

    def set_cash(self, spec) -> dict:
        """Control API: ``{"cash": "250000"}`` sets the account's cash."""
        if not isinstance(spec, dict) or "cash" not in spec:
            raise unprocessable('expected {"cash": "..."}', 40010001)
        cash = parse_decimal(spec["cash"], "cash")
        with self.lock:
            self.cash = cash
            self._record_equity()
            self._persist()
        return self.account_json()

    def account_json(self) -> dict:
        with self.lock:
            long_mv, short_mv = self._market_values()
            equity = self.cash + long_mv + short_mv
            buying_power = self._available_buying_power()
            m = fmt_money
            return {
                "id": self.account_id, "account_number": "PA" + self.account_id.replace("-", "")[:10].upper(),
                "status": "ACTIVE", "crypto_status": "ACTIVE", "currency": "USD", "cash": m(self.cash),
                "buying_power": m(buying_power), "regt_buying_power": m(buying_power),
                "daytrading_buying_power": m(buying_power),
                "non_marginable_buying_power": m(max(ZERO, self.cash)),
                "effective_buying_power": m(buying_power), "options_buying_power": m(max(ZERO, self.cash)),
                "accrued_fees": "0", "pending_transfer_in": "0", "pending_transfer_out": "0",
                "portfolio_value": m(equity), "equity": m(equity), "last_equity": m(equity),
                "long_market_value": m(long_mv), "short_market_value": m(short_mv),
                "position_market_value": m(long_mv - short_mv),
                "initial_margin": m((long_mv - short_mv) / 2),
                "maintenance_margin": m((long_mv - short_mv) * Decimal("0.3")),
                "last_maintenance_margin": "0", "sma": m(equity), "multiplier": "2",
                "daytrade_count": 0, "pattern_day_trader": False, "trading_blocked": False,
                "transfers_blocked": False, "account_blocked": False, "trade_suspended_by_user": False,
                "shorting_enabled": True, "created_at": "2024-01-02T14:30:00.000000Z",
                "options_approved_level": 0, "options_trading_level": 0,
            }
