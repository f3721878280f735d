"""Client actions that create orders: submit (POST /v2/orders), replace (PATCH
/v2/orders/{id}) and close positions (DELETE /v2/positions[/{symbol}]).

Replacement follows https://docs.alpaca.markets/reference/patchorderbyorderid-1: the
replacing order is a new order with ``replaces`` set, the old one ends ``replaced`` with
``replaced_by``.  Closing a position sends a market DAY order for the whole position,
``qty`` shares or ``percentage`` percent of it, through the same rules as any order.
"""

from __future__ import annotations

import uuid
from decimal import ROUND_DOWN, Decimal

from .orders import parse_order_request
from .util import (
    FINAL_STATUSES, ZERO, ExchangeError, check_increment, forbidden, not_found, now_ts, parse_decimal,
    plain, unprocessable,
)

__all__ = ["LifecycleMixin"]


def _half(qty: Decimal) -> Decimal:
    half = qty / 2
    return half.to_integral_value(rounding=ROUND_DOWN) if qty == qty.to_integral_value() else half


class LifecycleMixin:

    # ------------------------------------------------------------ submit

    def submit_order(self, body, fault_kinds=()) -> dict:
        spec = parse_order_request(body, drop_order_class="drop_legs" in fault_kinds)
        with self.lock:
            self._check_order_rules(spec)
            ts = now_ts()
            parent = self._create_order_group(spec, ts)
            if "no_fill" in fault_kinds:
                parent["no_fill"] = True
            if "partial_fill" in fault_kinds:
                parent["auto_fill_cap"] = _half(spec["qty"])
            self._emit("new", parent, ts=ts)
            if "reject_after_accept" in fault_kinds:
                self._reject(parent, ts)
            self._match()
            self._persist()
            return self._order_out(parent, nested=True)

    def _create_order_group(self, spec: dict, ts: str) -> dict:
        parent = self._new_order(spec, ts, status="new")
        tp, sl = spec["take_profit"], spec["stop_loss"]
        stop_type = "stop_limit" if sl and sl["limit_price"] is not None else "stop"
        if spec["order_class"] in ("bracket", "oto"):
            exit_side = "sell" if spec["side"] == "buy" else "buy"
            if tp is not None:
                self._add_leg(parent, "take_profit", exit_side, "limit", tp["limit_price"], None, ts)
            if sl is not None:
                self._add_leg(parent, "stop_loss", exit_side, stop_type, sl["limit_price"], sl["stop_price"], ts)
        elif spec["order_class"] == "oco":
            parent["leg_role"] = "take_profit"
            self._add_leg(parent, "stop_loss", spec["side"], stop_type, sl["limit_price"], sl["stop_price"], ts)
        return parent

    def _reject(self, o: dict, ts: str) -> None:
        """The reject_after_accept fault: accepted (200), then rejected by the venue."""
        o.update(status="rejected", failed_at=ts, updated_at=ts)
        for leg_id in o["legs"]:
            self.orders[leg_id].update(status="canceled", canceled_at=ts, updated_at=ts)
        self._emit("rejected", o, ts=ts)

    # ------------------------------------------------------------ replace

    def replace_order(self, order_id: str, body) -> dict:
        body = body if isinstance(body, dict) else {}
        with self.lock:
            old = self._get_order(order_id)
            if old["status"] in FINAL_STATUSES:
                raise unprocessable("unable to replace order, order is not open")
            spec = self._replacement_spec(old, body)
            ts = now_ts()
            new = self._new_order(spec, ts, status="held" if old["status"] == "held" else "new")
            new.update(parent_id=old["parent_id"], leg_role=old["leg_role"], legs=old["legs"],
                       replaces=old["id"])
            old.update(status="replaced", replaced_at=ts, replaced_by=new["id"], updated_at=ts, legs=[])
            self._relink(old, new)
            self._emit("replaced", old, ts=ts)
            if new["status"] == "new":  # a replaced held leg stays held, silently
                self._emit("new", new, ts=ts)
            self._match()
            self._persist()
            return self._order_out(new, nested=True)

    def _replacement_spec(self, old: dict, body: dict) -> dict:
        spec = {k: old[k] for k in ("symbol", "side", "type", "time_in_force", "limit_price",
                                    "stop_price", "order_class", "extended_hours")}
        spec["qty"] = old["qty"] - old["filled_qty"]
        if body.get("qty") not in (None, ""):
            spec["qty"] = parse_decimal(body["qty"], "qty")
            if spec["qty"] <= 0:
                raise unprocessable("qty must be > 0", 40010001)
        if body.get("time_in_force"):
            spec["time_in_force"] = body["time_in_force"]
        for field, types in (("limit_price", ("limit", "stop_limit")), ("stop_price", ("stop", "stop_limit"))):
            if body.get(field) in (None, ""):
                continue
            if old["type"] not in types:
                raise unprocessable(f"{field} is not allowed for {old['type']} orders", 40010001)
            spec[field] = parse_decimal(body[field], field)
            check_increment(spec[field], field, body[field])
        coid = body.get("client_order_id") or str(uuid.uuid4())
        if coid in self.client_order_ids:
            raise unprocessable("client_order_id must be unique", 40010001)
        spec["client_order_id"] = coid
        return spec

    def _relink(self, old: dict, new: dict) -> None:
        """The replacing order takes the old one's place in its group."""
        for leg_id in new["legs"]:
            self.orders[leg_id]["parent_id"] = new["id"]
        if old["parent_id"]:
            legs = self.orders[old["parent_id"]]["legs"]
            legs[legs.index(old["id"])] = new["id"]

    # ------------------------------------------------------------ close positions

    def _close_body(self, symbol: str, qty, percentage) -> dict:
        held = self.positions[symbol]["qty"]
        if qty not in (None, "") and percentage not in (None, ""):
            raise unprocessable("only one of qty or percentage may be given", 40010001)
        amount = abs(held)
        if qty not in (None, ""):
            amount = parse_decimal(qty, "qty")
        elif percentage not in (None, ""):
            pct = parse_decimal(percentage, "percentage")
            if not ZERO < pct <= 100:
                raise unprocessable("percentage must be > 0 and <= 100", 40010001)
            amount = (abs(held) * pct / 100).quantize(Decimal("0.000000001"), rounding=ROUND_DOWN)
        if amount <= 0 or amount > abs(held):
            raise forbidden_qty(amount, abs(held))
        return {"symbol": symbol, "qty": plain(amount), "side": "sell" if held > 0 else "buy",
                "type": "market", "time_in_force": "day"}

    def close_position(self, symbol: str, qty=None, percentage=None) -> dict:
        symbol = symbol.strip().upper()
        with self.lock:
            if symbol not in self.positions:
                raise not_found("position does not exist")
            body = self._close_body(symbol, qty, percentage)
            return self.submit_order(body)

    def close_all_positions(self, cancel_orders: bool = False) -> list:
        with self.lock:
            if cancel_orders:
                self.cancel_all()
            results = []
            for symbol in sorted(self.positions):
                try:
                    order = self.close_position(symbol)
                    results.append({"symbol": symbol, "status": 200, "body": order})
                except ExchangeError as e:
                    results.append({"symbol": symbol, "status": e.status, "body": e.payload})
            return results


def forbidden_qty(requested: Decimal, available: Decimal) -> ExchangeError:
    return forbidden(f"insufficient qty available for order (requested: {plain(requested)}, "
                     f"available: {plain(available)})")
