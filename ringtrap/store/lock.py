"""The ring lock: one semaphore, an owner word, and the intents that let the
segment's owner break it safely.

A process announces itself in its row's intent word (a process without a
row: a guest pair picked by pid) before it waits on the semaphore, records
itself as holder right after the wait succeeds, then clears the intent.  No
wait is unbounded: each lasts at most ``_LOCK_SLICE`` and one given up bumps
the tries word, so a waiter's (intent, tries) pair changes at least that
often while the lock stays held.  The supervisor (the owner) breaks a lock
whose recorded holder is dead.  A lock held with no recorded holder was taken
by a process between its wait and its record: it is broken only when the
acquisition count has not moved for ``_ORPHAN_LOCK_SECONDS`` *and* no live
process kept the same intent pair through that window (the taker, dead, or
alive but not making progress, keeps it; a waiter's changes), so a live
process inside that window is never robbed, however long it stalls.  A live
holder, recorded or suspected, that is stopped (SIGSTOP) or makes no progress
for ``_LOCK_STUCK_SECONDS`` is reported as hung for the supervisor to kill;
once it is dead its lock is broken.

:meth:`ringtrap.ring.Ring.claim` takes the lock inline, by the same
protocol, with :meth:`RingLock.wait` as its slow path.
"""

from __future__ import annotations

import logging
import time
from typing import NamedTuple

import posix_ipc

from ringtrap.base import proc
from ringtrap.base.proc import Identity
from ringtrap.store.segment import (
    GUESTS,
    H_GUESTS,
    H_LOCK,
    H_LOCK_BREAKS,
    H_LOCK_COUNT,
    R_INTENT,
    ROW_WORDS,
    RingError,
    Segment,
    token_identity,
)

log = logging.getLogger(__name__)

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


class RingBusy(RingError):
    """The lock could not be had before the deadline; nothing was changed."""


class LockCheck(NamedTuple):
    """What :meth:`RingLock.check_lock` found."""

    broken: bool  # a dead holder's lock was released
    hung: Identity | None  # a live process that holds (or may hold) it and is stuck
    stopped: bool  # ... and is stopped (SIGSTOP), rather than merely slow


_LOCK_FINE = LockCheck(False, None, False)
_LOCK_BROKEN = LockCheck(True, None, False)


class RingLock:
    """This process's handle on the segment's lock."""

    def __init__(self, seg: Segment) -> None:
        self._seg = seg
        self._q = seg.q
        self._sem = seg.lock_sem
        self._tok = seg.tok
        # this process's intent word: a guest pair until it registers a row
        self.iw = H_GUESTS + 2 * (seg.me.pid % GUESTS)
        # how long a control operation waits for the lock (see acquire_patiently)
        self.patience = OWNER_PATIENCE
        # the lock as check_lock() last saw it: (holder, count, since) ...
        self._lock_seen: tuple[int, int, float] | None = None
        # ... and each intent word -> ((token, tries), first seen unchanged)
        self._intents_seen: dict[int, tuple[tuple[int, int], float]] = {}
        # ... and each holder or suspect seen stopped -> (stop mark, first seen)
        self._stops_seen: dict[Identity, tuple[int, float]] = {}

    def acquire(self, timeout: float | None) -> bool:
        """Take the lock within ``timeout`` seconds (0: one try; None: the
        patience); False if not had, or on an interrupting signal.

        The stores follow the protocol of the module docstring: intent, wait,
        holder and count, intent cleared.  Dying anywhere in it leaves at worst
        a lock held by a dead process, which the owner breaks.
        """
        q = self._q
        iw = self.iw
        q[iw] = self._tok
        try:
            self._sem.acquire(0)
        except posix_ipc.BusyError:
            if not self.wait(self.patience if timeout is None else timeout):
                return False
        q[H_LOCK] = self._tok
        q[H_LOCK_COUNT] += 1
        q[iw] = 0
        return True

    def wait(self, timeout: float) -> bool:
        """The slow path of a lock taker whose intent is written: wait in slices.

        Returns True holding the semaphore (the caller records itself and
        clears the intent); False with the intent cleared.
        """
        q = self._q
        iw = self.iw
        sem = self._sem
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

    def release(self) -> None:
        """Let go of the lock this process holds."""
        self._q[H_LOCK] = 0
        self._sem.release()

    def acquire_patiently(self) -> None:
        """For control operations: wait up to :attr:`patience` seconds for the
        lock, then raise :class:`RingBusy` (nothing changed).

        Only the segment's owner (the supervisor) breaks a dead holder's lock,
        as it waits: two processes breaking the same lock would each post it
        and let two holders in.  The supervisor sets a short patience once it
        runs, so that it never blocks on a live holder: it kills a hung one
        (see :meth:`check_lock`) and tries again on a later turn.
        """
        owner = self._seg.owner == self._seg.me
        deadline = time.monotonic() + self.patience
        while True:
            if self.acquire(max(0.0, min(_LOCK_SLICE, deadline - time.monotonic()))):
                return
            if owner and self.break_lock_if_dead():
                continue
            if time.monotonic() >= deadline:
                holder = self.holder()
                who = f"pid {holder.pid}" if holder else "an unrecorded process"
                raise RingBusy(f"ring {self._seg.name!r} lock held by {who} for over "
                               f"{self.patience:g} s"
                               + ("" if owner else "; is the supervisor running?"))

    def holder(self) -> Identity | None:
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
        if self._sem.value > 0:
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
        if q[H_LOCK] or q[H_LOCK_COUNT] != count or self._sem.value > 0:
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
        rows_w = self._seg.rows_w
        words = [rows_w + row * ROW_WORDS + R_INTENT for row in range(self._seg.rows)]
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
        self._sem.release()
        self._q[H_LOCK_BREAKS] += 1
        log.warning("broke ring lock held by %s", whose,
                    extra={"event": "lock_break", "holder_pid": pid})
