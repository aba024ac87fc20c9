"""The system under stress: a ringtrap started (or attached to) by the harness, and its spamd.

:class:`StressTrap` runs ``ringtrap run`` as a subprocess the way the
end-to-end tests do — a generated configuration with a unique ring name, an
overflow directory under /dev/shm, a short socket path, a readiness wait on
the monotonic clock — and can SIGKILL and restart its supervisor (the new one
adopts the ring; the old generation's children exit or are stopped by it).

:class:`StressSpamd` is the tests' private spamd with two more verbs: kill one
of its children mid-scan, or kill the whole spamd and start it again on the
same socket.

:class:`ProcessMeter` reads memory and CPU of a set of pids from /proc and
psutil; :class:`ResultsTail` follows the results files as workers append.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from spamd_fixture import SpamdProcess, _live_group_members  # noqa: E402

from ringtrap import config as configmod  # noqa: E402
from ringtrap.base import proc  # noqa: E402
from ringtrap.command.cli import count_purge  # noqa: E402
from ringtrap.command.status import gather_status  # noqa: E402
from ringtrap.command.top import Sampler  # noqa: E402
from ringtrap.overflow import Overflow, parse_ready  # noqa: E402
from ringtrap.store.segment import unlink_name  # noqa: E402

MIB = 1024 * 1024


def wait_until(pred: Callable[[], Any], timeout: float, what: str, step: float = 0.1) -> Any:
    """Poll ``pred`` until it returns something truthy; TimeoutError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(step)


# --- spamd ------------------------------------------------------------------------


class StressSpamd(SpamdProcess):
    """A private spamd the harness owns, shared by ringtrap and the baselines."""

    def children_pids(self) -> list[int]:
        """The spamd children now alive (they scan; the parent only accepts)."""
        try:
            kids = psutil.Process(self.pid).children()
        except psutil.Error:
            return []
        return [k.pid for k in kids if k.status() != psutil.STATUS_ZOMBIE]

    def kill_child(self, rng: random.Random) -> int | None:
        """SIGKILL one child, preferably one that is scanning; returns its pid."""
        busy: list[int] = []
        idle: list[int] = []
        for pid in self.children_pids():
            try:
                cpu = psutil.Process(pid).cpu_percent(0.05)
            except psutil.Error:
                continue
            (busy if cpu > 0 else idle).append(pid)
        pool = busy or idle
        if not pool:
            return None
        pid = rng.choice(pool)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        return pid

    def kill_and_restart(self, down_for: float = 2.0) -> float:
        """SIGKILL spamd and all its children, stay down ``down_for`` s, start it again.

        Returns the seconds until it answered PING again. The socket path is
        kept, so every client finds it again without being told.
        """
        assert self.proc is not None
        pgid = self.proc.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        self.proc.wait()
        wait_until(lambda: not _live_group_members(pgid), 10, "spamd's children to die")
        time.sleep(down_for)
        t0 = time.monotonic()
        if not self._launch_and_wait():
            raise RuntimeError(f"spamd did not start again:\n{self._log_tail()}")
        return time.monotonic() - t0


# --- the trap ------------------------------------------------------------------------


def _toml(settings: dict[str, dict[str, Any]]) -> str:
    lines = []
    for section, values in settings.items():
        lines.append(f"[{section}]")
        for k, v in values.items():
            lines.append(f"{k} = {json.dumps(v)}")
        lines.append("")
    return "\n".join(lines)


def purge_time_away_from_now() -> str:
    """A daily purge time about 12 hours away, so the trap's own purge stays out of the run.

    The harness purges on its own schedule and accounts for every id it drops.
    """
    t = dt.datetime.now() + dt.timedelta(hours=12)
    return f"{t.hour:02d}:{t.minute:02d}"


class StressTrap:
    """One ringtrap under stress: started here, or an already running one (``attach``)."""

    def __init__(self, workdir: Path, settings: dict[str, dict[str, Any]] | None = None,
                 attach: Path | None = None) -> None:
        self.workdir = workdir
        self.attached = attach is not None
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "ringtrap.log"
        self.starts = 0
        if attach is not None:
            self.config_path = attach
            self.cfg = configmod.load(attach)
            self.rundir: Path | None = None
        else:
            tag = uuid.uuid4().hex[:8]
            # socket paths are limited to 107 bytes: keep the runtime dir short
            self.rundir = Path(tempfile.mkdtemp(prefix=f"rts-{tag}-", dir="/tmp"))
            base: dict[str, dict[str, Any]] = {
                "ingest": {"socket": str(self.rundir / "ingest.sock")},
                "ring": {"name": f"rt-stress-{tag}"},
                "overflow": {"dir": f"/dev/shm/rt-stress-{tag}.overflow",
                             "purge_at": purge_time_away_from_now()},
                "results": {"dir": str(workdir / "results")},
                "supervisor": {"log_level": "info"},
                # the flood cycles through a set of --set-size messages and the side
                # by side drains copies of it: repeats of the harness's making, not
                # campaigns, so each is scanned (--set dedupe.skip_scan=true to see
                # what skipping campaign repeats does)
                "dedupe": {"skip_scan": False},
            }
            for section, values in (settings or {}).items():
                base.setdefault(section, {}).update(values)
            self.config_path = workdir / "ringtrap.toml"
            self.config_path.write_text(_toml(base))
            self.cfg = configmod.load(self.config_path)
        self.sampler = Sampler(self.cfg)

    # -- lifecycle -------------------------------------------------------------

    @property
    def socket_path(self) -> Path:
        """The ingest socket."""
        return self.cfg.ingest.socket

    def start(self, wait: bool = True, timeout: float = 90.0) -> float:
        """Start the supervisor; returns seconds until ready (0 without ``wait``)."""
        if self.attached:
            raise RuntimeError("an attached trap is not the harness's to start")
        env = dict(os.environ)
        for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            env.pop(k, None)
        t0 = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ringtrap.command.cli", "run", "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=ROOT, env=env,
            )
        self.starts += 1
        if wait:
            self.wait_ready(timeout)
        return time.monotonic() - t0 if wait else 0.0

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Until the socket exists and the ingest and every worker are alive."""
        want = self.cfg.workers.count

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"ringtrap exited {self.proc.returncode}:\n{self.log_tail()}")
            if not self.socket_path.exists():
                return False
            st = self.fresh_status()
            if st is None or (self.proc is not None and st["supervisor_pid"] != self.proc.pid):
                return False
            roles = [p["role"] for p in st["processes"] if p["alive"]]
            return roles.count("worker") >= want and "ingest" in roles

        wait_until(ready, timeout, "ringtrap to be ready")

    @property
    def supervisor_pid(self) -> int | None:
        """The running supervisor's pid (from the ring when attached)."""
        if self.proc is not None:
            return self.proc.pid
        st = self.fresh_status()
        return None if st is None else int(st["supervisor_pid"])

    def kill_supervisor_and_restart(self) -> tuple[int, float]:
        """SIGKILL the supervisor and start a new one; returns (old pid, seconds to ready)."""
        assert self.proc is not None
        old = self.proc.pid
        self.proc.kill()
        self.proc.wait()
        return old, self.start(wait=True)

    def stop(self, timeout: float = 120.0) -> int | None:
        """TERM the supervisor (graceful drain: the ring goes to the overflow); its exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def close(self) -> None:
        """Kill whatever is left and remove the ring, overflow and socket directory we made."""
        self.sampler.close()
        if self.attached:
            return
        if self.proc is not None and self.proc.poll() is None:
            proc.kill_family(self.proc.pid)  # a managed spamd's children too
            self.proc.wait(10)
        unlink_name(self.cfg.ring.name)
        shutil.rmtree(self.cfg.overflow.dir, ignore_errors=True)
        if self.rundir is not None:
            shutil.rmtree(self.rundir, ignore_errors=True)

    def log_tail(self, n: int = 40) -> str:
        """The last lines of the trap's log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return "(no log)"

    # -- observing -----------------------------------------------------------------

    def status(self) -> dict[str, Any] | None:
        """What ``ringtrap status --json`` shows; None while no ring exists.

        Keeps the ring mapped between calls: for the sampling loop only.
        """
        return self.sampler.sample().status

    def fresh_status(self) -> dict[str, Any] | None:
        """Like :meth:`status` with a mapping of its own, for other threads."""
        return gather_status(self.cfg)

    def pids(self, role: str) -> list[int]:
        """Alive pids of ``role`` (worker, ingest) from the process table."""
        st = self.fresh_status()
        if st is None:
            return []
        return [p["pid"] for p in st["processes"] if p["role"] == role and p["alive"]]

    def overflow(self) -> Overflow:
        """A handle on the trap's overflow directory."""
        return Overflow(self.cfg.overflow.dir, self.cfg.overflow.max_bytes, create=False)

    def purge(self) -> tuple[list[str], int]:
        """Drop the overflow backlog now, as ``ringtrap purge`` does, keeping the dropped ids.

        The drop is counted in the trap's shared counters (``purged_files``)
        when a ring exists.  Returns (ids dropped, bytes dropped).
        """
        try:
            o = self.overflow()
        except FileNotFoundError:
            return [], 0
        o.recover_dead()
        dropped: list[str] = []
        res = o.purge(dropped=dropped)
        count_purge(self.cfg.ring.name, res.count, res.bytes)
        return dropped, res.bytes

    def quarantined_ids(self) -> list[str]:
        """Ids in the overflow's failed/ (quarantined after killing workers too often)."""
        d = Path(self.cfg.overflow.dir) / "failed"
        try:
            names = os.listdir(d)
        except FileNotFoundError:
            return []
        out = []
        for n in names:
            parsed = parse_ready(n)
            if parsed is not None:
                out.append(parsed[0])
        return out


# --- memory and CPU of processes ---------------------------------------------------------


def proc_memory(pid: int) -> dict[str, int] | None:
    """Resident memory of ``pid`` from /proc/<pid>/status, in bytes; None if it is gone.

    ``rss`` is VmRSS; ``shmem`` the shared-memory pages in it (for ringtrap:
    the ring segment, fixed by configuration); ``own`` = rss - shmem, what the
    process itself holds; ``anon`` its anonymous pages.
    """
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    vals: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
            vals[key] = int(rest.split()[0]) * 1024
    if "VmRSS" not in vals:
        return None  # a zombie
    shmem = vals.get("RssShmem", 0)
    return {"rss": vals["VmRSS"], "anon": vals.get("RssAnon", 0),
            "file": vals.get("RssFile", 0), "shmem": shmem, "own": vals["VmRSS"] - shmem}


def proc_private(pid: int) -> int | None:
    """Private (unshared) resident bytes of ``pid`` from smaps_rollup; None if unreadable."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii", errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    total = 0
    for line in text.splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            total += int(line.split()[1]) * 1024
    return total


class ProcessMeter:
    """CPU share and memory of processes sampled once a tick, keyed by a label."""

    def __init__(self) -> None:
        self._procs: dict[int, psutil.Process] = {}

    def read(self, pid: int, private: bool = False) -> dict[str, Any] | None:
        """One reading of ``pid``: memory, cumulative CPU seconds, CPU % since the last."""
        mem = proc_memory(pid)
        if mem is None:
            self._procs.pop(pid, None)
            return None
        p = self._procs.get(pid)
        try:
            if p is None:
                p = self._procs[pid] = psutil.Process(pid)
                pct = 0.0
                p.cpu_percent(None)
            else:
                pct = p.cpu_percent(None)
            t = p.cpu_times()
        except psutil.Error:
            self._procs.pop(pid, None)
            return None
        out: dict[str, Any] = dict(mem)
        out["cpu_s"] = round(t.user + t.system, 2)
        out["cpu_pct"] = round(pct, 1)
        if private:
            out["private"] = proc_private(pid)
        return out

    def forget_dead(self, alive: set[int]) -> None:
        """Drop handles of pids not in ``alive``."""
        for pid in list(self._procs):
            if pid not in alive:
                del self._procs[pid]


def group_cpu_seconds(pid: int, recursive: bool = False) -> float:
    """CPU seconds of ``pid``, its live children (their children too if
    ``recursive``) and the children it has reaped."""
    try:
        p = psutil.Process(pid)
        t = p.cpu_times()
        total = t.user + t.system + t.children_user + t.children_system
        for k in p.children(recursive=recursive):
            with contextlib.suppress(psutil.Error):
                kt = k.cpu_times()
                total += kt.user + kt.system
        return total
    except psutil.Error:
        return 0.0


# --- the results files ---------------------------------------------------------------------


class ResultsTail:
    """Follows ``results-*.jsonl`` in a directory: each call returns the records appended since."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._offsets: dict[str, int] = {}

    def read_new(self) -> list[dict[str, Any]]:
        """Complete lines appended since the last call (a line being written waits)."""
        out: list[dict[str, Any]] = []
        try:
            names = sorted(n for n in os.listdir(self.directory)
                           if n.startswith("results-") and n.endswith(".jsonl"))
        except FileNotFoundError:
            return out
        for name in names:
            off = self._offsets.get(name, 0)
            try:
                with open(self.directory / name, "rb") as f:
                    f.seek(off)
                    data = f.read()
            except FileNotFoundError:
                continue
            end = data.rfind(b"\n") + 1
            if end <= 0:
                continue
            self._offsets[name] = off + end
            for line in data[:end].splitlines():
                with contextlib.suppress(ValueError):
                    rec = json.loads(line)
                    if isinstance(rec, dict):
                        out.append(rec)
        return out


__all__ = [
    "MIB", "ProcessMeter", "ResultsTail", "StressSpamd", "StressTrap",
    "group_cpu_seconds", "proc_memory", "proc_private", "purge_time_away_from_now",
    "wait_until",
]
