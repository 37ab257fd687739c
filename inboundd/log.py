"""Structured logging: every line is an event name plus its context fields.

``event(logger, "job.ack", job_id=..., account=..., attempt=...)`` writes one
line, as ``key=value`` text or as a JSON object (``[daemon] log_format``).
Configure once with :func:`configure`; reconfigure on SIGHUP.

Every logger of the process goes through the same formatter, the libraries'
too (psycopg's pool, hypercorn, quart, httpx …, at ``warning`` and above):
a line that is not an inboundd event has the fixed event name
``log.message`` and its text in the ``message`` field, so a JSON log stays
one JSON object per line.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import msgspec

__all__ = ["FOREIGN_EVENT", "configure", "event", "get_logger"]

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}

#: The event name of a line logged as free text (a library's, or hypercorn's) rather than by :func:`event`.
FOREIGN_EVENT = "log.message"


def get_logger(name: str) -> logging.Logger:
    """The logger for module *name* (below the ``inboundd`` root)."""
    return logging.getLogger(name if name.startswith("inboundd") else f"inboundd.{name}")


def event(logger: logging.Logger, name: str, *, level: int = logging.INFO, exc_info: bool = False,
          **fields: Any) -> None:
    """Log event *name* with context *fields* (job_id, account, attempt, …).

    *exc_info*: add the traceback of the exception being handled (for a bug, not an expected failure).
    """
    if logger.isEnabledFor(level):
        logger.log(level, name, exc_info=exc_info, extra={"event_fields": fields})


def _name_and_fields(record: logging.LogRecord) -> tuple[str, dict[str, Any]]:
    """The event name and context of *record*: its own, or ``log.message`` with the text of a free-text line."""
    fields = getattr(record, "event_fields", None)
    if fields is None:
        return FOREIGN_EVENT, {"message": record.getMessage()}
    return record.getMessage(), fields


def _format_value(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' "=\n'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


class TextFormatter(logging.Formatter):
    """``2026-11-22T10:00:00.123Z INFO inboundd.queue job.ack job_id=… account=…``"""

    def format(self, record: logging.LogRecord) -> str:
        stamp = self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z"
        name, fields = _name_and_fields(record)
        parts = [stamp, record.levelname, record.name, name]
        parts += [f"{key}={_format_value(value)}" for key, value in fields.items() if value is not None]
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``event`` and the fields."""

    def format(self, record: logging.LogRecord) -> str:
        name, fields = _name_and_fields(record)
        payload: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": name,
        }
        for key, value in fields.items():
            payload.setdefault(key, value)
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return msgspec.json.encode(payload, enc_hook=str).decode()


def configure(level: str = "info", fmt: str = "text", stream: Any = None) -> None:
    """(Re)configure logging to write to *stream* (stderr) in *fmt*.

    The ``inboundd`` loggers log at *level*; every other logger (the
    libraries') at ``warning`` or *level*, whichever is higher, through the
    same handler. Handlers others installed on the root logger (a test
    runner's) are left alone.
    """
    import time

    root = logging.getLogger()
    for owner in (root, logging.getLogger("inboundd")):
        for handler in list(owner.handlers):
            if getattr(handler, "_inboundd", False):
                owner.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler._inboundd = True  # type: ignore[attr-defined]
    formatter: logging.Formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    root.addHandler(handler)
    root.setLevel(max(_LEVELS[level], logging.WARNING))
    ours = logging.getLogger("inboundd")
    ours.setLevel(_LEVELS[level])
    ours.propagate = True
    logging.captureWarnings(True)  # Python warnings too: one formatted line, not raw text on stderr
