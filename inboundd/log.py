"""Structured logging: every line is an event name plus its context fields.

``event(logger, "job.ack", job_id=..., account=..., attempt=...)`` writes one
line, as ``key=value`` text or as a JSON object (``[daemon] log_format``).
Configure once with :func:`configure`; reconfigure on SIGHUP.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import msgspec

__all__ = ["configure", "event", "get_logger"]

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def get_logger(name: str) -> logging.Logger:
    """The logger for module *name* (below the ``inboundd`` root)."""
    return logging.getLogger(name if name.startswith("inboundd") else f"inboundd.{name}")


def event(logger: logging.Logger, name: str, *, level: int = logging.INFO, **fields: Any) -> None:
    """Log event *name* with context *fields* (job_id, account, attempt, …)."""
    if logger.isEnabledFor(level):
        logger.log(level, name, extra={"event_fields": fields})


def _format_value(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' "=\n'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


class TextFormatter(logging.Formatter):
    """``2026-11-22T10:00:00.123Z INFO inboundd.queue job.ack job_id=… account=…``"""

    def format(self, record: logging.LogRecord) -> str:
        stamp = self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z"
        fields = getattr(record, "event_fields", {})
        parts = [stamp, record.levelname, record.name, record.getMessage()]
        parts += [f"{key}={_format_value(value)}" for key, value in fields.items() if value is not None]
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``event`` and the fields."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key, value in getattr(record, "event_fields", {}).items():
            payload.setdefault(key, value)
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return msgspec.json.encode(payload, enc_hook=str).decode()


def configure(level: str = "info", fmt: str = "text", stream: Any = None) -> None:
    """(Re)configure the ``inboundd`` logger tree to write to *stream* (stderr)."""
    import time

    root = logging.getLogger("inboundd")
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    formatter: logging.Formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    root.addHandler(handler)
    root.setLevel(_LEVELS[level])
    root.propagate = False
