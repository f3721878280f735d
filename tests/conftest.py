from tests.paper_exchange_fixtures import *  # noqa: F401,F403
