"""IMAP over TLS against a real Dovecot: implicit TLS and STARTTLS, certificates always verified."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import pytest
import trio
import trustme
from imapclient import IMAPClient

from fakes import imap_job
from imap_helpers import append, make_accounts
from inboundd.outcomes import TransientError
from inboundd.source import FetchedMessage
from inboundd.providers.imap.fetch import ImapFetcher
from services import DovecotServer, free_port


class TlsDovecot(DovecotServer):
    """The private Dovecot with a certificate for 127.0.0.1 from a test CA: STARTTLS on the IMAP port, plus IMAPS."""

    def __init__(self, ca: trustme.CA) -> None:
        self.tls_port = free_port()
        self.ca = ca
        super().__init__(users=4)
        cert = ca.issue_cert("127.0.0.1")
        cert.private_key_and_cert_chain_pem.write_to_path(str(self.directory / "server.pem"))
        self.config.write_text(self._config_text())

    def _config_text(self) -> str:
        text = super()._config_text()
        pem = self.directory / "server.pem"
        text = text.replace("ssl = no", f"ssl = yes\nssl_cert = <{pem}\nssl_key = <{pem}")
        return re.sub(r"inet_listener imaps \{\s*port = 0\s*\}",
                      f"inet_listener imaps {{\n    address = 127.0.0.1\n    port = {self.tls_port}\n  }}", text)


@pytest.fixture(scope="module")
def tls_dovecot() -> Iterator[TlsDovecot]:
    server = TlsDovecot(trustme.CA()).start()
    yield server
    server.cleanup()


@pytest.fixture
def ca_file(tls_dovecot: TlsDovecot, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    tls_dovecot.ca.cert_pem.write_to_path(str(path))
    return path


async def fetch_first(account, port: int, user: str, password: str):
    """Append one message (plain IMAP on loopback) and fetch it through *account*."""
    await append(port, user, password)
    fetcher = ImapFetcher([account])
    try:
        # The fetcher checks the pointer's UIDVALIDITY: read the real one (plain IMAP on loopback).
        def validity() -> int:
            with IMAPClient("127.0.0.1", port=port, ssl=False) as client:
                client.login(user, password)
                return client.select_folder("INBOX", readonly=True)[b"UIDVALIDITY"]

        uidvalidity = await trio.to_thread.run_sync(validity)
        job = imap_job(1, account.id, uidvalidity=uidvalidity)
        return await fetcher.fetch(job, max_size=0)
    finally:
        await fetcher.aclose()


async def test_implicit_tls_with_the_configured_ca(tls_dovecot, ca_file, tmp_path) -> None:
    user = tls_dovecot.take()
    [account] = make_accounts(tmp_path, tls_dovecot.tls_port, [user], tls="implicit", ca_file=str(ca_file))
    result = await fetch_first(account, tls_dovecot.port, *user)
    assert isinstance(result, FetchedMessage) and result.raw.startswith(b"From:")


async def test_starttls_with_the_configured_ca(tls_dovecot, ca_file, tmp_path) -> None:
    user = tls_dovecot.take()
    [account] = make_accounts(tmp_path, tls_dovecot.port, [user], tls="starttls", ca_file=str(ca_file))
    result = await fetch_first(account, tls_dovecot.port, *user)
    assert isinstance(result, FetchedMessage)


async def test_an_unknown_certificate_authority_is_refused(tls_dovecot, tmp_path) -> None:
    user = tls_dovecot.take()
    [account] = make_accounts(tmp_path, tls_dovecot.tls_port, [user], tls="implicit")  # system CAs only
    with pytest.raises(TransientError, match="TLS certificate verification failed"):
        await fetch_first(account, tls_dovecot.port, *user)


async def test_starttls_never_falls_back_to_plain_text(dovecot, imap_user, tmp_path) -> None:
    # The suite's plain Dovecot does not offer STARTTLS: the login must not go out in clear.
    [account] = make_accounts(tmp_path, dovecot.port, [imap_user], tls="starttls")
    with pytest.raises(TransientError, match="does not offer STARTTLS"):
        await fetch_first(account, dovecot.port, *imap_user)
