"""Log lines: an event name plus its context, as key=value text or one JSON object."""

from __future__ import annotations

import io
import json

from inboundd import log


def emit(fmt: str, **fields: object) -> str:
    stream = io.StringIO()
    log.configure("info", fmt, stream=stream)
    try:
        log.event(log.get_logger("test"), "job.ack", **fields)
    finally:
        log.configure("info", "text")
    return stream.getvalue().strip()


def test_text_line_has_the_event_and_its_context() -> None:
    line = emit("text", job_id="j1", account="support", attempt=2, error="boom: two words", reason=None)
    assert " INFO inboundd.test job.ack job_id=j1 account=support attempt=2 " in line
    assert line.endswith('error="boom: two words"')
    assert "reason" not in line  # absent context is left out, not printed as None


def test_json_line_is_one_object_with_the_fields() -> None:
    record = json.loads(emit("json", job_id="j1", account="support", attempt=2, reason=None))
    assert (record["event"], record["level"], record["job_id"], record["attempt"]) == ("job.ack", "info", "j1", 2)
    assert record["reason"] is None


def test_debug_events_are_not_formatted_at_info() -> None:
    stream = io.StringIO()
    log.configure("info", "text", stream=stream)
    try:
        log.event(log.get_logger("test"), "job.claim", level=10, job_id="j1")
    finally:
        log.configure("info", "text")
    assert stream.getvalue() == ""


def test_library_loggers_go_through_the_same_formatter_at_warning_and_above() -> None:
    import logging

    stream = io.StringIO()
    log.configure("debug", "json", stream=stream)
    try:
        logging.getLogger("psycopg.pool").warning("discarding closed connection: %s", "<conn BAD>")
        logging.getLogger("psycopg.pool").info("connection requested")   # library chatter stays out
        log.event(log.get_logger("test"), "job.claim", level=logging.DEBUG, job_id="j1")
        try:
            raise ValueError("bug")
        except ValueError:
            log.event(log.get_logger("test"), "job.bug", level=logging.ERROR, exc_info=True, job_id="j2")
    finally:
        log.configure("info", "text")
    records = [json.loads(line) for line in stream.getvalue().splitlines()]   # every line one JSON object
    assert [(r["logger"], r["event"]) for r in records] == [
        ("psycopg.pool", log.FOREIGN_EVENT), ("inboundd.test", "job.claim"), ("inboundd.test", "job.bug")]
    assert records[0]["message"] == "discarding closed connection: <conn BAD>"
    assert records[0]["level"] == "warning"
    assert "ValueError: bug" in records[2]["exception"] and records[2]["job_id"] == "j2"


def test_reconfiguring_replaces_the_handler_instead_of_adding_one() -> None:
    stream = io.StringIO()
    log.configure("info", "text", stream=stream)
    log.configure("info", "text", stream=stream)
    try:
        log.event(log.get_logger("test"), "job.ack", job_id="j1")
    finally:
        log.configure("info", "text")
    assert stream.getvalue().count("job.ack") == 1
