"""The bounded list of defects a parse collects, and what makes text storable."""

from __future__ import annotations

__all__ = ["Defects", "scrub"]

# A pathological message can produce thousands of defects; keep the list useful.
_MAX_DEFECTS = 100


class Defects:
    """Bounded list of defects with a location prefix."""

    __slots__ = ("items", "dropped")

    def __init__(self) -> None:
        self.items: list[str] = []
        self.dropped = 0

    def add(self, where: str, what: str) -> None:
        if len(self.items) >= _MAX_DEFECTS:
            self.dropped += 1
            return
        text = scrub(f"{where}: {what}" if where else what)
        if text not in self.items:  # the same header is decoded more than once
            self.items.append(text)

    def result(self) -> list[str]:
        if self.dropped:
            return [*self.items, f"{self.dropped} more defects not listed"]
        return list(self.items)


def scrub(text: str) -> str:
    """Make ``text`` storable: no lone surrogates, no NUL (PostgreSQL text)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = text.encode("utf-8", "replace").decode("utf-8")
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    return text
