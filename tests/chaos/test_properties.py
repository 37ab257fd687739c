"""Property-based tests (hypothesis): whatever bytes arrive, only the documented errors come out.

The inputs a stranger controls — a job read back from Redis, the
configuration file, a raw message, a Graph webhook POST, a Gmail push and
its token — each go through one pure parser whose docstring names the
error it raises. These properties feed them arbitrary and mutated input
and require, for every example: a result, or exactly that error (with a
message naming what was wrong); never another exception, and never a result
that breaks something downstream (a job that cannot be encoded again, a
configuration with a duration of NaN, a token accepted outside its validity).

Examples are derandomized and nothing is kept between runs
(``database=None``): a run checks the same examples on every machine, and
the file takes seconds. The ``@example`` rows are inputs these properties
found once (each was a bug, fixed in the product); they stay as regressions.
"""

from __future__ import annotations

import base64
import datetime
import json
import math
import re
import unicodedata
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from google_fake import PUSH_AUDIENCE, PUSH_SERVICE_ACCOUNT, SigningKey
from inboundd import config as config_mod
from inboundd import jobs
from inboundd.config_convert import schema_keys
from inboundd.mime import parse_message
from inboundd.providers.google import push
from inboundd.providers.microsoft import webhook

CORPUS = Path(__file__).resolve().parent.parent / "corpus"


def bounded(examples: int) -> settings:
    """Hypothesis settings for this file: *examples* per property, the same ones every run, no deadline."""
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def deep(depth: int = 5_000) -> bytes:
    """JSON nested *depth* arrays deep: deeper than any recursive decoder goes."""
    return b"[" * depth + b"]" * depth


#: JSON values of any shape (what a stranger can put anywhere in a JSON body).
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def mutations(data: bytes) -> st.SearchStrategy[bytes]:
    """*data* with a few bytes flipped, cut, inserted or repeated."""
    def apply(ops: list[tuple[int, float, bytes]]) -> bytes:
        buf = bytearray(data)
        for op, where, chunk in ops:
            pos = int(where * len(buf))
            if op == 0:
                del buf[pos:]
            elif op == 1 and buf:
                buf[min(pos, len(buf) - 1)] ^= chunk[0] if chunk else 0xFF
            elif op == 2:
                buf[pos:pos] = chunk
            elif op == 3:
                del buf[pos:pos + len(chunk) * 8]
            else:
                buf[pos:pos] = bytes(buf[pos:pos + 64]) * 3
        return bytes(buf)
    ops = st.tuples(st.integers(0, 4), st.floats(0, 1), st.binary(max_size=16))
    return st.lists(ops, min_size=1, max_size=4).map(apply)


# --------------------------------------------------------------------------- the job codec (jobs.py)

texts = st.text(max_size=40)
int64 = st.integers(-(2**63), 2**63 - 1)
pointers = st.one_of(
    st.builds(jobs.ImapPointer, account=texts, folder=texts, uidvalidity=int64, uid=int64,
              message_id=st.none() | texts),
    st.builds(jobs.MicrosoftPointer, account=texts, message_id=texts, folder=texts, subscription_id=texts,
              change_type=texts),
    st.builds(jobs.GooglePointer, account=texts, email=texts, history_id=int64, pubsub_message_id=texts,
              message_id=st.none() | texts),
)
valid_jobs = st.builds(jobs.Job, id=texts, tenant=texts, pointer=pointers,
                       enqueued_at=st.floats(allow_nan=False, allow_infinity=False),
                       attempt=int64, transient=int64)


def decodes_or_refuses(data: bytes | str) -> jobs.Job | None:
    """``jobs.decode(data)``: a job that encodes back to itself, or None for a :class:`JobDecodeError`."""
    try:
        job = jobs.decode(data)
    except jobs.JobDecodeError as exc:
        assert str(exc)
        return None
    assert jobs.decode(jobs.encode(job)) == job
    return job


@bounded(300)
@given(valid_jobs)
def test_any_valid_job_survives_the_round_trip(job: jobs.Job) -> None:
    assert jobs.decode(jobs.encode(job)) == job
    assert jobs.decode(jobs.encode(job).decode()) == job


@bounded(300)
@given(st.binary(max_size=200))
@example(b'{"id": "\xff"}')  # invalid UTF-8 inside a JSON string: escaped as UnicodeDecodeError
@example(b'{"id":"a","tenant":"t","enqueued_at":1,"pointer":{"x":' + deep() + b',"provider":"imap"}}')
def test_any_bytes_decode_to_a_job_or_the_decode_error(data: bytes) -> None:
    decodes_or_refuses(data)


@bounded(300)
@given(st.text(max_size=200) | st.just('{"id": "\ud800"}'))
def test_any_text_decodes_to_a_job_or_the_decode_error(data: str) -> None:
    decodes_or_refuses(data)


@bounded(300)
@given(valid_jobs.flatmap(lambda job: mutations(jobs.encode(job))))
def test_a_mutated_job_decodes_to_a_job_or_the_decode_error(data: bytes) -> None:
    decodes_or_refuses(data)


@bounded(200)
@given(valid_jobs, st.lists(st.tuples(st.sampled_from(
    ["id", "tenant", "pointer", "enqueued_at", "attempt", "transient", "v", "body", "pointer.provider",
     "pointer.uid", "pointer.message_id", "pointer.history_id", "pointer.raw"]), json_values), min_size=1, max_size=3))
def test_a_job_with_any_value_at_any_field_decodes_or_is_refused(job: jobs.Job, changes: list) -> None:
    document = msgspec.json.decode(jobs.encode(job))
    for path, value in changes:
        target, _, key = path.rpartition(".")
        where = document[target] if target else document
        if isinstance(where, dict):
            where[key] = value
    decoded = decodes_or_refuses(json.dumps(document).encode())
    if decoded is not None:
        assert decoded.v == jobs.SCHEMA_VERSION


# --------------------------------------------------------------------------- the configuration loader (config.py)

CONFIG_KEYS = [info for info in schema_keys(config_mod.Config) if info.kind not in ("table", "array of tables")]


def base_config(directory: Path) -> dict[str, Any]:
    """A valid configuration with one table of each kind, its secret files written into *directory*."""
    (directory / "imap.pw").write_text("secret\n")
    (directory / "binary.bin").write_bytes(b"\xff\xfe\x00garbage")
    (directory / "graph.secret").write_text("graph-secret\n")
    (directory / "deliver.secret").write_text("whsec_" + base64.b64encode(b"k" * 32).decode() + "\n")
    (directory / "google.json").write_text(json.dumps({
        "type": "authorized_user", "client_id": "c.apps.googleusercontent.com", "client_secret": "s",
        "refresh_token": "1//r"}))
    return {
        "daemon": {"instance_id": "props", "consumers": 2},
        "queue": {"lease": "30s"},
        "http": {"public_url": "https://inbound.example.com"},
        "imap": [{"id": "mail", "host": "imap.example.com", "username": "u", "password_file": "imap.pw"}],
        "microsoft": [{"id": "m365", "directory_id": "contoso.onmicrosoft.com", "client_id": "c",
                       "mailbox": "support@contoso.com", "client_secret_file": "graph.secret"}],
        "google": [{"id": "gmail", "email": "support@acme.com", "topic": "projects/acme/topics/t",
                    "push_audience": PUSH_AUDIENCE, "push_service_account": PUSH_SERVICE_ACCOUNT,
                    "credentials_file": "google.json"}],
        "deliver": [{"id": "app", "kind": "webhook", "url": "https://app.example.com/hook",
                     "secret_file": "deliver.secret"}],
    }


def toml_string(text: str) -> str:
    escaped = "".join("\\\"" if ch == '"' else "\\\\" if ch == "\\" else
                      f"\\u{ord(ch):04x}" if ord(ch) < 0x20 or ord(ch) == 0x7F else ch for ch in text)
    return f'"{escaped}"'


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, (int,)):
        return str(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    return "{" + ", ".join(f"{toml_string(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


def toml_document(data: dict[str, Any]) -> str:
    """*data* as a TOML file: plain values first, then ``[table]``s, then ``[[array of tables]]``."""
    lines = [f"{toml_string(k)} = {toml_value(v)}" for k, v in data.items()
             if not isinstance(v, dict) and not (isinstance(v, list) and v and all(isinstance(i, dict) for i in v))]
    for name, table in data.items():
        if isinstance(table, dict):
            lines += [f"[{toml_string(name)}]"] + [f"{toml_string(k)} = {toml_value(v)}" for k, v in table.items()]
    for name, tables in data.items():
        if isinstance(tables, list) and tables and all(isinstance(i, dict) for i in tables):
            for table in tables:
                lines += [f"[[{toml_string(name)}]]"] + [f"{toml_string(k)} = {toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


#: Values of every TOML type, and strings shaped like what keys expect (durations, sizes, paths).
toml_scalars = st.one_of(
    st.integers(), st.integers(-(2**63), 2**63 - 1), st.floats(), st.booleans(), st.text(max_size=20),
    st.datetimes(), st.dates(), st.times(),
    st.datetimes(timezones=st.just(datetime.timezone.utc)),
    st.from_regex(r"\A[0-9]{1,400}(\.[0-9]{1,3})?(ms|s|m|h|d|b|kb|kib|mib|g|gib|)\Z"),
    st.from_regex(r"\A([0-9]{1,3}(ms|s|m|h|d)){1,4}\Z"),
    st.sampled_from(["", ".", "/", "imap.pw", "missing.pw", "a\x00b", "\x00", "imap.pw\x00x", "binary.bin", "implicit",
                     "none", "json", "debug", "INBOX", "seen", "move:Archive", "delete", "now", "all"]),
)
toml_values = st.recursive(toml_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.sampled_from(["id", "a", "tenant", "accounts"]), inner, max_size=2),
                           max_leaves=6)
config_changes = st.lists(st.tuples(st.sampled_from(CONFIG_KEYS), toml_values), min_size=1, max_size=4)


def durations_of(cfg: Any) -> list[tuple[str, Any]]:
    """(key path, value) of every duration key of the loaded *cfg*."""
    found = []
    for info in CONFIG_KEYS:
        if info.kind != "duration":
            continue
        objects = [cfg]
        for part in info.path.split("."):
            name, many = part.removesuffix("[]"), part.endswith("[]")
            objects = [getattr(obj, name) for obj in objects]
            if many:
                objects = [item for obj in objects for item in obj]
        found += [(info.path, value) for value in objects]
    return found


def loads_or_names_the_problems(file: Path) -> Any:
    """``config.load(file)``: a configuration, or None for a :class:`ConfigError` whose every line names
    the file, and (unless the TOML itself is bad) the key."""
    try:
        cfg = config_mod.load(file)
    except config_mod.ConfigError as exc:
        assert exc.problems
        for line in str(exc).splitlines():
            assert line.startswith(f"{file}: "), line
        for problem in exc.problems:
            assert problem.startswith("invalid TOML: ") or re.match(r"[\w\[\]\.\-\"]+: ", problem), problem
        return None
    for path, seconds in durations_of(cfg):
        assert isinstance(seconds, float) and math.isfinite(seconds) and seconds >= 0, (path, seconds)
    return cfg


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("props-config")


def test_the_base_configuration_is_valid(config_dir: Path) -> None:
    file = config_dir / "inboundd.toml"
    file.write_text(toml_document(base_config(config_dir)))
    assert config_mod.load(file).imap[0].id == "mail"


@bounded(250)
@given(config_changes)
@example([(next(k for k in CONFIG_KEYS if k.path == "redis.password_file"), "a\x00b")])
@example([(next(k for k in CONFIG_KEYS if k.path == "imap[].ca_file"), "\x00")])
@example([(next(k for k in CONFIG_KEYS if k.path == "queue.lease"), math.nan)])
@example([(next(k for k in CONFIG_KEYS if k.path == "queue.lease"), math.inf)])
@example([(next(k for k in CONFIG_KEYS if k.path == "queue.lease"), 10**400)])
@example([(next(k for k in CONFIG_KEYS if k.path == "processing.max_message_size"), "9" * 400 + "mib")])
@example([(next(k for k in CONFIG_KEYS if k.path == "queue.lease"), "9" * 400 + "d")])
@example([(next(k for k in CONFIG_KEYS if k.path == "google[].credentials_file"), "binary.bin")])
def test_any_value_at_any_key_loads_or_names_the_key(config_dir: Path, changes: list) -> None:
    data = base_config(config_dir)
    for info, value in changes:
        *parents, leaf = info.path.split(".")
        where: Any = data
        for part in parents:
            name = part.removesuffix("[]")
            where = where.setdefault(name, [{}] if part.endswith("[]") else {})
            where = where[0] if part.endswith("[]") else where
            if not isinstance(where, dict):
                break
        else:
            where[leaf] = value
    file = config_dir / "inboundd.toml"
    file.write_text(toml_document(data))
    loads_or_names_the_problems(file)


toml_lines = st.one_of(
    st.sampled_from(["[daemon]", "[queue]", "[redis]", "[[imap]]", "[[google]]", "[[deliver]]", "[processing]",
                     "[daemon.x]", "[[queue]]", "imap = 3", "[imap]"]),
    st.tuples(st.sampled_from(sorted({info.path.rsplit(".", 1)[-1] for info in CONFIG_KEYS}) + ["x"]),
              toml_values).map(lambda kv: f"{kv[0]} = {toml_value(kv[1])}"),
    st.text(max_size=30),
)


@bounded(300)
@given(st.lists(toml_lines, max_size=12).map("\n".join) | st.text())
@example("a = " + "[" * 5000 + "]" * 5000)
@example("[daemon]\nconsumers = 1" + "0" * 5000)
def test_any_text_loads_or_names_the_problems(config_dir: Path, text: str) -> None:
    file = config_dir / "inboundd.toml"
    file.write_text(text, encoding="utf-8", errors="surrogatepass")
    loads_or_names_the_problems(file)


# --------------------------------------------------------------------------- the MIME parser (mime/)

SEEDS = [path.read_bytes() for path in sorted(CORPUS.glob("*.eml"))]
MIME_SPICE = [b"=?", b"?=", b"=?utf-8?b?", b"=?iso-8859-1?q?", b'"', b"<", b">", b";", b"\n", b"\r\n", b"--",
              b"*0*=", b"\x00", b"\xff", b"Content-Type: multipart/mixed; boundary=x\n", b"\n--x\n", b"\n--x--\n",
              b"Content-Transfer-Encoding: base64\n", b"charset=", b"filename*=", b"message/rfc822"]


def parses_cleanly(raw: bytes) -> None:
    message = parse_message(raw)
    assert not any(defect.startswith("internal error") for defect in message.defects), message.defects
    assert message.size == len(raw)
    msgspec.json.encode(message)  # storable as it is


@bounded(300)
@given(st.binary(max_size=2000))
def test_any_bytes_parse_to_a_message(raw: bytes) -> None:
    parses_cleanly(raw)


@bounded(300)
@given(st.sampled_from(SEEDS).flatmap(mutations))
def test_a_mutated_corpus_message_parses_to_a_message(raw: bytes) -> None:
    parses_cleanly(raw)


@bounded(200)
@given(st.lists(st.sampled_from(MIME_SPICE) | st.binary(max_size=12) | st.text(max_size=12).map(str.encode),
                max_size=40).map(b"".join))
def test_mime_shaped_garbage_parses_to_a_message(raw: bytes) -> None:
    parses_cleanly(raw)


# --------------------------------------------------------------------------- Microsoft Graph webhooks

SECRET = "client-state-secret"
KNOWN = {"sub-1": webhook.SubscriptionRef("sub-1", "m365", "inbox", client_state=SECRET,
                                          tenant_ids=frozenset({"tenant-1"}))}


def parsed_batch_or_bad_request(body: bytes) -> webhook.Batch | None:
    try:
        batch = webhook.parse_batch(body)
    except webhook.BadRequest as exc:
        assert str(exc)
        return None
    check = webhook.check_batch(batch.value, KNOWN)
    assert len(check.accepted) + len(check.lifecycle) + len(check.refused) <= len(batch.value)
    for accepted in check.accepted:
        assert accepted.message_id and accepted.subscription.subscription_id == "sub-1"
    # Every item that is not an accepted notification is accounted for.
    assert len(check.lifecycle) + len(check.refused) >= sum(
        1 for item in batch.value if item.subscription_id != "sub-1" or item.lifecycle_event is not None)
    return batch


notification_items = st.fixed_dictionaries(
    {"subscriptionId": st.sampled_from(["sub-1", "sub-2"]) | json_values,
     "clientState": st.sampled_from([SECRET, "forged"]) | json_values,
     "tenantId": st.sampled_from(["tenant-1", "TENANT-1", "other"]) | json_values},
    optional={"changeType": st.sampled_from(["created", "updated"]) | json_values,
              "resource": st.sampled_from(["Users/u/Messages/AAMk=", "users/u/messages/", "me/events('1')"])
              | json_values,
              "resourceData": st.fixed_dictionaries({}, optional={"id": json_values}) | json_values,
              "lifecycleEvent": st.sampled_from(["missed", "subscriptionRemoved", "reauthorizationRequired",
                                                 "other"]) | json_values,
              "extra": json_values},
)


@bounded(300)
@given(st.binary(max_size=300))
@example(b'{"value":[{"subscriptionId":"\xff","clientState":"c","tenantId":"t"}]}')
@example(b'{"value":[{"subscriptionId":"s","clientState":"c","tenantId":"t","x":' + deep() + b"}]}")
def test_any_bytes_are_a_batch_or_a_bad_request(body: bytes) -> None:
    parsed_batch_or_bad_request(body)


@bounded(300)
@given(st.one_of(st.fixed_dictionaries({"value": st.lists(notification_items, max_size=4)}),
                 st.fixed_dictionaries({"value": json_values}), json_values))
def test_any_notification_json_is_sorted_or_a_bad_request(document: Any) -> None:
    parsed_batch_or_bad_request(json.dumps(document).encode())


@bounded(300)
@given(st.fixed_dictionaries({"value": st.lists(notification_items, min_size=1, max_size=3)})
       .flatmap(lambda document: mutations(json.dumps(document).encode())))
def test_a_mutated_notification_is_sorted_or_a_bad_request(body: bytes) -> None:
    parsed_batch_or_bad_request(body)


@bounded(300)
@given(st.binary(max_size=100) | st.binary(max_size=100).map(lambda b: b"x=1&validationToken=" + b))
@example(b"validationToken=\x80")  # a C1 control character, raw (latin-1) in the query
def test_any_query_has_a_usable_validation_token_or_a_bad_request(query: bytes) -> None:
    try:
        token = webhook.validation_token(query)
    except webhook.BadRequest as exc:
        assert str(exc)
        return
    if token is not None:  # echoed back as text/plain
        assert 0 < len(token) <= webhook.TOKEN_LIMIT
        assert not any(unicodedata.category(ch) == "Cc" for ch in token), token
        token.encode("utf-8")


# --------------------------------------------------------------------------- Gmail Pub/Sub pushes

KEY = SigningKey("kid-props")
CERTS = {KEY.kid: KEY.cert_pem}
ALLOWED = {PUSH_AUDIENCE: frozenset({PUSH_SERVICE_ACCOUNT})}
NOW = 1_900_000_000.0


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def envelope(data: str | Any, **message: Any) -> bytes:
    return json.dumps({"message": {"data": data, **message}, "subscription": "projects/acme/subscriptions/s"}).encode()


def notice_or_push_data_error(body: bytes) -> push.PushNotice | None:
    try:
        notice = push.decode_push(body)
    except push.PushDataError as exc:
        assert exc.reason and exc.detail
        return None
    assert "@" in notice.email_address and 1 <= notice.history_id < 2**64
    # What the webhook then does with it: a job, encoded for Redis.
    jobs.encode(jobs.new_job(jobs.GooglePointer(account="gmail", email=notice.email_address,
                                                history_id=notice.history_id,
                                                pubsub_message_id=notice.message_id), tenant="acme"))
    msgspec.json.encode(notice)
    return notice


@bounded(300)
@given(st.binary(max_size=300))
@example(deep())
def test_any_bytes_are_a_push_or_its_data_error(body: bytes) -> None:
    notice_or_push_data_error(body)


gmail_notices = st.fixed_dictionaries(
    {}, optional={"emailAddress": st.sampled_from(["support@acme.com", " a@b "]) | json_values,
                  "historyId": st.integers() | st.from_regex(r"\A[0-9]{1,30}\Z") | json_values},
)


@bounded(300)
@given(st.one_of(
    gmail_notices.map(lambda notice: base64.b64encode(json.dumps(notice).encode()).decode()),
    gmail_notices.map(lambda notice: b64url(json.dumps(notice).encode())),
    st.binary(max_size=60).map(lambda raw: base64.b64encode(raw).decode()),
    json_values,
), st.dictionaries(st.sampled_from(["messageId", "message_id", "attributes"]), json_values, max_size=2))
@example(base64.b64encode(json.dumps({"emailAddress": "a@b", "historyId": "1" * 5000}).encode()).decode(), {})
@example(base64.b64encode(deep()).decode(), {})
@example(base64.b64encode(b'{"emailAddress": "a@b", "historyId": 1}').decode(), {"messageId": "\ud800"})
@example(base64.b64encode(b'{"emailAddress": "a@b\\ud800", "historyId": 1}').decode(), {})
def test_any_push_envelope_is_a_push_or_its_data_error(data: Any, message: dict) -> None:
    try:
        body = envelope(data, **message)
    except UnicodeEncodeError:
        body = json.dumps({"message": {"data": data, **message}}, ensure_ascii=True).encode()
    notice_or_push_data_error(body)


@bounded(300)
@given(st.none() | st.text(max_size=60) | st.text(max_size=60).map(lambda t: "Bearer " + t))
def test_any_authorization_header_is_a_token_or_rejected(value: str | None) -> None:
    try:
        token = push.bearer_token(value)
    except push.PushRejected as exc:
        assert exc.status == 401 and exc.reason
        return
    assert token and token == token.strip()


def token_or_rejected(token: str) -> None:
    try:
        header = push.token_header(token)
    except push.PushRejected as exc:
        assert exc.status == 401 and exc.reason
        return
    assert header.alg == "RS256" and header.kid


@bounded(300)
@given(st.one_of(
    st.text(max_size=80),
    st.tuples(json_values | st.fixed_dictionaries({"alg": json_values, "kid": json_values}), json_values,
              st.binary(max_size=16))
    .map(lambda parts: ".".join([b64url(json.dumps(parts[0]).encode()), b64url(json.dumps(parts[1]).encode()),
                                 b64url(parts[2])])),
))
@example(".".join([b64url(deep()), b64url(b"{}"), b64url(b"sig")]))
@example(".".join([b64url(b'{"alg": "RS256", "kid": "k"}'), b64url(deep()), b64url(b"sig")]))
def test_any_token_header_is_read_or_rejected(token: str) -> None:
    token_or_rejected(token)


claim_values = st.one_of(json_values, st.floats(), st.integers(), st.integers(int(NOW) - 7200, int(NOW) + 7200),
                         st.sampled_from([PUSH_AUDIENCE, PUSH_SERVICE_ACCOUNT, "accounts.google.com", True]))


@bounded(150)
@given(st.dictionaries(st.sampled_from(["iat", "exp", "iss", "aud", "email", "email_verified", "sub"]),
                       claim_values | st.none(), max_size=4))
@example({"iat": math.nan, "exp": math.nan})
@example({"iat": 10**400})
@example({"exp": 10**400})
@example({"iss": []})  # found by this property: TypeError (unhashable) instead of a rejection
def test_any_signed_claims_are_accepted_only_when_valid(overrides: dict) -> None:
    base = {"iat": int(NOW) - 10, "exp": int(NOW) + 3590}
    token = KEY.token(**{**base, **overrides})
    try:
        claims = push.check_token(token, CERTS, ALLOWED, NOW)
    except push.PushRejected as exc:
        assert exc.status in (401, 403) and exc.reason and token not in str(exc)
        return
    assert claims.issued_at - push.CLOCK_SKEW <= NOW <= claims.expires_at + push.CLOCK_SKEW
    assert claims.audience in ALLOWED and claims.email in ALLOWED[claims.audience]
