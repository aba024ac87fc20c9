"""Unit tests of the shared-memory ring (ringtrap.ring), all in one process.

States a process killed inside the ring would leave behind (a half-copied
slot, a message READY before ``head`` moved, a held lock) are crafted through
the ring's internals by the helpers below, each mirroring the order of stores
that the module docstring of :mod:`ringtrap.ring` documents.
"""

from __future__ import annotations

import mmap
import os
import stat
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from uuid import uuid4

import posix_ipc
import pytest
import ringpeek

from ringtrap import ring as ringmod
from ringtrap.base import proc
from ringtrap.base.counters import NCOUNTERS, C
from ringtrap.base.proc import Identity
from ringtrap.base.states import ProcState, Role, SlotState
from ringtrap.ring import Claim, PutResult, RecoverResult, Ring, RingOwnershipError
from ringtrap.store import lock as lockmod
from ringtrap.store import segment as segmod
from ringtrap.store import stuck as stuckmod
from ringtrap.store.lock import RingBusy
from ringtrap.store.segment import (
    RingError,
    RingExists,
    RingLayoutError,
    RingMissing,
    owner_token,
    token_identity,
    unlink_name,
)

SHM = Path("/dev/shm")
PREFIX = f"rt-test-{os.getpid()}-unit-"
SLOTS = 8
SLOT_BYTES = 256


# -- helpers -----------------------------------------------------------------


def ring_name() -> str:
    """A ring name no other test (or test run) uses."""
    return f"{PREFIX}{uuid4().hex[:8]}"


def shm_paths(name: str) -> list[Path]:
    """The three names a ring occupies in /dev/shm."""
    return [SHM / name, SHM / f"sem.{name}.lock", SHM / f"sem.{name}.ready"]


def leftovers() -> list[str]:
    return sorted(n for n in os.listdir(SHM) if n.removeprefix("sem.").startswith(PREFIX))


def body(msgid: str, size: int) -> bytes:
    """Deterministic content for ``msgid`` so a reader can check every byte."""
    seed = msgid.encode()
    return (seed * (size // len(seed) + 1))[:size]


def mid(i: int) -> str:
    """Message id number ``i`` (sorts like ``i``)."""
    return f"m{i:08d}"


def reused_pid(ident: Identity) -> Identity:
    """The same pid with another start time: a process that no longer exists."""
    return Identity(ident.pid, ident.start + 1)


def counts(r: Ring) -> tuple[int, int, int, int]:
    """(free, filling, ready, claimed) as the snapshot reports them."""
    s = r.snapshot()
    return s.free, s.filling, s.ready, s.claimed


def head(r: Ring) -> int:
    return r.snapshot().head


def interrupted_put(
    r: Ring, who: Identity, msgid: str, data: bytes, until: SlotState, seq: int | None = None
) -> int:
    """Leave a slot as a producer ``who`` killed inside :meth:`Ring.put` would.

    Test-only: writes the ring's internals in the order ``put`` does.  FILLING:
    the descriptor is written and half the payload copied.  READY: the payload
    is complete but ``head`` was not advanced and "ready" not posted.  ``seq``
    defaults to ``head``; a larger one is a slot the producer stepped to.
    Returns the slot index.
    """
    q = r._q
    seq = int(q[segmod.H_HEAD]) if seq is None else seq
    idx = seq % r.slots
    assert r._states[idx] == SlotState.FREE
    ringmod._DESC.pack_into(
        r._map, r._descs_off + idx * segmod.DESC_WORDS * 8 + 8, owner_token(who), seq,
        len(data), 0, time.time_ns() // 1000, msgid.encode(),
    )
    r._states[idx] = SlotState.FILLING
    o = r._payload_off + idx * r.slot_bytes
    cut = len(data) if until is SlotState.READY else len(data) // 2
    r._map[o : o + cut] = data[:cut]
    if until is SlotState.READY:
        r._states[idx] = SlotState.READY
    return idx


def finish_put(r: Ring, idx: int) -> None:
    """Complete an :func:`interrupted_put` stopped at READY, as a live producer would."""
    seq = int(r._q[r._descs_w + idx * segmod.DESC_WORDS + segmod.D_SEQ])
    r._q[segmod.H_HEAD] = seq + 1
    r._ready_sem.release()


def hold_lock_as(r: Ring, who: Identity | None) -> None:
    """Take the ring lock and record ``who`` as holder (None: killed before recording)."""
    r._lock_sem.acquire()
    if who is not None:
        r._q[segmod.H_LOCK] = owner_token(who)
        r._q[segmod.H_LOCK_COUNT] += 1


def lock_is_free(r: Ring) -> bool:
    return r._lock_sem.value == 1 and r.lock.holder() is None


def drain(r: Ring) -> list[Claim]:
    """Claim and ack everything claimable now, in the order the ring hands it out."""
    out = []
    while (c := r.claim(timeout=0)) is not None:
        r.ack(c)
        out.append(c)
    return out


# -- fixtures ----------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def no_leftovers() -> Iterator[None]:
    yield
    assert leftovers() == []


@pytest.fixture
def name() -> Iterator[str]:
    n = ring_name()
    yield n
    unlink_name(n)


@pytest.fixture
def r(name: str) -> Iterator[Ring]:
    ring = Ring.create(name, SLOTS, SLOT_BYTES)
    yield ring
    ring.close()


@pytest.fixture
def me() -> Identity:
    return proc.self_identity()


@pytest.fixture
def umask_077() -> Iterator[None]:
    old = os.umask(0o077)  # a daemon's umask must not change the mode asked for
    yield
    os.umask(old)


# -- lifecycle ---------------------------------------------------------------


def test_create_is_exclusive_with_private_mode(name: str, umask_077: None) -> None:
    with Ring.create(name, SLOTS, SLOT_BYTES) as r:
        for path in shm_paths(name):
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
        r.put("kept", b"x")
        with pytest.raises(RingExists):
            Ring.create(name, SLOTS, SLOT_BYTES)
        with pytest.raises(RingExists):
            Ring.create(name, 2, 16)
        # the failed create left the existing ring as it was
        assert r.claim(timeout=0) is not None


def test_create_with_custom_mode(name: str, umask_077: None) -> None:
    with Ring.create(name, SLOTS, SLOT_BYTES, mode=0o640):
        for path in shm_paths(name):
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o640, path


def test_create_rejects_empty_geometry(name: str) -> None:
    for slots, slot_bytes, rows in ((0, 16, 4), (4, 0, 4), (4, 16, 1)):
        with pytest.raises(ValueError):
            Ring.create(name, slots, slot_bytes, rows=rows)
    assert not ringpeek.exists(name)


@pytest.mark.parametrize(("slots", "slot_bytes"), [(1, 1), (3, 1001), (5, 100), (7, 1500)])
def test_create_any_slot_size(name: str, slots: int, slot_bytes: int) -> None:
    # sizes that leave the segment off a whole number of 64-bit words
    with Ring.create(name, slots, slot_bytes) as r, Ring.attach(name) as a:
        assert (a.slots, a.slot_bytes) == (slots, slot_bytes)
        for i in range(slots):
            assert r.put(mid(i), body(mid(i), slot_bytes)) is PutResult.OK
        got = drain(a)
        assert [(c.msgid, c.data) for c in got] == [
            (mid(i), body(mid(i), slot_bytes)) for i in range(slots)
        ]


def test_create_replaces_leftover_semaphores(name: str) -> None:
    base = "/" + name
    stale = posix_ipc.Semaphore(base + ".ready", posix_ipc.O_CREX, initial_value=5)
    stale.close()
    with Ring.create(name, SLOTS, SLOT_BYTES) as r:
        assert r._ready_sem.value == 0  # not the leftover's 5 posts
        assert r.claim(timeout=0) is None


def test_attach_reads_geometry(name: str, me: Identity) -> None:
    with Ring.create(name, 5, 100, rows=7) as r, Ring.attach(name) as a:
        assert (a.slots, a.slot_bytes, a.rows) == (5, 100, 7)
        assert a.owner == r.owner == me
        assert a.generation == 0
        s = a.snapshot()
        assert (s.name, s.slots, s.slot_bytes) == (name, 5, 100)
        assert (s.free, s.filling, s.ready, s.claimed, s.head, s.tail, s.stray) == (
            5, 0, 0, 0, 0, 0, 0
        )
        assert s.retired == (0,) * NCOUNTERS
        r.put(mid(1), b"via the creator")
        c = a.claim(timeout=0)
        assert c is not None and c.data == b"via the creator"


def test_attach_or_adopt_of_a_missing_ring(name: str) -> None:
    with pytest.raises(RingMissing):
        Ring.attach(name)
    with pytest.raises(RingMissing):
        Ring.adopt(name)
    assert not any(p.exists() for p in shm_paths(name))


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_attach_of_a_ring_without_semaphores_is_missing_and_leaks_no_fd(name: str) -> None:
    # a create() killed after making the segment, before the semaphores
    shm = posix_ipc.SharedMemory("/" + name, posix_ipc.O_CREX, size=1 << 16)
    shm.close_fd()
    before = open_fds()
    for _ in range(3):
        with pytest.raises(RingMissing):
            Ring.attach(name)
        with pytest.raises(RingMissing):
            Ring.adopt(name)
    assert open_fds() == before


def make_segment(name: str, size: int) -> None:
    """A segment and semaphores of ``name`` that no ringtrap create finished."""
    base = "/" + name
    shm = posix_ipc.SharedMemory(base, posix_ipc.O_CREX, size=size)
    shm.close_fd()
    for suffix in (".lock", ".ready"):
        posix_ipc.Semaphore(base + suffix, posix_ipc.O_CREX, initial_value=1).close()


def test_attach_rejects_a_foreign_segment(name: str) -> None:
    make_segment(name, 1 << 16)  # zeroed: no magic
    with pytest.raises(RingLayoutError, match="magic"):
        Ring.attach(name)
    with pytest.raises(RingLayoutError):
        Ring.adopt(name)


@pytest.mark.parametrize("size", [0, 12, 64, segmod.HEADER_WORDS * 8 - 8, 4100])
def test_attach_rejects_a_segment_of_no_ring_size(name: str, size: int) -> None:
    # a create killed between creating the segment and sizing it leaves 0 bytes
    make_segment(name, size)
    with pytest.raises(RingLayoutError):
        Ring.attach(name)
    with pytest.raises(RingLayoutError):
        Ring.adopt(name)


def test_attach_rejects_bad_magic_version_counters_and_size(name: str) -> None:
    Ring.create(name, SLOTS, SLOT_BYTES).close()
    shm = posix_ipc.SharedMemory("/" + name)
    with mmap.mmap(shm.fd, shm.size) as m:
        shm.close_fd()
        hdr = memoryview(m).cast("Q")
        try:
            for word, bad, what in (
                (segmod.H_MAGIC, int.from_bytes(b"NOTARING", "little"), "magic"),
                (segmod.H_VERSION, segmod.VERSION + 1, "version"),
                (segmod.H_NCOUNTERS, NCOUNTERS + 1, "counter"),
                (segmod.H_SLOTS, 1 << 20, "smaller"),
            ):
                good = hdr[word]
                hdr[word] = bad
                with pytest.raises(RingLayoutError, match=what):
                    Ring.attach(name)
                with pytest.raises(RingLayoutError):
                    Ring.adopt(name)
                hdr[word] = good
            with Ring.attach(name) as r:  # intact again
                assert r.slots == SLOTS
        finally:
            hdr.release()


def test_adopt_validates_geometry(name: str, me: Identity) -> None:
    Ring.create(name, SLOTS, SLOT_BYTES).close()
    with pytest.raises(RingLayoutError) as e:
        Ring.adopt(name, slots=SLOTS * 2, slot_bytes=SLOT_BYTES)
    assert f"{SLOTS} x {SLOT_BYTES}" in str(e.value)
    assert f"{SLOTS * 2} x {SLOT_BYTES}" in str(e.value)
    with pytest.raises(RingLayoutError) as e:
        Ring.adopt(name, slots=SLOTS, slot_bytes=SLOT_BYTES + 1)
    assert f"{SLOTS} x {SLOT_BYTES + 1}" in str(e.value)
    with Ring.attach(name) as a:
        assert a.generation == 0  # a refused adopt changed nothing
    with Ring.adopt(name, slots=SLOTS, slot_bytes=SLOT_BYTES) as r:
        assert r.generation == 1
        assert r.owner == me
    with Ring.adopt(name) as r:
        assert r.generation == 2


def test_adopt_keeps_contents_and_requeues_what_the_dead_held(name: str, me: Identity) -> None:
    dead = reused_pid(me)
    with Ring.create(name, SLOTS, SLOT_BYTES) as old:
        for i in range(4):
            assert old.put(mid(i), body(mid(i), 40)) is PutResult.OK
        mine = old.claim(timeout=0)
        theirs = old.claim(timeout=0, owner=dead)
        assert mine is not None and theirs is not None
        old._q[segmod.H_OWNER_PID], old._q[segmod.H_OWNER_START] = dead  # the old owner
        ringpeek.wake(old, 5)  # posts nobody took
    with Ring.adopt(name) as r:
        assert r.owner == me
        s = r.snapshot()
        assert (s.ready, s.claimed, s.requeued, s.generation) == (3, 1, 1, 1)
        assert r._ready_sem.value == 3  # reset to the READY slots
        got = drain(r)
        # fresh first: the requeued message may be what killed its claimer
        assert [(c.msgid, c.attempts) for c in got] == [
            (mid(2), 0), (mid(3), 0), (mid(1), 1)
        ]
        r.ack(mine)  # a live claimer of the old generation keeps its claim
        assert counts(r) == (SLOTS, 0, 0, 0)


@pytest.mark.parametrize("recorded", [True, False], ids=["recorded", "orphaned"])
def test_adopt_breaks_a_lock_the_dead_left_held(name: str, me: Identity, recorded: bool) -> None:
    with Ring.create(name, SLOTS, SLOT_BYTES) as old:
        old.put(mid(1), b"x")
        hold_lock_as(old, reused_pid(me) if recorded else None)
    t0 = time.monotonic()
    with Ring.adopt(name) as r:
        if not recorded:  # no owner recorded: broken only once it made no progress
            assert time.monotonic() - t0 >= lockmod._ORPHAN_LOCK_SECONDS
        assert lock_is_free(r)
        assert r.snapshot().lock_breaks == 1
        assert [c.msgid for c in drain(r)] == [mid(1)]


def test_close_keeps_the_ring_and_unlink_removes_all_three_names(name: str) -> None:
    r = Ring.create(name, SLOTS, SLOT_BYTES)
    assert r.put(mid(1), b"survives close") is PutResult.OK
    r.close()
    r.close()  # twice is harmless
    with pytest.raises(ValueError):
        r.put(mid(2), b"closed")
    assert ringpeek.exists(name)
    assert all(p.exists() for p in shm_paths(name))
    with Ring.attach(name) as other:
        c = other.claim(timeout=0)
        assert c is not None and c.data == b"survives close"
        other.ack(c)
        other.unlink()
        assert not ringpeek.exists(name)
        for p in shm_paths(name):
            assert not p.exists(), p
        # handles stay valid after unlink
        assert other.put(mid(3), b"still mapped") is PutResult.OK
        assert other.claim(timeout=0) is not None
    with pytest.raises(RingMissing):
        Ring.attach(name)
    assert unlink_name(name) is False


def test_unlink_name_removes_partial_leftovers(name: str) -> None:
    posix_ipc.Semaphore("/" + name + ".lock", posix_ipc.O_CREX).close()
    assert unlink_name(name) is True
    assert not any(p.exists() for p in shm_paths(name))


# -- put and claim -------------------------------------------------------------


def test_put_ok_too_large_and_full(r: Ring) -> None:
    assert r.put("big", b"x" * (SLOT_BYTES + 1)) is PutResult.TOO_LARGE
    assert counts(r) == (SLOTS, 0, 0, 0) and head(r) == 0
    assert r.put(mid(0), b"x" * SLOT_BYTES) is PutResult.OK
    assert r.put(mid(1), b"") is PutResult.OK
    for i in range(2, SLOTS):
        assert ringpeek.has_free_slot(r)
        assert r.put(mid(i), body(mid(i), i)) is PutResult.OK
    assert not ringpeek.has_free_slot(r)
    assert r.put("late", b"y") is PutResult.FULL
    assert r.put("big", b"x" * (SLOT_BYTES + 1)) is PutResult.TOO_LARGE
    assert counts(r) == (0, 0, SLOTS, 0) and head(r) == SLOTS
    got = drain(r)
    assert [c.msgid for c in got] == [mid(i) for i in range(SLOTS)]
    assert got[0].data == b"x" * SLOT_BYTES and got[1].data == b""
    assert r.put(mid(99), b"room again") is PutResult.OK


def test_claim_returns_what_was_put(r: Ring, me: Identity) -> None:
    before = time.time()
    r.put(mid(7), body(mid(7), 200))
    after = time.time()
    c = r.claim(timeout=0)
    assert c is not None
    assert (c.msgid, c.data, c.size, c.attempts, c.seq) == (
        mid(7), body(mid(7), 200), 200, 0, 0
    )
    assert before - 0.001 <= c.received <= after + 0.001
    assert ringpeek.iter_held(r) == [(c.slot, SlotState.CLAIMED, me)]


def test_fifo_over_several_laps(r: Ring) -> None:
    order = []
    n = 0
    for burst in (3, SLOTS, 1, SLOTS - 1, 5, SLOTS):
        for _ in range(burst):
            assert r.put(mid(n), body(mid(n), n % SLOT_BYTES)) is PutResult.OK
            n += 1
        got = drain(r)
        for c in got:
            assert c.data == body(c.msgid, len(c.data))
        order += [c.msgid for c in got]
    assert order == [mid(i) for i in range(n)]
    s = r.snapshot()
    assert (s.head, s.tail, s.free) == (n, n, SLOTS)


def test_claim_on_an_empty_ring_waits_for_the_timeout(r: Ring) -> None:
    t0 = time.monotonic()
    assert r.claim(timeout=0.3) is None
    assert time.monotonic() - t0 >= 0.28
    t0 = time.monotonic()
    assert r.claim(timeout=0) is None


def test_claim_without_a_post_still_looks(r: Ring) -> None:
    r.put(mid(1), b"posted")
    r._ready_sem.acquire(0)  # the post was lost (e.g. a crash)
    c = r.claim(timeout=0.05)
    assert c is not None and c.msgid == mid(1)


def test_wake_makes_a_blocked_claim_return(r: Ring) -> None:
    result: list[Claim | None] = []
    # a daemon: if wake() failed, the blocked thread must not hold up the run
    t = threading.Thread(target=lambda: result.append(r.claim(timeout=None)), daemon=True)
    t.start()
    try:
        t.join(0.3)
        assert t.is_alive(), "claim(timeout=None) returned on an empty ring"
    finally:
        ringpeek.wake(r)
        t.join(10)
    assert not t.is_alive()
    assert result == [None]
    ringpeek.wake(r, 3)
    assert r._ready_sem.value == 3


# -- ack and release -------------------------------------------------------------


def test_ack_by_a_non_owner_is_refused(r: Ring, me: Identity) -> None:
    other = reused_pid(me)
    r.put(mid(1), b"one")
    c = r.claim(timeout=0)
    assert c is not None
    with pytest.raises(RingOwnershipError):
        r.ack(c, owner=other)
    with pytest.raises(RingOwnershipError):
        r.release(c, owner=other)
    assert r.lock.holder() is None and lock_is_free(r)
    assert counts(r) == (SLOTS - 1, 0, 0, 1)
    r.ack(c)
    assert counts(r) == (SLOTS, 0, 0, 0)
    with pytest.raises(RingOwnershipError):
        r.ack(c)  # twice


def test_ack_of_a_stale_claim_is_refused(r: Ring, me: Identity) -> None:
    # the slot now holds a newer message the same owner claimed: seq differs
    r.put(mid(0), b"old")
    old = r.claim(timeout=0)
    assert old is not None
    r.ack(old)
    reused = False
    for i in range(1, SLOTS + 1):
        r.put(mid(i), b"new")
        c = r.claim(timeout=0)
        assert c is not None
        if c.slot == old.slot:
            reused = True
            with pytest.raises(RingOwnershipError):
                r.ack(old)
        r.ack(c)
    assert reused


def test_release_keeps_attempts_and_is_taken_again_oldest_first(r: Ring, me: Identity) -> None:
    for i in range(5):
        r.put(mid(i), body(mid(i), 30))
    held = [r.claim(timeout=0, owner=me) for _ in range(3)]
    assert [c.msgid for c in held if c] == [mid(0), mid(1), mid(2)]
    c0, c1, c2 = (c for c in held if c)
    r.release(c2)
    r.release(c0)
    assert r.snapshot().stray == 2
    assert counts(r) == (SLOTS - 5, 0, 4, 1)
    got = drain(r)
    assert [(c.msgid, c.attempts) for c in got] == [
        (mid(0), 0), (mid(2), 0), (mid(3), 0), (mid(4), 0)
    ]
    assert got[0].data == body(mid(0), 30)
    with pytest.raises(RingOwnershipError):
        r.release(c0)  # given back already
    r.ack(c1)
    s = r.snapshot()
    assert (s.free, s.stray) == (SLOTS, 0)


def test_oldest_received_is_when_the_next_claim_was_put(r: Ring, me: Identity) -> None:
    """What a newest-first worker weighs the overflow against: the put time of
    the message the next claim takes; a message given back counts as oldest."""
    assert r.oldest_received() is None
    before = time.time()
    r.put(mid(0), b"zero")
    time.sleep(0.01)
    middle = time.time()
    r.put(mid(1), b"one")
    first = r.oldest_received()
    assert first is not None and before <= first <= middle
    c0 = r.claim(timeout=0, owner=me)
    assert c0 is not None
    second = r.oldest_received()
    assert second is not None and middle <= second <= time.time()
    r.release(c0)
    assert r.oldest_received() == 0.0
    drain(r)
    assert r.oldest_received() is None


# -- recovery --------------------------------------------------------------------


def test_recover_requeues_claims_and_frees_half_filled_slots(r: Ring, me: Identity) -> None:
    dead = reused_pid(me)
    for i in range(3):
        r.put(mid(i), body(mid(i), 50))
    c = r.claim(timeout=0, owner=dead)
    assert c is not None and c.msgid == mid(0)
    interrupted_put(r, dead, mid(3), body(mid(3), 80), SlotState.FILLING)
    assert counts(r) == (SLOTS - 4, 1, 2, 1)
    assert sorted(ringpeek.iter_held(r)) == sorted(
        [(c.slot, SlotState.CLAIMED, dead), (3, SlotState.FILLING, dead)]
    )
    assert r.recover(dead) == RecoverResult(requeued=1, freed=1)
    assert counts(r) == (SLOTS - 3, 0, 3, 0)
    s = r.snapshot()
    assert (s.requeued, s.freed) == (1, 1)
    assert r.recover(dead) == RecoverResult(0, 0)  # safe to repeat
    with pytest.raises(RingOwnershipError):
        r.ack(c, owner=dead)  # the dead claim is void
    got = drain(r)
    assert [(g.msgid, g.attempts, g.data) for g in got] == [
        (mid(1), 0, body(mid(1), 50)), (mid(2), 0, body(mid(2), 50)), (mid(0), 1, body(mid(0), 50))
    ]
    # the freed slot is the next one written
    for i in range(10, 10 + SLOTS):
        assert r.put(mid(i), b"after") is PutResult.OK
    assert [g.msgid for g in drain(r)] == [mid(i) for i in range(10, 10 + SLOTS)]


def test_recovered_attempts_accumulate(r: Ring, me: Identity) -> None:
    r.put(mid(1), b"poison")
    for n in range(1, 4):
        dead = Identity(me.pid, me.start + n)
        c = r.claim(timeout=0, owner=dead)
        assert c is not None and c.attempts == n - 1
        assert r.recover(dead) == RecoverResult(1, 0)
    c = r.claim(timeout=0)
    assert c is not None and c.attempts == 3
    assert r.snapshot().requeued == 3


def test_recover_dead_spares_live_owners(r: Ring, me: Identity) -> None:
    reused = reused_pid(me)  # our pid, another start: a reused pid, so dead
    for i in range(4):
        r.put(mid(i), b"x")
    mine = r.claim(timeout=0)
    theirs = r.claim(timeout=0, owner=reused)
    interrupted_put(r, me, mid(4), b"half", SlotState.FILLING)  # we are alive: keep it
    assert mine is not None and theirs is not None
    assert r.recover_dead() == RecoverResult(requeued=1, freed=0)
    assert (mine.slot, SlotState.CLAIMED, me) in ringpeek.iter_held(r)
    assert (4, SlotState.FILLING, me) in ringpeek.iter_held(r)
    assert counts(r) == (SLOTS - 5, 1, 3, 1)
    assert r.recover_dead() == RecoverResult(0, 0)
    r.ack(mine)


def test_recover_touches_only_the_given_owner(r: Ring, me: Identity) -> None:
    a, b = Identity(me.pid, me.start + 1), Identity(me.pid, me.start + 2)
    for i in range(3):
        r.put(mid(i), b"x")
    ca = r.claim(timeout=0, owner=a)
    cb = r.claim(timeout=0, owner=b)
    cm = r.claim(timeout=0)
    assert ca and cb and cm
    assert r.recover(a) == RecoverResult(1, 0)
    assert sorted((o, s) for _, s, o in ringpeek.iter_held(r)) == sorted(
        [(b, SlotState.CLAIMED), (me, SlotState.CLAIMED)]
    )
    r.ack(cb, owner=b)
    r.ack(cm)
    got = drain(r)
    assert [(c.msgid, c.attempts) for c in got] == [(mid(0), 1)]


def test_producer_steps_over_a_slot_still_claimed_from_an_earlier_lap(
    name: str, claims_age_at_once: None
) -> None:
    with Ring.create(name, 4, 64) as r:
        for i in range(4):
            r.put(mid(i), b"first lap")
        slow = r.claim(timeout=0)
        assert slow is not None and slow.msgid == mid(0)
        assert [c.msgid for c in drain(r)] == [mid(1), mid(2), mid(3)]
        # the ring fills up around the held slot
        n = 10
        while r.put(mid(n), body(mid(n), n)) is PutResult.OK:
            n += 1
        assert n == 10 + 3
        assert counts(r) == (0, 0, 3, 1)
        assert [c.msgid for c in drain(r)] == [mid(i) for i in range(10, n)]
        # and keeps turning for several laps
        for i in range(100, 120):
            assert r.put(mid(i), body(mid(i), 20)) is PutResult.OK
            c = r.claim(timeout=0)
            assert c is not None and (c.msgid, c.data) == (mid(i), body(mid(i), 20))
            r.ack(c)
        r.ack(slow)
        assert counts(r) == (4, 0, 0, 0)
        s = r.snapshot()
        assert s.head == s.tail
        assert s.head > 4 + 3 + 20  # sequence numbers of the held slot were skipped


def test_put_reports_full_when_too_many_claims_block_it(
    name: str, claims_age_at_once: None
) -> None:
    slots = stuckmod.MAX_SKIP + 2
    with Ring.create(name, slots, 16) as r:
        for i in range(slots):
            r.put(mid(i), b"x")
        held = [r.claim(timeout=0) for _ in range(slots - 1)]
        last = r.claim(timeout=0)
        assert last is not None and all(held)
        r.ack(last)  # one free slot, MAX_SKIP + 1 claims ahead of it
        assert r.put("far", b"y") is PutResult.FULL
        for c in held:
            assert c is not None
            r.ack(c)
        assert r.put("near", b"y") is PutResult.OK


def test_half_filled_slot_of_a_dead_producer_blocks_until_recovered(
    r: Ring, me: Identity
) -> None:
    dead = reused_pid(me)
    r.put(mid(0), b"before")
    interrupted_put(r, dead, mid(1), body(mid(1), 100), SlotState.FILLING)
    assert r.put(mid(2), b"new producer") is PutResult.FULL
    assert [c.msgid for c in drain(r)] == [mid(0)]  # the half-copied one is never handed out
    assert r.recover_dead() == RecoverResult(requeued=0, freed=1)
    assert counts(r) == (SLOTS, 0, 0, 0)
    for i in range(2, 2 + 2 * SLOTS):
        assert r.put(mid(i), body(mid(i), i)) is PutResult.OK
        c = r.claim(timeout=0)
        assert c is not None and (c.msgid, c.data) == (mid(i), body(mid(i), i))
        r.ack(c)


@pytest.mark.parametrize("how", ["recover", "recover_dead"])
def test_message_ready_before_a_dead_producer_moved_head(r: Ring, me: Identity, how: str) -> None:
    dead = reused_pid(me)
    r.put(mid(0), b"zero")
    interrupted_put(r, dead, mid(1), b"one", SlotState.READY)
    assert [c.msgid for c in drain(r)] == [mid(0)]
    assert r.claim(timeout=0) is None  # invisible until head moves
    assert r.put(mid(2), b"two") is PutResult.FULL
    res = r.recover(dead) if how == "recover" else r.recover_dead()
    assert res == RecoverResult(0, 0)
    assert head(r) == 2
    assert r.put(mid(2), b"two") is PutResult.OK
    got = drain(r)
    assert [(c.msgid, c.data, c.attempts) for c in got] == [
        (mid(1), b"one", 0), (mid(2), b"two", 0)
    ]


def test_message_ready_after_a_step_over_before_a_dead_producer_moved_head(
    name: str, me: Identity, claims_age_at_once: None
) -> None:
    # the producer stepped over a slot still claimed, wrote the next one, died
    dead = reused_pid(me)
    with Ring.create(name, 4, 64) as r:
        for i in range(4):
            r.put(mid(i), b"lap")
        slow = r.claim(timeout=0)
        assert slow is not None
        drain(r)
        assert head(r) == 4
        interrupted_put(r, dead, mid(4), b"stepped", SlotState.READY, seq=5)
        assert r.recover(dead) == RecoverResult(0, 0)
        assert head(r) == 6
        c = r.claim(timeout=0)
        assert c is not None and (c.msgid, c.data) == (mid(4), b"stepped")
        r.ack(c)
        r.ack(slow)
        for lap in range(3):
            ids = [mid(10 + 4 * lap + i) for i in range(4)]
            for m in ids:
                assert r.put(m, b"on") is PutResult.OK
            assert [c.msgid for c in drain(r)] == ids


@pytest.mark.parametrize("how", ["recover", "recover_dead"])
def test_recovery_leaves_head_to_a_live_producer(r: Ring, me: Identity, how: str) -> None:
    # head belongs to the producer while it lives: a recovery that wrote it
    # could move it back under a put completing at the same moment
    dead = reused_pid(me)
    r.put(mid(0), b"zero")
    held = r.claim(timeout=0, owner=dead)
    assert held is not None
    idx = interrupted_put(r, me, mid(1), b"one", SlotState.READY)  # our put, mid-flight
    res = r.recover(dead) if how == "recover" else r.recover_dead()
    assert res == RecoverResult(1, 0)
    assert head(r) == 1
    finish_put(r, idx)
    got = drain(r)
    assert [(c.msgid, c.attempts) for c in got] == [(mid(1), 0), (mid(0), 1)]
    assert r.claim(timeout=0) is None


# -- the lock ----------------------------------------------------------------------


def test_break_lock_leaves_a_live_holder(r: Ring, me: Identity) -> None:
    assert r.lock.break_lock_if_dead() is False  # free
    assert r.lock.acquire(None)
    try:
        assert r.lock.holder() == me
        assert r.snapshot().lock_holder == me
        assert r.lock.break_lock_if_dead() is False
        assert r._lock_sem.value == 0
    finally:
        r.lock.release()
    assert lock_is_free(r)
    assert r.snapshot().lock_breaks == 0


def test_break_lock_of_a_dead_holder(r: Ring, me: Identity) -> None:
    dead = reused_pid(me)
    r.put(mid(1), b"behind the lock")
    hold_lock_as(r, dead)
    assert r.lock.holder() == dead
    assert r.lock.acquire(0.05) is False
    assert r.lock.break_lock_if_dead() is True
    assert lock_is_free(r)
    assert r.snapshot().lock_breaks == 1
    assert r.lock.break_lock_if_dead() is False  # once
    assert r._lock_sem.value == 1
    c = r.claim(timeout=0)
    assert c is not None and c.msgid == mid(1)


def test_break_orphaned_lock_only_after_no_progress(r: Ring) -> None:
    hold_lock_as(r, None)  # taken by a process killed before it recorded itself
    t0 = time.monotonic()
    assert r.lock.break_lock_if_dead() is False
    assert r.lock.break_lock_if_dead() is False
    assert r._lock_sem.value == 0
    deadline = t0 + lockmod._ORPHAN_LOCK_SECONDS + 5
    broken = False
    while not broken:
        assert time.monotonic() < deadline, "orphaned lock never broken"
        time.sleep(0.25)
        broken = r.lock.break_lock_if_dead()
        if not broken:
            assert r._lock_sem.value == 0
    assert time.monotonic() - t0 >= lockmod._ORPHAN_LOCK_SECONDS
    assert lock_is_free(r)
    assert r.snapshot().lock_breaks == 1


def test_release_waits_out_and_breaks_a_dead_holders_lock(r: Ring, me: Identity) -> None:
    r.put(mid(1), b"x")
    c = r.claim(timeout=0)
    assert c is not None
    hold_lock_as(r, reused_pid(me))
    r.release(c)  # the patient path breaks the dead holder's lock itself
    assert lock_is_free(r)
    again = r.claim(timeout=0)
    assert again is not None and (again.msgid, again.attempts) == (mid(1), 0)


def announce_and_enter(r: Ring, who: Identity, row: int) -> None:
    """Leave the lock as a taker ``who`` (its row ``row``) stalled between its
    wait and its record would: intent announced, semaphore taken, no holder.

    Test-only: the stores of :meth:`RingLock.acquire` up to the wait.
    """
    r._q[r._seg.rows_w + row * segmod.ROW_WORDS + segmod.R_INTENT] = owner_token(who)
    r._lock_sem.acquire()


def in_thread(fn: Callable[[], object], timeout: float) -> list[object]:
    """Run ``fn`` in a daemon thread; fail if it has not returned in ``timeout`` s."""
    out: list[object] = []

    def run() -> None:
        try:
            out.append(fn())
        except Exception as e:
            out.append(e)

    t = threading.Thread(target=run, daemon=True)  # a hang must not hold up the run
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"still waiting after {timeout} s"
    return out


def test_a_claim_waits_a_bounded_time_for_a_held_lock(r: Ring, me: Identity) -> None:
    r.put(mid(1), b"behind a stopped holder")
    hold_lock_as(r, me)
    try:
        t0 = time.monotonic()
        assert in_thread(lambda: r.claim(timeout=0), 10) == [None]
        assert time.monotonic() - t0 >= lockmod._LOCK_SLICE * 0.9
    finally:
        r.lock.release()
    # nothing was taken and the post it consumed was given back
    assert r._ready_sem.value == 1
    c = r.claim(timeout=0)
    assert c is not None and c.msgid == mid(1)


def test_owner_operations_give_up_on_a_live_holder(r: Ring, me: Identity) -> None:
    r.put(mid(1), b"x")
    c = r.claim(timeout=0, owner=reused_pid(me))
    assert c is not None
    r.lock.patience = 0.2
    hold_lock_as(r, me)  # alive: not to be broken
    try:
        got = in_thread(lambda: r.recover(reused_pid(me)), 10)
        assert len(got) == 1 and isinstance(got[0], RingBusy)
        got = in_thread(lambda: r.table.retire_row(3), 10)
        assert len(got) == 1 and isinstance(got[0], RingBusy)
    finally:
        r.lock.release()
    assert counts(r) == (SLOTS - 1, 0, 0, 1)  # nothing changed
    assert r.recover(reused_pid(me)) == RecoverResult(1, 0)


def test_a_live_taker_stalled_before_its_record_is_never_robbed(
    r: Ring, me: Identity, monkeypatch: pytest.MonkeyPatch
) -> None:
    taker = reused_pid(me)  # made alive below: a live process of another start time
    state = {"alive": True, "stopped": False}
    real_alive = proc.is_alive
    monkeypatch.setattr(lockmod.proc, "is_alive",
                        lambda i: state["alive"] if tuple(i) == taker else real_alive(i))
    monkeypatch.setattr(lockmod.proc, "stop_mark",
                        lambda i: 1 if state["stopped"] and tuple(i) == taker else None)
    announce_and_enter(r, taker, row=2)
    t = 1000.0
    for _ in range(int(lockmod._LOCK_STUCK_SECONDS / 0.5) - 1):
        assert r.lock.check_lock(t) == (False, None, False)
        t += 0.5
    assert r._lock_sem.value == 0
    # stuck for long: reported to be killed, never broken under it
    assert r.lock.check_lock(t + 0.5) == (False, taker, False)
    state["stopped"] = True
    assert r.lock.check_lock(t + 0.6) == (False, taker, True)
    assert r._lock_sem.value == 0
    state["alive"] = False  # killed
    assert r.lock.check_lock(t + 0.7).broken
    assert lock_is_free(r)
    assert r.snapshot().lock_breaks == 1


def test_a_stopped_taker_is_reported_hung_soon(
    r: Ring, me: Identity, monkeypatch: pytest.MonkeyPatch
) -> None:
    holder = reused_pid(me)
    monkeypatch.setattr(lockmod.proc, "is_alive", lambda i: True)
    monkeypatch.setattr(lockmod.proc, "stop_mark", lambda i: 1 if tuple(i) == holder else None)
    hold_lock_as(r, holder)
    assert r.lock.check_lock(50.0) == (False, None, False)
    assert r.lock.check_lock(50.0 + lockmod._LOCK_STOPPED_SECONDS) == (False, holder, True)
    assert r._lock_sem.value == 0


def test_waiters_do_not_shield_an_orphaned_lock(
    r: Ring, me: Identity, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Live waiters announce themselves too; each wait they give up changes
    their intent, so the lock of a taker killed before its record is broken."""
    waiter = reused_pid(me)
    monkeypatch.setattr(lockmod.proc, "is_alive", lambda i: tuple(i) == waiter)
    monkeypatch.setattr(lockmod.proc, "stop_mark", lambda i: None)
    announce_and_enter(r, Identity(me.pid, me.start + 2), row=2)  # killed after sem_wait
    w = r._seg.rows_w + 3 * segmod.ROW_WORDS + segmod.R_INTENT
    r._q[w] = owner_token(waiter)
    t = 0.0
    broken = False
    while not broken:
        assert t < lockmod._ORPHAN_LOCK_SECONDS + 2, "orphaned lock never broken"
        broken = r.lock.check_lock(t).broken
        r._q[w + 1] += 1  # the waiter's slice ran out: it waits again
        t += lockmod._LOCK_SLICE
    assert t > lockmod._ORPHAN_LOCK_SECONDS
    assert r._lock_sem.value == 1


def test_retire_row_of_a_given_process_only(r: Ring, me: Identity) -> None:
    w = r.table.register(Role.WORKER, index=1)
    w.add(C.PROCESSED, 4)
    r.table.retire_row(w.row, reused_pid(me))  # a successor's row: kept
    assert [x.row for x in r.table.read_rows()] == [w.row]
    r.table.retire_row(w.row, me)
    assert r.table.read_rows() == [] and r.snapshot().retired[C.PROCESSED] == 4


# -- the process table ---------------------------------------------------------


def test_process_rows_register_beat_state_counters_and_retire(r: Ring, me: Identity) -> None:
    w = r.table.register(Role.WORKER, index=3)
    i = r.table.register(Role.INGEST)
    assert w.row != i.row
    rows = {x.row: x for x in r.table.read_rows()}
    assert set(rows) == {w.row, i.row}
    row = rows[w.row]
    assert (row.pid, row.start, row.role, row.index, row.state, row.msgid) == (
        me.pid, me.start, Role.WORKER, 3, ProcState.STARTING, ""
    )
    assert row.counters == (0,) * NCOUNTERS
    beat0 = row.heartbeat_ns
    w.beat()
    beat1 = {x.row: x for x in r.table.read_rows()}[w.row].heartbeat_ns
    assert beat1 >= beat0 > 0
    w.set_state(ProcState.SCANNING, "0640c3f1a2b3c-0004d2")
    row = {x.row: x for x in r.table.read_rows()}[w.row]
    assert (row.state, row.msgid) == (ProcState.SCANNING, "0640c3f1a2b3c-0004d2")
    assert row.since_ns >= beat1 and row.heartbeat_ns == row.since_ns
    w.add(C.PROCESSED, 5)
    w.add(C.PROCESSED)
    w.add(C.SCAN_US, 1234)
    i.add(C.ACCEPTED_RING, 9)
    assert w.get(C.PROCESSED) == 6
    assert r.table.row(w.row).get(C.SCAN_US) == 1234
    totals = r.snapshot().totals()
    assert (totals[C.PROCESSED], totals[C.SCAN_US], totals[C.ACCEPTED_RING]) == (6, 1234, 9)

    r.table.retire_row(w.row)
    s = r.snapshot()
    assert [x.row for x in s.rows] == [i.row]
    assert (s.retired[C.PROCESSED], s.retired[C.SCAN_US], s.retired[C.ACCEPTED_RING]) == (
        6, 1234, 0
    )
    assert s.totals() == totals  # conserved
    r.table.retire_row(w.row)  # twice: nothing folded again
    assert r.snapshot().totals() == totals

    again = r.table.register(Role.WORKER, index=4)
    assert again.row == w.row and again.get(C.PROCESSED) == 0
    again.add(C.PROCESSED, 2)
    assert r.snapshot().totals()[C.PROCESSED] == 8


def test_register_a_given_row_and_refuse_out_of_range(r: Ring) -> None:
    h = r.table.register(Role.SUPERVISOR, row=5)
    assert h.row == 5
    assert [x.row for x in r.table.read_rows()] == [5]
    with pytest.raises(RingError):
        r.table.register(Role.WORKER, row=r.rows)
    assert lock_is_free(r)


def test_process_table_full(name: str) -> None:
    with Ring.create(name, 2, 16, rows=2) as r:
        r.table.register(Role.SUPERVISOR)
        r.table.register(Role.INGEST)
        with pytest.raises(RingError, match="full"):
            r.table.register(Role.WORKER)
        assert lock_is_free(r)


def test_retire_dead_rows_folds_only_the_dead(r: Ring, me: Identity) -> None:
    live = r.table.register(Role.SUPERVISOR)
    gone = r.table.register(Role.WORKER, index=1)
    gone.add(C.PROCESSED, 7)
    live.add(C.RESTARTS, 1)
    r._q[r._seg.rows_w + gone.row * segmod.ROW_WORDS + segmod.R_START] = me.start + 1  # pid reused
    totals = r.snapshot().totals()
    assert r.table.retire_dead_rows() == 1
    s = r.snapshot()
    assert [x.row for x in s.rows] == [live.row]
    assert s.retired[C.PROCESSED] == 7
    assert s.totals() == totals


# -- status ------------------------------------------------------------------------


def test_snapshot_counts_equal_slot_states(r: Ring, me: Identity) -> None:
    def check() -> None:
        s = r.snapshot()
        states = Counter(ringpeek.slot_states(r))
        assert (s.free, s.filling, s.ready, s.claimed) == (
            states[SlotState.FREE], states[SlotState.FILLING],
            states[SlotState.READY], states[SlotState.CLAIMED],
        )
        assert s.used == SLOTS - s.free
        held = ringpeek.iter_held(r)
        assert len(held) == s.filling + s.claimed

    check()
    for i in range(6):
        r.put(mid(i), b"x")
        check()
    a = r.claim(timeout=0)
    b = r.claim(timeout=0, owner=reused_pid(me))
    check()
    interrupted_put(r, me, mid(6), b"half", SlotState.FILLING)
    check()
    assert counts(r) == (1, 1, 4, 2)
    assert a is not None
    r.release(a)
    check()
    r.recover_dead()
    check()
    assert counts(r) == (1, 1, 6, 0)
    assert b is not None


def test_owner_token_round_trip(me: Identity) -> None:
    assert token_identity(owner_token(me)) == me
    assert token_identity(0) == Identity(0, 0)
    big = Identity((1 << 22) - 1, 123456789)
    assert token_identity(owner_token(big)) == big


@pytest.fixture
def claims_age_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every claim counts as stuck, so the producer steps over it at once."""
    monkeypatch.setattr(stuckmod, "SKIP_CLAIMS_OLDER_NS", 0)


def test_a_claim_in_progress_at_head_is_waited_for_not_stepped_over(name: str) -> None:
    with Ring.create(name, 4, 16) as r:
        for i in range(4):
            assert r.put(mid(i), b"x") is PutResult.OK
        first = r.claim(timeout=0)
        assert first is not None and first.msgid == mid(0)
        rest = drain(r)
        assert [c.msgid for c in rest] == [mid(1), mid(2), mid(3)]
        # head is back at the slot still being scanned: the put spills...
        assert r.put(mid(9), b"y") is PutResult.FULL
        # ...and once the scan is acked the same slot takes the next message:
        # no hole is left behind for a lap
        r.ack(first)
        for i in range(10, 14):
            assert r.put(mid(i), b"z") is PutResult.OK
        assert counts(r) == (0, 0, 4, 0)


def hold_claims(r: Ring, held: int) -> list[Claim]:
    """Fill ``r``, keep the first ``held`` claims and ack the rest: every slot
    is used, and the ring is full behind claims still being scanned."""
    for i in range(r.slots):
        assert r.put(mid(i), b"x") is PutResult.OK
    claims: list[Claim] = []
    for _ in range(r.slots):
        c = r.claim(timeout=0)
        assert c is not None
        claims.append(c)
    for c in claims[held:]:
        r.ack(c)
    return claims[:held]


def test_a_claim_is_stepped_over_once_it_has_blocked_puts_long_enough(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stuckmod, "SKIP_CLAIMS_OLDER_NS", 1_000_000_000)
    with Ring.create(name, 2, 16) as r:
        [stuck] = hold_claims(r, 1)
        assert stuck.msgid == mid(0)
        # the clock starts at the first put the claim blocks, not at the claim
        time.sleep(1.1)
        assert r.put(mid(2), b"y") is PutResult.FULL
        assert r.put(mid(3), b"y") is PutResult.FULL
        time.sleep(1.1)
        assert r.put(mid(4), b"y") is PutResult.OK  # stepped over the stuck slot
        assert head(r) == 4  # sequence 2 was skipped
        c = r.claim(timeout=0)
        assert c is not None and c.msgid == mid(4)
        r.ack(c)
        # the stuck claim is still held, and acks normally when it finishes
        r.ack(stuck)
        assert counts(r) == (2, 0, 0, 0)


def test_a_message_given_back_and_taken_again_is_a_new_claim(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stuckmod, "SKIP_CLAIMS_OLDER_NS", 500_000_000)
    with Ring.create(name, 2, 16) as r:
        [first] = hold_claims(r, 1)
        assert r.put(mid(2), b"y") is PutResult.FULL  # blocked by the first claim
        time.sleep(0.6)
        # a worker gives the message back (spamd down) and, later, takes it again:
        # same slot, same message, same process, but a claim just begun
        r.release(first)
        again = r.claim(timeout=0)
        assert again is not None and again.msgid == first.msgid
        assert r.put(mid(3), b"y") is PutResult.FULL  # waited for, not stepped over
        r.ack(again)
        assert r.put(mid(4), b"y") is PutResult.OK


def test_a_run_of_stuck_claims_is_stepped_over_after_one_timeout(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stuckmod, "SKIP_CLAIMS_OLDER_NS", 500_000_000)
    with Ring.create(name, 4, 16) as r:
        stuck = hold_claims(r, 3)
        assert r.put(mid(4), b"y") is PutResult.FULL  # every stuck claim's clock starts
        time.sleep(0.6)
        assert r.put(mid(5), b"y") is PutResult.OK  # all three stepped over at once
        assert head(r) == 4 + 3 + 1
        for c in stuck:
            r.ack(c)


def test_a_death_while_giving_a_message_back_leaves_a_count_that_heals(
    name: str, me: Identity
) -> None:
    """release() and recovery count the stray before the slot is READY: a death
    between the two stores leaves the claim in place and the count one too
    high, and the count heals at the next claim that finds nothing behind tail."""
    dead = reused_pid(me)
    with Ring.create(name, 4, 16) as r:
        for i in range(3):
            assert r.put(mid(i), body(mid(i), i)) is PutResult.OK
        given_back = r.claim(timeout=0, owner=dead)
        assert given_back is not None
        r._q[segmod.H_STRAY] += 1  # counted; killed before marking it READY
        assert r.recover_dead() == RecoverResult(requeued=1, freed=0)
        got = [c.msgid for c in drain(r)]
        assert sorted(got) == [mid(0), mid(1), mid(2)]
        assert r._q[segmod.H_STRAY] == 0


def test_a_stray_count_left_too_low_is_recounted_on_adopt(name: str, me: Identity) -> None:
    """A ring left by an older crash: a READY slot behind tail with no stray
    counted is invisible to claims until adopt() counts afresh."""
    with Ring.create(name, 4, 16) as r:
        for i in range(2):
            assert r.put(mid(i), b"x") is PutResult.OK
        c = r.claim(timeout=0)
        assert c is not None
        r._states[c.slot] = SlotState.READY  # given back, the count never raised
        r._ready_sem.release()
        assert [x.msgid for x in drain(r)] == [mid(1)]
        assert r.claim(timeout=0) is None
        with Ring.adopt(name) as adopted:
            assert [x.msgid for x in drain(adopted)] == [mid(0)]


def test_what_only_tests_read_is_read_from_the_segment_not_asked_of_the_ring(r: Ring) -> None:
    test_only = ("has_free_slot", "iter_held", "slot_states", "wake")
    assert [n for n in test_only if hasattr(r, n)] == [] and not hasattr(ringmod, "exists")
    assert ringpeek.slot_states(r) == [SlotState.FREE] * r.slots
