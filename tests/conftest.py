from tests.figures import figures, pytest_terminal_summary  # noqa: F401
from tests.paper_exchange_fixtures import *  # noqa: F401,F403
