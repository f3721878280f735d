"""Matching and order life cycle: fills against the quotes, bracket/OTO/OCO legs, cancels,
expiry and the control API's manual fill.

Marketable orders fill at the far side of the quote (buy at the ask, sell at the bid),
limit orders at their limit price, whenever the market is open.  Every state change is
reported on the trade_updates stream through ``self._emit`` (events.py), except the
cancel of a sibling leg after the other leg filled, which Alpaca does not report.
"""

from __future__ import annotations

from decimal import Decimal

from .util import ZERO, FINAL_STATUSES, decimals, now_ts, parse_decimal, plain, unprocessable

__all__ = ["MatchingMixin"]

MAX_MATCH_ROUNDS = 10_000


def _cross(side: str, otype: str, px: Decimal, limit, stop):
    """Fill price of an order against the near/far quote ``px``, or None."""
    if px <= 0:
        return None
    if otype == "market":
        return px
    if side == "buy":
        if otype == "limit":
            return limit if px <= limit else None
        if otype == "stop":
            return px if px >= stop else None
        return px if stop <= px <= limit else None  # stop_limit
    if otype == "limit":
        return limit if px >= limit else None
    if otype == "stop":
        return px if px <= stop else None
    return px if limit <= px <= stop else None  # stop_limit


class MatchingMixin:

    def _is_live(self, o: dict) -> bool:
        """Working and able to trade now (bracket/OTO legs only once their entry filled)."""
        if o["status"] in FINAL_STATUSES:
            return False
        parent_id = o.get("parent_id")
        if not parent_id:
            return True
        parent = self.orders[parent_id]
        return parent["order_class"] == "oco" or parent["status"] == "filled"

    def _siblings(self, o: dict) -> list:
        """The orders one-cancels-other with ``o``."""
        if o.get("parent_id"):
            parent = self.orders[o["parent_id"]]
            others = [self.orders[i] for i in parent["legs"] if i != o["id"]]
            if parent["order_class"] == "oco":
                return [parent] + others
            return others if parent["order_class"] == "bracket" else []
        if o["order_class"] == "oco":
            return [self.orders[i] for i in o["legs"]]
        return []

    def _match_price(self, o: dict):
        q = self.quotes.get(o["symbol"])
        if not q:
            return None
        px = q["ask"] if o["side"] == "buy" else q["bid"]
        return _cross(o["side"], o["type"], px, o["limit_price"], o["stop_price"])

    def _fillable_qty(self, o: dict) -> Decimal:
        remaining = o["qty"] - o["filled_qty"]
        cap = o.get("auto_fill_cap")
        if cap is not None:
            remaining = min(remaining, cap - o["filled_qty"])
        return remaining

    def _match(self) -> None:
        """Fill every marketable live order, one at a time, until nothing crosses."""
        if not self.is_open:
            return
        for _ in range(MAX_MATCH_ROUNDS):
            for o in self._sorted_orders():
                if not self._is_live(o) or o.get("no_fill"):
                    continue
                qty = self._fillable_qty(o)
                px = self._match_price(o) if qty > 0 else None
                if px is not None:
                    self._fill(o, qty, px)
                    break
            else:
                return

    def _fill(self, o: dict, qty: Decimal, price: Decimal) -> None:
        ts = now_ts()
        prev = o["filled_qty"]
        new_filled = prev + qty
        avg = (prev * (o["filled_avg_price"] or ZERO) + qty * price) / new_filled
        o["filled_avg_price"] = avg.quantize(Decimal("0.000001")) if decimals(avg) > 6 else avg
        o.update(filled_qty=new_filled, filled_at=ts, updated_at=ts,
                 status="filled" if new_filled >= o["qty"] else "partially_filled")
        self._apply_position(o["symbol"], qty if o["side"] == "buy" else -qty, price)
        self.cash += -qty * price if o["side"] == "buy" else qty * price
        self._emit("fill" if o["status"] == "filled" else "partial_fill", o, ts=ts, price=price, qty=qty)
        if o["status"] == "filled":
            self._after_full_fill(o, ts)
        else:
            self._shrink_siblings(o, ts)
        self._record_equity()

    def _after_full_fill(self, o: dict, ts: str) -> None:
        if o["order_class"] in ("bracket", "oto") and not o.get("parent_id"):
            for leg_id in o["legs"]:
                leg = self.orders[leg_id]
                if leg["status"] == "held" and leg["leg_role"] == "take_profit":
                    leg.update(status="new", updated_at=ts)
                    self._emit("new", leg, ts=ts)
                # the stop leg stays "held" (as Alpaca shows it) but is now live
        for sib in self._siblings(o):
            self._cancel(sib, ts, emit=False)  # Alpaca does not report this cancel

    def _shrink_siblings(self, o: dict, ts: str) -> None:
        """A partially filled exit leg: the other leg shrinks to the remaining quantity
        (Alpaca: "If the take-profit order is partially filled, the stop-loss order will be
        adjusted to the remaining quantity"; applied to OCO and to either leg alike)."""
        remaining = o["qty"] - o["filled_qty"]
        for sib in self._siblings(o):  # none for entries and simple orders
            if sib["status"] not in FINAL_STATUSES:
                sib["qty"] = sib["filled_qty"] + remaining
                sib["updated_at"] = ts

    # ------------------------------------------------------------ cancel / expire

    def _cancel(self, o: dict, ts: str, emit: bool = True, status: str = "canceled") -> None:
        if o["status"] in FINAL_STATUSES:
            return
        o["status"] = status
        o["canceled_at" if status == "canceled" else "expired_at"] = ts
        o["updated_at"] = ts
        if emit:
            self._emit(status, o, ts=ts)
        for leg_id in o["legs"]:
            self._cancel(self.orders[leg_id], ts, emit, status)
        for sib in self._siblings(o):
            self._cancel(sib, ts, emit, status)

    def cancel_order(self, order_id: str) -> None:
        with self.lock:
            o = self._get_order(order_id)
            if o["status"] in FINAL_STATUSES:
                raise unprocessable("order is not cancelable")
            self._cancel(o, now_ts())
            self._persist()

    def cancel_all(self) -> list:
        with self.lock:
            ts = now_ts()
            open_ids = [o["id"] for o in self._sorted_orders() if o["status"] not in FINAL_STATUSES]
            for oid in open_ids:
                self._cancel(self.orders[oid], ts)
            self._persist()
            return [{"id": oid, "status": 200, "body": self._order_out(self.orders[oid], nested=False)}
                    for oid in open_ids]

    def expire_day_orders(self) -> list:
        with self.lock:
            ts = now_ts()
            expired = []
            for o in self._sorted_orders():
                if o["status"] not in FINAL_STATUSES and o["time_in_force"] == "day":
                    o.update(status="expired", expired_at=ts, updated_at=ts)
                    self._emit("expired", o, ts=ts)
                    expired.append(o["id"])
            self._persist()
            return expired

    # ------------------------------------------------------------ control: manual fill

    def _manual_fill_price(self, o: dict, spec: dict) -> Decimal:
        if spec.get("price") is not None:
            price = parse_decimal(spec["price"], "price")
        elif o["type"] == "limit":
            price = o["limit_price"]
        else:
            q = self.quotes.get(o["symbol"])
            price = (q["ask"] if o["side"] == "buy" else q["bid"]) if q else None
            if not price or price <= 0:
                raise unprocessable(f"no quote for {o['symbol']}; give a price")
        if price <= 0:
            raise unprocessable("price must be > 0")
        return price

    def control_fill(self, order_id: str, spec) -> dict:
        spec = spec if isinstance(spec, dict) else {}
        with self.lock:
            o = self._get_order(order_id)
            if o["status"] in FINAL_STATUSES:
                raise unprocessable(f"order is {o['status']}, cannot fill")
            if not self._is_live(o):
                raise unprocessable("order is a leg whose entry has not filled completely")
            remaining = o["qty"] - o["filled_qty"]
            qty = remaining if spec.get("qty") is None else parse_decimal(spec["qty"], "qty")
            if qty <= 0 or qty > remaining:
                raise unprocessable(f"fill qty must be > 0 and <= remaining {plain(remaining)}")
            self._fill(o, qty, self._manual_fill_price(o, spec))
            self._match()
            self._persist()
            return self._order_out(o, nested=True)
