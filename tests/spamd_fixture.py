"""A private, real spamd for tests: one process on a Unix socket and on 127.0.0.1.

``SpamdProcess`` starts Debian's spamd in the foreground with local tests only
(``-L``), a fixed pool of children, TELL allowed and a Bayes database in its own
temporary directory, waits until PING answers on both listeners, and stops it
with SIGTERM, making sure no spamd process of its own survives.  It is plain
code, not a fixture, so a conftest or a test module can wrap it at any scope::

    @pytest.fixture(scope="session")
    def spamd_server(tmp_path_factory):
        reason = spamd_missing_reason()
        if reason:
            pytest.skip(reason)
        with SpamdProcess(log_path=tmp_path_factory.mktemp("spamd") / "spamd.log") as proc:
            yield proc
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import psutil

SPAMD = shutil.which("spamd") or ("/usr/sbin/spamd" if os.path.exists("/usr/sbin/spamd") else None)
SPAMC = shutil.which("spamc")
# spamd refuses to run its children as root; "nobody" is Debian's unprivileged user.
RUN_AS = "nobody"


def spamd_missing_reason() -> str | None:
    """Why a real spamd cannot be started here, or None if it can."""
    if SPAMD is None:
        return "spamd is not installed (Debian package 'spamd')"
    return None


def spamc_missing_reason() -> str | None:
    """Why the spamc binary (the oracle) is unavailable, or None."""
    if SPAMC is None:
        return "spamc is not installed (Debian package 'spamc')"
    return None


def free_tcp_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago (spamd start retries on a clash)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ping(family: int, address: str | tuple[str, int], timeout: float = 2.0) -> bool:
    """True if a SPAMC PING at ``address`` gets a PONG.

    Deliberately independent of ``ringtrap.scan.spamd`` so a broken client cannot
    make the fixture look broken, or the other way round.
    """
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(address)
            s.sendall(b"PING SPAMC/1.5\r\n\r\n")
            reply = b""
            while chunk := s.recv(4096):
                reply += chunk
    except OSError:
        return False
    return reply.startswith(b"SPAMD/") and b" 0 PONG" in reply


class SpamdStartError(RuntimeError):
    """spamd exited or did not answer PING before the startup deadline."""


class SpamdProcess:
    """One spamd listening on ``unix:<dir>/spamd.sock`` and ``tcp:127.0.0.1:<port>``."""

    def __init__(
        self,
        *,
        log_path: Path | None = None,
        max_children: int = 2,
        startup_timeout: float = 60.0,
        extra_args: tuple[str, ...] = (),
        port: int = 0,
    ) -> None:
        """Describe the spamd to start; nothing runs until :meth:`start`.

        ``log_path`` receives spamd's log (default: inside the private
        directory, which :meth:`stop` removes).  ``extra_args`` are appended to
        the command line, e.g. ``("--cf=required_score 3.0",)``.  ``port``:
        the TCP port to listen on (default: a free one), e.g. to start a
        spamd again where a killed one listened.
        """
        self.fixed_port = port
        self.max_children = max_children
        self.startup_timeout = startup_timeout
        self.extra_args = tuple(extra_args)
        self._log_path = log_path
        self.workdir: Path | None = None
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    # -- where it listens -------------------------------------------------

    @property
    def socket_path(self) -> Path:
        """The Unix socket spamd listens on."""
        assert self.workdir is not None, "spamd not started"
        return self.workdir / "spamd.sock"

    @property
    def unix_address(self) -> str:
        """``unix:/path`` for :class:`ringtrap.scan.spamd.SpamdClient`."""
        return f"unix:{self.socket_path}"

    @property
    def tcp_address(self) -> str:
        """``tcp:127.0.0.1:PORT`` for :class:`ringtrap.scan.spamd.SpamdClient`."""
        return f"tcp:127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        """The Unix address: the transport a managed spamd uses in production."""
        return self.unix_address

    @property
    def log_path(self) -> Path:
        """spamd's log file (stdout and stderr as well)."""
        if self._log_path is not None:
            return self._log_path
        assert self.workdir is not None, "spamd not started"
        return self.workdir / "spamd.log"

    @property
    def pid(self) -> int:
        """The spamd parent's pid."""
        assert self.proc is not None, "spamd not started"
        return self.proc.pid

    def command(self) -> list[str]:
        """The exact spamd command line (valid once the directory and port are chosen)."""
        assert SPAMD is not None and self.workdir is not None
        d = self.workdir
        cmd = [
            SPAMD,
            "--local",  # no DNS or network tests: results are deterministic offline
            "--nouser-config",  # no ~/.spamassassin of whoever runs the tests
            f"--socketpath={d / 'spamd.sock'}",
            f"--listen=127.0.0.1:{self.port}",
            "--allowed-ips=127.0.0.1",
            f"--max-children={self.max_children}",
            "--round-robin",  # exactly max-children, no scaling noise in timings
            f"--pidfile={d / 'spamd.pid'}",
            "--syslog=stderr",
            "--allow-tell",
            f"--helper-home-dir={d / 'home'}",
            f"--cf=bayes_path {d / 'bayes' / 'bayes'}",
            # A scan must not change the Bayes database: TELL tests count on
            # a message being new, and the oracle on stable scores.
            "--cf=bayes_auto_learn 0",
        ]
        if os.geteuid() == 0:
            cmd.append(f"--username={RUN_AS}")
        return cmd + list(self.extra_args)

    # -- lifecycle --------------------------------------------------------

    def start(self) -> None:
        """Start spamd and wait until both listeners answer PING; raise SpamdStartError."""
        if SPAMD is None:
            raise SpamdStartError(spamd_missing_reason())
        if self.proc is not None:
            raise RuntimeError("spamd already started")
        # A short private directory: socket paths are limited to 107 bytes and
        # pytest's base temp (mode 0700) is not reachable by the spamd user.
        self.workdir = Path(tempfile.mkdtemp(prefix="ringtrap-spamd-"))
        try:
            self._prepare_dirs()
            for attempt in range(3):
                self.port = self.fixed_port or free_tcp_port()
                if self._launch_and_wait():
                    return
                # Another process may have taken the port between probe and bind.
                if attempt == 2 or "Address already in use" not in self._log_tail():
                    raise SpamdStartError(
                        f"spamd did not start; command: {self.command()}\n"
                        f"log tail:\n{self._log_tail()}"
                    )
        except BaseException:
            self.stop()
            raise

    def _prepare_dirs(self) -> None:
        assert self.workdir is not None
        self.workdir.chmod(0o755)
        for sub in ("bayes", "home"):
            path = self.workdir / sub
            path.mkdir()
            if os.geteuid() == 0:
                entry = pwd.getpwnam(RUN_AS)
                os.chown(path, entry.pw_uid, entry.pw_gid)

    def _launch_and_wait(self) -> bool:
        """Run spamd once; True when it answers, False if it exited early."""
        env = dict(os.environ, HOME=str(self.workdir / "home"), LC_ALL="C")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                # Its own process group, so stop() can find every child it forks.
                start_new_session=True,
            )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                return False
            if ping(socket.AF_UNIX, str(self.socket_path)) and ping(
                socket.AF_INET, ("127.0.0.1", self.port)
            ):
                return True
            time.sleep(0.1)
        self._terminate()
        raise SpamdStartError(
            f"spamd not answering PING after {self.startup_timeout} s\n"
            f"log tail:\n{self._log_tail()}"
        )

    def _log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM spamd, reap it, make sure none of its children run on; remove the directory."""
        try:
            self._terminate(timeout)
        finally:
            if self.workdir is not None:
                # Keep a log kept outside the directory; the rest is scratch.
                shutil.rmtree(self.workdir, ignore_errors=True)
                self.workdir = None

    def _terminate(self, timeout: float = 15.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        pgid = proc.pid  # start_new_session made spamd its group leader
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        # spamd exits without reaping its children; they exit on their own
        # SIGINT a moment later (as zombies of init, which is harmless).
        deadline = time.monotonic() + timeout
        while (left := _live_group_members(pgid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        for member in left:
            with contextlib.suppress(psutil.NoSuchProcess):
                member.kill()

    def kill(self) -> None:
        """SIGKILL spamd and every child of its group at once, as a crash would; keep the
        directory, so :meth:`start` of a new SpamdProcess on :attr:`port` can follow."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 10.0
        while _live_group_members(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)

    def __enter__(self) -> SpamdProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _live_group_members(pgid: int) -> list[psutil.Process]:
    """Processes of group ``pgid`` that still run (zombies excluded)."""
    members = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                members.append(proc)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return members
