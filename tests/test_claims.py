"""What the package says about itself matches what this build does.

A provider that the configuration loader rejects as "not supported by this
build" may be named on the package's public surfaces (``inboundd --help``,
the pyproject description, inboundd(8), the systemd unit, the README's
introduction) only as being in development. Once a provider lands and the
loader accepts its accounts, the claim may be made plainly.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from inboundd import config as config_mod
from inboundd import daemon

ROOT = Path(__file__).resolve().parent.parent

#: Provider section → the product names a claim about it would use.
PROVIDER_NAMES = {
    "microsoft": r"Microsoft 365|Microsoft Graph|\bGraph\b|Outlook|Exchange Online",
    "google": r"Gmail|Google Workspace|Pub/Sub",
}

MINIMAL = """
[redis]
url = "redis://127.0.0.1:1/0"
[postgres]
dsn = "postgresql://postgres@127.0.0.1:1/x"
"""


def _supported(provider: str) -> bool:
    """Whether the configuration loader accepts ``[[provider]]`` accounts (judged by its errors, not its code)."""
    try:
        config_mod.load_text(MINIMAL + f'\n[[{provider}]]\nid = "x"\n')
    except config_mod.ConfigError as exc:
        return not any("not supported by this build" in problem for problem in exc.problems)
    return True


def _surfaces() -> dict[str, str]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    unit = (ROOT / "systemd" / "inboundd.service").read_text()
    readme = (ROOT / "README.md").read_text()
    return {
        "inboundd --help": daemon.build_parser().format_help(),
        "pyproject description": pyproject["project"]["description"],
        "man/inboundd.8": (ROOT / "man" / "inboundd.8").read_text(),
        "unit Description=": re.search(r"^Description=(.*)$", unit, re.M).group(1),
        "README introduction": readme.split("\n## ", 1)[0],
    }


def _sentences(text: str) -> list[str]:
    """*text* cut into sentences (roff macro lines count as breaks), whitespace folded."""
    pieces = re.split(r"(?<=[.;:])\s+|\n\.\w+ ?|\n\n", text)
    return [folded for piece in pieces if (folded := " ".join(piece.split()))]


def _naming(text: str, names: str) -> list[tuple[str, bool]]:
    """(sentence, says "in development") for each sentence of *text* that names a provider.

    A man page names the provider, then qualifies it in the next sentence:
    a sentence counts as qualified when it or the next one says so.
    """
    sentences = _sentences(text)
    return [(sentence, "in development" in " ".join(sentences[n:n + 2]))
            for n, sentence in enumerate(sentences) if re.search(names, sentence)]


@pytest.mark.parametrize("provider", sorted(PROVIDER_NAMES))
def test_providers_are_named_as_what_this_build_does(provider: str) -> None:
    supported = _supported(provider)
    wrong = {}
    for surface, text in _surfaces().items():
        # Unsupported: every mention says "in development". Supported: none still does.
        claims = [sentence for sentence, qualified in _naming(text, PROVIDER_NAMES[provider])
                  if qualified == supported]
        if claims:
            wrong[surface] = claims
    state = "supported" if supported else "not supported by this build"
    assert not wrong, f"{provider} is {state}, yet these say otherwise: {wrong}"


def test_the_probe_tells_a_provider_this_build_has() -> None:
    # IMAP is built in: its section is rejected for missing keys, never as unsupported.
    assert _supported("imap")


def test_the_claim_check_catches_a_plain_and_a_stale_claim() -> None:
    plain = "Ingest inbound email (IMAP IDLE, Microsoft Graph, Gmail push) into PostgreSQL, exactly once."
    assert _naming(plain, PROVIDER_NAMES["microsoft"]) == [(plain, False)]
    assert _naming(plain, PROVIDER_NAMES["google"]) == [(plain, False)]
    roff = "watches IMAP.\nGmail (Pub/Sub push) is in\ndevelopment: this build rejects\n.Ic [[google]]\naccounts."
    assert _naming(roff, PROVIDER_NAMES["google"]) == [("Gmail (Pub/Sub push) is in development:", True)]
