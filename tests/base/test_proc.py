"""Process identity and memory accounting read from /proc."""

from __future__ import annotations

import contextlib
import mmap
import os
import signal
import subprocess
import time
import uuid

import posix_ipc
import psutil

from ringtrap.base import proc


def test_identity_tells_a_reused_pid_from_the_original() -> None:
    me = proc.self_identity()
    assert proc.is_alive(me)
    assert not proc.is_alive((me.pid, me.start + 1))
    assert not proc.is_alive((0, me.start))


def test_private_rss_leaves_out_mapped_shared_memory() -> None:
    size = 64 << 20
    shm = posix_ipc.SharedMemory(f"/rt-test-proc-{uuid.uuid4().hex[:8]}",
                                 posix_ipc.O_CREX, size=size)
    try:
        m = mmap.mmap(shm.fd, size)
        try:
            m[:] = b"\1" * size  # touch every page, as a ring user does
            rss = psutil.Process().memory_info().rss
            private = proc.private_rss(os.getpid())
            assert private is not None
            assert rss - private >= size * 0.9  # the segment counts in RSS only
        finally:
            m.close()
    finally:
        shm.close_fd()
        shm.unlink()


def test_private_rss_of_a_missing_process_is_none() -> None:
    assert proc.private_rss(2**22 + 1) is None


def test_kill_family_takes_the_groups_its_children_lead() -> None:
    # A session leader below pid (as a managed spamd is) whose own child has
    # left the tree (its parent exited): only the group still finds it.
    top = subprocess.Popen(
        ["sh", "-c", "setsid sh -c '(sleep 300 &); sleep 300' & sleep 300"],
        stdin=subprocess.DEVNULL,
    )
    group: int | None = None
    try:
        def leader() -> int | None:
            for k in psutil.Process(top.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error, OSError):
                    if os.getpgid(k.pid) == k.pid:
                        return k.pid
            return None

        deadline = time.monotonic() + 10
        while (group := leader()) is None or len(members(group)) < 3:
            assert time.monotonic() < deadline, "the process tree did not come up"
            time.sleep(0.02)
        strays = [p for p in members(group)
                  if p not in {k.pid for k in psutil.Process(top.pid).children(recursive=True)}]
        assert strays, "a member of the group outside the tree"
        proc.kill_family(top.pid)
        top.wait(10)
        deadline = time.monotonic() + 10
        while members(group):
            assert time.monotonic() < deadline, f"left alive: {members(group)}"
            time.sleep(0.02)
    finally:
        if group is not None:  # whatever a failed kill left
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
        if top.poll() is None:
            top.kill()
            top.wait()


def members(group: int) -> list[int]:
    """Live (not zombie) processes in process group ``group``."""
    found = []
    for p in psutil.process_iter(["status"]):
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(p.pid) == group and p.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(p.pid)
    return found


def test_stop_session_finds_what_outlived_its_leader_and_never_a_reused_pid() -> None:
    # a daemon of an older generation: its own session, a child that
    # ignores TERM, and a leader that is gone by the time anyone looks
    leader = subprocess.Popen(["sh", "-c", "sh -c 'trap \"\" TERM; sleep 300' & exec sleep 300"],
                              stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        start = proc.start_ticks(leader.pid)
        assert start is not None
        ident = proc.Identity(leader.pid, start)
        deadline = time.monotonic() + 10
        while len(proc.session_members(ident)) < 3:
            assert time.monotonic() < deadline, "the session did not come up"
            time.sleep(0.02)
        # the same pid with another start time is another process: nothing of ours
        assert proc.session_members(proc.Identity(leader.pid, start - 1)) == []
        leader.kill()
        leader.wait()
        left = proc.session_members(ident)
        assert len(left) == 2 and all(m.pid != leader.pid for m in left)
        assert proc.stop_session(ident, timeout=0.5) == 2
        assert proc.session_members(ident) == []
        assert not any(proc.is_alive(m) for m in left)
    finally:
        for m in proc.session_members(proc.Identity(leader.pid, 0)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(m.pid, signal.SIGKILL)
        if leader.poll() is None:
            leader.kill()
            leader.wait()


def wait_state(pid: int, states: bytes) -> None:
    for _ in range(500):
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
        if raw[raw.rfind(b")") + 2 :].split()[0] in states.split():
            return
        time.sleep(0.01)
    raise AssertionError(f"pid {pid} never reached {states!r}")


def test_stop_mark_holds_through_one_stop_and_moves_with_a_resume() -> None:
    child = subprocess.Popen(["sleep", "60"])
    try:
        ident = proc.Identity(child.pid, proc.start_ticks(child.pid) or -1)
        wait_state(child.pid, b"S")
        assert proc.stop_mark(ident) is None
        os.kill(child.pid, signal.SIGSTOP)
        wait_state(child.pid, b"T")
        first = proc.stop_mark(ident)
        assert first is not None and proc.is_stopped(ident)
        time.sleep(0.2)
        assert proc.stop_mark(ident) == first  # still the same stop
        assert proc.stop_mark((ident.pid, ident.start + 1)) is None  # a pid is not an identity
        # resumed and stopped again between two looks: a new stop
        os.kill(child.pid, signal.SIGCONT)
        os.kill(child.pid, signal.SIGSTOP)
        wait_state(child.pid, b"T")
        again = proc.stop_mark(ident)
        assert again is not None and again != first
        os.kill(child.pid, signal.SIGCONT)
        wait_state(child.pid, b"S")
        assert proc.stop_mark(ident) is None and not proc.is_stopped(ident)
    finally:
        child.kill()
        child.wait()
