"""JSON log lines: the event name as ``event``, context fields beside it."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone

from gunicorn import glogging

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line; extra fields passed with ``extra=`` become keys."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class ReceiverLogger(glogging.Logger):
    """Gunicorn's logger, with the access log on only when an access log was asked for.

    Gunicorn counts any ``logconfig_dict`` as asking for one, and then builds every request's
    log atoms only for the level to drop them.
    """

    @property
    def access_log_enabled(self) -> bool:
        """True only when ``accesslog`` is set."""
        return bool(self.cfg.accesslog)

    def access(self, resp, req, environ, request_time) -> None:
        """Log one request, if the access log is on."""
        if self.cfg.accesslog:
            super().access(resp, req, environ, request_time)


def logconfig(level: str = "info") -> dict:
    """A ``logging.config.dictConfig`` dict that writes JSON lines to stderr for ours and gunicorn's."""
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    logger = {"handlers": ["json"], "level": level.upper(), "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {"json": handler},
        # gunicorn merges this over its defaults, whose root logger names a handler we replace.
        "root": {"handlers": ["json"], "level": level.upper()},
        "loggers": {
            "escalier": logger,
            "gunicorn.error": logger,
            "gunicorn.access": logger,
        },
    }
