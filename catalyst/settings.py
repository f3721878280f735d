"""Settings for Catalyst Ops Console.

Every setting that can change between machines is read from the environment here,
through the typed helpers below, which fail loudly on a value they cannot parse.
"""

import ipaddress
import os
import re
import sys
from decimal import Decimal, InvalidOperation
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from dotenv import load_dotenv

BASE_DIR = Path(__file__).resolve().parent.parent

# A local settings file (`make run` writes one), read by every command of the checkout. The
# environment wins over it; CATALYST_ENV_FILE names another file, or none when empty (the tests).
ENV_FILE = os.environ.get("CATALYST_ENV_FILE", str(BASE_DIR / ".env"))
if ENV_FILE:
    if "CATALYST_ENV_FILE" in os.environ and not Path(ENV_FILE).is_file():
        raise ImproperlyConfigured(f"CATALYST_ENV_FILE names {ENV_FILE!r}, which is not a file")
    load_dotenv(ENV_FILE, override=False)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def envstr(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def envbool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, got {raw!r}")


def envint(name: str, default: int, *, minimum: int = 0) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, got {value}")
    return value


def envdecimal(name: str, default: str, *, minimum: str = "0") -> Decimal:
    raw = os.environ.get(name) or default
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise ImproperlyConfigured(f"{name} must be a decimal number, got {raw!r}") from None
    if not value.is_finite() or value < Decimal(minimum):
        raise ImproperlyConfigured(f"{name} must be a number of at least {minimum}, got {raw!r}")
    return value


def envchoice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = os.environ.get(name) or default
    if value not in choices:
        raise ImproperlyConfigured(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def envlist(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def envnetworks(name: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """Comma-separated addresses or networks (10.0.0.5, 10.0.0.0/8, ::1)."""
    networks = []
    for item in envlist(name):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ImproperlyConfigured(f"{name}: {item!r} is not an address or network") from None
    return networks


def envurls(name: str) -> list[str]:
    """URLs separated by spaces, commas or semicolons (one may hold commas of its own: it is
    only split before the next `scheme://`). The values are not repeated in an error: they can
    carry credentials."""
    raw = os.environ.get(name, "").strip()
    urls = [url.strip(" ,;") for url in re.split(r"[\s,;]+(?=[a-z][a-z0-9+.-]*://)", raw, flags=re.I) if url.strip(" ,;")]
    for number, url in enumerate(urls, start=1):
        if not re.match(r"(?i)^[a-z][a-z0-9+.-]*://\S+$", url):
            raise ImproperlyConfigured(f"{name}: item {number} is not a URL of the form scheme://...")
    return urls


# --- Django core -----------------------------------------------------------------

DEBUG = envbool("DJANGO_DEBUG", False)
SECRET_KEY = envstr("DJANGO_SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY must be set when DJANGO_DEBUG is off (make run sets DJANGO_DEBUG=true)"
        )
    SECRET_KEY = "insecure-development-key-only-used-with-debug-on"
ALLOWED_HOSTS = envlist("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost")
CSRF_TRUSTED_ORIGINS = envlist("DJANGO_CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI served from here, not a CDN: works offline
    "django_q",
    "axes",
    "django_htmx",  # the live board's refresh (request.htmx; htmx itself served from its static files)
    "import_export",  # CSV export of positions and orders (export only)
    "trading",
    "risk",
    "console",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "console.middleware.RejectNulMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "axes.middleware.AxesMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

# Login throttling (django-axes): after AXES_FAILURE_LIMIT failures for a username from one
# address, that pair is locked out for AXES_COOLOFF_TIME hours.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = envint("LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = envint("LOGIN_COOLOFF_MINUTES", 15, minimum=1) / 60
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "admin/lockout.html"  # says for how long, and how to unlock

ROOT_URLCONF = "catalyst.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "console.context_processors.broker",
            ],
        },
    },
]

WSGI_APPLICATION = "catalyst.wsgi.application"
ASGI_APPLICATION = "catalyst.asgi.application"

DATABASES = {
    "default": dj_database_url.parse(
        envstr("DATABASE_URL") or f"sqlite:///{BASE_DIR / 'var' / 'catalyst.sqlite3'}",
        conn_max_age=envint("DATABASE_CONN_MAX_AGE", 0),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The console, the monitor and the worker all write: WAL lets readers run beside
    # the writer, IMMEDIATE takes the write lock up front so transactions queue on
    # the busy timeout instead of failing with "database is locked" mid-way.
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Shared by every process (API throttling counts live here): Redis when REDIS_URL is set,
# else files under var/ (one machine).
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": envstr("REDIS_URL")}
    if envstr("REDIS_URL")
    else {"BACKEND": "django.core.cache.backends.filebased.FileBasedCache", "LOCATION": str(BASE_DIR / "var" / "cache")}
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
FORMAT_MODULE_PATH = ["catalyst.formats"]  # times with seconds everywhere
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

IMPORT_EXPORT_EXPORT_PERMISSION_CODE = "view"  # exporting a list needs the permission to view it

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"

# --- Security (production defaults; DEBUG relaxes the HTTPS-only ones) ------------

SECURE_SSL_REDIRECT = envbool("DJANGO_SECURE_SSL_REDIRECT", not DEBUG)
SECURE_REDIRECT_EXEMPT = [r"^metrics$"]  # scraped on the internal address, past the TLS proxy
SESSION_COOKIE_SECURE = not DEBUG
CSRF_COOKIE_SECURE = not DEBUG
SECURE_HSTS_SECONDS = 0 if DEBUG else envint("DJANGO_HSTS_SECONDS", 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = not DEBUG
SECURE_HSTS_PRELOAD = not DEBUG
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
X_FRAME_OPTIONS = "DENY"

# --- Logging: one JSON object per line on stdout; secrets are never formatted in ---------

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "catalyst.logs.JsonLines"}},
    "filters": {"scrub": {"()": "trading.redaction.ScrubFilter"}},
    "handlers": {"stdout": {"class": "logging.StreamHandler", "stream": sys.stdout, "formatter": "json",
                            "filters": ["scrub"]},
                 "null": {"class": "logging.NullHandler"}},
    "root": {"handlers": ["stdout"], "level": envstr("LOG_LEVEL", "INFO")},
    "loggers": {
        "urllib3": {"level": "WARNING"},
        # runserver's access lines (2xx/3xx at INFO, 4xx WARNING, 5xx ERROR); make run shows failures only
        "django.server": {"handlers": ["stdout"], "level": envchoice(
            "ACCESS_LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR")), "propagate": False},
        # Apprise names the hosts it fails on, and its URLs are secrets: risk.alerts reads its
        # warnings for the HTTP status and logs each failure itself, scrubbed.
        "apprise": {"handlers": ["null"], "level": "WARNING", "propagate": False},
    },
}

# --- REST API ------------------------------------------------------------------

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "COERCE_DECIMAL_TO_STRING": True,
    # Throttling (console/api/throttling.py): every request of a user counts against "user";
    # the writes of a view with a `throttle_scope` also against that scope. Over it: 429 with
    # Retry-After. Counted in the default cache (per process unless CACHES is shared).
    "DEFAULT_THROTTLE_CLASSES": [
        "console.api.throttling.UserThrottle",
        "console.api.throttling.WriteScopedThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "user": "600/min",
        "orders": "30/min",
        "flatten": "10/min",
        "trading_state": "20/min",
        "order_gate": "120/min",
    },
}
SPECTACULAR_SETTINGS = {
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "TITLE": "Catalyst Ops Console API",
    "VERSION": "1.0.0",
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
}

# --- Broker --------------------------------------------------------------------

ALPACA_API_KEY = envstr("ALPACA_API_KEY")
ALPACA_SECRET_KEY = envstr("ALPACA_SECRET_KEY")
ALPACA_PAPER = envbool("ALPACA_PAPER", True)
PAPER_EXCHANGE_URL = envstr("PAPER_EXCHANGE_URL", "http://127.0.0.1:5099")
_USING_PAPER_EXCHANGE = not (ALPACA_API_KEY and ALPACA_SECRET_KEY)
ALPACA_TRADING_URL = envstr("ALPACA_TRADING_URL") or (PAPER_EXCHANGE_URL if _USING_PAPER_EXCHANGE else "")
ALPACA_DATA_URL = envstr("ALPACA_DATA_URL") or (PAPER_EXCHANGE_URL if _USING_PAPER_EXCHANGE else "")
_PAPER_STREAM_URL = PAPER_EXCHANGE_URL.replace("https://", "wss://").replace("http://", "ws://")
ALPACA_TRADING_STREAM_URL = envstr("ALPACA_TRADING_STREAM_URL") or (
    f"{_PAPER_STREAM_URL}/stream" if _USING_PAPER_EXCHANGE else "")
ALPACA_DATA_FEED = envchoice("ALPACA_DATA_FEED", "iex", ("iex", "sip", "delayed_sip", "boats", "overnight"))
# The market-data websocket the quote stream (`manage.py runquotes`) connects to: the paper
# exchange's when no keys are set; else alpaca-py's own (wss://stream.data.alpaca.markets/v2/<feed>).
ALPACA_DATA_STREAM_URL = envstr("ALPACA_DATA_STREAM_URL") or (
    f"{_PAPER_STREAM_URL}/v2/{ALPACA_DATA_FEED}" if _USING_PAPER_EXCHANGE else "")
BROKER_TIMEOUT_SECONDS = envdecimal("BROKER_TIMEOUT_SECONDS", "10", minimum="0.1")
BROKER_RETRY_ATTEMPTS = envint("BROKER_RETRY_ATTEMPTS", 2)
BROKER_RETRY_WAIT_SECONDS = envint("BROKER_RETRY_WAIT_SECONDS", 1, minimum=1)
BROKER_QUOTE_BATCH_SIZE = envint("BROKER_QUOTE_BATCH_SIZE", 200, minimum=1)
# One request budget for the trading API, shared by every process (trading/budget.py): Alpaca
# allows 200 a minute per account and the trading service spends from the same keys. 0: none.
BROKER_REQUESTS_PER_MINUTE = envint("BROKER_REQUESTS_PER_MINUTE", 150)
BROKER_PROTECT_SHARE_PERCENT = envint("BROKER_PROTECT_SHARE_PERCENT", 80, minimum=1)
BROKER_READ_SHARE_PERCENT = envint("BROKER_READ_SHARE_PERCENT", 60, minimum=1)
BROKER_BUDGET_WAIT_SECONDS = envdecimal("BROKER_BUDGET_WAIT_SECONDS", "10")
BRACKET_TIME_IN_FORCE = envchoice("BRACKET_TIME_IN_FORCE", "gtc", ("gtc", "day"))
TEST_ORDER_MAX_QTY = envdecimal("TEST_ORDER_MAX_QTY", "1", minimum="0.000000001")

# --- Fallback monitor ------------------------------------------------------------

MONITOR_INTERVAL_SECONDS = envint("MONITOR_INTERVAL_SECONDS", 30, minimum=1)
MONITOR_QUOTE_MAX_AGE_SECONDS = envint("MONITOR_QUOTE_MAX_AGE_SECONDS", 60, minimum=1)
MONITOR_EXIT_FILL_WAIT_SECONDS = envdecimal("MONITOR_EXIT_FILL_WAIT_SECONDS", "3")
MONITOR_MARKET_HOURS_ONLY = envbool("MONITOR_MARKET_HOURS_ONLY", True)
MONITOR_EXIT_ATTEMPTS = envint("MONITOR_EXIT_ATTEMPTS", 3, minimum=1)
MONITOR_LEASE_SECONDS = envint("MONITOR_LEASE_SECONDS", 120, minimum=5)
MONITOR_CLOSE_WORKERS = envint("MONITOR_CLOSE_WORKERS", 4, minimum=1)
MONITOR_ALERT_AFTER_ERROR_CYCLES = envint("MONITOR_ALERT_AFTER_ERROR_CYCLES", 3, minimum=1)
RECONCILE_EVERY_N_CYCLES = envint("RECONCILE_EVERY_N_CYCLES", 10, minimum=1)
PROTECTION_POLICY = envchoice("PROTECTION_POLICY", "protect", ("protect", "flatten", "alert"))
PROTECTION_DEFAULT_STOP_PERCENT = envdecimal("PROTECTION_DEFAULT_STOP_PERCENT", "2", minimum="0.01")
PROTECTION_DEFAULT_TARGET_PERCENT = envdecimal("PROTECTION_DEFAULT_TARGET_PERCENT", "4", minimum="0.01")
STREAM_PING_SECONDS = envint("STREAM_PING_SECONDS", 5, minimum=1)
STREAM_HEALTHY_SECONDS = envint("STREAM_HEALTHY_SECONDS", 15, minimum=2)
# The quote stream (issue 14): streamed symbols are decided on each quote; the monitor polls them
# only every MONITOR_STREAMED_INTERVAL_SECONDS while the stream is healthy. STREAM_MAX_SYMBOLS:
# Alpaca's free IEX plan streams 30 symbols on one connection (0 = no limit, SIP).
STREAM_MAX_SYMBOLS = envint("STREAM_MAX_SYMBOLS", 30, minimum=0)
STREAM_SILENCE_SECONDS = envint("STREAM_SILENCE_SECONDS", 10, minimum=1)
STREAM_CONFIRM_QUOTES = envint("STREAM_CONFIRM_QUOTES", 1, minimum=1)
STREAM_RERANK_SECONDS = envint("STREAM_RERANK_SECONDS", 10, minimum=1)
MONITOR_STREAMED_INTERVAL_SECONDS = envint("MONITOR_STREAMED_INTERVAL_SECONDS", 120, minimum=1)
FLATTEN_SEND_SECONDS = envdecimal("FLATTEN_SEND_SECONDS", "20", minimum="1")
CHECKLIST_MAX_POSITION_AGE_HOURS = envint("CHECKLIST_MAX_POSITION_AGE_HOURS", 72, minimum=1)

# --- The order gate: pre-trade limits (the defaults of the admin's one row; 0 = no limit) ----------

LIMIT_ORDER_MAX_QTY = envdecimal("LIMIT_ORDER_MAX_QTY", "1000")
LIMIT_ORDER_MAX_NOTIONAL = envdecimal("LIMIT_ORDER_MAX_NOTIONAL", "50000")
LIMIT_ORDER_MAX_LOSS = envdecimal("LIMIT_ORDER_MAX_LOSS", "1000")
LIMIT_MAX_OPEN_POSITIONS = envint("LIMIT_MAX_OPEN_POSITIONS", 20)
LIMIT_SYMBOL_MAX_EXPOSURE = envdecimal("LIMIT_SYMBOL_MAX_EXPOSURE", "100000")
LIMIT_TOTAL_MAX_EXPOSURE = envdecimal("LIMIT_TOTAL_MAX_EXPOSURE", "250000")
LIMIT_MAX_ORDERS_PER_MINUTE = envint("LIMIT_MAX_ORDERS_PER_MINUTE", 30)
LIMIT_SYMBOLS_ALLOWED = envlist("LIMIT_SYMBOLS_ALLOWED")
LIMIT_SYMBOLS_REFUSED = envlist("LIMIT_SYMBOLS_REFUSED")

# --- Guards the monitor runs: the daily-loss kill switch, the stop-loss guard, the end-of-day flatten ---

DAILY_LOSS_LIMIT = envdecimal("DAILY_LOSS_LIMIT", "2000")  # 0: off
DAILY_LOSS_FLATTEN = envbool("DAILY_LOSS_FLATTEN", False)
STOP_LOSS_GUARD_COUNT = envint("STOP_LOSS_GUARD_COUNT", 3)  # 0: off
STOP_LOSS_GUARD_MINUTES = envint("STOP_LOSS_GUARD_MINUTES", 30, minimum=1)
STOP_LOSS_GUARD_COOLDOWN_MINUTES = envint("STOP_LOSS_GUARD_COOLDOWN_MINUTES", 60, minimum=1)
EOD_FLATTEN = envchoice("EOD_FLATTEN", "intraday", ("off", "intraday", "all"))
EOD_FLATTEN_MINUTES = envint("EOD_FLATTEN_MINUTES", 15, minimum=1)

# --- Alerts ----------------------------------------------------------------------

ALERT_APPRISE_URLS = envurls("ALERT_APPRISE_URLS")  # secrets: never logged, stored or shown
ALERT_WEBHOOK_URL = envstr("ALERT_WEBHOOK_URL")  # sent as Apprise json:// with the former {"text": ...} body
ALERT_WEBHOOK_TIMEOUT_SECONDS = envdecimal("ALERT_WEBHOOK_TIMEOUT_SECONDS", "3", minimum="0.1")
ALERT_WEBHOOK_RETRIES = envint("ALERT_WEBHOOK_RETRIES", 2)
ALERT_EMAIL_TO = envlist("ALERT_EMAIL_TO")
_EMAIL_BACKEND = envstr(
    "EMAIL_BACKEND",
    "django.core.mail.backends.console.EmailBackend" if DEBUG else "django.core.mail.backends.smtp.EmailBackend",
)
MAILERS = {"default": {"BACKEND": _EMAIL_BACKEND, "OPTIONS": {}}}
if _EMAIL_BACKEND.endswith("smtp.EmailBackend"):
    MAILERS["default"]["OPTIONS"] = {
        "host": envstr("EMAIL_HOST", "localhost"),
        "port": envint("EMAIL_PORT", 25, minimum=1),
        "username": envstr("EMAIL_HOST_USER"),
        "password": envstr("EMAIL_HOST_PASSWORD"),
        "use_tls": envbool("EMAIL_USE_TLS", False),
        "timeout": envint("EMAIL_TIMEOUT_SECONDS", 10, minimum=1),
    }
DEFAULT_FROM_EMAIL = envstr("DEFAULT_FROM_EMAIL", "catalyst@localhost")

# --- django-q2: the scheduled monitor ---------------------------------------------
# ORM broker unless REDIS_URL is set. The task's own lease keeps cycles from
# overlapping; `retry` must exceed `timeout` or the ORM broker hands a running
# task out again (checked by risk.checks).

REDIS_URL = envstr("REDIS_URL")
Q_CLUSTER = {
    "name": "catalyst",
    "workers": envint("Q_WORKERS", 2, minimum=1),
    "timeout": envint("Q_TIMEOUT_SECONDS", 300, minimum=1),
    "retry": envint("Q_RETRY_SECONDS", 360, minimum=1),
    "max_attempts": 1,
    "catch_up": False,
    "save_limit": 1000,
    "ack_failures": True,
    "poll": 1,
}
if REDIS_URL:
    Q_CLUSTER["redis"] = REDIS_URL
else:
    Q_CLUSTER["orm"] = "default"

# --- The operator's console: live board, metrics ----------------------------------------

BOARD_REFRESH_SECONDS = envint("BOARD_REFRESH_SECONDS", 3, minimum=1)
BOARD_QUOTE_CACHE_SECONDS = envint("BOARD_QUOTE_CACHE_SECONDS", 2, minimum=0)
# /metrics answers a bearer token or an address on the allow-list (REMOTE_ADDR: the direct
# peer), and nobody while both are empty.
METRICS_TOKEN = envstr("METRICS_TOKEN")
METRICS_ALLOWED_ADDRESSES = envnetworks("METRICS_ALLOWED_ADDRESSES")
# prometheus_client's multiprocess mode: the processes' counters (broker errors) are written to
# files there and summed by /metrics (make run sets it to var/prometheus, emptied at start).
PROMETHEUS_MULTIPROC_DIR = envstr("PROMETHEUS_MULTIPROC_DIR")
if PROMETHEUS_MULTIPROC_DIR and not Path(PROMETHEUS_MULTIPROC_DIR).is_dir():
    raise ImproperlyConfigured(f"PROMETHEUS_MULTIPROC_DIR must be an existing directory, got {PROMETHEUS_MULTIPROC_DIR!r}")
