"""The Debian package end to end: built, linted, installed, run as ``inboundd``, verified, purged.

The package installs into the real system (``/usr/bin/inboundd``, the system
user ``inboundd``, ``/etc/inboundd.toml``), so everything from install to purge
holds a machine-wide lock (:data:`LOCK`: suites running side by side on one
machine take turns), a package left installed by a killed earlier run is
purged first (:data:`MARKER` says it was ours), and the machine ends as it
started: no package, and no ``inboundd`` user unless one existed before.
Without systemd as PID 1 (CI containers) all of this runs; only ``systemctl``
is not called. The tests run in file order: the last one purges.
"""

from __future__ import annotations

import fcntl
import grp
import gzip
import json
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from daemon_harness import DaemonProcess, imap_section, stored
from imap_helpers import append_subjects
from waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent
#: Held (flock) from install to purge; the kernel drops it when the holder dies.
LOCK = Path("/run/lock/inboundd-packaging-test.lock")
#: Written before install, removed after the clean-up: a leftover means a run died in between.
MARKER = Path("/var/tmp/inboundd-packaging-test.json")
LOCK_WAIT = 600.0
VENV = Path("/opt/venvs/inboundd")
UNIT = Path("/lib/systemd/system/inboundd.service")
WANTS = Path("/etc/systemd/system/multi-user.target.wants/inboundd.service")
CONFFILE = Path("/etc/inboundd.toml")
STATE = Path("/var/lib/inboundd")
#: What the package installs outside its venv; purge must remove every one.
INSTALLED = [Path("/usr/bin/inboundd"), Path("/usr/bin/inboundctl"), CONFFILE, UNIT, WANTS, STATE, VENV,
             Path("/usr/share/man/man8/inboundd.8.gz"), Path("/usr/share/man/man8/inboundctl.8.gz"),
             Path("/usr/share/man/man5/inboundd.toml.5.gz"),
             Path("/usr/share/bash-completion/completions/inboundctl"), Path("/usr/share/doc/inboundd")]
#: Debian packages the build and the checks need, by the command that proves each present.
TOOLS = {"dpkg-buildpackage": "dpkg-dev", "dh": "debhelper", "dh_virtualenv": "dh-virtualenv",
         "lintian": "lintian", "gcc": "build-essential", "apt-get": "apt", "systemd-analyze": "systemd",
         "dpkg-statoverride": "dpkg"}
APT_ENV = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
APT_OPTIONS = ["-y", "-q", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=300"]


def run(argv: list[str], timeout: float = 120, check: bool = True, text: bool = True,
        **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=text, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout}{result.stderr}")
    return result


def package_state() -> str:
    """dpkg's two-letter status of inboundd (``ii`` installed, ``rc`` config files left), or ``""``."""
    result = run(["dpkg-query", "-W", "-f", "${db:Status-Abbrev}", "inboundd"], check=False)
    return result.stdout.strip() if result.returncode == 0 else ""


def present(state: str) -> bool:
    return state not in ("", "un", "pn")


def user_exists(name: str = "inboundd") -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def purge() -> None:
    if present(package_state()):
        run(["apt-get", "purge", *APT_OPTIONS, "inboundd"], timeout=300, env=APT_ENV)


def forget_user() -> None:
    """Remove the user and group a run created (the package keeps them on purge, as policy says)."""
    if user_exists():
        run(["userdel", "inboundd"])
    try:
        grp.getgrnam("inboundd")
        run(["groupdel", "inboundd"])
    except KeyError:
        pass


def clean_up_after_a_dead_run() -> None:
    if not MARKER.exists():
        return
    left = json.loads(MARKER.read_text())
    purge()
    if not left["user_existed"]:
        forget_user()
    MARKER.unlink()


@pytest.fixture(scope="module")
def deb() -> Iterator[Path]:
    """The package, built by ``scripts/deb`` from this checkout into a world-readable directory."""
    missing = sorted({package for tool, package in TOOLS.items() if shutil.which(tool) is None})
    if missing:
        pytest.fail(f"the packaging test needs: apt-get install {' '.join(missing)} (scripts/setup --test does)",
                    pytrace=False)
    out = Path(tempfile.mkdtemp(prefix="inboundd-deb-out-"))
    out.chmod(0o755)  # apt reads the file as _apt
    try:
        built = run([str(ROOT / "scripts" / "deb"), str(out)], timeout=900)
        path = Path(built.stdout.strip().splitlines()[-1])
        assert path.is_file() and path.parent == out and re.fullmatch(r"inboundd_[^_]+_[a-z0-9]+\.deb", path.name), \
            built.stdout
        yield path
    finally:
        shutil.rmtree(out, ignore_errors=True)


@pytest.fixture(scope="module")
def machine_lock() -> Iterator[None]:
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK, "a+") as handle:
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    handle.seek(0)
                    pytest.fail(f"{LOCK} still held after {LOCK_WAIT:g}s by another packaging test "
                                f"({handle.read().strip() or 'unknown holder'})", pytrace=False)
                time.sleep(0.5)  # another suite's install-to-purge span; nothing to wait on but the lock
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.fixture(scope="module")
def installed(deb: Path, machine_lock: None) -> Iterator[dict[str, str]]:
    """The package installed with ``apt-get install ./….deb``; purged and the machine restored afterwards."""
    clean_up_after_a_dead_run()
    if present(package_state()):
        pytest.fail(f"inboundd is installed on this machine ({package_state()}), not by this test: the test "
                    "would replace it; purge it first (apt-get purge inboundd)", pytrace=False)
    user_existed = user_exists()
    MARKER.write_text(json.dumps({"user_existed": user_existed, "pid": os.getpid()}))
    try:
        result = run(["apt-get", "install", *APT_OPTIONS, str(deb)], timeout=300, env=APT_ENV)
        yield {"apt": result.stdout + result.stderr}
    finally:
        purge()
        if not user_existed:
            forget_user()
        MARKER.unlink(missing_ok=True)


# ---------------------------------------------------------------------- lintian


def test_lintian_finds_no_error_or_warning(deb: Path) -> None:
    result = run(["lintian", "--info", "--display-info", "--pedantic", str(deb)], timeout=600, check=False)
    tags = [line for line in result.stdout.splitlines() if re.match(r"^[EWIPX]: ", line)]
    assert not tags, "lintian (fix it, or override in debian/inboundd.lintian-overrides with a reason):\n" + \
        "\n".join(tags)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_lintian_override_has_a_reason() -> None:
    lines = (ROOT / "debian" / "inboundd.lintian-overrides").read_text().splitlines()
    for index, line in enumerate(lines):
        if line.startswith("inboundd:"):
            above = lines[index - 1] if index else ""
            assert above.startswith("#") or above.startswith("inboundd:"), f"override without a reason: {line}"
    assert lines[0].startswith("#")


def test_nothing_in_the_package_names_the_build_directory(deb: Path) -> None:
    """Builds of one commit are identical (scripts/deb builds in a new inboundd-deb.XXXXXX each time)."""
    data = run(["dpkg-deb", "--fsys-tarfile", str(deb)], text=False).stdout
    control = run(["dpkg-deb", "--ctrl-tarfile", str(deb)], text=False).stdout
    for member, content in (("data", data), ("control", control)):
        assert len(content) > 1000 and b"/inboundd-deb." not in content, f"{member} names the build directory"


# ---------------------------------------------------------------------- installed files


def mode_owner(path: Path) -> tuple[str, str, str]:
    info = path.stat()
    return oct(stat.S_IMODE(info.st_mode)), pwd.getpwuid(info.st_uid).pw_name, grp.getgrgid(info.st_gid).gr_name


def test_apt_installs_the_package_and_nothing_else(installed: dict[str, str]) -> None:
    assert package_state() == "ii"
    new = re.search(r"The following NEW packages will be installed:\n((?:  .*\n)+)", installed["apt"])
    assert new and new.group(1).split() == ["inboundd"], installed["apt"]


def test_files_owners_and_modes(installed: dict[str, str]) -> None:
    for name in ("inboundd", "inboundctl"):
        link = Path("/usr/bin") / name
        assert link.is_symlink() and os.readlink(link) == f"{VENV}/bin/{name}", link
        assert os.access(link, os.X_OK), link
    # The venv runs the system's exact interpreter (the package depends on it).
    assert os.path.realpath(VENV / "bin" / "python") == os.path.realpath("/usr/bin/python3")
    assert not (VENV / "bin" / "pip").exists(), "pip is left in the application's venv"

    assert mode_owner(CONFFILE) == ("0o640", "root", "inboundd")
    assert CONFFILE.read_text() == (ROOT / "etc" / "inboundd.toml").read_text()
    conffiles = run(["dpkg-query", "-W", "-f", "${Conffiles}", "inboundd"]).stdout
    assert str(CONFFILE) in conffiles, conffiles

    account = pwd.getpwnam("inboundd")
    assert account.pw_uid < 1000 and account.pw_dir == str(STATE) and account.pw_shell == "/usr/sbin/nologin"
    assert grp.getgrgid(account.pw_gid).gr_name == "inboundd"
    assert mode_owner(STATE) == ("0o750", "inboundd", "inboundd")

    # The unit in systemd/ is the single source, installed as it is, and enabled.
    assert UNIT.read_text() == (ROOT / "systemd" / "inboundd.service").read_text()
    assert mode_owner(UNIT) == ("0o644", "root", "root")
    assert WANTS.is_symlink() and os.readlink(WANTS) == str(UNIT)

    for page in ("man8/inboundd.8", "man8/inboundctl.8", "man5/inboundd.toml.5"):
        installed_page = Path("/usr/share/man") / f"{page}.gz"
        assert gzip.decompress(installed_page.read_bytes()).decode() == \
            (ROOT / "man" / Path(page).name).read_text(), page
    completion = Path("/usr/share/bash-completion/completions/inboundctl")
    assert completion.read_text() == (ROOT / "completion" / "inboundctl").read_text()
    assert mode_owner(completion) == ("0o644", "root", "root")


def test_check_config_reads_the_conffile_as_inboundd_only(installed: dict[str, str]) -> None:
    ok = run(["runuser", "-u", "inboundd", "--", "/usr/bin/inboundd", "--check-config", "-c", str(CONFFILE)])
    assert "configuration is valid" in ok.stdout
    denied = run(["runuser", "-u", "nobody", "--", "/usr/bin/inboundd", "--check-config", "-c", str(CONFFILE)],
                 check=False)
    assert denied.returncode == 2 and "Permission denied" in denied.stderr, denied


def test_the_shipped_config_is_not_configured_so_the_unit_skips_the_start(installed: dict[str, str],
                                                                        tmp_path: Path) -> None:
    assert "ExecCondition=/usr/bin/inboundd --is-configured -c /etc/inboundd.toml" in UNIT.read_text().splitlines()
    skipped = run(["runuser", "-u", "inboundd", "--", "/usr/bin/inboundd", "--is-configured", "-c", str(CONFFILE)],
                  check=False)
    assert skipped.returncode == 1 and "not configured" in skipped.stdout, skipped
    edited = tmp_path / "edited.toml"
    edited.write_text(CONFFILE.read_text() + '\n[[imap]]\nid = "support"\nhost = "127.0.0.1"\n'
                      'username = "support"\npassword_file = "support.password"\n')
    (tmp_path / "support.password").write_text("secret\n")
    assert run(["/usr/bin/inboundd", "--is-configured", "-c", str(edited)]).returncode == 0
    edited.write_text(CONFFILE.read_text().replace("consumers = 4", "consumers = -1"))
    invalid = run(["/usr/bin/inboundd", "--is-configured", "-c", str(edited)], check=False)
    assert invalid.returncode == 255 and "daemon.consumers" in invalid.stderr, invalid
    if Path("/run/systemd/system").is_dir():  # systemd is PID 1: the real thing
        run(["systemctl", "start", "inboundd"], check=False)
        shown = run(["systemctl", "show", "-p", "ActiveState", "-p", "Result", "inboundd"]).stdout
        assert "ActiveState=inactive" in shown and "Result=exec-condition" in shown, shown


@pytest.fixture
def inboundd_dir() -> Iterator[Path]:
    """A directory the ``inboundd`` user owns (pytest's own temp tree is root's, mode 0700)."""
    directory = Path(tempfile.mkdtemp(prefix="inboundd-deb-run-"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_installed_daemon_runs_as_inboundd_and_stores_mail(installed: dict[str, str], inboundd_dir: Path,
                                                           redis_url: str, pg_dsn: str, dovecot,
                                                           imap_user: tuple[str, str]) -> None:
    user, password = imap_user
    daemon = DaemonProcess(inboundd_dir, redis_url=redis_url, pg_dsn=pg_dsn, abstract_notify=True,
                           command=["/usr/bin/inboundd"], user="inboundd",
                           extra_config=imap_section(inboundd_dir, dovecot.port, user, password))
    account = pwd.getpwnam("inboundd")
    for path in [inboundd_dir, *inboundd_dir.iterdir()]:
        os.chown(path, account.pw_uid, account.pw_gid)
    try:
        daemon.start()  # waits for READY=1 on the notify socket
        pid = daemon.process.pid
        uid = re.search(r"^Uid:\s+(\d+)", Path(f"/proc/{pid}/status").read_text(), re.M).group(1)
        assert int(uid) == account.pw_uid
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert argv[:2] == [f"{VENV}/bin/python".encode(), b"/usr/bin/inboundd"], argv
        ready = daemon.get("/readyz")
        assert ready.status_code == 200, ready.text
        wait_for(lambda: [s["state"] for s in daemon.control("GET", "/status").json()["listeners"]] == ["idle"],
                 30, what="the installed daemon's listener to idle")
        append_subjects(dovecot.port, user, password, ["Installed from the .deb"])
        wait_for(lambda: stored(pg_dsn), 30, what="the message stored by the installed daemon")
        assert stored(pg_dsn) == [("Installed from the .deb", "ada@example.com")]
        daemon.signal(signal.SIGTERM)
        assert daemon.wait_exit(timeout=30) == 0, daemon.log_text()[-3000:]
    finally:
        daemon.close()


def test_systemd_analyze_verifies_the_installed_unit(installed: dict[str, str]) -> None:
    result = run(["systemd-analyze", "verify", "--man=no", str(UNIT)], check=False, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "inboundd.service" not in result.stderr, result.stderr


# ---------------------------------------------------------------------- purge (last)


def test_purge_leaves_only_what_policy_keeps(installed: dict[str, str]) -> None:
    purge()
    assert not present(package_state()), package_state()
    left = [str(path) for path in INSTALLED if path.exists() or path.is_symlink()]
    assert not left, f"left after purge: {left}"
    overrides = run(["dpkg-statoverride", "--list"]).stdout
    assert str(CONFFILE) not in overrides, overrides
    helper_state = list(Path("/var/lib/systemd").glob("deb-systemd-*/**/inboundd*"))
    assert not helper_state, helper_state
    # Policy keeps a system user on purge (files elsewhere may still be its); the fixture removes ours.
    assert user_exists()
