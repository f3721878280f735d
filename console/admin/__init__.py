"""The operator's console in the Django admin: every screen answers "are we protected?" at a
glance. One module per screen; importing them registers the admins."""

from . import gate, orders, positions, risk, trading_state  # noqa: F401
from .base import console_index  # noqa: F401
