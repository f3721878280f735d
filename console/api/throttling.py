"""Request throttling for the API (REST_FRAMEWORK["DEFAULT_THROTTLE_CLASSES"]).

- `UserThrottle`: every request of an authenticated user, the "user" rate.
- `WriteScopedThrottle`: the writes (POST, ...) of a view with `throttle_scope`, that scope's rate
  ("orders", "flatten", "trading_state", "order_gate"); reads of the same view are not counted against it.

Both are checked after authentication and permissions, so an anonymous or unpermitted caller
gets its 401/403, never a 429, and never uses up anyone's allowance. A throttled request is
a 429 with a Retry-After header. The counts live in the default cache.

Differences from DRF's own classes:
- The rates are read from the settings on every request (DRF binds them once at import),
  so `REST_FRAMEWORK` overrides take effect (tests lower or raise them).
- A user is identified by id *and* the moment the account was created: an account deleted
  and re-created under a recycled id (SQLite reuses them) does not inherit the old count.
"""

from rest_framework.permissions import SAFE_METHODS
from rest_framework.settings import api_settings
from rest_framework.throttling import ScopedRateThrottle, UserRateThrottle

# The scopes the views use (kept here so the settings and the views agree by name).
ORDERS = "orders"
FLATTEN = "flatten"
TRADING_STATE = "trading_state"
ORDER_GATE = "order_gate"


def _user_ident(request) -> str | None:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return None
    joined = getattr(user, "date_joined", None)
    return f"{user.pk}-{joined.timestamp():.6f}" if joined else str(user.pk)


class _LiveRates:
    @property
    def THROTTLE_RATES(self):  # the name DRF looks up
        return api_settings.DEFAULT_THROTTLE_RATES


class UserThrottle(_LiveRates, UserRateThrottle):
    scope = "user"

    def get_cache_key(self, request, view):
        ident = _user_ident(request) or self.get_ident(request)
        return self.cache_format % {"scope": self.scope, "ident": ident}


class WriteScopedThrottle(_LiveRates, ScopedRateThrottle):
    def allow_request(self, request, view):
        if request.method in SAFE_METHODS:
            return True
        return super().allow_request(request, view)

    def get_cache_key(self, request, view):
        ident = _user_ident(request) or self.get_ident(request)
        return self.cache_format % {"scope": self.scope, "ident": ident}
