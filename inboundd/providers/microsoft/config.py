"""The ``[[microsoft]]`` section: one Microsoft 365 mailbox read through Microsoft Graph.

Documented key by key in ``etc/inboundd.toml`` and inboundd.toml(5). The
client secret comes from ``client_secret_file`` or
``client_secret_credential`` (read by the config loader, never from the TOML
file itself).
"""

from __future__ import annotations

import os
import re
from typing import Annotated

import msgspec

from ...config_convert import Duration, SecretKey, Section
from ...ingress.start import parse_start_from
from .proto import parse_post_action
from .renewal import MIN_LIFETIME

__all__ = ["MicrosoftAccountConfig"]


class MicrosoftAccountConfig(Section):
    #: Unique among the accounts of every provider.
    id: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.@-]+$")]
    #: Azure AD tenant of the mailbox (GUID or domain).
    directory_id: str
    #: Application (client) id of the Azure app registration.
    client_id: str
    #: User id or UPN of the mailbox.
    mailbox: str
    tenant: str = "default"
    client_secret_file: Annotated[str, SecretKey.file(required=True)] = ""
    client_secret_credential: Annotated[str, SecretKey.credential(required=True)] = ""
    folders: list[str] = msgspec.field(default_factory=lambda: ["Inbox"])
    post_action: str = "none"
    subscription_lifetime: Duration = 70 * 3600.0
    delta_interval: Duration = 15 * 60.0
    #: What the first delta walk of a folder enqueues: "now" (nothing old), "all" or "last:N".
    start_from: str = "now"
    authority_url: str = "https://login.microsoftonline.com"
    graph_url: str = "https://graph.microsoft.com/v1.0"
    ca_file: str = ""

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
        if self.ca_file and not os.path.isfile(self.ca_file):
            problems.append(f"{path}.ca_file: no such file: {self.ca_file!r}")
