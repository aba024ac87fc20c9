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

from ringtrap import proc


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
