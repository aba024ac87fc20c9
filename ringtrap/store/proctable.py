"""The process table: one row per process in the segment, written by its process.

A row holds the process's identity, role, state, current message, heartbeat
(monotonic clock) and counters (:mod:`ringtrap.base.counters`); the layout is
in :mod:`ringtrap.store.segment`.  The supervisor reads every row to judge
liveness and retires a dead process's row, folding its counters into the
header's retired block so totals survive restarts.
"""

from __future__ import annotations

import time
from typing import NamedTuple

from ringtrap.base import proc
from ringtrap.base.counters import GAUGES, NCOUNTERS, C
from ringtrap.base.proc import Identity
from ringtrap.base.states import ProcState, Role
from ringtrap.store import history
from ringtrap.store.lock import RingLock
from ringtrap.store.segment import (
    H_RETIRED,
    ID_BYTES,
    R_BEAT,
    R_COUNTERS,
    R_ID,
    R_INDEX,
    R_INTENT,
    R_PID,
    R_RECEIVED,
    R_ROLE,
    R_SINCE,
    R_START,
    R_STATE,
    ROW_WORDS,
    RingError,
    Segment,
    id_bytes,
)


class RowSnapshot(NamedTuple):
    row: int
    pid: int
    start: int
    role: Role
    index: int
    state: ProcState
    heartbeat_ns: int
    since_ns: int
    msgid: str
    counters: tuple[int, ...]
    # wall-clock seconds the message being worked on was accepted; 0.0 if none
    received: float = 0.0


class ProcRow:
    """One process's row in the process table; written only by that process.

    Heartbeats and counters are plain stores into shared memory: nothing is
    lost but the last update if the process dies mid-write.
    """

    __slots__ = ("_base", "_mv", "_q", "row")

    def __init__(self, seg: Segment, row: int) -> None:
        self.row = row
        self._q = seg.q
        self._mv = seg.mv
        self._base = seg.rows_w + row * ROW_WORDS

    def beat(self) -> None:
        """Record that this process's loop is turning (monotonic clock)."""
        self._q[self._base + R_BEAT] = time.monotonic_ns()

    def set_state(self, state: ProcState, msgid: str = "") -> None:
        """Publish what this process is doing, and on which message."""
        b = self._base
        self._mv[(b + R_ID) * 8 : (b + R_ID) * 8 + ID_BYTES] = id_bytes(msgid)
        self._q[b + R_STATE] = state
        now = time.monotonic_ns()
        self._q[b + R_SINCE] = now
        self._q[b + R_BEAT] = now

    def set_received(self, received: float) -> None:
        """Publish when the message this process is working on was accepted
        (wall-clock seconds); 0 when it works on none."""
        self._q[self._base + R_RECEIVED] = max(0, round(received * 1e6))

    def add(self, counter: int, n: int = 1) -> None:
        """Add ``n`` to one of this process's counters."""
        i = self._base + R_COUNTERS + counter
        self._q[i] += n

    def get(self, counter: int) -> int:
        return int(self._q[self._base + R_COUNTERS + counter])


class ProcTable:
    """This process's handle on the table of a segment, sharing its lock.

    The ring builds one over its own segment (:attr:`ringtrap.ring.Ring.table`);
    a process that needs only rows and counters takes its own with
    :meth:`attach`.
    """

    def __init__(self, seg: Segment, lock: RingLock) -> None:
        self.segment = self._seg = seg
        self._q = seg.q
        self.lock = self._lock = lock
        self.rows = seg.rows
        self._owns_segment = False

    @classmethod
    def attach(cls, name: str) -> ProcTable:
        """Open the table of an existing segment without the ring's slots;
        :class:`~ringtrap.store.segment.RingMissing` if absent.  The handle
        maps the segment itself: :meth:`close` lets it go."""
        seg = Segment.attach(name)
        table = cls(seg, RingLock(seg))
        table._owns_segment = True
        return table

    def close(self) -> None:
        """Let go of the segment mapped by :meth:`attach` (the table lives on)."""
        if self._owns_segment:
            self._seg.close()

    def __enter__(self) -> ProcTable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def register(self, role: Role, index: int = 0, row: int | None = None) -> ProcRow:
        """Claim a row for this process (a given row, or any free one).

        Only a row that is empty (never used, or retired with
        :meth:`retire_row`, which folds its counters into the totals) is free;
        a dead process's row stays taken until the supervisor retires it.
        """
        seg = self._seg
        me = seg.me
        if row is not None and not 0 <= row < self.rows:
            raise RingError(f"process row {row} out of range 0..{self.rows - 1}")
        if row is not None:
            # the row's intent word is the one process's that registers there
            self._lock.iw = seg.rows_w + row * ROW_WORDS + R_INTENT
        self._lock.acquire_patiently()
        try:
            if row is None:
                row = self._free_row()
            b = seg.rows_w + row * ROW_WORDS
            q = self._q
            for i in range(ROW_WORDS):
                if i not in (R_INTENT, R_INTENT + 1):
                    q[b + i] = 0
            q[b + R_ROLE] = role
            q[b + R_INDEX] = index
            q[b + R_START] = me.start
            q[b + R_PID] = me.pid
        finally:
            self._lock.release()
        self._lock.iw = b + R_INTENT
        handle = ProcRow(seg, row)
        handle.set_state(ProcState.STARTING)
        return handle

    def _free_row(self) -> int:
        q = self._q
        rows_w = self._seg.rows_w
        for row in range(self.rows):
            if q[rows_w + row * ROW_WORDS + R_PID] == 0:
                return row
        raise RingError("process table full")

    def add_totals(self, counts: dict[int, int]) -> None:
        """Add to the totals on behalf of no live process (e.g. a purge run
        from the command line): counter index -> amount, into the retired block."""
        self._lock.acquire_patiently()
        try:
            for counter, n in counts.items():
                self._q[H_RETIRED + counter] += n
        finally:
            self._lock.release()

    def retire_row(self, row: int, ident: Identity | None = None) -> None:
        """Fold a row's counters into the retired block and clear it (owner only).

        Call after the row's process has exited, before its row is reused;
        with ``ident``, only if the row is still that process's (a retry
        after :class:`~ringtrap.store.lock.RingBusy` must not fold a
        successor's row).  The lock intent words stay: they are whoever
        registers there next's.
        """
        self._lock.acquire_patiently()
        try:
            q = self._q
            b = self._seg.rows_w + row * ROW_WORDS
            if q[b + R_PID] == 0:
                return
            if ident is not None and (q[b + R_PID], q[b + R_START]) != tuple(ident):
                return
            for i in range(NCOUNTERS):
                if i not in GAUGES:  # a dead process's level is no one's any more
                    q[H_RETIRED + i] += q[b + R_COUNTERS + i]
                q[b + R_COUNTERS + i] = 0
            for i in range(R_COUNTERS):
                if i not in (R_INTENT, R_INTENT + 1):
                    q[b + i] = 0
        finally:
            self._lock.release()

    def retire_dead_rows(self) -> int:
        """Retire every row whose process is gone; returns how many."""
        n = 0
        for r in self.read_rows():
            if not proc.is_alive((r.pid, r.start)):
                self.retire_row(r.row)
                n += 1
        return n

    def read_rows(self) -> list[RowSnapshot]:
        """Every occupied row, without locking (values may be a moment old)."""
        q = self._q
        mv = self._seg.mv
        rows_w = self._seg.rows_w
        out = []
        for row in range(self.rows):
            b = rows_w + row * ROW_WORDS
            pid = int(q[b + R_PID])
            if pid == 0:
                continue
            o = (b + R_ID) * 8
            msgid = mv[o : o + ID_BYTES].tobytes().rstrip(b"\0").decode("ascii", "replace")
            out.append(
                RowSnapshot(
                    row, pid, int(q[b + R_START]), Role(q[b + R_ROLE]), int(q[b + R_INDEX]),
                    ProcState(q[b + R_STATE]), int(q[b + R_BEAT]), int(q[b + R_SINCE]), msgid,
                    tuple(q[b + R_COUNTERS : b + R_COUNTERS + NCOUNTERS]),
                    q[b + R_RECEIVED] / 1e6,
                )
            )
        return out

    def row(self, row: int) -> ProcRow:
        """A handle on an existing row (e.g. the supervisor reading a child's)."""
        return ProcRow(self._seg, row)

    def total(self, counter: int) -> int:
        """One counter summed over every row and the retired block, without locking."""
        q = self._q
        i = self._seg.rows_w + R_COUNTERS + counter
        return int(q[H_RETIRED + counter]) + sum(q[i : i + self.rows * ROW_WORDS : ROW_WORDS])

    def tick_history(self, now: float) -> None:
        """Supervisor only: count what was accepted and analysed since its last
        turn into the hour of ``now`` (wall-clock); see :mod:`ringtrap.store.history`."""
        history.tick(self._q, self.total(C.ACCEPTED_RING) + self.total(C.ACCEPTED_OVERFLOW),
                     self.total(C.ANALYSED), now)

    def history(self, now: float) -> list[history.Hour]:
        """The hourly history up to the hour of ``now``, oldest first."""
        return history.read(self._q, now)

    def retired(self) -> tuple[int, ...]:
        """The counters of retired rows, folded."""
        return tuple(self._q[H_RETIRED : H_RETIRED + NCOUNTERS])
