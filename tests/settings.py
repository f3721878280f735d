"""Settings for the test run: the project's own, with a throwaway secret key and quick
retries so fault tests don't sleep. Everything else still comes from the environment
(DATABASE_URL selects SQLite or PostgreSQL)."""

import os

# Never a developer's .env (make run leaves one): the results must not depend on it. Set in the
# environment, so the processes the tests start read none either.
os.environ["CATALYST_ENV_FILE"] = ""
os.environ.setdefault("DJANGO_SECRET_KEY", "test-only-secret-key-not-for-production-use-0123456789")

from catalyst.settings import *  # noqa: E402,F403

BROKER_TIMEOUT_SECONDS = Decimal("3")  # noqa: F405
BROKER_RETRY_WAIT_SECONDS = 0
MONITOR_EXIT_FILL_WAIT_SECONDS = Decimal("1")  # noqa: F405
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# The monitor's guards halt trading on losses and stop-outs, which most tests cause on purpose:
# off here, switched on by the tests of the guards (tests/test_guards.py).
DAILY_LOSS_LIMIT = Decimal("0")  # noqa: F405
STOP_LOSS_GUARD_COUNT = 0

# One test database per run, so runs side by side do not trample each other; on SQLite a
# file, not memory, so the tests' subprocesses (runmonitor killed and restarted) share it.
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":  # noqa: F405
    (BASE_DIR / "var").mkdir(exist_ok=True)  # noqa: F405
    DATABASES["default"]["TEST"] = {"NAME": str(BASE_DIR / "var" / f"test_catalyst_{os.getpid()}.sqlite3")}  # noqa: F405
else:
    DATABASES["default"]["TEST"] = {"NAME": f"test_catalyst_{os.getpid()}"}  # noqa: F405

AXES_ENABLED = False  # the login-throttling test switches it on

CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# The broker request budget (trading/budget.py) is off: tests send hundreds of requests a
# minute to their own exchange. The budget's tests switch it on.
BROKER_REQUESTS_PER_MINUTE = 0
