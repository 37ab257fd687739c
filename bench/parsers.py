#!/usr/bin/env python3
"""bench/parsers — inboundd's parser (stdlib email) beside fast-mail-parser (Rust mail-parser) on the test corpus.

For each of the 82 messages in ``tests/corpus`` (grouped by the classes of
``tests/test_mime.py``'s EXPECT table) it prints what each parser costs, and
whether fast-mail-parser, adapted to inboundd's fields, gives the same result
as inboundd's parser — whose results are the ones EXPECT states. The fast
path considered is "fast-mail-parser when it reports no warnings, the stdlib
parser otherwise": it could be adopted only if no message without warnings
differs in any field EXPECT checks.

    .venv/bin/python bench/parsers.py [--repeat 20] [--details]

fast-mail-parser is a bench extra (``pip install -e '.[bench]'``), not a
dependency of inboundd (see the verdict this prints).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import hashlib  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from typing import Any, Callable  # noqa: E402

from inboundd.mime import Message, parse_message  # noqa: E402

CORPUS = ROOT / "tests" / "corpus"


def corpus_classes() -> dict[str, str]:
    """file name → its class, from the ``# -- class --`` banners of EXPECT in tests/test_mime.py."""
    source = (ROOT / "tests" / "test_mime.py").read_text(encoding="utf-8")
    classes, current = {}, "other"
    for line in source[source.index("EXPECT: dict"):].splitlines():
        banner = re.match(r"\s*# -- (.+?) -+\s*$", line)
        if banner:
            current = banner.group(1).strip()
        entry = re.match(r'\s*"([^"]+\.eml)": \{', line)
        if entry:
            classes[entry.group(1)] = current
        if line.startswith("}"):
            break
    return classes


def timed(fn: Callable[[bytes], Any], raw: bytes, repeat: int) -> float:
    """Median seconds of *repeat* calls."""
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn(raw)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def ours_fields(message: Message) -> dict[str, Any]:
    return {
        "subject": message.subject,
        "from": (message.from_.name, message.from_.address) if message.from_ else None,
        "to": [(a.name, a.address) for a in message.to],
        "cc": [(a.name, a.address) for a in message.cc],
        "reply_to": [(a.name, a.address) for a in message.reply_to],
        # The instant only: fast-mail-parser gives UTC (EXPECT also checks the sender's offset,
        # which an adapter would have to re-read from the Date header).
        "date": message.date.timestamp() if message.date else None,
        "text": message.text_body,
        "html": message.html_body,
        "attachments": [(a.filename, a.content_type, a.size, a.sha256) for a in message.attachments],
    }


def fast_fields(mail: Any) -> dict[str, Any]:
    def address(a: Any) -> tuple[str, str]:
        return (a.display_name or "", a.address or "")

    text = "\n".join(mail.text_plain) if mail.text_plain else None
    html = "".join(mail.text_html) if mail.text_html else None
    date = mail.date_parsed.timestamp() if getattr(mail, "date_parsed", None) else None
    return {
        "subject": mail.subject or "",
        "from": address(mail.from_) if mail.from_ else None,
        "to": [address(a) for a in mail.to],
        "cc": [address(a) for a in mail.cc],
        "reply_to": [address(a) for a in mail.reply_to],
        "date": date,
        "text": text,
        "html": html,
        "attachments": [(a.filename, a.mimetype, len(a.content), hashlib.sha256(a.content).hexdigest())
                        for a in mail.attachments],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20, help="timed parses per message and parser (median kept)")
    parser.add_argument("--details", action="store_true", help="name the differing fields of every message")
    args = parser.parse_args()
    try:
        import fast_mail_parser
    except ImportError:
        sys.exit("fast-mail-parser is not installed: pip install -e '.[bench]'")

    classes = corpus_classes()
    per_class: dict[str, dict[str, Any]] = defaultdict(lambda: {"n": 0, "ours": 0.0, "fast": 0.0, "same": 0,
                                                                "warned": 0, "raised": 0, "differs_unwarned": []})
    for path in sorted(CORPUS.glob("*.eml")):
        raw = path.read_bytes()
        row = per_class[classes.get(path.name, "other")]
        row["n"] += 1
        row["ours"] += timed(parse_message, raw, args.repeat)
        try:
            mail = fast_mail_parser.parse_email(raw)
        except Exception as exc:  # noqa: BLE001 - a refusal is a fallback, counted
            row["raised"] += 1
            if args.details:
                print(f"  {path.name}: fast-mail-parser raised {type(exc).__name__}: {exc}")
            continue
        row["fast"] += timed(fast_mail_parser.parse_email, raw, args.repeat)
        ours, fast = ours_fields(parse_message(raw)), fast_fields(mail)
        differing = [key for key in ours if ours[key] != fast[key]]
        if not differing:
            row["same"] += 1
        elif mail.warnings:
            row["warned"] += 1
        else:
            row["differs_unwarned"].append((path.name, differing))
        if args.details and differing:
            print(f"  {path.name}: differs in {', '.join(differing)}; warnings {len(mail.warnings)}")

    print(f"{'class':<28} {'n':>3} {'ours µs':>8} {'fast µs':>8} {'same':>5} {'warned':>6} {'raised':>6} "
          f"{'differs, no warning':>20}")
    totals = defaultdict(float)
    unsafe = []
    for name, row in per_class.items():
        n = row["n"]
        print(f"{name:<28} {n:>3} {1e6 * row['ours'] / n:>8.0f} {1e6 * row['fast'] / max(1, n - row['raised']):>8.0f}"
              f" {row['same']:>5} {row['warned']:>6} {row['raised']:>6} {len(row['differs_unwarned']):>20}")
        for key in ("n", "ours", "fast", "same", "warned", "raised"):
            totals[key] += row[key]
        unsafe += row["differs_unwarned"]
    n = int(totals["n"])
    print(f"{'all':<28} {n:>3} {1e6 * totals['ours'] / n:>8.0f}"
          f" {1e6 * totals['fast'] / max(1, n - totals['raised']):>8.0f} {int(totals['same']):>5}"
          f" {int(totals['warned']):>6} {int(totals['raised']):>6} {len(unsafe):>20}")
    print("(µs: median parse time per message of the class; 'same': every compared field equal to inboundd's)")
    if unsafe:
        print(f"verdict: not adopted — {len(unsafe)} messages without a fast-mail-parser warning would change "
              "fields EXPECT checks, so a warnings-gated fast path cannot keep every expectation:")
        for name, fields in unsafe:
            print(f"  {name}: {', '.join(fields)}")
    else:
        print("verdict: a warnings-gated fast path keeps every compared field")


if __name__ == "__main__":
    main()
