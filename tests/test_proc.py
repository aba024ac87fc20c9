"""Process identity and memory accounting read from /proc."""

from __future__ import annotations

import mmap
import os
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
