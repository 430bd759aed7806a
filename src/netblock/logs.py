"""The service's own log: plain text for a terminal, JSON lines for journald/Loki/a SIEM.

Only start-up, reloads, errors and summaries are logged: the query path never calls
`logging` (DESIGN.md, hot-path rules). Blocked attempts are events (events.py), not logs.
JSON field names follow Elastic Common Schema like the events do, so one pipeline takes both.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
import time
from pathlib import Path
from typing import Any

from netblock.config import Logging

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Attributes every LogRecord has; anything else came in through `extra=` and is kept in JSON.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object a line, ECS names: @timestamp, log.level, log.logger, message."""

    def format(self, record: logging.LogRecord) -> str:
        ts = record.created
        doc: dict[str, Any] = {
            "@timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z",
            "log.level": record.levelname.lower(),
            "log.logger": record.name,
            "message": record.getMessage(),
            "process.pid": record.process,
            "process.thread.name": record.threadName,
        }
        if record.exc_info:
            doc["error.type"] = record.exc_info[0].__name__ if record.exc_info[0] else ""
            doc["error.stack_trace"] = self.formatException(record.exc_info)
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[key] = value if isinstance(value, str | int | float | bool | type(None)) else str(value)
        return json.dumps(doc, ensure_ascii=False)


def setup_logging(config: Logging, stream: Any = None) -> logging.Handler:
    """Configure the root logger from the `logging` section; returns the handler installed.

    Raises ValueError naming the file when `logging.file` cannot be opened: a start-up error
    with a cause beats a service that runs and logs nowhere.
    """
    level = LEVELS[config.level]
    handler: logging.Handler
    if config.file:
        path = Path(config.file)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Watched: logrotate may move the file away; the next record reopens it.
            handler = logging.handlers.WatchedFileHandler(path, encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"logging.file: cannot open {path}: {exc.strerror or exc}") from None
    else:
        handler = logging.StreamHandler(stream or sys.stderr)
    if config.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        formatter = logging.Formatter(TEXT_FORMAT)
        formatter.converter = time.gmtime  # one time zone across a fleet
        formatter.default_msec_format = "%s.%03dZ"
        handler.setFormatter(formatter)
    handler.setLevel(level)
    handler._netblock = True  # type: ignore[union-attr]  # marks ours: a second setup replaces it

    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_netblock", False):
            root.removeHandler(old)
            old.close()
    root.addHandler(handler)
    root.setLevel(level)
    # Third-party chatter (asyncio debug, scapy) stays at warning unless we debug.
    for noisy in ("asyncio", "scapy.runtime"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if level == logging.DEBUG else logging.WARNING)
    if os.environ.get("INVOCATION_ID") and not config.file and config.format == "text":
        # Under systemd the journal stamps each line already; drop our timestamp.
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    return handler
