"""What the tests read from a ring's segment beyond the ring's own API."""

from __future__ import annotations

import posix_ipc

from ringtrap.base.proc import Identity
from ringtrap.base.states import SlotState
from ringtrap.ring import Ring
from ringtrap.store.segment import D_OWNER, DESC_WORDS, H_HEAD, _names, token_identity


def exists(name: str) -> bool:
    """True if a segment of that name is present in /dev/shm."""
    try:
        shm = posix_ipc.SharedMemory(_names(name)[0])
    except posix_ipc.ExistentialError:
        return False
    shm.close_fd()
    return True


def slot_states(ring: Ring) -> list[SlotState]:
    """State of every slot."""
    return [SlotState(s) for s in ring._seg.states.tolist()]


def iter_held(ring: Ring) -> list[tuple[int, SlotState, Identity]]:
    """(slot, state, owner) for every FILLING or CLAIMED slot."""
    seg = ring._seg
    out = []
    for idx, st in enumerate(seg.states.tolist()):
        if st in (SlotState.FILLING, SlotState.CLAIMED):
            owner = seg.q[seg.descs_w + idx * DESC_WORDS + D_OWNER]
            out.append((idx, SlotState(st), token_identity(int(owner))))
    return out


def has_free_slot(ring: Ring) -> bool:
    """True if the slot at head is free (put() may still step over a stuck claim)."""
    seg = ring._seg
    return seg.states[seg.q[H_HEAD] % seg.slots] == SlotState.FREE


def wake(ring: Ring, n: int = 1) -> None:
    """Post "ready" ``n`` times, as a post no message stands behind."""
    for _ in range(n):
        ring._seg.ready_sem.release()
