"""Process identity: a pid plus its kernel start time.

Pids are reused, so every owner recorded in shared memory or in a spill file
name is the pair ``(pid, start)`` where ``start`` is the process start time in
clock ticks since boot (field 22 of ``/proc/<pid>/stat``, the value psutil's
``create_time()`` is computed from).  An integer compares exactly across
processes, which a float from psutil would not guarantee.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from typing import NamedTuple


class Identity(NamedTuple):
    """A process as the stores record it."""

    pid: int
    start: int


def start_ticks(pid: int) -> int | None:
    """Return the start time of ``pid`` in clock ticks, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except PermissionError:
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ')'.
    rest = raw[raw.rfind(b")") + 2 :].split()
    # rest[0] is field 3 (state); field 22 (starttime) is rest[19].
    try:
        if rest[0] == b"Z":
            return None  # a zombie has exited; it holds nothing any more
        return int(rest[19])
    except (IndexError, ValueError):
        return None


_self_cache: Identity | None = None


def _forget_self() -> None:
    global _self_cache
    _self_cache = None


# Cached per process without asking for the pid on every call (a system
# call on hot paths): a forked child drops the parent's identity.
os.register_at_fork(after_in_child=_forget_self)


def self_identity() -> Identity:
    """Identity of the calling process (cached; a forked child reads its own)."""
    global _self_cache
    if _self_cache is None:
        pid = os.getpid()
        start = start_ticks(pid)
        if start is None:  # pragma: no cover - /proc always shows ourselves
            raise RuntimeError("cannot read /proc/self/stat")
        _self_cache = Identity(pid, start)
    return _self_cache


def is_alive(ident: Identity | tuple[int, int]) -> bool:
    """True if the process recorded as ``ident`` is still running.

    False when the pid is gone, is a zombie, or now belongs to another process
    (a different start time).
    """
    pid, start = ident
    if pid <= 0:
        return False
    return start_ticks(pid) == start


def is_stopped(ident: Identity | tuple[int, int]) -> bool:
    """True if ``ident`` is alive and stopped (SIGSTOP, job control, a tracer).

    Such a process makes no progress until someone resumes it, whatever it holds.
    """
    return stop_mark(ident) is not None


def stop_mark(ident: Identity | tuple[int, int]) -> int | None:
    """None unless ``ident`` is alive and stopped; then a mark of this stop.

    The mark is the process's count of context switches, which stands still
    while it stays stopped and moves if it was resumed and stopped again: two
    equal marks seen a second apart mean a second stopped, where the state
    alone, sampled twice, would hide the run between.
    """
    pid, start = ident
    if pid <= 0:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
        rest = raw[raw.rfind(b")") + 2 :].split()
        if rest[0] not in (b"T", b"t") or int(rest[19]) != start:
            return None
        with open(f"/proc/{pid}/status", "rb") as f:
            status = f.read()
    except (OSError, IndexError, ValueError):
        return None
    mark = 0
    for line in status.splitlines():
        if b"ctxt_switches:" in line:
            with contextlib.suppress(ValueError):
                mark += int(line.split()[1])
    return mark


def private_rss(pid: int) -> int | None:
    """Resident bytes of ``pid`` that are its own: RSS less shared memory.

    Every process attached to the ring maps the whole segment, so plain RSS
    counts the ring (and any tmpfs pages) once per process; ``RssAnon`` plus
    ``RssFile`` from ``/proc/<pid>/status`` leaves out ``RssShmem``.  None if
    the process is gone.
    """
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            text = f.read()
    except OSError:
        return None
    total = 0
    for line in text.splitlines():
        if line.startswith((b"RssAnon:", b"RssFile:")):
            total += int(line.split()[1]) * 1024  # the kernel reports kB
    return total


def kill_family(pid: int) -> None:
    """SIGKILL ``pid``, every process below it and the process groups they lead.

    A managed spamd runs in its own session and forks children while it
    starts: killing its group also takes those forked after the listing.
    The caller reaps ``pid``.
    """
    import psutil

    try:
        kids = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        kids = []
    leaders = []
    for k in kids:
        with contextlib.suppress(OSError):
            if os.getpgid(k.pid) == k.pid:
                leaders.append(k.pid)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    for group in leaders:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)
    for k in kids:
        with contextlib.suppress(psutil.Error):
            k.kill()


def session_of(pid: int) -> int | None:
    """The session id of ``pid`` (field 6 of ``/proc/<pid>/stat``), None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    rest = raw[raw.rfind(b")") + 2 :].split()
    try:
        return None if rest[0] == b"Z" else int(rest[3])
    except (IndexError, ValueError):
        return None


def session_members(leader: Identity) -> list[Identity]:
    """The live processes of the session ``leader`` started with setsid().

    With the leader alive, every process in its session.  With the leader
    gone, its session id still names its surviving members (the kernel
    reuses no pid while a session or group holds it), but only while no
    other process has taken the pid; members older than the leader cannot be
    its own.  A leader whose pid now belongs to another process has left
    nothing that can be told from that process's session.
    """
    sid = leader.pid
    if not is_alive(leader) and start_ticks(sid) is not None:
        return []
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        start = start_ticks(pid)
        if start is not None and start >= leader.start and session_of(pid) == sid:
            out.append(Identity(pid, start))
    return out


def stop_session(leader: Identity, timeout: float) -> int:
    """TERM what is left of ``leader``'s session, KILL it after ``timeout`` s; wait for it.

    For a daemon of an older generation that outlived its parent (a spamd
    that switched users lost its parent-death signal).  Every signal goes to
    a process checked by identity, never to a bare pid or group.  Returns
    how many processes were found.
    """
    found: set[Identity] = set()
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        members = session_members(leader)
        found.update(members)
        for m in members:
            if is_alive(m):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(m.pid, sig)
        deadline = time.monotonic() + wait
        while (left := session_members(leader)) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not left:
            break
    return len(found)
