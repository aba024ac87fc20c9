"""A private, real rspamd for tests: offline, on a Unix socket, its Hyperscan cache kept.

``RspamdProcess`` starts Debian's rspamd in the foreground in a private
network namespace (``unshare -n`` with :mod:`tests.netns_dns`: only ``lo``,
and a DNS that answers NXDOMAIN), with a configuration of its own: rspamd's
stock rules, one normal worker on ``<dir>/rspamd.sock``, network modules
off.  Its DBDIR is :data:`HS_CACHE` and outlives the test run, so only the
first run on a machine pays the Hyperscan compile.  It waits until
``GET /ping`` answers and stops rspamd with SIGTERM, making sure none of its
processes survive.  Deliberately independent of ``ringtrap.scan.rspamd``
and of the managed configuration in ``ringtrap.control.managed_rspamd``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

import psutil

RSPAMD = shutil.which("rspamd")
NETNS_DNS = Path(__file__).resolve().parent / "netns_dns.py"
# kept across runs: the compiled Hyperscan databases (tens of seconds to build)
HS_CACHE = Path(f"/var/tmp/ringtrap-tests-rspamd-{os.geteuid()}")
# the user rspamd's workers switch to when started as root (Debian's package makes it)
RUN_AS = "_rspamd"

CONFIG = """\
.include "$CONFDIR/common.conf"
options {{
    pidfile = "$RUNDIR/rspamd.pid";
    .include "$CONFDIR/options.inc"
    dns {{ nameserver = ["127.0.0.1:53"]; timeout = 1s; retransmits = 1; }}
}}
logging {{ type = "console"; level = "info"; log_severity = true; }}
worker "normal" {{
    bind_socket = "{sock} mode=0666";
    .include "$CONFDIR/worker-normal.inc"
    count = {count};
}}
"""
OFF = ("rbl", "surbl", "emails", "spf", "dkim", "dmarc", "arc", "asn", "fuzzy_check",
       "dcc", "mx_check", "url_redirector", "hfilter", "bimi", "whitelist")


def rspamd_missing_reason() -> str | None:
    """Why a real offline rspamd cannot be started here, or None if it can."""
    if RSPAMD is None:
        return "rspamd is not installed (Debian package 'rspamd')"
    if os.geteuid() != 0:
        return "an offline rspamd needs a private network namespace (unshare -n): run as root"
    return None


def ping(path: Path, timeout: float = 2.0) -> bool:
    """True if ``GET /ping`` on the Unix socket ``path`` answers ``pong``."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(path))
            s.sendall(b"GET /ping HTTP/1.0\r\n\r\n")
            reply = b""
            while chunk := s.recv(4096):
                reply += chunk
    except OSError:
        return False
    return reply.startswith(b"HTTP/1.") and reply.rstrip().endswith(b"pong")


class RspamdStartError(RuntimeError):
    """rspamd exited or did not answer before the startup deadline."""


class RspamdProcess:
    """One offline rspamd whose normal worker listens on ``unix:<dir>/rspamd.sock``."""

    def __init__(self, *, log_path: Path | None = None, count: int = 2,
                 startup_timeout: float = 180.0) -> None:
        """Describe the rspamd; nothing runs until :meth:`start`.

        ``startup_timeout`` covers a first Hyperscan compile on a loaded box.
        """
        self.count = count
        self.startup_timeout = startup_timeout
        self._log_path = log_path
        self.workdir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def socket_path(self) -> Path:
        assert self.workdir is not None, "rspamd not started"
        return self.workdir / "rspamd.sock"

    @property
    def address(self) -> str:
        """``unix:/path`` for :class:`ringtrap.scan.rspamd.RspamdClient`."""
        return f"unix:{self.socket_path}"

    @property
    def log_path(self) -> Path:
        assert self.workdir is not None
        return self._log_path or self.workdir / "rspamd.log"

    def start(self) -> None:
        """Start rspamd and wait until it answers; raises RspamdStartError."""
        self.workdir = Path(tempfile.mkdtemp(prefix="rt-rspamd-", dir="/tmp"))
        local = self.workdir / "local.d"
        local.mkdir()
        for module in OFF:
            (local / f"{module}.conf").write_text("enabled = false;\n")
        conf = self.workdir / "rspamd.conf"
        conf.write_text(CONFIG.format(sock=self.socket_path, count=self.count))
        HS_CACHE.mkdir(mode=0o755, exist_ok=True)
        shutil.chown(HS_CACHE, RUN_AS, RUN_AS)
        argv = ["unshare", "-n", sys.executable, str(NETNS_DNS), str(RSPAMD), "-f",
                "-c", str(conf), "-u", RUN_AS, "-g", RUN_AS,
                f"--var=LOCAL_CONFDIR={self.workdir}", f"--var=RUNDIR={self.workdir}",
                f"--var=LOGDIR={self.workdir}", f"--var=DBDIR={HS_CACHE}"]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=log, start_new_session=True)
        deadline = time.monotonic() + self.startup_timeout
        while not ping(self.socket_path):
            if self.proc.poll() is not None:
                raise RspamdStartError(f"rspamd exited {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RspamdStartError(f"rspamd did not answer in {self.startup_timeout} s")
            time.sleep(0.2)

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """SIGTERM rspamd, wait, then SIGKILL whatever of its session is left."""
        if self.proc is not None:
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
            for p in psutil.process_iter(["pid"]):
                with contextlib.suppress(psutil.Error, ProcessLookupError):
                    if os.getsid(p.pid) == self.proc.pid:
                        p.kill()
            self.proc = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> RspamdProcess:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
