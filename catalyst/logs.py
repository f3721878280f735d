"""Log lines an operator can follow and a machine can read: one JSON object per line.

A line logged with `extra={"payload": {...}}` (the risk journal's events) carries those
fields at the top level, scrubbed like every message (trading.redaction); any other line
carries its text as `message`.
"""

import json
import logging
from datetime import UTC, datetime

from trading.redaction import scrub_data


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
        }
        payload = getattr(record, "payload", None)
        if isinstance(payload, dict):
            line.update(scrub_data(payload))
        else:
            line["message"] = record.getMessage()
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)
