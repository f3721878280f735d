import pytest

from tests.figures import figures, pytest_terminal_summary  # noqa: F401
from tests.paper_exchange_fixtures import *  # noqa: F401,F403
from risk.trading_state import trading_state_set


@pytest.fixture(autouse=True)
def _fresh_cache():
    """Throttle counts and the like never carry over from one test to the next."""
    from django.core.cache import cache

    cache.clear()


@pytest.fixture(autouse=True)
def _fresh_clock():
    """The broker's clock is kept until its next turn: each test reads its exchange's afresh."""
    from risk.market import clock_forget

    clock_forget()


@pytest.fixture
def active(db):
    """Trading resumed: new entries allowed."""
    trading_state_set(mode="ACTIVE", reason="tests trade")


@pytest.fixture
def exchange(paper_exchange):
    """The paper exchange with live quotes for the symbols most tests trade."""
    paper_exchange.control.set_quote("AAPL", "149.99", "150.01")
    paper_exchange.control.set_quote("MSFT", "399.99", "400.01")
    paper_exchange.control.set_quote("TSLA", "249.99", "250.01")
    return paper_exchange
