"""The configuration loader: typed values, every problem at once, secrets kept secret."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest

from inboundd import config
from inboundd.config_convert import Duration, doc, schema_keys
from inboundd.config_schema import AccountConfig

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "etc" / "inboundd.toml"


def check_config(path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "inboundd.daemon", "--check-config", "-c", str(path)],
        capture_output=True, text=True, env=env, timeout=60,
    )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30.0), ("5m", 300.0), ("1h30m", 5400.0), ("250ms", 0.25), ("1d", 86400.0), (7, 7.0), (0.5, 0.5), ("2.5s", 2.5)],
)
def test_duration_parses(text: object, seconds: float) -> None:
    assert config.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "3x", "5 minutes", "m5", "-1s", -3, True, "1h 30m", [1]])
def test_duration_rejects(text: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        config.parse_duration(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [("10MiB", 10 * 1024**2), ("512KB", 512_000), ("1GiB", 1024**3), ("1g", 10**9), (4096, 4096), ("100", 100), ("1.5KiB", 1536)],
)
def test_size_parses(text: object, size: int) -> None:
    assert config.parse_size(text) == size


@pytest.mark.parametrize("text", ["", "ten MB", "10XB", -1, False, 1.5])
def test_size_rejects(text: object) -> None:
    with pytest.raises(ValueError, match="size"):
        config.parse_size(text)


def test_defaults_without_a_file() -> None:
    cfg = config.load_text("")
    assert cfg.daemon.consumers == 4
    assert cfg.queue.lease == 30.0 and cfg.processing.lease == 30.0
    assert cfg.processing.max_message_size == 50 * 1024**2
    assert cfg.http.listen == ["127.0.0.1:8025"]
    assert cfg.daemon.instance_id == config.default_instance_id("/run/inboundd/control.sock")


def test_default_instance_id_is_stable_and_differs_per_control_socket() -> None:
    first = config.load_text('[control]\nsocket = "/run/a.sock"\n').daemon.instance_id
    assert first == config.load_text('[control]\nsocket = "/run/a.sock"\n').daemon.instance_id
    assert first != config.load_text('[control]\nsocket = "/run/b.sock"\n').daemon.instance_id
    assert config.load_text('[daemon]\ninstance_id = "node-7"\n').daemon.instance_id == "node-7"
    without_socket = config.load_text('[control]\nsocket = ""\n').daemon.instance_id
    assert without_socket.endswith(f":{os.getpid()}")


def test_every_problem_is_reported_with_its_key_path() -> None:
    text = """
[daemon]
consumer = 3
shutdown_grace = "3x"
[queue]
max_attempts = "five"
block = "2s"
[http]
listen = ["nowhere"]
[[imap]]
id = "a"
host = "h"
username = "u"
port = 99999
password_file = "pw"
[[imap]]
id = "b"
host = "h"
username = "u"
tls = "ssl"
start_from = "yesterday"
password_file = "pw"
"""
    with pytest.raises(config.ConfigError) as caught:
        config.load_text(text, source="my.toml")
    problems = caught.value.problems
    joined = "\n".join(problems)
    expected_paths = [
        "daemon.consumer: unknown key (did you mean 'consumers'?)",
        "daemon.shutdown_grace: expected a duration",
        "queue.max_attempts:",
        "http.listen[0]:",
        "imap[0].port:",
        "imap[1].tls:",
    ]
    for path in expected_paths:
        assert any(line.startswith(path) for line in problems), f"{path!r} missing from:\n{joined}"
    assert str(caught.value).startswith("my.toml: ")


def test_cross_field_problems_are_reported_together() -> None:
    text = """
[queue]
block = "2s"
backoff_base = "1m"
backoff_cap = "10s"
[postgres]
pool_min = 10
pool_max = 2
"""
    with pytest.raises(config.ConfigError) as caught:
        config.load_text(text)
    starts = sorted(line.split(":")[0] for line in caught.value.problems)
    assert starts == ["postgres.pool_min", "queue.backoff_cap", "queue.block"]


def test_the_redis_socket_timeout_must_fit_in_the_shortest_lease_and_both_keys_are_named(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("secret\n")
    accounts = "".join(
        f'[[imap]]\nid = "a{n}"\nhost = "h"\nusername = "u"\npassword_file = "pw"\nlease = {lease}\n'
        for n, lease in enumerate(['"30s"', '"9s"', "0"]))   # 0: no ownership, no lease to fit in
    with pytest.raises(config.ConfigError) as caught:
        config.load_text('[redis]\nsocket_timeout = "5s"\n' + accounts, base=tmp_path)
    [problem] = caught.value.problems
    assert problem.startswith("redis.socket_timeout: 5s is longer than a third of imap[1].lease (9s)")
    assert "lower redis.socket_timeout or raise imap[1].lease" in problem
    cfg = config.load_text('[redis]\nsocket_timeout = "3s"\n' + accounts, base=tmp_path)
    assert cfg.shortest_lease() == ("imap[1].lease", 9.0)
    assert config.load_text("").shortest_lease() is None


def test_zero_intervals_and_a_bad_redis_url_are_refused_without_showing_the_password(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("secret\n")
    text = """
[redis]
url = "http://user:hunter2@cache:6379/0"
socket_timeout = 0
[[imap]]
id = "support"
host = "imap.example.com"
username = "u"
password_file = "pw"
noop_interval = 0
idle_refresh = "0s"
"""
    with pytest.raises(config.ConfigError) as caught:
        config.load_text(text, base=tmp_path)
    problems = caught.value.problems
    assert sorted(p.split(":")[0] for p in problems) == [
        "imap[0].idle_refresh", "imap[0].noop_interval", "redis.socket_timeout", "redis.url"]
    assert "hunter2" not in "\n".join(problems)
    assert "got scheme 'http'" in next(p for p in problems if p.startswith("redis.url"))


def test_a_dsn_libpq_cannot_parse_is_refused_without_showing_it() -> None:
    with pytest.raises(config.ConfigError) as caught:
        config.load_text('[postgres]\ndsn = "postgresql://inboundd:hunter 2@db/inboundd"\n')
    [problem] = caught.value.problems
    assert problem.startswith("postgres.dsn: expected a libpq connection string")
    assert "hunter" not in problem
    assert config.load_text('[postgres]\ndsn = "host=db dbname=inboundd keepalives_idle=60"\n')


def test_a_move_into_a_watched_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("secret\n")
    text = """
[[imap]]
id = "support"
host = "imap.example.com"
username = "u"
password_file = "pw"
folders = ["INBOX", "Done"]
post_action = "move:Done"
"""
    with pytest.raises(config.ConfigError) as caught:
        config.load_text(text, base=tmp_path)
    [problem] = caught.value.problems
    assert problem.startswith("imap[0].post_action: moves into 'Done', which is also in folders")


def test_duplicate_account_ids_and_missing_required_keys(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("secret\n")
    text = """
[[imap]]
id = "a"
host = "h"
username = "u"
password_file = "pw"
[[imap]]
id = "a"
host = "h"
username = "u"
password_file = "pw"
[[imap]]
id = "c"
password_file = "pw"
"""
    with pytest.raises(config.ConfigError) as caught:
        config.load_text(text, base=tmp_path)
    # One pass: the duplicate is found although another account is incomplete.
    assert sorted(caught.value.problems) == [
        "imap[1].id: duplicate account id 'a' (also imap[0].id)",
        "imap[2].host: required key is missing",
        "imap[2].username: required key is missing",
    ]


def test_unsupported_provider_sections_are_named() -> None:
    from inboundd.providers import Registry
    from inboundd.providers.imap import PROVIDER as IMAP

    registry = Registry([IMAP], planned={"jmap": "[[jmap]] accounts (JMAP push) are not supported by this build yet"})
    with pytest.raises(config.ConfigError) as caught:
        config.load_text('[[jmap]]\nid = "j"\n', registry=registry)
    assert caught.value.problems == ["jmap: [[jmap]] accounts (JMAP push) are not supported by this build yet"]


def test_secrets_from_file_and_credential(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "imap.pw").write_text("hunter2\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "redis-pw").write_text("r3dis")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    cfg = config.load_text(
        '[redis]\npassword_credential = "redis-pw"\n'
        '[[imap]]\nid = "a"\nhost = "h"\nusername = "u"\npassword_file = "imap.pw"\n',
        base=tmp_path,
    )
    imap_password = cfg.secret("imap[0].password")
    assert imap_password is not None and imap_password.reveal() == "hunter2"
    redis_password = cfg.secret("redis.password")
    assert redis_password is not None and redis_password.reveal() == "r3dis"
    assert "hunter2" not in repr(imap_password) and "hunter2" not in str(cfg)


def test_secret_problems(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    (tmp_path / "empty").write_text("\n")
    text = """
[redis]
password_credential = "nope"
[[imap]]
id = "a"
host = "h"
username = "u"
[[imap]]
id = "b"
host = "h"
username = "u"
password_file = "missing.pw"
[[imap]]
id = "c"
host = "h"
username = "u"
password_file = "empty"
"""
    with pytest.raises(config.ConfigError) as caught:
        config.load_text(text, base=tmp_path)
    problems = caught.value.problems
    assert any(p.startswith("redis.password_credential:") and "CREDENTIALS_DIRECTORY" in p for p in problems)
    assert "imap[0].password_file: required (password_file or password_credential)" in problems
    assert any(p.startswith("imap[1].password_file: cannot read secret file") and "missing.pw" in p for p in problems)
    assert any(p.startswith("imap[2].password_file:") and "is empty" in p for p in problems)


def test_check_config_accepts_the_example() -> None:
    result = check_config(EXAMPLE)
    assert result.returncode == 0, result.stderr
    assert "configuration is valid" in result.stdout


def test_check_config_names_every_bad_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[daemon]\nconsumres = 4\n[queue]\nmax_attempts = "many"\nlease = "five minutes"\n')
    result = check_config(bad)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 3, result.stderr
    for key in ("daemon.consumres", "queue.max_attempts", "queue.lease"):
        assert any(line.startswith(f"{bad}: {key}: ") for line in lines), (key, lines)


def test_check_config_never_prints_secrets(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("s3cr3t-value")
    path = tmp_path / "c.toml"
    path.write_text('[[imap]]\nid = "a"\nhost = "h"\nusername = "u"\npassword_file = "pw"\nport = "x"\n')
    bad = check_config(path)
    path.write_text('[[imap]]\nid = "a"\nhost = "h"\nusername = "u"\npassword_file = "pw"\n')
    good = check_config(path)
    assert bad.returncode == 2 and good.returncode == 0
    for output in (bad.stdout, bad.stderr, good.stdout, good.stderr):
        assert "s3cr3t-value" not in output


def test_config_path_from_environment(tmp_path: Path) -> None:
    path = tmp_path / "env.toml"
    path.write_text("[daemon]\nconsumers = 2\n")
    import os

    env = dict(os.environ, INBOUNDD_CONFIG=str(path))
    result = subprocess.run(
        [sys.executable, "-m", "inboundd.daemon", "--check-config"], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0 and str(path) in result.stdout
    missing = check_config(tmp_path / "nope.toml")
    assert missing.returncode == 2 and "cannot read configuration file" in missing.stderr


def example_tables() -> dict[str, dict[str, Any]]:
    """Each table of the example file as TOML reads it, the commented-out account tables uncommented."""
    lines = [line[1:] if re.match(r"^#(\[\[[a-z_]+\]\]|[a-z_.]+ = )", line) else line
             for line in EXAMPLE.read_text().splitlines()]
    data = tomllib.loads("\n".join(lines))
    return {name: _dotted(value[0] if isinstance(value, list) else value) for name, value in data.items()}


def _dotted(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """*table* with the keys of a table inside it dotted (``match.tenant``), as the schema names them."""
    flat: dict[str, Any] = {}
    for name, value in table.items():
        if isinstance(value, dict):
            flat.update(_dotted(value, f"{prefix}{name}."))
        else:
            flat[f"{prefix}{name}"] = value
    return flat


def test_the_example_has_every_key_of_the_schema_with_its_default() -> None:
    written = example_tables()
    keys = [key for key in schema_keys(config.Config) if "." in key.path and key.kind != "table"]
    declared: dict[str, set[str]] = {}
    for key in keys:
        section, _, name = key.path.partition(".")
        declared.setdefault(section.removesuffix("[]"), set()).add(name)
    assert set(declared) >= {"daemon", "queue", "imap"}
    assert {name: set(table) for name, table in written.items()} == declared
    for key in keys:
        section, _, name = key.path.partition(".")
        value = written[section.removesuffix("[]")][name]
        if key.kind == "duration":
            value = config.parse_duration(value)
        elif key.kind == "size":
            value = config.parse_size(value)
        expected = key.example if key.example is not None else key.default
        assert value == expected, f"{key.path}: the example says {value!r}, the schema {expected!r}"
        if key.example is not None and not key.required:
            assert key.secret_required, f"{key.path}: only a required key shows an example instead of its default"


def test_every_key_is_documented_and_every_required_key_has_an_example() -> None:
    for key in schema_keys(config.Config):
        if "." not in key.path:
            assert key.about, f"[{key.path}] has no about text"
            continue
        assert key.doc.endswith((".", ")")), f"{key.path}: no documentation (doc(...) on its annotation)"
        if key.required:
            assert key.example is not None, f"{key.path} is required: give it examples=[...] for the example file"


class ToyAccount(AccountConfig, kw_only=True):
    about = "One [[toy]] table per toy mailbox."
    colour: Annotated[Literal["red", "blue"], doc("The toy's colour.")] = "red"
    pause: Annotated[Duration, doc("How long the toy rests.")] = 5400.0


def test_a_registered_provider_s_section_is_documented_from_its_schema() -> None:
    from inboundd.config_docs import render_example, render_manual
    from inboundd.providers import Provider, Registry
    from inboundd.providers.imap import PROVIDER as IMAP

    registry = Registry([IMAP, Provider(name="toy", account_config=ToyAccount, build=lambda ctx: None)])
    manual, example = render_manual(registry), render_example(registry)
    assert ".Ss Bq Bq Ic toy\nOne [[toy]] table per toy mailbox.\n" in manual
    assert '.It Ic colour\nThe toy\'s colour.\nOne of "red", "blue"; default "red".\n' in manual
    assert "accounts\n([[imap]], [[toy]])\n" in manual
    assert '# One [[toy]] table per toy mailbox.\n# Uncomment and edit:\n#[[toy]]\n' in example
    assert '# How long the toy rests.\n#pause = "1h30m"\n' in example


def uncommented(text: str, section: str) -> str:
    """The commented-out ``[[section]]`` example of *text*, uncommented (up to the next section)."""
    start = text.index(f"#[[{section}]]")
    end = text.find("\n#[[", start + 1)
    lines = text[start:end if end >= 0 else None].splitlines()
    return "\n".join(line[1:] for line in lines if re.match(rf"^#(\[\[{section}\]\]|[a-z_]+ = )", line))


def test_commented_imap_example_is_valid_when_uncommented(tmp_path: Path) -> None:
    text = EXAMPLE.read_text()
    start = text.index("#[[imap]]")
    block = uncommented(text, "imap")
    (tmp_path / "support.password").write_text("pw")
    block = block.replace('"/etc/inboundd/support.password"', '"support.password"')
    cfg = config.load_text(text[:start] + block, base=tmp_path)
    assert cfg.imap[0].id == "support" and cfg.imap[0].port == 993


def test_commented_microsoft_example_is_valid_when_uncommented(tmp_path: Path) -> None:
    text = EXAMPLE.read_text()
    start = text.index("#[[imap]]")
    (tmp_path / "m365.secret").write_text("s3cret")
    block = uncommented(text, "microsoft").replace('"/etc/inboundd/m365.secret"', '"m365.secret"')
    head = text[:start].replace('public_url = ""', 'public_url = "https://inbound.example.com"')
    cfg = config.load_text(head + block, base=tmp_path)
    (account,) = cfg.microsoft
    assert (account.id, account.mailbox, account.folders, account.subscription_lifetime) == \
        ("support", "support@acme.com", ["Inbox"], 70 * 3600.0)
    assert cfg.secret("microsoft[0].client_secret").reveal() == "s3cret"
    with pytest.raises(config.ConfigError) as caught:
        config.load_text(text[:start] + block, base=tmp_path)
    assert caught.value.problems == [
        "http.public_url: required once a [[microsoft]] account exists (the provider calls the daemon back there)"
    ]


def test_commented_google_example_is_valid_when_uncommented(tmp_path: Path) -> None:
    text = EXAMPLE.read_text()
    start = text.index("#[[imap]]")
    (tmp_path / "gmail.json").write_text(json.dumps({
        "type": "authorized_user", "client_id": "c.apps.googleusercontent.com", "client_secret": "s",
        "refresh_token": "1//r"}))
    block = uncommented(text, "google").replace('"/etc/inboundd/gmail.json"', '"gmail.json"')
    cfg = config.load_text(text[:start] + block, base=tmp_path)
    (account,) = cfg.google
    assert (account.id, account.email, account.resync_interval) == ("support", "support@acme.com", 1800.0)
    assert json.loads(cfg.secret("google[0].credentials").reveal())["type"] == "authorized_user"


def test_the_schema_describes_each_key_for_generated_documentation() -> None:
    keys = {key.path: key for key in schema_keys(config.Config)}
    assert (keys["daemon.consumers"].kind, keys["daemon.consumers"].default) == ("integer", 4)
    assert (keys["queue.lease"].kind, keys["queue.lease"].default) == ("duration", 30.0)
    assert keys["processing.max_message_size"].kind == "size"
    assert keys["daemon.log_level"].kind == 'one of "debug", "info", "warning", "error"'
    assert keys["http.listen"].kind == "array of strings" and keys["http.listen"].default == ["127.0.0.1:8025"]
    assert keys["imap"].kind == "array of tables" and not keys["imap"].required
    assert keys["imap[].id"].required and keys["imap[].id"].default is None
    assert not keys["imap[].tenant"].required and keys["imap[].tenant"].default == "default"
    assert (keys["imap[].password_file"].secret, keys["imap[].password_credential"].secret) == ("file", "credential")
    assert keys["redis.password_file"].secret == "file" and keys["redis.url"].secret is None
    assert "takes over" in keys["imap[].lease"].doc
    assert "source" not in keys and "secrets" not in keys      # filled by the loader, not keys of the file


def test_a_renamed_key_still_works_under_its_old_name_with_a_warning(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("secret\n")
    account = '[[imap]]\nid = "a"\nhost = "h"\nusername = "u"\npassword_file = "pw"\n'
    cfg = config.load_text(account + 'noop_interval = "2m"\n', base=tmp_path)
    assert cfg.imap[0].examine_interval == 120.0
    assert cfg.warnings == ["imap[0].noop_interval: renamed to examine_interval; the old name still works for now"]
    assert config.load_text(account + 'examine_interval = "2m"\n', base=tmp_path).warnings == []
    with pytest.raises(config.ConfigError) as caught:
        config.load_text(account + 'noop_interval = "2m"\nexamine_interval = "1m"\n', base=tmp_path)
    assert caught.value.problems == [
        "imap[0].noop_interval: renamed to examine_interval, which is given too: keep only examine_interval"]
    with pytest.raises(config.ConfigError) as caught:
        config.load_text(account + 'noop_interval = "soon"\n', base=tmp_path)
    [problem] = caught.value.problems                       # named as it was written
    assert problem.startswith("imap[0].noop_interval: expected a duration")
    assert next(k for k in schema_keys(config.Config) if k.path == "imap[].examine_interval").renamed_from == (
        "noop_interval")


def test_check_config_warns_about_a_renamed_key_and_still_accepts_it(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("secret\n")
    path = tmp_path / "old.toml"
    path.write_text('[[imap]]\nid = "a"\nhost = "h"\nusername = "u"\npassword_file = "pw"\nnoop_interval = "2m"\n')
    result = check_config(path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == f"{path}: warning: imap[0].noop_interval: renamed to examine_interval; " \
                            "the old name still works for now\n"


# --------------------------------------------------------------------------- every problem in one pass


def test_the_first_run_mistakes_come_out_together(tmp_path: Path) -> None:
    """The case that took three rounds before: a bad enum, an unknown key and a missing password file."""
    path = tmp_path / "inboundd.toml"
    path.write_text('[daemon]\nconsumres = 2\n'
                    '[[imap]]\nid = "support"\nhost = "imap.example.com"\nusername = "u"\ntls = "off"\n'
                    'password_file = "support.password"\n')
    result = check_config(path)
    assert result.returncode == 2
    assert sorted(result.stderr.splitlines()) == sorted([
        f"{path}: daemon.consumres: unknown key (did you mean 'consumers'?)",
        f'{path}: imap[0].tls: expected one of "implicit", "starttls", "none", got \'off\'',
        f"{path}: imap[0].password_file: cannot read secret file '{tmp_path}/support.password': "
        "No such file or directory",
    ])


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("daemon.log_level", '"loud"', 'daemon.log_level: expected one of "debug", "info", "warning", "error", '
                                   "got 'loud'"),
    ("daemon.log_format", "1", 'daemon.log_format: expected one of "text", "json", got 1'),
    ("daemon.consumers", '"four"', "daemon.consumers: expected an integer, got 'four'"),
    ("daemon.consumers", "5000", "daemon.consumers: expected an integer <= 1024, got 5000"),
    ("store.keep_raw", '"yes"', "store.keep_raw: expected true or false, got 'yes'"),
    ("http.listen", '"127.0.0.1:80"', "http.listen: expected an array, got '127.0.0.1:80'"),
    ("http.listen", "[80]", "http.listen: expected a string (at http.listen[0])"),
    ("control.mode", '"999"', "control.mode: expected a string matching regex '^0?[0-7]{3}$', got '999'"),
])
def test_a_wrong_value_says_what_was_expected_and_what_was_given(key: str, value: str, expected: str) -> None:
    section, name = key.split(".")
    with pytest.raises(config.ConfigError) as caught:
        config.load_text(f"[{section}]\n{name} = {value}\n")
    assert caught.value.problems == [expected]


def test_cross_field_checks_run_beside_a_bad_key_of_the_same_section(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("secret\n")
    text = ('[queue]\nmax_attempts = "many"\nblock = "2s"\n'
            '[[imap]]\nid = "a"\nhost = "h"\nusername = "u"\npassword_file = "pw"\ntls = "ssl"\n'
            'start_from = "yesterday"\n')
    with pytest.raises(config.ConfigError) as caught:
        config.load_text(text, base=tmp_path)
    assert sorted(p.split(":")[0] for p in caught.value.problems) == [
        "imap[0].start_from", "imap[0].tls", "queue.block", "queue.max_attempts"]


def test_a_check_about_a_bad_key_is_not_reported_twice(tmp_path: Path) -> None:
    """A check that compares with a key whose value was refused says nothing true: it is left out."""
    text = '[queue]\nbackoff_base = "soon"\nbackoff_cap = "1s"\n[postgres]\npool_max = "many"\npool_min = 20\n'
    with pytest.raises(config.ConfigError) as caught:
        config.load_text(text)
    assert sorted(p.split(":")[0] for p in caught.value.problems) == ["postgres.pool_max", "queue.backoff_base"]


def test_secrets_are_read_and_judged_beside_other_problems(tmp_path: Path) -> None:
    (tmp_path / "empty.pw").write_text("\n")
    text = ('[[imap]]\nid = "a"\nhost = "h"\nusername = "u"\nport = "x"\npassword_file = "missing.pw"\n'
            '[[imap]]\nid = "b"\nhost = "h"\nusername = "u"\npassword_file = "empty.pw"\nfolders = 3\n'
            '[[imap]]\nid = "c"\nhost = "h"\nusername = "u"\n'
            '[[imap]]\nid = "d"\nauth = "oauth"\nhost = "h"\nusername = "u"\n')
    with pytest.raises(config.ConfigError) as caught:
        config.load_text(text, base=tmp_path)
    problems = caught.value.problems
    assert [p.split(":")[0] for p in problems] == [
        "imap[0].port", "imap[1].folders", "imap[3].auth",
        "imap[0].password_file", "imap[1].password_file", "imap[2].password_file"]
    # imap[3]'s auth was refused, so whether it needs a password is not judged: no guess about it.
    assert "missing.pw" in problems[3] and "is empty" in problems[4] and "required" in problems[5]


def test_files_the_daemon_reads_are_checked_at_load_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("secret\n")
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    account = '[[imap]]\nid = "a"\nhost = "h"\nusername = "u"\npassword_file = "pw"\n'
    cfg = config.load_text(account + 'ca_file = "ca.pem"\n', base=tmp_path)
    assert cfg.imap[0].ca_file == str(tmp_path / "ca.pem")        # what was checked is what is opened
    with pytest.raises(config.ConfigError) as caught:
        config.load_text(account + 'ca_file = "nope.pem"\nauth = "xoauth2"\noauth_token_file = "/nonexistent/t"\n'
                         '[queue]\nlease = "0s"\n', base=tmp_path)
    assert caught.value.problems == [
        "queue.lease: must be at least 1s",
        f"imap[0].ca_file: cannot read '{tmp_path}/nope.pem': No such file or directory",
        "imap[0].oauth_token_file: cannot read '/nonexistent/t': No such file or directory",
    ]
