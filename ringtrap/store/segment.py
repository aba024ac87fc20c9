"""The shared-memory segment: its layout, header and lifecycle.

One POSIX segment holds the ring's slots and the process table, beside two
semaphores named after it: the lock (:mod:`ringtrap.store.lock`) and
"ready" (:mod:`ringtrap.ring`).

Segment layout (native byte order, every field a 64-bit word unless noted)::

    offset 0        header, HEADER_WORDS words (2 KiB)
                      0 magic "RINGTRAP"   1 layout version   2 slot count
                      3 slot bytes         4 process rows      5 counters per row
                      6 created (wall us)  7 owner pid         8 owner start
                     15 generation (+1 on every adopt)
                     16 lock breaks       17 slots requeued   18 slots freed
                     32..82 hourly history of accepted and analysed messages
                        (ringtrap.store.history)
                     96 head (next seq to put; the producer's, alone in its
                        cache line so consumers' writes never evict it)
                    104 lock owner       105 lock acquisitions
                    106 tail (next seq to claim; consumers', under the lock)
                    107 stray (READY slots behind tail: requeued or released)
                    108..123 guest lock intents, 8 pairs (token, try), for
                        processes without a row (see ringtrap.store.lock)
                    124 passed (fresh claims taken while an attempted
                        message waited behind tail)
                    128..255 retired counters (rows of exited processes, folded)
    ROWS            process table, ROW_WORDS words per row
                      0 pid  1 role  2 start  3 state  4 index
                      5 heartbeat (monotonic ns)  6 state since (monotonic ns)
                      8..11 current message id (32 bytes)
                     12 lock intent (owner token while waiting for or
                        entering the lock)  13 lock tries (+1 per wait given up)
                     14 received (wall us) of the message being worked on, 0 if none
                     16..143 counters (see ringtrap.base.counters)
    HOSTS           scanner hosts: per row, HOST_CELLS cells of CELL_WORDS
                    words, written only by that row's process (layout in
                    ringtrap.store.hosttable); not cleared when a row is
                    retired, so a successor in the row counts on
    DESCS           DESC_WORDS words per slot, cache-line aligned
                      0 state  1 owner  2 seq  3 length  4 attempts
                      5 enqueued (wall us)  6 releases (give-backs)  7 reserved
                      8..11 message id (32 bytes)  12..15 reserved
                    (a claim and its ack touch only the first line: the state
                    lives there rather than in an array shared by neighbours)
    PAYLOAD         slot count x slot bytes, page aligned

Every FILLING or CLAIMED slot, the lock and the intents carry an owner
identity (:mod:`ringtrap.base.proc`) packed into one word,
``start << 22 | pid`` (Linux pids stay below 2**22), so an owner is written
and read whole.

Lifecycle verbs: :meth:`Segment.create` (exclusive, by the owner),
:meth:`Segment.attach` (any process), :meth:`Segment.close` (this process
lets go) and :meth:`Segment.unlink` (remove the segment and semaphores:
owner only).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import time

import posix_ipc

from ringtrap.base import proc
from ringtrap.base.counters import NCOUNTERS
from ringtrap.base.proc import Identity

MAGIC = int.from_bytes(b"RINGTRAP", "little")
VERSION = 4
HEADER_WORDS = 256
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
H_RETIRED = 128
assert H_RETIRED + NCOUNTERS <= HEADER_WORDS
H_GUESTS, GUESTS = 108, 8
H_PASSED = 124
# row words
R_PID, R_ROLE, R_START, R_STATE, R_INDEX, R_BEAT, R_SINCE = range(7)
R_ID = 8
R_INTENT = 12  # R_INTENT + 1: tries
R_RECEIVED = 14
R_COUNTERS = 16
# descriptor words
D_STATE, D_OWNER, D_SEQ, D_LEN, D_ATTEMPTS, D_ENQ, D_RELEASES = range(7)
D_ID = 8
_LINE = 64
_PID_BITS = 22

DEFAULT_ROWS = 64
# scanner hosts a process can keep numbers on, and the words of each one's cell
HOST_CELLS = 16
CELL_WORDS = 40


class RingError(Exception):
    """Base class for ring failures."""


class RingExists(RingError):
    """create() found a segment of that name already present."""


class RingMissing(RingError):
    """attach() or adopt() found no segment of that name."""


class RingLayoutError(RingError):
    """The segment is not a ringtrap ring of this layout or geometry."""


def _names(name: str) -> tuple[str, str, str]:
    base = "/" + name.lstrip("/")
    return base, base + ".lock", base + ".ready"


def _geometry(slots: int, slot_bytes: int, rows: int) -> tuple[int, int, int, int]:
    rows_off = HEADER_WORDS * 8
    descs_off = _hosts_off(rows) + rows * HOST_CELLS * CELL_WORDS * 8
    descs_off = (descs_off + _LINE - 1) // _LINE * _LINE
    payload_off = descs_off + slots * DESC_WORDS * 8
    payload_off = (payload_off + PAGE - 1) // PAGE * PAGE
    # whole words: the segment is viewed as 64-bit words, whatever the slot size
    total = (payload_off + slots * slot_bytes + 7) // 8 * 8
    return rows_off, descs_off, payload_off, total


def _hosts_off(rows: int) -> int:
    return HEADER_WORDS * 8 + rows * ROW_WORDS * 8


def owner_token(ident: Identity | tuple[int, int]) -> int:
    """Pack an identity into the one word the ring records as an owner."""
    pid, start = ident
    return (start << _PID_BITS) | pid


def token_identity(token: int) -> Identity:
    """Unpack an owner word; Identity(0, 0) for none."""
    return Identity(token & ((1 << _PID_BITS) - 1), token >> _PID_BITS)


def id_bytes(msgid: str) -> bytes:
    """A message id as the fixed-width field the segment stores."""
    raw = msgid.encode("ascii")
    if len(raw) > ID_BYTES:
        raise ValueError(f"message id longer than {ID_BYTES} bytes: {msgid!r}")
    return raw.ljust(ID_BYTES, b"\0")


class Segment:
    """The mapped segment and its two semaphores, valid in one process.

    The views (``map``, ``mv``, ``q``: the segment as 64-bit words) and the
    offsets are what the ring, the lock and the process table work on.
    """

    def __init__(self, name: str, shm: posix_ipc.SharedMemory, lock: posix_ipc.Semaphore,
                 ready: posix_ipc.Semaphore) -> None:
        self.name = name
        self.lock_sem = lock
        self.ready_sem = ready
        if shm.size < HEADER_WORDS * 8 or shm.size % 8:
            # e.g. a create() killed between making the segment and sizing it
            shm.close_fd()
            raise RingLayoutError(f"shared memory {name!r} is not a ringtrap ring (bad size)")
        # populate now: a first-lap page fault per slot would cost more than the copy
        self.map = mmap.mmap(shm.fd, shm.size, flags=mmap.MAP_SHARED | _POPULATE)
        shm.close_fd()
        self.mv = memoryview(self.map)
        self.q = self.mv.cast("Q")
        q = self.q
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
        if total > len(self.map):
            self._release_views()
            raise RingLayoutError(f"ring {name!r} is smaller than its header says")
        self.rows_w = rows_off // 8
        self.hosts_w = _hosts_off(self.rows) // 8
        self.descs_w = descs_off // 8
        self.descs_off = descs_off
        self.payload_off = payload_off
        # every slot's state word, as one strided view: counted in one pass
        self.states = q[self.descs_w : self.descs_w + self.slots * DESC_WORDS : DESC_WORDS]
        self.me = proc.self_identity()
        self.tok = owner_token(self.me)

    @classmethod
    def create(cls, name: str, slots: int, slot_bytes: int, *, mode: int = 0o600,
               rows: int = DEFAULT_ROWS) -> Segment:
        """Create a new, empty segment exclusively; :class:`RingExists` if present.

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
    def attach(cls, name: str) -> Segment:
        """Open an existing segment (any process); :class:`RingMissing` if absent."""
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

    def take_ownership(self) -> None:
        """Record this process as the segment's owner, a new generation (adopt)."""
        q = self.q
        q[H_OWNER_PID], q[H_OWNER_START] = self.me
        q[H_GENERATION] += 1

    @property
    def closed(self) -> bool:
        return self.map.closed

    def close(self) -> None:
        """Let go of the segment in this process (the segment lives on)."""
        if self.map.closed:
            return
        self._release_views()
        self.lock_sem.close()
        self.ready_sem.close()

    def _release_views(self) -> None:
        for view in ("states", "q", "mv"):
            v = getattr(self, view, None)
            if v is not None:
                v.release()
        self.map.close()

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

    @property
    def owner(self) -> Identity:
        return Identity(int(self.q[H_OWNER_PID]), int(self.q[H_OWNER_START]))

    @property
    def generation(self) -> int:
        return int(self.q[H_GENERATION])


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
