"""manage.py paperquote AAPL --bid 149.99 --ask 150.01 [--url http://127.0.0.1:5099]
manage.py paperquote AAPL --price 150   (bid = ask = 150)"""

from decimal import Decimal, InvalidOperation

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from paper_exchange.control import (
    DEFAULT_URL,
    PaperExchangeControl,
    PaperExchangeControlError,
)


def _price(value, name, *, positive=False):
    """A price; 0 is allowed for a bid or an ask alone (the exchange then has none on that side)."""
    try:
        d = Decimal(value)
    except (InvalidOperation, ValueError):
        raise CommandError(f"--{name} must be a number, got {value!r}") from None
    if not d.is_finite() or d < 0 or (positive and d == 0):
        raise CommandError(f"--{name} must be a finite number {'above 0' if positive else '>= 0'}, got {value!r}")
    return d


def _default_url():
    try:
        url = getattr(settings, "PAPER_EXCHANGE_URL", None)
    except Exception:  # settings not configured
        url = None
    return url or DEFAULT_URL


class Command(BaseCommand):
    help = "Set the quote of a symbol on a running paper exchange."

    def add_arguments(self, parser):
        parser.add_argument("symbol")
        parser.add_argument("--bid")
        parser.add_argument("--ask")
        parser.add_argument("--price", help="sets bid = ask = PRICE")
        parser.add_argument("--url", default=None,
                            help="paper exchange URL (default: settings.PAPER_EXCHANGE_URL or http://127.0.0.1:5099)")

    def handle(self, *args, **options):
        symbol = options["symbol"].strip().upper()
        if not symbol or not symbol.replace(".", "").replace("/", "").isalnum():
            raise CommandError(f"invalid symbol {options['symbol']!r}")
        if options["price"] is not None:
            if options["bid"] is not None or options["ask"] is not None:
                raise CommandError("use either --price or --bid/--ask, not both")
            bid = ask = _price(options["price"], "price", positive=True)
        else:
            if options["bid"] is None or options["ask"] is None:
                raise CommandError("give --bid and --ask, or --price")
            bid, ask = _price(options["bid"], "bid"), _price(options["ask"], "ask")
            if bid == 0 and ask == 0:
                raise CommandError("--bid and --ask can't both be 0: give a price")
            if bid > 0 and ask > 0 and bid > ask:
                raise CommandError(f"bid {bid} is above ask {ask}")
        url = options["url"] or _default_url()
        try:
            quote = PaperExchangeControl(url).set_quote(symbol, bid, ask)
        except PaperExchangeControlError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"{symbol}: bid {quote['bp']} ask {quote['ap']} at {quote['t']} ({url})")
