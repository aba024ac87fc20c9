"""The shared-memory ring: fixed slots in one POSIX segment, a "ready" semaphore.

The segment (layout, header, lifecycle) is :mod:`ringtrap.store.segment`, its
lock :mod:`ringtrap.store.lock`, the process table beside the slots
:mod:`ringtrap.store.proctable`; this module is the slots and what moves
messages through them.

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

Every FILLING or CLAIMED slot carries its owner's identity, so the
supervisor recovers exactly what a dead process held, and no live process
is ever robbed because its pid once belonged to another.
"""

from __future__ import annotations

import logging
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import ClassVar, NamedTuple

import posix_ipc

from ringtrap.base import proc
from ringtrap.base.proc import Identity
from ringtrap.base.states import SlotState
from ringtrap.store.claim import ClaimLost, Quarantined, QuarantineStore
from ringtrap.store.lock import _LOCK_SLICE, RingLock
from ringtrap.store.proctable import ProcTable
from ringtrap.store.segment import (
    D_ATTEMPTS,
    D_ENQ,
    D_OWNER,
    D_RELEASES,
    D_SEQ,
    DEFAULT_ROWS,
    DESC_WORDS,
    H_FREED,
    H_HEAD,
    H_LOCK,
    H_LOCK_COUNT,
    H_PASSED,
    H_REQUEUED,
    H_STRAY,
    H_TAIL,
    ID_BYTES,
    RingError,
    RingLayoutError,
    Segment,
    owner_token,
    token_identity,
)
from ringtrap.store.snapshot import RingSnapshot, read_snapshot
from ringtrap.store.stuck import MAX_SKIP, StuckClaims

log = logging.getLogger(__name__)

# owner, seq, length, attempts, enqueued, id: packed from the owner word on
# (releases and the reserved word are zeroed with them)
_DESC = struct.Struct("5Q16x32s")
_DESC_AFTER_OWNER = struct.Struct("4Q16x32s")

FREE, FILLING, READY, CLAIMED = (int(s) for s in SlotState)

# fresh claims taken while an attempted message waits, before it is taken
_SUSPECT_EVERY = 8
# sched_yield() rounds a consumer spins on an empty ring before it blocks
_SPIN = 20
_LOCK_SPIN = 50


class RingOwnershipError(RingError, ClaimLost):
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
    """A message taken from the ring (a :class:`StoreClaim`); the claimer must
    ack, release or quarantine it."""

    slot: int
    seq: int
    msgid: str
    data: bytes
    attempts: int
    received: float  # wall-clock seconds when it was put
    ring: Ring = field(repr=False, compare=False)

    store: ClassVar[str] = "ring"

    @property
    def size(self) -> int:
        return len(self.data)

    def read(self) -> bytes:
        """The message, copied out of its slot at the claim."""
        return self.data

    def peek(self, n: int) -> bytes | None:
        """The message's first ``n`` bytes."""
        return self.data[:n]

    def ack(self) -> None:
        """See :meth:`Ring.ack`."""
        self.ring.ack(self)

    def release(self, *, count_attempt: bool = False) -> None:
        """See :meth:`Ring.release`."""
        self.ring.release(self, count_attempt=count_attempt)

    def quarantine(self, reason: str, into: QuarantineStore) -> Quarantined:
        """Copy the message into ``into`` (the ring keeps no quarantine), then
        free its slot.

        Dying between the two leaves the claim, recovered and quarantined
        again: a second copy, never a quarantined message lost.
        """
        done = into.quarantine_bytes(self.msgid, self.data, self.attempts, reason)
        try:
            self.ring.ack(self)
        except RingOwnershipError:
            # requeued by the supervisor (it judged us dead): it will be
            # processed again, which at-least-once allows
            log.warning("%s: slot no longer ours at ack; it will be recorded twice", self.msgid)
        return done


class RecoverResult(NamedTuple):
    requeued: int  # CLAIMED slots made READY again (attempts + 1)
    freed: int  # FILLING slots (half-copied, never acknowledged) made FREE


class Ring:
    """A handle on the ring segment's slots, valid in one process.

    Lifecycle verbs: :meth:`create` (exclusive, by the owner),
    :meth:`attach` (any process), :meth:`adopt` (a new owner takes over a
    segment left by a dead one), :meth:`close` (this process lets go) and
    :meth:`unlink` (remove the segment and semaphores: owner only).  The
    segment's lock is :attr:`lock`, its process table :attr:`table`.
    """

    def __init__(self, seg: Segment) -> None:
        self.name = seg.name
        self.lock = self._lock = RingLock(seg)
        self.table = ProcTable(seg, self._lock)
        self._seg = seg
        # the segment's views and offsets, as attributes of the ring itself:
        # put() and claim() pay one lookup each, not two
        self._map = seg.map
        self._q = seg.q
        self._states = seg.states
        self._lock_sem = seg.lock_sem
        self._ready_sem = seg.ready_sem
        self.slots = seg.slots
        self.slot_bytes = seg.slot_bytes
        self.rows = seg.rows
        self._descs_w = seg.descs_w
        self._descs_off = seg.descs_off
        self._payload_off = seg.payload_off
        self._me = seg.me
        self._tok = seg.tok
        self._stuck = StuckClaims(seg)

    @classmethod
    def create(cls, name: str, slots: int, slot_bytes: int, *, mode: int = 0o600,
               rows: int = DEFAULT_ROWS) -> Ring:
        """Create a new, empty ring exclusively; :class:`RingExists` if present."""
        return cls(Segment.create(name, slots, slot_bytes, mode=mode, rows=rows))

    @classmethod
    def attach(cls, name: str) -> Ring:
        """Open an existing ring (any process); :class:`RingMissing` if absent."""
        return cls(Segment.attach(name))

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
        ring._seg.take_ownership()
        ring.lock.break_lock_if_dead()
        ring.recover_dead()
        ring.recount_strays()
        ring.table.retire_dead_rows()
        ring._reset_ready()
        return ring

    def close(self) -> None:
        """Let go of the segment in this process (the ring lives on)."""
        self._seg.close()

    def unlink(self) -> None:
        """Remove the segment and its semaphores (owner only); handles stay valid."""
        self._seg.unlink()

    def chown(self, uid: int, gid: int) -> None:
        """Give the segment and its semaphores to ``uid``:``gid`` (root only)."""
        self._seg.chown(uid, gid)

    def __enter__(self) -> Ring:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def owner(self) -> Identity:
        return self._seg.owner

    @property
    def generation(self) -> int:
        return self._seg.generation

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
            head = self._stuck.step_over(head)
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
        me = self._tok
        tok = me if owner is None else owner_token(owner)
        q = self._q
        states = self._states
        lock = self._lock_sem
        # The lock is held for a microsecond: look again a few times before
        # sleeping on it, as a futex sleep and wake cost more than the wait.
        spin = _LOCK_SPIN
        while spin and not lock.value:
            spin -= 1
        # RingLock.acquire() inline (the protocol of ringtrap.store.lock): the
        # intent before the wait, the holder right after it
        iw = self._lock.iw
        q[iw] = me
        try:
            lock.acquire(0)
        except posix_ipc.BusyError:
            # a wait with a deadline: a holder that is stopped or stuck is the
            # supervisor's to kill, and this worker must keep beating meanwhile
            if not self._lock.wait(_LOCK_SLICE if not timeout or timeout < _LOCK_SLICE
                                   else timeout):
                ready.release()  # the post taken above is another consumer's now
                return None
        q[H_LOCK] = me
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
                     attempts, enq / 1e6, self)

    def oldest_received(self) -> float | None:
        """When the message the next :meth:`claim` takes was put (wall-clock
        seconds); None if the ring holds nothing ready.

        Read without the lock, so it may be a claim out of date: good enough
        to choose between the ring and the overflow, never to claim by.  A
        message given back behind tail (released, or requeued from a dead
        claimer) is taken first and counts as older than anything: 0.0.
        """
        q = self._q
        if q[H_STRAY]:
            return 0.0
        tail = q[H_TAIL]
        head = q[H_HEAD]
        nslots = self.slots
        states = self._states
        # tail may rest on a sequence number the producer stepped over
        for seq in range(tail, min(head, tail + MAX_SKIP + 1)):
            idx = seq % nslots
            d = self._descs_w + idx * DESC_WORDS
            if states[idx] == READY and q[d + D_SEQ] == seq:
                return q[d + D_ENQ] / 1e6
        return None

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
        self._lock.acquire_patiently()
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
            self._lock.release()
        self._ready_sem.release()

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
        self._lock.acquire_patiently()
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
            while seq <= head + MAX_SKIP:
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
            self._lock.release()
        for _ in range(posts):
            self._ready_sem.release()
        return RecoverResult(requeued, freed)

    def recount_strays(self) -> int:
        """Count the READY slots behind tail afresh; returns the count.

        Claims look behind tail only while the count says so; adopt() and
        a drain call this, so a count left too low by an older crash cannot
        hide a message.
        """
        self._lock.acquire_patiently()
        try:
            q = self._q
            tail = q[H_TAIL]
            n = 0
            for idx, st in enumerate(self._states.tolist()):
                if st == READY and q[self._descs_w + idx * DESC_WORDS + D_SEQ] < tail:
                    n += 1
            q[H_STRAY] = n
        finally:
            self._lock.release()
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

    def snapshot(self) -> RingSnapshot:
        """All counts for status displays; lock-free, cheap enough to call often."""
        return read_snapshot(self.table)

    def used_slots(self) -> int:
        """Slots not FREE; lock-free and cheap (one pass over the state words)."""
        return self.slots - self._states.tolist().count(FREE)
