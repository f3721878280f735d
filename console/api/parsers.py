"""The API's one body parser: JSON, read strictly.

DRF's JSONParser takes duplicate keys (the last wins: a body naming two symbols would send
the second), lets a body nested thousands of levels deep escape as a RecursionError (a
500), and passes NUL characters on to PostgreSQL, which refuses them (another 500). Here
each of those is a 400 that says what was wrong.
"""

import codecs
import json

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser, get_encoding

MAX_DEPTH = 32


def _pairs(pairs: list[tuple[str, object]]) -> dict:
    seen: dict[str, object] = {}
    for key, value in pairs:
        if key in seen:
            raise ParseError(f"JSON parse error - the key {key[:40]!r} is given twice")
        seen[key] = value
    return seen


def _constant(name: str):
    raise ParseError(f"JSON parse error - {name} is not a number this API takes")


def _check(value, depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        raise ParseError(f"JSON parse error - nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, str):
        if "\x00" in value:
            raise ParseError("JSON parse error - NUL characters are not accepted")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check(key, depth + 1)
            _check(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check(item, depth + 1)


class StrictJSONParser(JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        encoding = get_encoding(parser_context or {})
        try:
            data = json.load(codecs.getreader(encoding)(stream), object_pairs_hook=_pairs, parse_constant=_constant)
        except RecursionError:
            raise ParseError(f"JSON parse error - nested deeper than {MAX_DEPTH} levels") from None
        except ValueError as exc:  # includes UnicodeDecodeError
            raise ParseError(f"JSON parse error - {exc}") from None
        _check(data)
        return data
