"""The ``[[microsoft]]`` section: one Microsoft 365 mailbox read through Microsoft Graph.

Documented key by key in ``etc/inboundd.toml`` and inboundd.toml(5). The
client secret comes from ``client_secret_file`` or
``client_secret_credential`` (read by the config loader, never from the TOML
file itself).
"""

from __future__ import annotations

import re
from typing import Annotated

import msgspec

from ...config_convert import Duration, ReadableFile, SecretKey, doc
from ...config_schema import AccountConfig
from ...ingress.start import parse_start_from
from .proto import parse_post_action
from .renewal import MIN_LIFETIME

__all__ = ["MicrosoftAccountConfig"]


class MicrosoftAccountConfig(AccountConfig, kw_only=True):
    about = (
        "One [[microsoft]] table per Microsoft 365 mailbox, read through Microsoft Graph (none by default). "
        "Needs [http] public_url. In Azure AD, register an app with the application permission Mail.Read "
        "(Mail.ReadWrite when post_action is mark_read or move:), grant admin consent, and create a client secret."
    )

    # Graph posts notifications to {public_url}/webhooks/microsoft.
    needs_public_url = True

    directory_id: Annotated[str, doc(
        "Azure AD tenant of the mailbox: its GUID or a domain.", examples=["acme.onmicrosoft.com"])]
    client_id: Annotated[str, doc(
        "Application (client) id of the app registration.", examples=["00000000-0000-0000-0000-000000000000"])]
    mailbox: Annotated[str, doc("The mailbox: user id or user principal name.", examples=["support@acme.com"])]
    client_secret_file: Annotated[str, SecretKey.file(required=True), doc(
        "File holding the app's client secret.", examples=["/etc/inboundd/m365.secret"])] = ""
    client_secret_credential: Annotated[str, SecretKey.credential(required=True), doc(
        "Systemd credential holding the client secret, instead of client_secret_file.")] = ""
    folders: Annotated[list[str], doc(
        "Folders to subscribe to, one Graph subscription each: well-known names (Inbox, Archive …) or folder "
        "ids.")] = msgspec.field(default_factory=lambda: ["Inbox"])
    post_action: Annotated[str, doc(
        "What to do with a message in the mailbox once stored: \"none\", \"mark_read\" or \"move:FOLDER\" "
        "(both need Mail.ReadWrite).")] = "none"
    subscription_lifetime: Annotated[Duration, doc(
        "Lifetime requested for each Graph subscription, renewed at half-life; at least 45m, and longer values "
        "are capped at the Outlook maximum (4230m = 70h30m).")] = 70 * 3600.0
    delta_interval: Annotated[Duration, doc(
        "Reconciliation by delta query every this long, also without any lifecycle event (notifications can "
        "be lost); at least 1m.")] = 15 * 60.0
    start_from: Annotated[str, doc(
        "What the first delta walk of a folder enqueues: \"now\" (nothing old), \"all\" (every message in "
        "it), or \"last:N\" (the N most recently received).")] = "now"
    authority_url: Annotated[str, doc(
        "Azure AD authority, https only (sovereign clouds: https://login.microsoftonline.us …).")] = (
        "https://login.microsoftonline.com")
    graph_url: Annotated[str, doc(
        "Microsoft Graph base URL (sovereign clouds: https://graph.microsoft.us/v1.0 …).")] = (
        "https://graph.microsoft.com/v1.0")
    ca_file: Annotated[ReadableFile, doc(
        "Extra CA bundle (PEM) trusted for the authority and Graph besides the system's (an inspecting "
        "proxy); \"\": the system's only.")] = ""

    def check(self, path: str, problems: list[str]) -> None:
        self.authority_url = self.authority_url.rstrip("/")
        self.graph_url = self.graph_url.rstrip("/")
        for name in ("directory_id", "client_id", "mailbox"):
            if not getattr(self, name).strip():
                problems.append(f"{path}.{name}: must not be empty")
        if re.search(r"[/?#\s]", self.directory_id):
            problems.append(f"{path}.directory_id: expected a tenant GUID or domain, got {self.directory_id!r}")
        if not self.folders:
            problems.append(f"{path}.folders: expected at least one folder")
        for index, folder in enumerate(self.folders):
            if not folder.strip():
                problems.append(f"{path}.folders[{index}]: must not be empty")
            elif folder in self.folders[:index]:
                problems.append(f"{path}.folders[{index}]: {folder!r} is listed twice")
        try:
            action = parse_post_action(self.post_action)
        except ValueError as exc:
            problems.append(f"{path}.{exc}")
        else:
            if action.kind == "move" and action.folder.lower() in {f.lower() for f in self.folders}:
                problems.append(
                    f"{path}.post_action: moves into {action.folder!r}, which is also in folders: "
                    "every moved message would be ingested again"
                )
        try:
            parse_start_from(self.start_from)
        except ValueError as exc:
            problems.append(f"{path}.{exc}")
        # Longer lifetimes are capped at the Outlook maximum when requested (renewal.effective_lifetime).
        if self.subscription_lifetime < MIN_LIFETIME:
            problems.append(f"{path}.subscription_lifetime: must be at least 45m (Graph's minimum), "
                            f"got {self.subscription_lifetime / 60:g}m")
        if self.delta_interval < 60:
            problems.append(f"{path}.delta_interval: must be at least 1m (Graph throttles a mailbox at "
                            "10,000 requests per 10 minutes)")
        if not self.authority_url.startswith("https://"):
            problems.append(f"{path}.authority_url: must be an https:// URL (msal refuses any other), "
                            f"got {self.authority_url!r}")
        if not re.match(r"https?://[^/]+", self.graph_url):
            problems.append(f"{path}.graph_url: expected an https:// URL, got {self.graph_url!r}")
