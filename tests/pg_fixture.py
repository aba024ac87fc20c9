"""A private, real PostgreSQL for tests: ``initdb`` in a temporary folder, a Unix socket only.

``PgServer`` runs Debian's PostgreSQL (``/usr/lib/postgresql/<v>/bin``) with
no TCP listener (``listen_addresses=''``), its socket in its own folder,
trust authentication for its superuser ``ringtrap``, and is stopped by the
postmaster's pid (SIGINT: PostgreSQL's fast shutdown).  ``initdb`` refuses
root, so as root the folder is handed to ``nobody`` and the server runs as
that user; the folder is under /tmp (pytest's own is private to root).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

_BINS = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
PG_BIN = Path(_BINS[-1]) if _BINS else None
RUN_AS = "nobody"


def pg_missing_reason() -> str | None:
    """Why a real PostgreSQL or the psycopg client cannot be used here, or None."""
    if PG_BIN is None or not (PG_BIN / "initdb").exists():
        return "PostgreSQL is not installed (Debian package 'postgresql')"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'ringtrap[hub]')"
    return None


class PgServer:
    """One private PostgreSQL server; see the module docstring."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="rt-pg-", dir="/tmp"))
        self.data = self.root / "data"
        self.log_path = self.root / "pg.log"
        self._user = pwd.getpwnam(RUN_AS) if os.geteuid() == 0 else None
        if self._user is not None:
            os.chown(self.root, self._user.pw_uid, self._user.pw_gid)
        self.pid = 0

    @property
    def conninfo(self) -> str:
        return f"host={self.root} dbname=postgres user=ringtrap"

    def _run(self, argv: list[str]) -> None:
        u = self._user

        def drop() -> None:  # pragma: no cover - runs in the child
            if u is not None:
                os.setgid(u.pw_gid)
                os.setuid(u.pw_uid)

        env = {"PATH": os.environ.get("PATH", ""), "LC_ALL": "C.UTF-8", "HOME": str(self.root)}
        subprocess.run(argv, check=True, preexec_fn=drop, cwd=self.root, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)

    def start(self) -> None:
        assert PG_BIN is not None
        if not self.data.exists():
            self._run([str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "ringtrap",
                       "--auth=trust", "-E", "UTF8", "--no-sync"])
        opts = f"-k {self.root} -c listen_addresses='' -c fsync=off"
        self._run([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", opts,
                   "-l", str(self.log_path), "-w", "-t", "60", "start"])
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])

    def stop(self, timeout: float = 30.0) -> None:
        """SIGINT by pid (fast shutdown), SIGKILL after ``timeout``."""
        if not self.pid:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGINT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        self.pid = 0

    def __enter__(self) -> PgServer:
        try:
            self.start()
        except BaseException:
            self.stop()
            shutil.rmtree(self.root, ignore_errors=True)
            raise
        return self

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
