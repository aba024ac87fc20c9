"""What the tests read from a ring's segment beyond the ring's own API."""

from __future__ import annotations

import posix_ipc

from ringtrap.store.segment import _names


def exists(name: str) -> bool:
    """True if a segment of that name is present in /dev/shm."""
    try:
        shm = posix_ipc.SharedMemory(_names(name)[0])
    except posix_ipc.ExistentialError:
        return False
    shm.close_fd()
    return True
