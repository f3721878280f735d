"""One Django model permission per endpoint, the same ones the admin checks.

Anonymous -> 401 (IsAuthenticated is checked first; TokenAuthentication supplies the
WWW-Authenticate header), authenticated without the permission -> 403.

| endpoint                         | permission                        |
|----------------------------------|-----------------------------------|
| POST /api/v1/orders              | trading.submit_order              |
| POST /api/v1/orders/test         | trading.add_order                 |
| GET  /api/v1/orders/{id}         | trading.view_order                |
| GET  /api/v1/positions           | trading.view_position             |
| GET  /api/v1/positions/{id}/timeline | trading.view_position         |
| POST /api/v1/positions/{id}/reduce | trading.submit_order            |
| POST /api/v1/positions/flatten   | trading.flatten_positions         |
| GET  /api/v1/trading-state       | trading.view_tradingstatechange   |
| POST /api/v1/trading-state       | trading.change_trading_mode       |
| GET  /api/v1/monitor             | risk.view_heartbeat               |
"""

from rest_framework.permissions import BasePermission, IsAuthenticated

ADD_ORDER = "trading.add_order"
SUBMIT_ORDER = "trading.submit_order"
VIEW_ORDER = "trading.view_order"
VIEW_POSITION = "trading.view_position"
FLATTEN = "trading.flatten_positions"
VIEW_TRADING_STATE = "trading.view_tradingstatechange"
CHANGE_TRADING_MODE = "trading.change_trading_mode"
VIEW_MONITOR = "risk.view_heartbeat"


class HasPerms(BasePermission):
    """The view's `required_perms` maps an HTTP method to the Django permission it needs."""

    message = "You do not have the permission this needs."

    def has_permission(self, request, view) -> bool:
        perms = getattr(view, "required_perms", {})
        needed = perms.get(request.method)
        if needed is None and request.method in ("HEAD", "OPTIONS"):
            needed = perms.get("GET") or next(iter(perms.values()), None)
        if needed is None:
            return False
        self.message = f"You need the permission {needed}."
        return request.user.has_perm(needed)


PERMISSIONS = [IsAuthenticated, HasPerms]
