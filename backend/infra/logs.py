"""Structured JSON logging, configured once at the entry point."""

from __future__ import annotations

import json
import logging
import logging.config
from datetime import UTC, datetime
from typing import Any

# Attributes every LogRecord has; anything else was passed through ``extra=``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "color_message"
}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """A record's ``extra`` fields; for uvicorn's access log, the request as fields."""
    fields = {key: value for key, value in vars(record).items()
              if key not in _STANDARD and not key.startswith("_")}
    if record.name == "uvicorn.access" and isinstance(record.args, tuple) \
            and len(record.args) == 5:
        client, method, path, version, status = record.args
        fields.update(client=client, method=method, path=path, http_version=version,
                      status=status)
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any ``extra`` fields
    (uvicorn's access log lines get ``method``, ``path``, ``status``… as fields too)."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


class TextFormatter(logging.Formatter):
    """One short line for a person at a terminal: time, level (unless INFO), message."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        level = "" if record.levelno == logging.INFO else f" {record.levelname}"
        line = f"{when}{level}  {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Route ChangeCast's and uvicorn's loggers (its access log included) through one
    formatter: ``json`` (one object per line) or ``text`` (for a terminal)."""
    formatter = JsonFormatter if fmt == "json" else TextFormatter
    logging.config.dictConfig({
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"main": {"()": formatter}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "main"}},
        "root": {"handlers": ["stderr"], "level": "WARNING"},
        "loggers": {
            "changecast": {"level": level},
            "streaming": {"level": level},
            "uvicorn": {"level": "INFO" if level == "DEBUG" else "WARNING"},
            # Its start-up chatter says what the banner says better; errors still show.
            "uvicorn.error": {"level": "INFO" if level == "DEBUG" else "WARNING"},
            "uvicorn.access": {"level": "INFO" if level in ("DEBUG", "INFO") else "WARNING"},
        },
    })
