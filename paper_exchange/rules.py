"""Alpaca's order-acceptance rules that depend on the account: OCO exits, bracket entries,
exit prices, short selling, wash trades, quantity held for orders and buying power.

Each ``_check_*`` method raises the error Alpaca answers, or returns.  They run under
the state lock from ``ExchangeState.submit_order``.  Rule toggles (``self.rules``) let a
test switch the wash-trade or buying-power rule off; both are on by default.

Wash trades follow https://docs.alpaca.markets/docs/user-protection ("Preventing Wash
Trades"): an order is refused (403) when it could interact with a working order of the
opposite side in the same symbol -- always, unless both are limit-priced (limit or
stop_limit) and the buy limit is below the sell limit.  Complex orders are an exception:
the exit legs of a bracket/OTO/OCO being submitted are not checked (only a bracket's or
OTO's entry is), while the working legs of earlier complex orders do count.
"""

from __future__ import annotations

from decimal import Decimal

from .util import CENT, ZERO, FINAL_STATUSES, forbidden, plain, unprocessable

__all__ = ["RulesMixin", "wash_conflict", "WASH_TRADE_MESSAGE"]

WASH_TRADE_MESSAGE = "potential wash trade detected. use complex orders"
LIMIT_PRICED = ("limit", "stop_limit")


def wash_conflict(new_side: str, new_type: str, new_limit, old: dict) -> bool:
    """Could the new order trade against ``old`` (a working order of the opposite side)?"""
    if new_type not in LIMIT_PRICED or old["type"] not in LIMIT_PRICED:
        return True  # a market or stop order on either side: always rejected
    buy_limit, sell_limit = (new_limit, old["limit_price"]) if new_side == "buy" else (old["limit_price"], new_limit)
    return buy_limit >= sell_limit


class RulesMixin:
    """Needs positions, orders, quotes, assets and the account helpers (account.py)."""

    def _position_qty(self, symbol: str) -> Decimal:
        pos = self.positions.get(symbol)
        return pos["qty"] if pos else ZERO

    def _closes_position(self, symbol: str, side: str) -> bool:
        held = self._position_qty(symbol)
        return (held > 0 and side == "sell") or (held < 0 and side == "buy")

    def _check_oco_exit(self, spec: dict) -> None:
        if not self._closes_position(spec["symbol"], spec["side"]):
            raise unprocessable("oco orders must exit an existing position")
        tp, sl = spec["take_profit"]["limit_price"], spec["stop_loss"]["stop_price"]
        if spec["side"] == "sell" and not tp > sl:
            raise unprocessable("take_profit.limit_price must be > stop_loss.stop_price for sell oco orders")
        if spec["side"] == "buy" and not tp < sl:
            raise unprocessable("take_profit.limit_price must be < stop_loss.stop_price for buy oco orders")

    def _check_bracket_entry(self, spec: dict) -> None:
        """A bracket must open or add to a position, never reduce or reverse one."""
        if spec["order_class"] == "bracket" and self._closes_position(spec["symbol"], spec["side"]):
            raise unprocessable("bracket orders must be entry orders")

    def _check_exit_prices(self, spec: dict) -> None:
        """Bracket/OTO legs must sit at least a cent beyond the base price."""
        symbol, side, tp, sl = spec["symbol"], spec["side"], spec["take_profit"], spec["stop_loss"]
        base = spec["limit_price"] if spec["type"] in LIMIT_PRICED else None
        if base is None:
            q = self.quotes.get(symbol)
            base = (q["ask"] if side == "buy" else q["bid"]) if q else None
            if not base or base <= 0:
                raise unprocessable(f"unable to determine base price for {symbol}: no quote available")
        if side == "buy":
            if tp and not tp["limit_price"] >= base + CENT:
                raise unprocessable("take_profit.limit_price must be >= base_price + 0.01")
            if sl and not sl["stop_price"] <= base - CENT:
                raise unprocessable("stop_loss.stop_price must be <= base_price - 0.01")
        else:
            if tp and not tp["limit_price"] <= base - CENT:
                raise unprocessable("take_profit.limit_price must be <= base_price - 0.01")
            if sl and not sl["stop_price"] >= base + CENT:
                raise unprocessable("stop_loss.stop_price must be >= base_price + 0.01")

    def _check_asset_rules(self, spec: dict) -> None:
        asset = self._require_tradable(spec["symbol"])
        qty, symbol = spec["qty"], spec["symbol"]
        fractional = qty != qty.to_integral_value()
        if fractional and not asset["fractionable"]:
            raise unprocessable(f"asset {symbol} is not fractionable")
        if spec["side"] == "sell" and self._opening_qty(symbol, "sell", qty) > 0:
            if fractional:
                raise unprocessable("fractional orders cannot be sold short")
            if not asset["shortable"]:
                raise unprocessable(f"asset {symbol} cannot be sold short")

    def _check_wash_trade(self, spec: dict) -> None:
        if not self.rules.get("wash_trade", True) or spec["order_class"] == "oco":
            return  # an OCO is two exit legs of one complex order: exempt
        for old in self.orders.values():
            if (old["symbol"] == spec["symbol"] and old["side"] != spec["side"]
                    and old["status"] not in FINAL_STATUSES
                    and wash_conflict(spec["side"], spec["type"], spec["limit_price"], old)):
                raise forbidden(WASH_TRADE_MESSAGE)

    def _check_qty_available(self, spec: dict) -> None:
        symbol, side, qty = spec["symbol"], spec["side"], spec["qty"]
        if not self._closes_position(symbol, side):
            return
        existing = abs(self._position_qty(symbol))
        held = self._held_for_orders(symbol, side)
        available = max(ZERO, existing - held)
        if qty > available:
            raise forbidden(
                f"insufficient qty available for order (requested: {plain(qty)}, available: {plain(available)})",
                symbol=symbol, requested=plain(qty), available=plain(available),
                existing_qty=plain(existing), held_for_orders=plain(held),
            )

    def _check_buying_power(self, spec: dict) -> None:
        if not self.rules.get("buying_power", True) or spec["order_class"] == "oco":
            return
        cost = self._order_cost(spec["symbol"], spec["side"], spec["type"], spec["limit_price"],
                                spec["stop_price"], spec["qty"])
        if cost > self._available_buying_power():
            raise forbidden("insufficient buying power")

    def _check_order_rules(self, spec: dict) -> None:
        """Every account-dependent rule, in the order the exchange applies them."""
        self._check_asset_rules(spec)
        if spec["client_order_id"] in self.client_order_ids:
            raise unprocessable("client_order_id must be unique", 40010001)
        if spec["order_class"] == "oco":
            self._check_oco_exit(spec)
        elif spec["order_class"] in ("bracket", "oto"):
            self._check_bracket_entry(spec)
            self._check_exit_prices(spec)
        self._check_wash_trade(spec)
        self._check_qty_available(spec)
        self._check_buying_power(spec)
