"""The project's settings for the API throughput run, with DRF throttling out of the way.

The API throttles test orders per user ("orders": 30/min, counted per gunicorn worker in
the default cache); 400 requests from one user would measure the throttle, not the API.
Everything else is catalyst.settings, from the same environment."""

from catalyst.settings import *  # noqa: F403
from catalyst.settings import REST_FRAMEWORK

REST_FRAMEWORK = {
    **REST_FRAMEWORK,
    "DEFAULT_THROTTLE_RATES": {scope: "1000000/min" for scope in REST_FRAMEWORK.get("DEFAULT_THROTTLE_RATES", {})},
}
