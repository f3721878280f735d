"""The asset list: which symbols exist and whether they are tradable, shortable, fractionable.

Alpaca refuses orders for symbols it does not know (422 ``asset "XYZ" not found``) and
for assets that are not tradable.  The exchange starts with the demo symbols; setting
a quote or a position for a symbol through the control API adds it as an active,
tradable asset, and ``POST /_paper/assets`` adds or changes one.
"""

from __future__ import annotations

from .util import asset_id_for, is_truthy, not_found, unprocessable

__all__ = ["AssetsMixin", "DEMO_SYMBOLS", "new_asset"]

DEMO_SYMBOLS = ("AAPL", "MSFT", "NVDA", "SPY", "TSLA")
_FLAGS = ("tradable", "shortable", "fractionable", "marginable", "easy_to_borrow")


def new_asset(symbol: str, **flags) -> dict:
    asset = {"symbol": symbol, "name": f"{symbol} (paper exchange)", "status": "active",
             "exchange": "NASDAQ", "tradable": True, "shortable": True, "fractionable": True,
             "marginable": True, "easy_to_borrow": True}
    asset.update({k: bool(v) for k, v in flags.items() if k in _FLAGS})
    return asset


def _clean_symbol(symbol) -> str:
    if not isinstance(symbol, str) or not symbol.strip():
        raise unprocessable("symbol is required", 40010001)
    return symbol.strip().upper()


class AssetsMixin:
    """Needs ``self.assets`` (symbol -> asset dict), ``self.lock`` and ``self._persist``."""

    def _ensure_asset(self, symbol: str) -> dict:
        asset = self.assets.get(symbol)
        if asset is None:
            asset = self.assets[symbol] = new_asset(symbol)
        return asset

    def set_asset(self, spec) -> dict:
        """Control API: add or change one asset (flags not given keep their value)."""
        if not isinstance(spec, dict):
            raise unprocessable("asset must be an object", 40010001)
        symbol = _clean_symbol(spec.get("symbol"))
        status = spec.get("status")
        if status is not None and status not in ("active", "inactive"):
            raise unprocessable("status must be 'active' or 'inactive'", 40010001)
        with self.lock:
            asset = self._ensure_asset(symbol)
            for flag in _FLAGS:
                if flag in spec:
                    asset[flag] = is_truthy(spec[flag])
            if status is not None:
                asset["status"] = status
            if isinstance(spec.get("name"), str):
                asset["name"] = spec["name"]
            self._persist()
            return self._asset_json(asset)

    @staticmethod
    def _asset_json(asset: dict) -> dict:
        return {
            "id": asset_id_for(asset["symbol"]), "class": "us_equity", "exchange": asset["exchange"],
            "symbol": asset["symbol"], "name": asset["name"], "status": asset["status"],
            "tradable": asset["tradable"], "marginable": asset["marginable"],
            "maintenance_margin_requirement": 30, "shortable": asset["shortable"],
            "easy_to_borrow": asset["easy_to_borrow"], "fractionable": asset["fractionable"],
            "attributes": [],
        }

    def asset_json(self, symbol_or_id: str) -> dict:
        with self.lock:
            key = str(symbol_or_id).strip()
            asset = self.assets.get(key.upper())
            if asset is None:
                asset = next((a for a in self.assets.values() if asset_id_for(a["symbol"]) == key.lower()), None)
            if asset is None:
                raise not_found(f"asset not found for {key}")
            return self._asset_json(asset)

    def assets_json(self, status=None) -> list:
        with self.lock:
            return [self._asset_json(a) for s, a in sorted(self.assets.items())
                    if status in (None, "", a["status"])]

    def _require_tradable(self, symbol: str) -> dict:
        """Alpaca's answers to an order for an unknown or untradable asset (422)."""
        asset = self.assets.get(symbol)
        if asset is None:
            raise unprocessable(f'asset "{symbol}" not found')
        if not asset["tradable"] or asset["status"] != "active":
            raise unprocessable(f"asset {symbol} is not tradable")
        return asset

