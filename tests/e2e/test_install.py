"""scripts/install, for real: as root, into /opt, /usr/local and /etc of this host.

One test in steps, as an operator meets them: install; install again
(nothing changes) and once more over an edited configuration (kept, the
shipped one beside it as .dist); ``systemd-analyze verify`` the installed
unit; run the installed ``ringtrap run`` as the installed ``ringtrap`` user;
deliver with the installed ``ringtrap-deliver`` and find the record;
``logrotate -d`` the installed file; ``man -l`` the installed page without a
warning; uninstall (configuration and user kept), then purge (nothing left).

It skips unless root, and when a ringtrap is already installed here, so it
never replaces an operator's installation.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from trap_fixture import Trap, message, reply_id

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
INSTALL = ROOT / "scripts" / "install"
PREFIX = Path("/opt/ringtrap")
BIN = Path("/usr/local/bin")
UNIT = Path("/usr/local/lib/systemd/system/ringtrap.service")
MAN = Path("/usr/local/share/man/man8/ringtrap.8")
CONF = Path("/etc/ringtrap/ringtrap.toml")
DEFAULT = Path("/etc/default/ringtrap")
LOGROTATE = Path("/etc/logrotate.d/ringtrap")
MADE = [
    PREFIX,
    BIN / "ringtrap",
    BIN / "ringtrap-deliver",
    UNIT,
    MAN,
    CONF.parent,
    DEFAULT,
    LOGROTATE,
    Path("/usr/local/share/doc/ringtrap"),
]


def install(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["sh", str(INSTALL), *args],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def tree(path: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``path`` with its size and modification time."""
    out = {}
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            st = os.lstat(os.path.join(dirpath, f))
            out[os.path.join(dirpath, f)] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture
def host() -> Iterator[None]:
    if os.geteuid() != 0:
        pytest.skip("installs into /opt, /usr/local and /etc: needs root")
    present = [str(p) for p in MADE if p.exists() or p.is_symlink()]
    if present or user_exists("ringtrap"):
        pytest.skip(f"a ringtrap is installed on this host ({present or 'user ringtrap'})")
    for tool in ("systemd-analyze", "logrotate", "man"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} is not installed (dev.sh installs it)")
    try:
        yield
    finally:
        subprocess.run(
            ["sh", str(INSTALL), "--uninstall", "--purge"],
            capture_output=True,
            timeout=120,
            check=False,
        )


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    # traversable by the ringtrap user the trap drops to
    path = Path(tempfile.mkdtemp(prefix="rt-inst-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_install_run_deliver_and_uninstall(host: None) -> None:
    # -- install --------------------------------------------------------------------------
    install()
    current = PREFIX / "current"
    release = current.resolve()
    assert release.parent == PREFIX / "releases"
    assert (BIN / "ringtrap").resolve() == release / "bin" / "ringtrap"
    assert (BIN / "ringtrap-deliver").resolve() == release / "bin" / "ringtrap-deliver"
    assert UNIT.read_text() == (ROOT / "contrib" / "ringtrap.service").read_text()
    assert CONF.read_text() == (ROOT / "contrib" / "ringtrap.toml").read_text()
    assert DEFAULT.read_text() == (ROOT / "contrib" / "ringtrap.default").read_text()
    assert LOGROTATE.read_text() == (ROOT / "contrib" / "ringtrap.logrotate").read_text()
    assert user_exists("ringtrap")
    version = subprocess.run(
        [str(BIN / "ringtrap"), "--version"], capture_output=True, text=True, timeout=30, check=True
    ).stdout.split()
    assert version[0] == "ringtrap"

    # -- again: idempotent; an operator's edit is kept, the shipped file goes beside it --------
    before = tree(PREFIX) | tree(CONF.parent) | {str(MAN): (MAN.stat().st_size, 0)}
    install()
    after = tree(PREFIX) | tree(CONF.parent) | {str(MAN): (MAN.stat().st_size, 0)}
    assert after == before
    assert current.resolve() == release
    edited = CONF.read_text() + '\n[supervisor]\nlog_level = "warning"\n'
    CONF.write_text(edited)
    install()
    assert CONF.read_text() == edited
    assert Path(f"{CONF}.dist").read_text() == (ROOT / "contrib" / "ringtrap.toml").read_text()
    assert current.resolve() == release

    # -- the installed unit -------------------------------------------------------------
    done = subprocess.run(
        ["systemd-analyze", "verify", str(UNIT)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "ringtrap.service" not in done.stderr, done.stderr

    # -- the installed programs: run as the ringtrap user, deliver, a record -------------------
    with workdir() as wd:
        trap = Trap(wd, {"service": {"user": "ringtrap"}, "ingest": {"socket_mode": 0o666}})
        trap.rundir.chmod(0o755)
        trap.command = [str(BIN / "ringtrap")]
        try:
            trap.start()
            status = trap.status()
            assert status is not None
            uids = {p.uids().real for p in trap.children()}
            assert uids == {pwd.getpwnam("ringtrap").pw_uid}
            done = subprocess.run(
                [
                    str(BIN / "ringtrap-deliver"),
                    "--socket",
                    str(trap.rundir / "submit.sock"),
                    "--sender",
                    "s@example.org",
                    "--recipient",
                    "trap@trap.example.org",
                    "--client-address",
                    "192.0.2.8",
                    "--client-helo",
                    "mx.example.org",
                ],
                input=message(1),
                capture_output=True,
                timeout=60,
            )
            assert done.returncode == 0, done.stderr
            msgid = reply_id(done.stdout)
            [record] = trap.wait_records({msgid}, timeout=60)
            assert record["envelope"] == {
                "sender": "s@example.org",
                "recipients": ["trap@trap.example.org"],
                "client_address": "192.0.2.8",
                "client_helo": "mx.example.org",
            }
            trap.signal(signal.SIGTERM)
            assert trap.wait_exit(60) == 0
        finally:
            trap.close()

    # -- logrotate and the man page ---------------------------------------------------------
    done = subprocess.run(
        ["logrotate", "-d", str(LOGROTATE)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "/var/log/ringtrap/*.log" in done.stdout + done.stderr
    done = subprocess.run(
        ["man", "--warnings", "-l", str(MAN)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "MANWIDTH": "80"},
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert "ingest.socket" in done.stdout
    found = subprocess.run(
        ["man", "-w", "ringtrap"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "MANPATH": "/usr/local/share/man"},
    )
    assert found.stdout.strip() == str(MAN)

    # -- uninstall: the program goes, the configuration, data and user stay; purge: all ----
    install("--uninstall")
    for gone in (PREFIX, BIN / "ringtrap", BIN / "ringtrap-deliver", UNIT, MAN):
        assert not gone.exists() and not gone.is_symlink(), gone
    assert CONF.read_text() == edited and DEFAULT.exists() and user_exists("ringtrap")
    install("--uninstall", "--purge")
    assert [p for p in MADE if p.exists() or p.is_symlink()] == []
    assert not user_exists("ringtrap")
