"""A reading of a whole segment for status displays: slot counts, header, rows.

Read through a :class:`~ringtrap.store.proctable.ProcTable` handle, so the
command line, ``top`` and metrics see the ring's fill without attaching the
ring's slot machinery; :meth:`ringtrap.ring.Ring.snapshot` reads the same.
"""

from __future__ import annotations

from typing import NamedTuple

from ringtrap.base.proc import Identity
from ringtrap.base.states import SlotState
from ringtrap.store.hosttable import HostReading, read_hosts
from ringtrap.store.proctable import ProcTable, RowSnapshot
from ringtrap.store.segment import (
    H_FREED,
    H_GENERATION,
    H_HEAD,
    H_LOCK_BREAKS,
    H_REQUEUED,
    H_STRAY,
    H_TAIL,
)


class RingSnapshot(NamedTuple):
    name: str
    slots: int
    slot_bytes: int
    free: int
    filling: int
    ready: int
    claimed: int
    head: int
    tail: int
    stray: int
    generation: int
    lock_holder: Identity | None
    lock_breaks: int
    requeued: int
    freed: int
    owner: Identity
    rows: tuple[RowSnapshot, ...]
    retired: tuple[int, ...]
    # each scanner host's numbers over all workers (ringtrap.store.hosttable)
    hosts: tuple[HostReading, ...] = ()

    @property
    def used(self) -> int:
        return self.slots - self.free

    def totals(self) -> list[int]:
        """Counters summed over the live rows and the retired block."""
        out = list(self.retired)
        for r in self.rows:
            for i, v in enumerate(r.counters):
                out[i] += v
        return out


def read_snapshot(table: ProcTable) -> RingSnapshot:
    """All counts of ``table``'s segment; lock-free, cheap enough to call often."""
    seg = table.segment
    q = seg.q
    states = seg.states.tolist()
    return RingSnapshot(
        name=seg.name,
        slots=seg.slots,
        slot_bytes=seg.slot_bytes,
        free=states.count(SlotState.FREE),
        filling=states.count(SlotState.FILLING),
        ready=states.count(SlotState.READY),
        claimed=states.count(SlotState.CLAIMED),
        head=int(q[H_HEAD]),
        tail=int(q[H_TAIL]),
        stray=int(q[H_STRAY]),
        generation=int(q[H_GENERATION]),
        lock_holder=table.lock.holder(),
        lock_breaks=int(q[H_LOCK_BREAKS]),
        requeued=int(q[H_REQUEUED]),
        freed=int(q[H_FREED]),
        owner=seg.owner,
        rows=tuple(table.read_rows()),
        retired=table.retired(),
        hosts=tuple(read_hosts(seg)),
    )
