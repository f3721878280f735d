"""Credentials out of every text and payload that came from outside (the broker, a webhook).

A broker, or a proxy in front of it, may answer an error with a body that repeats the
request's headers. The broker adapter scrubs every text and payload it hands on, the
alerts scrub what they store and send, and the log handlers scrub every line, so the
configured keys never reach a response, a log line or a row, whatever the body's shape
(JSON, HTML, plain text).
"""

import logging
import re

from django.conf import settings

REDACTED = "[redacted]"
MAX_TEXT_CHARS = 4000
# Header-shaped names of credentials, followed by a value: "APCA-API-SECRET-KEY: x", "token=x",
# "\"authorization\": \"Basic x\"", "<th>APCA-API-KEY-ID</th><td>x</td>".
_NAMED = re.compile(
    r"(?i)\b(apca-api-[a-z-]+|api[_-]?key(?:[_-]?id)?|secret[_-]?key|secret|password|passwd|token|authorization"
    r"|x-api-key|cookie)"
    r"((?:\s*(?:</t[hd]>\s*<td[^>]*>|[\"']?\s*[=:]\s*[\"']?))\s*(?:(?:bearer|basic|token)\s+)?)"
    r"([^\s\"',;&<>]+)"
)
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}")
_SLACK = re.compile(r"https://hooks\.slack\.com/\S+")
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@]+:)[^/\s@]+@")


def configured_secrets() -> list[str]:
    """The secrets of this deployment, longest first (a key inside another is replaced last)."""
    names = ("ALPACA_API_KEY", "ALPACA_SECRET_KEY", "ALERT_WEBHOOK_URL", "SECRET_KEY", "METRICS_TOKEN")
    values = [str(getattr(settings, name, "") or "") for name in names]
    values += [str(url) for url in getattr(settings, "ALERT_APPRISE_URLS", []) or []]
    return sorted({value for value in values if len(value) >= 6}, key=len, reverse=True)


def scrub(text: object, *, limit: int | None = MAX_TEXT_CHARS) -> str:
    """The text without the configured secrets or anything shaped like a credential."""
    text = str(text)
    for secret in configured_secrets():
        text = text.replace(secret, REDACTED)
    text = _NAMED.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    text = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    text = _SLACK.sub(REDACTED, text)
    text = _URL_PASSWORD.sub(lambda m: f"{m.group(1)}{REDACTED}@", text)
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


_CREDENTIAL_KEYS = re.compile(r"(?i)^(apca-api-[a-z-]+|api[_-]?key(?:[_-]?id)?|secret[_-]?key|secret|password|passwd"
                              r"|token|authorization|x-api-key|cookie)$")


def scrub_data(value):
    """A JSON-shaped value (dicts, lists, strings) with every string scrubbed and the values
    under credential-named keys replaced."""
    if isinstance(value, dict):
        return {key: REDACTED if isinstance(key, str) and _CREDENTIAL_KEYS.match(key) else scrub_data(item)
                for key, item in value.items()}
    if isinstance(value, list):
        return [scrub_data(item) for item in value]
    if isinstance(value, str):
        return scrub(value, limit=None)
    return value


class ScrubFilter(logging.Filter):
    """Scrubs every log record (message and traceback) before a handler writes it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.msg, record.args = scrub(message, limit=None), None
        if record.exc_text:
            record.exc_text = scrub(record.exc_text, limit=None)
        return True
