"""The ``[[microsoft]]`` section through the real loader: defaults, problems named by key, secret, public_url."""

from __future__ import annotations

from pathlib import Path

import pytest

from inboundd import config
from inboundd.providers.microsoft import renewal

HOUR, MINUTE = 3600.0, 60.0


def load(tmp_path: Path, public_url: str = "https://inbound.example.com", **keys: object):
    (tmp_path / "m365.secret").write_text("s3cret\n")
    values = {"id": "support-m365", "directory_id": "acme.onmicrosoft.com", "client_id": "app",
              "mailbox": "support@acme.com", "client_secret_file": "m365.secret"}
    values.update(keys)
    lines = [f'[http]\npublic_url = "{public_url}"', "[[microsoft]]"]
    lines += [f"{key} = {_toml(value)}" for key, value in values.items() if value is not None]
    return config.load_text("\n".join(lines) + "\n", base=tmp_path)


def _toml(value: object) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value).lower() if isinstance(value, bool) else str(value)


def problems(tmp_path: Path, **keys: object) -> list[str]:
    with pytest.raises(config.ConfigError) as caught:
        load(tmp_path, **keys)
    return caught.value.problems


def test_defaults(tmp_path):
    cfg = load(tmp_path)
    (section,) = cfg.microsoft
    assert (section.folders, section.post_action, section.subscription_lifetime, section.delta_interval,
            section.start_from, section.authority_url, section.graph_url, section.tenant) == \
        (["Inbox"], "none", 70 * HOUR, 15 * MINUTE, "now", "https://login.microsoftonline.com",
         "https://graph.microsoft.com/v1.0", "default")
    assert cfg.secret("microsoft[0].client_secret").reveal() == "s3cret"
    assert "s3cret" not in repr(cfg)


def test_urls_are_normalised(tmp_path):
    cfg = load(tmp_path, public_url="https://inbound.example.com/", authority_url="https://login.microsoftonline.us/",
               graph_url="https://graph.microsoft.us/v1.0/")
    (section,) = cfg.microsoft
    assert (cfg.http.public_url, section.authority_url, section.graph_url) == \
        ("https://inbound.example.com", "https://login.microsoftonline.us", "https://graph.microsoft.us/v1.0")


@pytest.mark.parametrize("keys, problem", [
    ({"mailbox": " "}, "microsoft[0].mailbox: must not be empty"),
    ({"directory_id": "acme/x"}, "microsoft[0].directory_id: expected a tenant GUID or domain"),
    ({"folders": []}, "microsoft[0].folders: expected at least one folder"),
    ({"folders": ["Inbox", "Inbox"]}, "microsoft[0].folders[1]: 'Inbox' is listed twice"),
    ({"post_action": "seen"}, 'microsoft[0].post_action: expected "none", "mark_read" or "move:FOLDER"'),
    ({"post_action": "move:inbox"}, "microsoft[0].post_action: moves into 'inbox', which is also in folders"),
    ({"start_from": "yesterday"}, 'microsoft[0].start_from: expected "now", "all" or "last:N"'),
    ({"subscription_lifetime": "30m"}, "microsoft[0].subscription_lifetime: must be at least 45m"),
    ({"delta_interval": "10s"}, "microsoft[0].delta_interval: must be at least 1m"),
    ({"authority_url": "http://127.0.0.1:9"}, "microsoft[0].authority_url: must be an https:// URL"),
    ({"graph_url": "graph.microsoft.com"}, "microsoft[0].graph_url: expected an https:// URL"),
    ({"ca_file": "/nonexistent/ca.pem"}, "microsoft[0].ca_file:"),
    ({"client_secret": "inline"}, "microsoft[0].client_secret: unknown key (did you mean 'client_secret_file'?)"),
    ({"client_secret_file": None}, "microsoft[0].client_secret_file: required"),
    ({"client_secret_file": "missing.secret"}, "microsoft[0].client_secret_file: cannot read secret file"),
    ({"subscription_lifetime": "forever"}, "microsoft[0].subscription_lifetime: expected a duration"),
    ({"directory_id": None}, "microsoft[0].directory_id: required key is missing"),
    ({"id": None}, "microsoft[0].id: required key is missing"),
])
def test_problems_name_the_key(tmp_path, keys, problem):
    found = problems(tmp_path, **keys)
    assert any(line.startswith(problem) for line in found), found


def test_public_url_is_required_and_checked(tmp_path):
    with pytest.raises(config.ConfigError) as caught:
        load(tmp_path, public_url="")
    assert caught.value.problems == [
        "http.public_url: required once a [[microsoft]] account exists (the provider calls the daemon back there)"]
    with pytest.raises(config.ConfigError) as caught:
        load(tmp_path, public_url="inbound.example.com/x?y")
    assert caught.value.problems[0].startswith("http.public_url: expected an https:// URL without query")


def test_a_lifetime_above_the_maximum_is_capped_not_refused(tmp_path):
    (section,) = load(tmp_path, subscription_lifetime="100h").microsoft
    assert renewal.effective_lifetime(section.subscription_lifetime) < 4230 * MINUTE


def test_account_ids_are_unique_across_providers(tmp_path):
    (tmp_path / "pw").write_text("pw")
    (tmp_path / "m365.secret").write_text("s")
    text = ('[http]\npublic_url = "https://x.example.com"\n'
            '[[imap]]\nid = "shared"\nhost = "h"\nusername = "u"\npassword_file = "pw"\n'
            '[[microsoft]]\nid = "shared"\ndirectory_id = "d"\nclient_id = "c"\nmailbox = "m"\n'
            'client_secret_file = "m365.secret"\n')
    with pytest.raises(config.ConfigError) as caught:
        config.load_text(text, base=tmp_path)
    assert caught.value.problems == ["microsoft[0].id: duplicate account id 'shared' (also imap[0].id)"]
