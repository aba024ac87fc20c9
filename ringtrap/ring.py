"""The shared-memory ring: fixed slots in one POSIX segment, two semaphores.

Segment layout (native byte order, every field a 64-bit word unless noted)::

    offset 0        header, HEADER_WORDS words (1 KiB)
                      0 magic "RINGTRAP"   1 layout version   2 slot count
                      3 slot bytes         4 process rows      5 counters per row
                      6 created (wall us)  7 owner pid         8 owner start
                     15 generation (+1 on every adopt)
                     16 lock breaks       17 slots requeued   18 slots freed
                     32..95 retired counters (rows of exited processes, folded)
                     96 head (next seq to put; the producer's, alone in its
                        cache line so consumers' writes never evict it)
                    104 lock owner       105 lock acquisitions
                    106 tail (next seq to claim; consumers', under the lock)
                    107 stray (READY slots behind tail: requeued or released)
                    108..123 guest lock intents, 8 pairs (token, try), for
                        processes without a row (see "The lock" below)
                    124 passed (fresh claims taken while an attempted
                        message waited behind tail)
    ROWS            process table, ROW_WORDS words per row
                      0 pid  1 role  2 start  3 state  4 index
                      5 heartbeat (monotonic ns)  6 state since (monotonic ns)
                      8..11 current message id (32 bytes)
                     12 lock intent (owner token while waiting for or
                        entering the lock)  13 lock tries (+1 per wait given up)
                     16..79 counters (see ringtrap.base.counters)
    DESCS           DESC_WORDS words per slot, cache-line aligned
                      0 state  1 owner  2 seq  3 length  4 attempts
                      5 enqueued (wall us)  6 releases (give-backs)  7 reserved
                      8..11 message id (32 bytes)  12..15 reserved
                    (a claim and its ack touch only the first line: the state
                    lives there rather than in an array shared by neighbours)
    PAYLOAD         slot count x slot bytes, page aligned

Ordering: the single producer (the ingest) writes slot ``head % slots`` only
when it is FREE, marks it FILLING with its identity, copies, marks it READY,
advances ``head`` and posts "ready".  It never takes the lock: only the
producer moves a slot out of FREE, so checking for space is a plain read.  A
slot still CLAIMED from an earlier lap is stepped over once it has blocked
puts for a while (a stuck scan), rather than blocking every later put;
``head`` then skips a sequence number.  A claim in progress is waited for instead (the put spills):
a slot stepped over stays empty for a whole lap once it is acked.

Consumers wait on "ready" with a timeout (a post lost or doubled by a crash
costs at most one poll), then under the lock take the slot at ``tail`` if it
is READY with ``seq == tail`` and otherwise step over it.  Slots made READY
again behind ``tail`` (a dead consumer's claim, a released one) are counted
in ``stray`` and found by a scan, oldest first.  A stray that was attempted
before (a worker died holding it, or it timed out spamd) may be what kills
workers: fresh messages go first, and it is taken when none is left or
after every ``_SUSPECT_EVERY`` fresh claims, so it is still processed (and
quarantined at its attempt limit) without every replacement worker dying
on it first.

Every FILLING or CLAIMED slot and the lock carry an owner identity
(:mod:`ringtrap.base.proc`) packed into one word, ``start << 22 | pid`` (Linux pids
stay below 2**22), so an owner is written and read whole.  The supervisor
recovers exactly what a dead process held and breaks a lock whose holder is
gone, and no live process is ever robbed because its pid once belonged to
another.

The lock: a process announces itself in its row's intent word (a process
without a row: a guest pair picked by pid) before it waits on the semaphore,
records itself as holder right after the wait succeeds, then clears the
intent.  No wait is unbounded: each lasts at most ``_LOCK_SLICE`` and one
given up bumps the tries word, so a waiter's (intent, tries) pair changes at
least that often while the lock stays held.  The supervisor (the owner) breaks
a lock whose recorded holder is dead.  A lock held with no recorded holder was
taken by a process between its wait and its record: it is broken only when the
acquisition count has not moved for ``_ORPHAN_LOCK_SECONDS`` *and* no live
process kept the same intent pair through that window (the taker, dead, or
alive but not making progress, keeps it; a waiter's changes), so a live
process inside that window is never robbed, however long it stalls.  A live
holder, recorded or suspected, that is stopped (SIGSTOP) or makes no progress
for ``_LOCK_STUCK_SECONDS`` is reported as hung for the supervisor to kill;
once it is dead its lock is broken.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple

import posix_ipc

from ringtrap.base import proc
from ringtrap.base.counters import NCOUNTERS
from ringtrap.base.proc import Identity
from ringtrap.base.states import ProcState, Role, SlotState

log = logging.getLogger(__name__)

MAGIC = int.from_bytes(b"RINGTRAP", "little")
VERSION = 3
HEADER_WORDS = 128
ROW_WORDS = 16 + NCOUNTERS
DESC_WORDS = 16
ID_BYTES = 32
PAGE = mmap.PAGESIZE
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)

# header words
H_MAGIC, H_VERSION, H_SLOTS, H_SLOT_BYTES, H_ROWS, H_NCOUNTERS = range(6)
H_CREATED, H_OWNER_PID, H_OWNER_START = 6, 7, 8
H_LOCK, H_LOCK_COUNT = 104, 105
H_HEAD, H_TAIL, H_STRAY = 96, 106, 107
H_GENERATION, H_LOCK_BREAKS, H_REQUEUED, H_FREED = 15, 16, 17, 18
H_RETIRED = 32
H_GUESTS, GUESTS = 108, 8
H_PASSED = 124
# row words
R_PID, R_ROLE, R_START, R_STATE, R_INDEX, R_BEAT, R_SINCE = range(7)
R_ID = 8
R_INTENT = 12  # R_INTENT + 1: tries
R_COUNTERS = 16
# descriptor words
D_STATE, D_OWNER, D_SEQ, D_LEN, D_ATTEMPTS, D_ENQ, D_RELEASES = range(7)
D_ID = 8
# owner, seq, length, attempts, enqueued, id: packed from the owner word on
# (releases and the reserved word are zeroed with them)
_DESC = struct.Struct("5Q16x32s")
_DESC_AFTER_OWNER = struct.Struct("4Q16x32s")
_LINE = 64
_PID_BITS = 22

FREE, FILLING, READY, CLAIMED = (int(s) for s in SlotState)

DEFAULT_ROWS = 64
# a producer steps over at most this many slots still claimed from an earlier
# lap before calling the ring full
_MAX_SKIP = 8
# ... and only over claims that have blocked puts this long (as the producer
# saw it; claimers write no clock): stepping over a claim leaves its
# slot empty for a whole lap once it is acked, so a scan that is merely in
# progress is waited for (the message spills); a stuck one is stepped over
_SKIP_CLAIMS_OLDER_NS = 5_000_000_000
# a lock held with no recorded owner and no progress for this long, while no
# live process kept one intent throughout, was taken by a process killed
# between sem_wait and recording itself
_ORPHAN_LOCK_SECONDS = 2.0
# the longest single wait on the lock semaphore: a longer wait is several, each
# announced afresh, so a waiter cannot be mistaken for a taker that stalled
_LOCK_SLICE = 0.5
# a live holder seen stopped this long, never resumed in between, is hung ...
_LOCK_STOPPED_SECONDS = 1.0
# ... and so is one that has held it this long whatever its state (the lock
# guards a few hundred word stores: microseconds, a scan of every slot at most)
_LOCK_STUCK_SECONDS = 10.0
# how long the owner waits for the lock before an operation gives up with
# RingBusy (set by the supervisor once it runs: it must never block on it)
OWNER_PATIENCE = 30.0
# fresh claims taken while an attempted message waits, before it is taken
_SUSPECT_EVERY = 8
# sched_yield() rounds a consumer spins on an empty ring before it blocks
_SPIN = 20
_LOCK_SPIN = 50


class RingError(Exception):
    """Base class for ring failures."""


class RingExists(RingError):
    """create() found a segment of that name already present."""


class RingMissing(RingError):
    """attach() or adopt() found no segment of that name."""


class RingLayoutError(RingError):
    """The segment is not a ringtrap ring of this layout or geometry."""


class RingBusy(RingError):
    """The lock could not be had before the deadline; nothing was changed."""


class RingOwnershipError(RingError):
    """A process tried to ack or release a slot it does not hold."""


class PutResult(IntEnum):
    """Outcome of :meth:`Ring.put`; anything but OK means "spill it"."""

    OK = 0
    FULL = 1
    TOO_LARGE = 2


# members looked up once: an enum attribute costs put() a tenth of its time
_OK, _FULL, _TOO_LARGE = PutResult.OK, PutResult.FULL, PutResult.TOO_LARGE


@dataclass(slots=True)
class Claim:
    """A message taken from the ring; the claimer must ack or release it."""

    slot: int
    seq: int
    msgid: str
    data: bytes
    attempts: int
    received: float  # wall-clock seconds when it was put

    @property
    def size(self) -> int:
        return len(self.data)


class RecoverResult(NamedTuple):
    requeued: int  # CLAIMED slots made READY again (attempts + 1)
    freed: int  # FILLING slots (half-copied, never acknowledged) made FREE


class LockCheck(NamedTuple):
    """What :meth:`Ring.check_lock` found."""

    broken: bool  # a dead holder's lock was released
    hung: Identity | None  # a live process that holds (or may hold) it and is stuck
    stopped: bool  # ... and is stopped (SIGSTOP), rather than merely slow


_LOCK_FINE = LockCheck(False, None, False)
_LOCK_BROKEN = LockCheck(True, None, False)


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


def _names(name: str) -> tuple[str, str, str]:
    base = "/" + name.lstrip("/")
    return base, base + ".lock", base + ".ready"


def _geometry(slots: int, slot_bytes: int, rows: int) -> tuple[int, int, int, int]:
    rows_off = HEADER_WORDS * 8
    descs_off = rows_off + rows * ROW_WORDS * 8
    descs_off = (descs_off + _LINE - 1) // _LINE * _LINE
    payload_off = descs_off + slots * DESC_WORDS * 8
    payload_off = (payload_off + PAGE - 1) // PAGE * PAGE
    # whole words: the segment is viewed as 64-bit words, whatever the slot size
    total = (payload_off + slots * slot_bytes + 7) // 8 * 8
    return rows_off, descs_off, payload_off, total


def owner_token(ident: Identity | tuple[int, int]) -> int:
    """Pack an identity into the one word the ring records as an owner."""
    pid, start = ident
    return (start << _PID_BITS) | pid


def token_identity(token: int) -> Identity:
    """Unpack an owner word; Identity(0, 0) for none."""
    return Identity(token & ((1 << _PID_BITS) - 1), token >> _PID_BITS)


def _id_bytes(msgid: str) -> bytes:
    raw = msgid.encode("ascii")
    if len(raw) > ID_BYTES:
        raise ValueError(f"message id longer than {ID_BYTES} bytes: {msgid!r}")
    return raw.ljust(ID_BYTES, b"\0")


class ProcRow:
    """One process's row in the process table; written only by that process.

    Heartbeats and counters are plain stores into shared memory: nothing is
    lost but the last update if the process dies mid-write.
    """

    __slots__ = ("_base", "_mv", "_q", "row")

    def __init__(self, ring: Ring, row: int) -> None:
        self.row = row
        self._q = ring._q
        self._mv = ring._mv
        self._base = ring._rows_w + row * ROW_WORDS

    def beat(self) -> None:
        """Record that this process's loop is turning (monotonic clock)."""
        self._q[self._base + R_BEAT] = time.monotonic_ns()

    def set_state(self, state: ProcState, msgid: str = "") -> None:
        """Publish what this process is doing, and on which message."""
        b = self._base
        self._mv[(b + R_ID) * 8 : (b + R_ID) * 8 + ID_BYTES] = _id_bytes(msgid)
        self._q[b + R_STATE] = state
        now = time.monotonic_ns()
        self._q[b + R_SINCE] = now
        self._q[b + R_BEAT] = now

    def add(self, counter: int, n: int = 1) -> None:
        """Add ``n`` to one of this process's counters."""
        i = self._base + R_COUNTERS + counter
        self._q[i] += n

    def get(self, counter: int) -> int:
        return int(self._q[self._base + R_COUNTERS + counter])


class Ring:
    """A handle on the ring segment, valid in one process.

    Lifecycle verbs: :meth:`create` (exclusive, by the owner),
    :meth:`attach` (any process), :meth:`adopt` (a new owner takes over a
    segment left by a dead one), :meth:`close` (this process lets go) and
    :meth:`unlink` (remove the segment and semaphores: owner only).
    """

    def __init__(self, name: str, shm: posix_ipc.SharedMemory, lock: posix_ipc.Semaphore,
                 ready: posix_ipc.Semaphore) -> None:
        self.name = name
        self._lock_sem = lock
        self._ready_sem = ready
        if shm.size < HEADER_WORDS * 8 or shm.size % 8:
            # e.g. a create() killed between making the segment and sizing it
            shm.close_fd()
            raise RingLayoutError(f"shared memory {name!r} is not a ringtrap ring (bad size)")
        # populate now: a first-lap page fault per slot would cost more than the copy
        self._map = mmap.mmap(shm.fd, shm.size, flags=mmap.MAP_SHARED | _POPULATE)
        shm.close_fd()
        self._mv = memoryview(self._map)
        self._q = self._mv.cast("Q")
        q = self._q
        if q[H_MAGIC] != MAGIC:
            self._release_views()
            raise RingLayoutError(f"shared memory {name!r} is not a ringtrap ring (bad magic)")
        if q[H_VERSION] != VERSION:
            version = q[H_VERSION]
            self._release_views()
            raise RingLayoutError(
                f"ring {name!r} has layout version {version}, this ringtrap uses {VERSION}"
            )
        if q[H_NCOUNTERS] != NCOUNTERS:
            self._release_views()
            raise RingLayoutError(f"ring {name!r} has a different counter layout")
        self.slots = int(q[H_SLOTS])
        self.slot_bytes = int(q[H_SLOT_BYTES])
        self.rows = int(q[H_ROWS])
        rows_off, descs_off, payload_off, total = _geometry(
            self.slots, self.slot_bytes, self.rows
        )
        if total > len(self._map):
            self._release_views()
            raise RingLayoutError(f"ring {name!r} is smaller than its header says")
        self._rows_w = rows_off // 8
        self._descs_w = descs_off // 8
        # every slot's state word, as one strided view: counted in one pass
        self._states = self._q[self._descs_w : self._descs_w + self.slots * DESC_WORDS
                               : DESC_WORDS]
        self._payload_off = payload_off
        self._me = proc.self_identity()
        self._tok = owner_token(self._me)
        self._descs_off = descs_off
        # the lock as check_lock() last saw it: (holder, count, since) ...
        self._lock_seen: tuple[int, int, float] | None = None
        # ... and each intent word -> ((token, tries), first seen unchanged)
        self._intents_seen: dict[int, tuple[tuple[int, int], float]] = {}
        # ... and each holder or suspect seen stopped -> (stop mark, first seen)
        self._stops_seen: dict[Identity, tuple[int, float]] = {}
        # this process's intent word: a guest pair until it registers a row
        self._iw = H_GUESTS + 2 * (self._me.pid % GUESTS)
        # how long a control operation waits for the lock (see _acquire_patiently)
        self.patience = OWNER_PATIENCE
        # claims that blocked a put (see _claim_key) -> when first seen
        self._blocked_by: dict[tuple[int, ...], int] = {}

    # lifecycle -------------------------------------------------------------

    @classmethod
    def create(cls, name: str, slots: int, slot_bytes: int, *, mode: int = 0o600,
               rows: int = DEFAULT_ROWS) -> Ring:
        """Create a new, empty ring exclusively; :class:`RingExists` if present.

        If this process dies half-way, a segment without a valid magic may be
        left behind; :meth:`attach` rejects it and :func:`unlink_name` removes it.
        """
        if slots < 1 or slot_bytes < 1 or rows < 2:
            raise ValueError("a ring needs at least one slot of one byte and two rows")
        shm_name, lock_name, ready_name = _names(name)
        size = _geometry(slots, slot_bytes, rows)[3]
        try:
            shm = posix_ipc.SharedMemory(shm_name, posix_ipc.O_CREX, mode=mode, size=size)
        except posix_ipc.ExistentialError:
            raise RingExists(f"ring {name!r} already exists in /dev/shm") from None
        os.fchmod(shm.fd, mode)  # the umask must not widen or narrow what was asked
        # the segment name is ours now, so semaphores of that name are leftovers
        for sem_name in (lock_name, ready_name):
            with contextlib.suppress(posix_ipc.ExistentialError):
                posix_ipc.unlink_semaphore(sem_name)
        lock = posix_ipc.Semaphore(lock_name, posix_ipc.O_CREX, mode=mode, initial_value=1)
        ready = posix_ipc.Semaphore(ready_name, posix_ipc.O_CREX, mode=mode, initial_value=0)
        for sem_name in (lock_name, ready_name):
            with contextlib.suppress(OSError):
                os.chmod(f"/dev/shm/sem.{sem_name[1:]}", mode)
        with mmap.mmap(shm.fd, size) as m:
            hdr = memoryview(m).cast("Q")
            me = proc.self_identity()
            hdr[H_VERSION] = VERSION
            hdr[H_SLOTS] = slots
            hdr[H_SLOT_BYTES] = slot_bytes
            hdr[H_ROWS] = rows
            hdr[H_NCOUNTERS] = NCOUNTERS
            hdr[H_CREATED] = time.time_ns() // 1000
            hdr[H_OWNER_PID], hdr[H_OWNER_START] = me
            hdr[H_MAGIC] = MAGIC  # last: a half-initialised segment has no magic
            hdr.release()
        return cls(name, shm, lock, ready)

    @classmethod
    def attach(cls, name: str) -> Ring:
        """Open an existing ring (any process); :class:`RingMissing` if absent."""
        shm_name, lock_name, ready_name = _names(name)
        shm = None
        try:
            shm = posix_ipc.SharedMemory(shm_name)
            lock = posix_ipc.Semaphore(lock_name)
            ready = posix_ipc.Semaphore(ready_name)
        except posix_ipc.ExistentialError:
            if shm is not None:  # a create() that died before making the semaphores
                shm.close_fd()
            raise RingMissing(f"no ring {name!r} in /dev/shm") from None
        except (ValueError, OSError) as e:  # e.g. /dev/shm/<name> is a directory
            if shm is not None:
                shm.close_fd()
            raise RingLayoutError(f"/dev/shm/{name} is not a ringtrap ring: {e}") from None
        return cls(name, shm, lock, ready)

    @classmethod
    def adopt(cls, name: str, *, slots: int | None = None,
              slot_bytes: int | None = None) -> Ring:
        """Take over a ring left by a dead owner, contents included.

        Validates magic, version and (if given) geometry, records this process
        as owner, breaks a lock whose holder is dead, requeues or frees every
        slot whose owner is dead, resets "ready" to the number of READY slots
        and bumps the generation.  Processes of the old generation that are
        still alive keep their claims; the caller deals with them and then
        calls :meth:`recover_dead` again.  Idempotent if interrupted.
        """
        ring = cls.attach(name)
        if (slots is not None and slots != ring.slots) or (
            slot_bytes is not None and slot_bytes != ring.slot_bytes
        ):
            found = f"{ring.slots} x {ring.slot_bytes}"
            ring.close()
            raise RingLayoutError(
                f"ring {name!r} has geometry {found}, configuration asks for "
                f"{slots} x {slot_bytes}"
            )
        q = ring._q
        q[H_OWNER_PID], q[H_OWNER_START] = ring._me
        q[H_GENERATION] += 1
        ring.break_lock_if_dead()
        ring.recover_dead()
        ring.recount_strays()
        ring.retire_dead_rows()
        ring._reset_ready()
        return ring

    def close(self) -> None:
        """Let go of the segment in this process (the ring lives on)."""
        if self._map.closed:
            return
        self._release_views()
        self._lock_sem.close()
        self._ready_sem.close()

    def _release_views(self) -> None:
        for view in ("_states", "_q", "_mv"):
            v = getattr(self, view, None)
            if v is not None:
                v.release()
        self._map.close()

    def unlink(self) -> None:
        """Remove the segment and its semaphores (owner only); handles stay valid."""
        unlink_name(self.name)

    def chown(self, uid: int, gid: int) -> None:
        """Give the segment and its semaphores to ``uid``:``gid`` (root only).

        The supervisor calls it before dropping to the service user, so the
        processes it forks afterwards can attach.  Symlinks are not followed.
        """
        for path in shm_paths(self.name):
            os.chown(path, uid, gid, follow_symlinks=False)

    def __enter__(self) -> Ring:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def owner(self) -> Identity:
        return Identity(int(self._q[H_OWNER_PID]), int(self._q[H_OWNER_START]))

    @property
    def generation(self) -> int:
        return int(self._q[H_GENERATION])

    # the lock ----------------------------------------------------------------

    def _acquire(self, timeout: float | None) -> bool:
        """Take the lock within ``timeout`` seconds (0: one try; None: the
        patience); False if not had, or on an interrupting signal.

        The stores follow the protocol of the module docstring: intent, wait,
        holder and count, intent cleared.  Dying anywhere in it leaves at worst
        a lock held by a dead process, which the owner breaks.
        """
        q = self._q
        iw = self._iw
        q[iw] = self._tok
        try:
            self._lock_sem.acquire(0)
        except posix_ipc.BusyError:
            if not self._wait_lock(self.patience if timeout is None else timeout):
                return False
        q[H_LOCK] = self._tok
        q[H_LOCK_COUNT] += 1
        q[iw] = 0
        return True

    def _wait_lock(self, timeout: float) -> bool:
        """The slow path of a lock taker whose intent is written: wait in slices.

        Returns True holding the semaphore (the caller records itself and
        clears the intent); False with the intent cleared.
        """
        q = self._q
        iw = self._iw
        sem = self._lock_sem
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                if left > 0:
                    sem.acquire(min(left, _LOCK_SLICE))
                    return True
            except posix_ipc.BusyError:
                pass
            except posix_ipc.SignalError:
                q[iw] = 0
                return False
            # a wait given up: the pair (intent, tries) changes, so the owner
            # can tell this waiter from a taker stalled before its record
            q[iw + 1] += 1
            if left <= _LOCK_SLICE:
                q[iw] = 0
                return False

    def _release(self) -> None:
        self._q[H_LOCK] = 0
        self._lock_sem.release()

    def _acquire_patiently(self) -> None:
        """For control operations: wait up to :attr:`patience` seconds for the
        lock, then raise :class:`RingBusy` (nothing changed).

        Only the ring's owner (the supervisor) breaks a dead holder's lock, as
        it waits: two processes breaking the same lock would each post it and
        let two holders in.  The supervisor sets a short patience once it
        runs, so that it never blocks on a live holder: it kills a hung one
        (see :meth:`check_lock`) and tries again on a later turn.
        """
        owner = self.owner == self._me
        deadline = time.monotonic() + self.patience
        while True:
            if self._acquire(max(0.0, min(_LOCK_SLICE, deadline - time.monotonic()))):
                return
            if owner and self.break_lock_if_dead():
                continue
            if time.monotonic() >= deadline:
                holder = self.lock_holder()
                who = f"pid {holder.pid}" if holder else "an unrecorded process"
                raise RingBusy(f"ring {self.name!r} lock held by {who} for over "
                               f"{self.patience:g} s"
                               + ("" if owner else "; is the supervisor running?"))

    def lock_holder(self) -> Identity | None:
        """Who holds the lock, as recorded; None when free or unrecorded."""
        tok = int(self._q[H_LOCK])
        return token_identity(tok) if tok else None

    def break_lock_if_dead(self) -> bool:
        """:meth:`check_lock` for callers that only break: True if broken.  Owner only."""
        return self.check_lock().broken

    def check_lock(self, now: float | None = None) -> LockCheck:
        """Break the lock if its holder is dead; name a live holder that is hung.

        Owner only; call about once a second (``now``: the caller's monotonic
        clock), so the clocks below run.  A recorded holder that is dead is
        broken at once.  A lock held with no recorded holder is broken once
        the acquisition count has stood still for ``_ORPHAN_LOCK_SECONDS``
        and no live process kept the same intent since before that: the
        taker, if alive, is one that kept it (see the module docstring).  A
        live holder, or a live process that may be the unrecorded taker, is
        returned as ``hung`` once it has been stopped for
        ``_LOCK_STOPPED_SECONDS`` or has not moved for
        ``_LOCK_STUCK_SECONDS``: the caller kills it, and a later call
        breaks its lock.  Nothing here signals a process.
        """
        q = self._q
        if now is None:
            now = time.monotonic()
        if self._lock_sem.value > 0:
            self._lock_seen = None
            return _LOCK_FINE
        tok = int(q[H_LOCK])
        count = int(q[H_LOCK_COUNT])
        seen = self._lock_seen
        if seen is None or seen[0] != tok or seen[1] != count:
            seen = self._lock_seen = (tok, count, now)
            self._intents_seen.clear()
            self._stops_seen.clear()
        held_for = now - seen[2]
        if tok:
            holder = token_identity(tok)
            if proc.is_alive(holder):
                return self._judge(holder, held_for, now)
            # The holder may have released normally and died since we read it,
            # and another process taken the lock: then the word or the count
            # has moved on, and the lock is not ours to break.
            if q[H_LOCK] != tok or q[H_LOCK_COUNT] != count:
                return _LOCK_FINE
            # clear the owner before posting, or we could erase the next holder's
            q[H_LOCK] = 0
            self._break(f"dead pid {holder.pid}", holder.pid)
            return _LOCK_BROKEN
        # No recorded holder: the taker is between its wait and its record.
        # Its intent was in place before the count stood still, and stays.
        suspects = [ident for ident, first in self._watch_intents(now)
                    if first <= seen[2] and proc.is_alive(ident)]
        for ident in suspects:
            verdict = self._judge(ident, held_for, now)
            if verdict.hung is not None:
                return verdict
        if suspects or held_for < _ORPHAN_LOCK_SECONDS:
            return _LOCK_FINE
        # read after the intents: a taker that recorded itself meanwhile
        # moved the count
        if q[H_LOCK] or q[H_LOCK_COUNT] != count or self._lock_sem.value > 0:
            return _LOCK_FINE
        self._break("an unrecorded owner", 0)
        return _LOCK_BROKEN

    def _judge(self, ident: Identity, held_for: float, now: float) -> LockCheck:
        # The stop is timed from the first check that saw this same stop, not
        # from when the lock was first seen held: a holder slow for a second
        # and stopped an instant ago (a tracer's pause, a STOP soon followed
        # by a CONT) is not hung yet.
        mark = proc.stop_mark(ident)
        stopped_for = 0.0
        if mark is None:
            self._stops_seen.pop(ident, None)
        else:
            first = self._stops_seen.get(ident)
            if first is None or first[0] != mark:
                first = self._stops_seen[ident] = (mark, now)
            stopped_for = now - first[1]
        stopped = mark is not None
        if held_for >= _LOCK_STUCK_SECONDS or stopped_for >= _LOCK_STOPPED_SECONDS:
            return LockCheck(False, ident, stopped)
        return _LOCK_FINE

    def _watch_intents(self, now: float) -> list[tuple[Identity, float]]:
        """Every announced intent and when this owner first saw it unchanged."""
        q = self._q
        words = [self._rows_w + row * ROW_WORDS + R_INTENT for row in range(self.rows)]
        words.extend(H_GUESTS + 2 * g for g in range(GUESTS))
        seen = self._intents_seen
        out = []
        for w in words:
            tok = int(q[w])
            if not tok:
                seen.pop(w, None)
                continue
            key = (tok, int(q[w + 1]))
            first = seen.get(w)
            if first is None or first[0] != key:
                first = seen[w] = (key, now)
            out.append((token_identity(tok), first[1]))
        return out

    def _break(self, whose: str, pid: int) -> None:
        self._lock_seen = None
        self._lock_sem.release()
        self._q[H_LOCK_BREAKS] += 1
        log.warning("broke ring lock held by %s", whose,
                    extra={"event": "lock_break", "holder_pid": pid})

    # producer ------------------------------------------------------------------

    def put(self, msgid: str, data: bytes | bytearray | memoryview) -> PutResult:
        """Store one message; never blocks.  Single producer only.

        Returns TOO_LARGE if it exceeds a slot and FULL if no slot is free:
        the caller spills it.  If the producer dies mid-copy the slot is left
        FILLING(owner) and recovery frees it; the message was never acknowledged.
        """
        n = len(data)
        if n > self.slot_bytes:
            return _TOO_LARGE
        raw_id = msgid.encode("ascii")  # before any state changes: claim() decodes it
        if len(raw_id) > ID_BYTES:
            raise ValueError(f"message id longer than {ID_BYTES} bytes: {msgid!r}")
        q = self._q
        states = self._states
        head = q[H_HEAD]
        idx = head % self.slots
        if states[idx] != FREE:
            if states[idx] != CLAIMED:
                return _FULL  # the common full ring: a message not yet taken
            head = self._step_over_stuck(head)
            if head < 0:
                return _FULL
            idx = head % self.slots
        # the descriptor first: a slot still FREE may hold anything
        _DESC.pack_into(self._map, self._descs_off + idx * (DESC_WORDS * 8) + 8, self._tok, head, n,
                        0, time.time_ns() // 1000, raw_id)
        states[idx] = FILLING
        o = self._payload_off + idx * self.slot_bytes
        self._map[o : o + n] = data
        states[idx] = READY
        q[H_HEAD] = head + 1
        self._ready_sem.release()
        return _OK

    def _step_over_stuck(self, head: int) -> int:
        """The slot at ``head`` is taken: the next free sequence past claims
        stuck for long, or -1 (the ring is full).

        How long a claim has been stuck is what this producer has seen: the
        first put it blocked is remembered here, so claimers write no clock
        into the ring.  After a producer restart the clock starts again.
        """
        states = self._states
        seen = self._blocked_by
        now = time.monotonic_ns()
        # Every claim in the run ahead starts its clock now, not when the one
        # before it has been stepped over: a run of stuck claims is stepped
        # over after one timeout, not one per claim.
        ages = []
        seq = head
        for _ in range(_MAX_SKIP):
            idx = seq % self.slots
            if states[idx] != CLAIMED:
                break
            ages.append(now - seen.setdefault(self._claim_key(idx), now))
            seq += 1
        if len(seen) > 4 * _MAX_SKIP:
            self._forget_finished_claims()
        for age in ages:
            if age < _SKIP_CLAIMS_OLDER_NS:
                return -1  # a claim in progress: wait for it (the put spills)
            head += 1  # a stuck claim from an earlier lap: step over it
            if states[head % self.slots] == FREE:
                return head
        return -1

    def _claim_key(self, idx: int) -> tuple[int, ...]:
        """What tells one claim of slot ``idx`` from another: a message given
        back (released or requeued) and taken again is a new claim."""
        q = self._q
        d = self._descs_w + idx * DESC_WORDS
        return (idx, int(q[d + D_SEQ]), int(q[d + D_OWNER]), int(q[d + D_ATTEMPTS]),
                int(q[d + D_RELEASES]))

    def _forget_finished_claims(self) -> None:
        states = self._states
        for key in list(self._blocked_by):
            idx = key[0]
            if states[idx] != CLAIMED or self._claim_key(idx) != key:
                del self._blocked_by[key]

    def has_free_slot(self) -> bool:
        """Cheap hint (producer side) that the slot at head is free.

        It may say False where put() would still succeed by stepping over a
        slot claimed from an earlier lap; put() is the authority.
        """
        idx = self._q[H_HEAD] % self.slots
        return self._states[idx] == FREE

    # consumers ---------------------------------------------------------------

    def claim(self, timeout: float | None = 1.0, owner: Identity | None = None) -> Claim | None:
        """Take the oldest READY message for ``owner`` (default: this process).

        Waits up to ``timeout`` seconds (None: forever) for a post of "ready",
        then looks anyway, so a post lost by a crash costs one timeout.  An
        interrupting signal returns None so the caller can check its flags,
        and so does a lock not had within ``timeout`` (at least
        ``_LOCK_SLICE``): its holder is the supervisor's to deal with.
        If the claimer dies holding the claim, :meth:`recover` requeues it.
        """
        ready = self._ready_sem
        try:
            ready.acquire(0)  # sem_trywait: no clock read, no syscall
        except posix_ipc.BusyError:
            if not self._await_ready(timeout):
                return None
        tok = self._tok if owner is None else owner_token(owner)
        q = self._q
        states = self._states
        lock = self._lock_sem
        # The lock is held for a microsecond: look again a few times before
        # sleeping on it, as a futex sleep and wake cost more than the wait.
        spin = _LOCK_SPIN
        while spin and not lock.value:
            spin -= 1
        # _acquire() inline (the protocol of the module docstring): the intent
        # before the wait, the holder right after it
        iw = self._iw
        q[iw] = self._tok
        try:
            lock.acquire(0)
        except posix_ipc.BusyError:
            # a wait with a deadline: a holder that is stopped or stuck is the
            # supervisor's to kill, and this worker must keep beating meanwhile
            if not self._wait_lock(_LOCK_SLICE if not timeout or timeout < _LOCK_SLICE
                                   else timeout):
                ready.release()  # the post taken above is another consumer's now
                return None
        q[H_LOCK] = self._tok
        q[H_LOCK_COUNT] += 1
        q[iw] = 0
        try:
            # the common case inline: the slot at tail holds the next message
            tail = q[H_TAIL]
            idx = tail % self.slots
            d = self._descs_w + idx * DESC_WORDS
            if (not q[H_STRAY] and tail < q[H_HEAD] and states[idx] == READY
                    and q[d + D_SEQ] == tail):
                q[d + D_OWNER] = tok
                states[idx] = CLAIMED
                q[H_TAIL] = tail + 1
            else:
                idx = self._take_locked(tok)
        finally:
            q[H_LOCK] = 0
            lock.release()
        if idx < 0:
            return None
        seq, n, attempts, enq, raw = _DESC_AFTER_OWNER.unpack_from(
            self._map, self._descs_off + idx * (DESC_WORDS * 8) + 16
        )
        o = self._payload_off + idx * self.slot_bytes
        return Claim(idx, seq, raw.rstrip(b"\0").decode("ascii"), self._map[o : o + n],
                     attempts, enq / 1e6)

    def _await_ready(self, timeout: float | None) -> bool:
        """Wait for a post of "ready" (the ring looked empty); False on a signal.

        A timeout is not a failure: the caller looks anyway, in case a post
        was lost.
        """
        ready = self._ready_sem
        if timeout is not None and timeout <= 0:
            return True  # a caller that polls is not kept waiting
        # Give a producer on another core a moment before sleeping: a futex
        # sleep and wake costs more than the message it waits for.
        for _ in range(_SPIN):
            os.sched_yield()
            if ready.value:
                break
        try:
            if timeout is None:
                ready.acquire()
            else:
                ready.acquire(timeout)
        except posix_ipc.BusyError:
            pass
        except posix_ipc.SignalError:
            return False
        return True

    def _take_locked(self, tok: int) -> int:
        q = self._q
        states = self._states
        suspect = -1
        if q[H_STRAY]:
            idx, suspect = self._find_strays()
            if idx >= 0:
                return self._take_stray(idx, tok)
            if suspect >= 0 and q[H_PASSED] >= _SUSPECT_EVERY:
                q[H_PASSED] = 0
                return self._take_stray(suspect, tok)
        tail = q[H_TAIL]
        head = q[H_HEAD]
        nslots = self.slots
        descs_w = self._descs_w
        while tail < head:
            idx = tail % nslots
            d = descs_w + idx * DESC_WORDS
            if states[idx] == READY and q[d + D_SEQ] == tail:
                q[d + D_OWNER] = tok
                states[idx] = CLAIMED
                q[H_TAIL] = tail + 1
                if suspect >= 0:
                    q[H_PASSED] += 1
                return idx
            # a sequence number the producer stepped over, or a slot whose
            # message is behind tail (a stray): nothing to take here
            tail += 1
            q[H_TAIL] = tail
        if suspect >= 0:
            q[H_PASSED] = 0
            return self._take_stray(suspect, tok)
        return -1

    def _find_strays(self) -> tuple[int, int]:
        """The oldest READY slot behind tail that was never attempted, and the
        oldest that was (a message a worker died on, or that timed out spamd);
        -1 for none."""
        q = self._q
        tail = q[H_TAIL]
        descs_w = self._descs_w
        clean = suspect = -1
        clean_seq = suspect_seq = 0
        for idx, st in enumerate(self._states):
            if st == READY:
                d = descs_w + idx * DESC_WORDS
                seq = q[d + D_SEQ]
                if seq >= tail:
                    continue
                if q[d + D_ATTEMPTS]:
                    if suspect < 0 or seq < suspect_seq:
                        suspect, suspect_seq = idx, seq
                elif clean < 0 or seq < clean_seq:
                    clean, clean_seq = idx, seq
        if clean < 0 and suspect < 0:
            q[H_STRAY] = 0  # the count was stale (e.g. a crash mid-update)
        return clean, suspect

    def _take_stray(self, idx: int, tok: int) -> int:
        q = self._q
        q[self._descs_w + idx * DESC_WORDS + D_OWNER] = tok
        self._states[idx] = CLAIMED
        q[H_STRAY] -= 1
        return idx

    def _check_owner(self, claim: Claim, owner: Identity | None) -> None:
        tok = self._tok if owner is None else owner_token(owner)
        d = self._descs_w + claim.slot * DESC_WORDS
        q = self._q
        held = self._states[claim.slot] == CLAIMED and q[d + D_OWNER] == tok
        if not held or q[d + D_SEQ] != claim.seq:
            raise RingOwnershipError(
                f"slot {claim.slot} ({claim.msgid}) is not held by pid {token_identity(tok).pid}"
            )

    def ack(self, claim: Claim, owner: Identity | None = None) -> None:
        """Free the slot of a processed message.  Call only after recording it.

        A single store, so a death around it either keeps the claim (then it
        is requeued and processed again: at least once) or frees it.
        """
        slot = claim.slot
        d = self._descs_w + slot * DESC_WORDS
        q = self._q
        tok = self._tok if owner is None else owner_token(owner)
        # the owner check inline: ack runs once per message
        if self._states[slot] != CLAIMED or q[d + D_OWNER] != tok or q[d + D_SEQ] != claim.seq:
            self._check_owner(claim, owner)  # raises with the details
        self._states[slot] = FREE

    def release(self, claim: Claim, owner: Identity | None = None, *,
                count_attempt: bool = False) -> None:
        """Give a claimed message back unprocessed, attempts unchanged unless
        ``count_attempt`` (the message itself failed, e.g. timed out spamd)."""
        self._acquire_patiently()
        try:
            self._check_owner(claim, owner)
            d = self._descs_w + claim.slot * DESC_WORDS
            if count_attempt:
                self._q[d + D_ATTEMPTS] += 1
            # counted before it is READY: a death between the two stores
            # leaves a count too high (healed by the next scan), never a
            # READY slot behind tail that nothing will look for
            self._q[H_STRAY] += 1
            self._q[d + D_RELEASES] += 1
            self._states[claim.slot] = READY
        finally:
            self._release()
        self._ready_sem.release()

    # recovery (supervisor) -----------------------------------------------------

    def recover(self, owner: Identity, count_attempt: bool = True) -> RecoverResult:
        """Requeue what ``owner`` (a dead process) held; free its half-filled slots.

        A CLAIMED slot becomes READY with attempts + 1 (unchanged with
        ``count_attempt=False``: the supervisor killed the owner itself, at a
        stop's deadline); a FILLING slot becomes FREE (its client never got
        OK).  Call only for processes known dead.  Safe to repeat if the
        caller dies midway.
        """
        return self._recover(lambda ident: ident == tuple(owner), count_attempt)

    def recover_dead(self) -> RecoverResult:
        """:meth:`recover` for every slot whose recorded owner is not alive."""
        alive: dict[Identity, bool] = {}

        def dead(ident: Identity) -> bool:
            if ident not in alive:
                alive[ident] = proc.is_alive(ident)
            return not alive[ident]

        return self._recover(dead)

    def _recover(self, is_target: Callable[[Identity], bool],
                 count_attempt: bool = True) -> RecoverResult:
        q = self._q
        states = self._states
        requeued = freed = 0
        posts = 0
        self._acquire_patiently()
        try:
            tail = q[H_TAIL]
            for idx in range(self.slots):
                st = states[idx]
                if st not in (FILLING, CLAIMED):
                    continue
                d = self._descs_w + idx * DESC_WORDS
                if not is_target(token_identity(int(q[d + D_OWNER]))):
                    continue
                if st == FILLING:
                    states[idx] = FREE
                    freed += 1
                    continue
                q[d + D_ATTEMPTS] += int(count_attempt)
                if q[d + D_SEQ] < tail:
                    q[H_STRAY] += 1  # before READY, as in release()
                states[idx] = READY
                requeued += 1
                posts += 1
            # a producer that died after marking READY but before advancing head,
            # maybe at a slot it stepped to as put() does.  head is the producer's
            # alone while it lives (it does not take the lock): move it only past
            # a dead producer's message, and never write it back unchanged.
            head = start = int(q[H_HEAD])
            seq = head
            while seq <= head + _MAX_SKIP:
                idx = seq % self.slots
                d = self._descs_w + idx * DESC_WORDS
                if (states[idx] in (READY, CLAIMED) and q[d + D_SEQ] == seq
                        and is_target(token_identity(int(q[d + D_OWNER])))):
                    head = seq + 1
                    posts += 1
                seq += 1
            if head != start:
                q[H_HEAD] = head
            q[H_REQUEUED] += requeued
            q[H_FREED] += freed
        finally:
            self._release()
        for _ in range(posts):
            self._ready_sem.release()
        return RecoverResult(requeued, freed)

    def recount_strays(self) -> int:
        """Count the READY slots behind tail afresh; returns the count.

        Claims look behind tail only while the count says so; adopt() and
        a drain call this, so a count left too low by an older crash cannot
        hide a message.
        """
        self._acquire_patiently()
        try:
            q = self._q
            tail = q[H_TAIL]
            n = 0
            for idx, st in enumerate(self._states.tolist()):
                if st == READY and q[self._descs_w + idx * DESC_WORDS + D_SEQ] < tail:
                    n += 1
            q[H_STRAY] = n
        finally:
            self._release()
        return n

    def _reset_ready(self) -> None:
        """Make the "ready" count equal the READY slots (adopt only)."""
        while True:
            try:
                self._ready_sem.acquire(0)
            except posix_ipc.BusyError:
                break
        for _ in range(self._states.tolist().count(READY)):
            self._ready_sem.release()

    def wake(self, n: int = 1) -> None:
        """Post "ready" ``n`` times so blocked consumers look again (e.g. to stop)."""
        for _ in range(n):
            self._ready_sem.release()

    # process table ---------------------------------------------------------------

    def register(self, role: Role, index: int = 0, row: int | None = None) -> ProcRow:
        """Claim a process-table row for this process (a given row, or any free one).

        Only a row that is empty (never used, or retired with
        :meth:`retire_row`, which folds its counters into the totals) is free;
        a dead process's row stays taken until the supervisor retires it.
        """
        me = self._me
        if row is not None and not 0 <= row < self.rows:
            raise RingError(f"process row {row} out of range 0..{self.rows - 1}")
        if row is not None:
            # the row's intent word is the one process's that registers there
            self._iw = self._rows_w + row * ROW_WORDS + R_INTENT
        self._acquire_patiently()
        try:
            if row is None:
                row = self._free_row()
            b = self._rows_w + row * ROW_WORDS
            q = self._q
            for i in range(ROW_WORDS):
                if i not in (R_INTENT, R_INTENT + 1):
                    q[b + i] = 0
            q[b + R_ROLE] = role
            q[b + R_INDEX] = index
            q[b + R_START] = me.start
            q[b + R_PID] = me.pid
        finally:
            self._release()
        self._iw = b + R_INTENT
        handle = ProcRow(self, row)
        handle.set_state(ProcState.STARTING)
        return handle

    def _free_row(self) -> int:
        q = self._q
        for row in range(self.rows):
            b = self._rows_w + row * ROW_WORDS
            pid = int(q[b + R_PID])
            if pid == 0:
                return row
        raise RingError("process table full")

    def add_totals(self, counts: dict[int, int]) -> None:
        """Add to the totals on behalf of no live process (e.g. a purge run
        from the command line): counter index -> amount, into the retired block."""
        self._acquire_patiently()
        try:
            for counter, n in counts.items():
                self._q[H_RETIRED + counter] += n
        finally:
            self._release()

    def retire_row(self, row: int, ident: Identity | None = None) -> None:
        """Fold a row's counters into the retired block and clear it (owner only).

        Call after the row's process has exited, before its row is reused;
        with ``ident``, only if the row is still that process's (a retry
        after :class:`RingBusy` must not fold a successor's row).  The lock
        intent words stay: they are whoever registers there next's.
        """
        self._acquire_patiently()
        try:
            q = self._q
            b = self._rows_w + row * ROW_WORDS
            if q[b + R_PID] == 0:
                return
            if ident is not None and (q[b + R_PID], q[b + R_START]) != tuple(ident):
                return
            for i in range(NCOUNTERS):
                q[H_RETIRED + i] += q[b + R_COUNTERS + i]
                q[b + R_COUNTERS + i] = 0
            for i in range(R_COUNTERS):
                if i not in (R_INTENT, R_INTENT + 1):
                    q[b + i] = 0
        finally:
            self._release()

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
        out = []
        for row in range(self.rows):
            b = self._rows_w + row * ROW_WORDS
            pid = int(q[b + R_PID])
            if pid == 0:
                continue
            o = (b + R_ID) * 8
            msgid = self._mv[o : o + ID_BYTES].tobytes().rstrip(b"\0").decode("ascii", "replace")
            out.append(
                RowSnapshot(
                    row, pid, int(q[b + R_START]), Role(q[b + R_ROLE]), int(q[b + R_INDEX]),
                    ProcState(q[b + R_STATE]), int(q[b + R_BEAT]), int(q[b + R_SINCE]), msgid,
                    tuple(q[b + R_COUNTERS : b + R_COUNTERS + NCOUNTERS]),
                )
            )
        return out

    def row(self, row: int) -> ProcRow:
        """A handle on an existing row (e.g. the supervisor reading a child's)."""
        return ProcRow(self, row)

    # status ---------------------------------------------------------------------

    def snapshot(self) -> RingSnapshot:
        """All counts for status displays; lock-free, cheap enough to call often."""
        q = self._q
        states = self._states.tolist()
        return RingSnapshot(
            name=self.name,
            slots=self.slots,
            slot_bytes=self.slot_bytes,
            free=states.count(FREE),
            filling=states.count(FILLING),
            ready=states.count(READY),
            claimed=states.count(CLAIMED),
            head=int(q[H_HEAD]),
            tail=int(q[H_TAIL]),
            stray=int(q[H_STRAY]),
            generation=int(q[H_GENERATION]),
            lock_holder=self.lock_holder(),
            lock_breaks=int(q[H_LOCK_BREAKS]),
            requeued=int(q[H_REQUEUED]),
            freed=int(q[H_FREED]),
            owner=self.owner,
            rows=tuple(self.read_rows()),
            retired=tuple(q[H_RETIRED : H_RETIRED + NCOUNTERS]),
        )

    def used_slots(self) -> int:
        """Slots not FREE; lock-free and cheap (one pass over the state words)."""
        return self.slots - self._states.tolist().count(FREE)

    def slot_states(self) -> list[SlotState]:
        """State of every slot (tests and diagnostics)."""
        return [SlotState(s) for s in self._states.tolist()]

    def iter_held(self) -> list[tuple[int, SlotState, Identity]]:
        """(slot, state, owner) for every FILLING or CLAIMED slot."""
        q = self._q
        out = []
        for idx, st in enumerate(self._states.tolist()):
            if st in (FILLING, CLAIMED):
                d = self._descs_w + idx * DESC_WORDS
                out.append(
                    (idx, SlotState(st), token_identity(int(q[d + D_OWNER])))
                )
        return out


def shm_paths(name: str) -> tuple[str, str, str]:
    """Where Linux keeps a ring's segment and its two semaphores."""
    shm_name, lock_name, ready_name = _names(name)
    return (f"/dev/shm/{shm_name[1:]}", f"/dev/shm/sem.{lock_name[1:]}",
            f"/dev/shm/sem.{ready_name[1:]}")


def unlink_name(name: str) -> bool:
    """Remove a ring's segment and semaphores by name; True if anything existed."""
    found = False
    shm_name, lock_name, ready_name = _names(name)
    try:
        posix_ipc.unlink_shared_memory(shm_name)
        found = True
    except posix_ipc.ExistentialError:
        pass
    for sem_name in (lock_name, ready_name):
        try:
            posix_ipc.unlink_semaphore(sem_name)
            found = True
        except posix_ipc.ExistentialError:
            pass
    return found


def exists(name: str) -> bool:
    """True if a segment of that name is present in /dev/shm."""
    try:
        shm = posix_ipc.SharedMemory(_names(name)[0])
    except posix_ipc.ExistentialError:
        return False
    shm.close_fd()
    return True
