"""HTTP details every web-API provider reads the same way, without I/O.

Graph and Gmail both say how long to back off in ``Retry-After``; this is
the one reading of it. Tested in ``tests/test_microsoft_pure.py`` and
``tests/test_google_pure.py``.
"""

from __future__ import annotations

import email.utils
import re
from datetime import timezone

__all__ = ["RETRY_AFTER_CAP", "parse_retry_after"]

#: A Retry-After above this is clamped: a broken or hostile answer must not park an account for days.
RETRY_AFTER_CAP = 3600.0


def parse_retry_after(value: str | None, now: float) -> float | None:
    """``Retry-After`` as seconds from *now* (wall clock): delta-seconds or an HTTP date.

    None when absent or unreadable. Waits in the past become 0; waits beyond
    :data:`RETRY_AFTER_CAP` are clamped to it.
    """
    if not value:
        return None
    text = value.strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        seconds = float(text)
    else:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = when.timestamp() - now
    return min(max(seconds, 0.0), RETRY_AFTER_CAP)
