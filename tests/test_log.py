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
