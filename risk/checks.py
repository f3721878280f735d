"""System checks for settings the monitor relies on."""

from django.conf import settings
from django.core.checks import Error, Warning, register

from trading.validation import OrderValidationError, normalize_symbol


@register()
def monitor_settings_check(app_configs, **kwargs):
    problems = []
    q = settings.Q_CLUSTER
    if q.get("retry", 0) <= q.get("timeout", 0):
        problems.append(Error(
            f"Q_CLUSTER retry ({q.get('retry')}) must exceed timeout ({q.get('timeout')})",
            hint="Otherwise django-q2's ORM broker hands a running monitor task out again.",
            id="risk.E001",
        ))
    if settings.MONITOR_INTERVAL_SECONDS >= 60 and settings.MONITOR_INTERVAL_SECONDS % 60:
        problems.append(Error("MONITOR_INTERVAL_SECONDS of a minute or more must be whole minutes",
                              id="risk.E002"))
    elif settings.MONITOR_INTERVAL_SECONDS < 60 and 60 % settings.MONITOR_INTERVAL_SECONDS:
        problems.append(Warning("MONITOR_INTERVAL_SECONDS should divide 60 for an even cron schedule",
                                id="risk.W001"))
    if settings.MONITOR_LEASE_SECONDS <= settings.MONITOR_EXIT_FILL_WAIT_SECONDS:
        problems.append(Error("MONITOR_LEASE_SECONDS must exceed MONITOR_EXIT_FILL_WAIT_SECONDS", id="risk.E003"))
    if not settings.ALPACA_PAPER and not (settings.ALPACA_API_KEY and settings.ALPACA_SECRET_KEY):
        problems.append(Error("ALPACA_PAPER=false (live trading) needs ALPACA_API_KEY and ALPACA_SECRET_KEY",
                              id="trading.E001"))
    problems += _budget_problems()
    return problems


ALPACA_REQUESTS_PER_MINUTE = 200  # Alpaca's trading API, per account


def _budget_problems() -> list:
    problems = []
    if not (settings.BROKER_READ_SHARE_PERCENT <= settings.BROKER_PROTECT_SHARE_PERCENT <= 100):
        problems.append(Error(
            "BROKER_READ_SHARE_PERCENT must not exceed BROKER_PROTECT_SHARE_PERCENT, nor that 100",
            hint="Exits may use the whole budget, protective orders less, reads least: that is what keeps "
                 "requests for exits.", id="trading.E002"))
    if settings.BROKER_REQUESTS_PER_MINUTE > ALPACA_REQUESTS_PER_MINUTE:
        problems.append(Error(
            f"BROKER_REQUESTS_PER_MINUTE ({settings.BROKER_REQUESTS_PER_MINUTE}) is above Alpaca's "
            f"{ALPACA_REQUESTS_PER_MINUTE} a minute per account", id="trading.E003"))
    if settings.ALPACA_API_KEY and not settings.BROKER_REQUESTS_PER_MINUTE:
        problems.append(Warning(
            "BROKER_REQUESTS_PER_MINUTE=0: no request budget against Alpaca, so a burst of exits meets 429s",
            id="trading.W001"))
    return problems


REGULAR_SESSION_MINUTES = 390  # 09:30 to 16:00 New York


@register()
def gate_settings_check(app_configs, **kwargs):
    """The order gate's and the guards' settings (README "The order gate")."""
    problems = []
    for name in ("LIMIT_SYMBOLS_ALLOWED", "LIMIT_SYMBOLS_REFUSED"):
        for symbol in getattr(settings, name):
            try:
                normalize_symbol(symbol)
            except OrderValidationError:
                problems.append(Error(f"{name} holds {symbol!r}, not a US equity symbol", id="risk.E004"))
    both = {s.upper() for s in settings.LIMIT_SYMBOLS_ALLOWED} & {s.upper() for s in settings.LIMIT_SYMBOLS_REFUSED}
    if both:
        problems.append(Warning(f"{', '.join(sorted(both))} both allowed and refused: refused wins", id="risk.W002"))
    if settings.EOD_FLATTEN_MINUTES >= REGULAR_SESSION_MINUTES:
        problems.append(Error(f"EOD_FLATTEN_MINUTES ({settings.EOD_FLATTEN_MINUTES}) must be shorter than a regular "
                              f"session ({REGULAR_SESSION_MINUTES} minutes)", id="risk.E005"))
    if settings.DAILY_LOSS_FLATTEN and not settings.DAILY_LOSS_LIMIT:
        problems.append(Warning("DAILY_LOSS_FLATTEN=true does nothing while DAILY_LOSS_LIMIT is 0 (off)",
                                id="risk.W003"))
    return problems
