"""The Date header: RFC 5322 with lenient fallbacks, always timezone-aware or None."""

from __future__ import annotations

import datetime as _dt
import re
from email import utils as _email_utils

from .defects import Defects
from .headers import COMMENT

try:  # The private variant keeps "no/unknown zone" (None) apart from "+0000" (0).
    from email._parseaddr import _parsedate_tz as _parsedate_tz
except ImportError:  # pragma: no cover - stdlib layout changed
    _parsedate_tz = _email_utils.parsedate_tz

__all__ = ["parse_date"]


# Zone names seen in real Date headers that the stdlib does not know (it would
# silently read them as +0000). IST is ambiguous (India/Ireland/Israel): left out.
_ZONES = {
    "CET": "+0100", "CEST": "+0200", "MET": "+0100", "MEST": "+0200", "MEZ": "+0100", "MESZ": "+0200",
    "WET": "+0000", "WEST": "+0100", "BST": "+0100", "EET": "+0200", "EEST": "+0300", "MSK": "+0300",
    "JST": "+0900", "KST": "+0900", "HKT": "+0800", "SGT": "+0800", "AWST": "+0800",
    "ACST": "+0930", "AEST": "+1000", "AEDT": "+1100", "NZST": "+1200", "NZDT": "+1300",
    "HST": "-1000", "AKST": "-0900", "AKDT": "-0800", "SAST": "+0200", "WAT": "+0100",
    "CAT": "+0200", "EAT": "+0300", "PKT": "+0500", "ICT": "+0700", "WIB": "+0700",
}
_ZONE_NAME = re.compile(r"(?<![A-Za-z])(" + "|".join(_ZONES) + r")(?![A-Za-z])")
_GMT_OFFSET = re.compile(r"\b(?:GMT|UTC)\s*([+-])(\d{1,2}):?(\d{2})?\b", re.IGNORECASE)
_STRPTIME_FORMATS = (
    "%d.%m.%Y %H:%M:%S %z", "%d.%m.%Y %H:%M:%S", "%d.%m.%Y %H:%M", "%Y/%m/%d %H:%M:%S %z",
    "%Y/%m/%d %H:%M:%S", "%m/%d/%Y %I:%M:%S %p", "%m/%d/%Y %H:%M:%S", "%Y-%m-%d %H:%M:%S %z",
    "%Y%m%d%H%M%S",
)


def parse_date(value: str, defects: Defects) -> _dt.datetime | None:
    """RFC 5322 date with lenient fallbacks; always timezone-aware or None.

    Order: the stdlib RFC 5322 parser (after replacing zone names it does
    not know, like ``CET``, and ``GMT+0100`` forms, by numeric offsets), then
    ISO 8601, then a few formats seen from broken mailers. A date without a
    usable zone is taken as UTC (defect; ``-0000`` means exactly that and is
    not a defect). Impossible values (31 Feb, offset beyond ±24 h) fall
    through to the next method; if none works, None.
    """
    where = "header Date"
    original = value
    value = " ".join(COMMENT.sub(" ", value).split())
    if not value:
        defects.add(where, "empty")
        return None
    value = _GMT_OFFSET.sub(lambda m: f"{m.group(1)}{int(m.group(2)):02d}{m.group(3) or '00'}", value)
    value = _ZONE_NAME.sub(lambda m: _ZONES[m.group(1)], value)
    result: _dt.datetime | None = None
    tuple_ = None
    try:
        tuple_ = _parsedate_tz(value)
    except Exception:  # noqa: BLE001 - stdlib parser on garbage
        tuple_ = None
    if tuple_ is not None:
        yy, mo, dd, hh, mi, ss = tuple_[:6]
        offset = tuple_[9]
        try:
            naive = _dt.datetime(yy, mo, dd, hh, mi, min(ss, 59))
        except (ValueError, OverflowError, TypeError):
            naive = None
        if naive is not None:
            if offset is not None and abs(offset) >= 86400:
                defects.add(where, f"impossible zone offset in {original!r}, assumed UTC")
                offset = None
            elif offset is None and not value.rstrip().endswith("-0000"):
                defects.add(where, f"no usable time zone in {original!r}, assumed UTC")
            result = naive.replace(tzinfo=_dt.timezone(_dt.timedelta(seconds=offset or 0)))
    if result is None:
        result = _lenient_date(value)
        if result is not None:
            defects.add(where, f"non-RFC 5322 date {original!r}")
            if result.tzinfo is None:
                result = result.replace(tzinfo=_dt.timezone.utc)
    if result is None:
        defects.add(where, f"unparseable date {original!r}")
    return result


def _lenient_date(value: str) -> _dt.datetime | None:
    candidates = (value, value.replace(" ", "T", 1))
    for candidate in candidates:
        try:
            return _dt.datetime.fromisoformat(candidate)
        except ValueError:
            continue
    for fmt in _STRPTIME_FORMATS:
        try:
            return _dt.datetime.strptime(value, fmt)
        except ValueError:
            continue
    return None
