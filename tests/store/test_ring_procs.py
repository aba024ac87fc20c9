"""Multi-process tests of the shared-memory ring: throughput and SIGKILLed holders.

Children are forked and report on pipes; every child is reaped and any left
running is killed at teardown.
"""

from __future__ import annotations

import os
import random
import select
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest
import ringpeek
from forking import Children, body, read_all, read_line, report

from ringtrap import ring as ringmod
from ringtrap.base import proc
from ringtrap.base.counters import C
from ringtrap.base.proc import Identity
from ringtrap.base.states import Role, SlotState
from ringtrap.ring import PutResult, RecoverResult, Ring
from ringtrap.store import lock as lockmod
from ringtrap.store.segment import unlink_name

pytestmark = pytest.mark.slow

SHM = Path("/dev/shm")
PREFIX = f"rt-test-{os.getpid()}-procs-"
STOP = "STOP"


# -- helpers -----------------------------------------------------------------


def mid(i: int) -> str:
    return f"m{i:08d}"


def identity_of(pid: int) -> Identity:
    """The identity of a running child, as the ring records it."""
    start = proc.start_ticks(pid)
    assert start is not None
    return Identity(pid, start)


def drain(r: Ring) -> list[tuple[str, int]]:
    """(msgid, attempts) of everything claimable now, checking every byte; acks each."""
    out = []
    while (c := r.claim(timeout=0)) is not None:
        assert c.data == body(c.msgid, c.size)
        out.append((c.msgid, c.attempts))
        r.ack(c)
    return out


def put_all(r: Ring, msgids: list[str], size: int) -> None:
    for m in msgids:
        assert r.put(m, body(m, size)) is PutResult.OK


# -- fixtures ----------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def no_leftovers() -> Iterator[None]:
    yield
    assert sorted(n for n in os.listdir(SHM) if n.removeprefix("sem.").startswith(PREFIX)) == []


@pytest.fixture
def name() -> Iterator[str]:
    n = f"{PREFIX}{uuid4().hex[:8]}"
    yield n
    unlink_name(n)


@pytest.fixture
def children() -> Iterator[Children]:
    c = Children()
    yield c
    c.reap_all()


# -- throughput --------------------------------------------------------------


def test_one_producer_four_consumers_move_every_message_once(
    name: str, children: Children, tmp_path: Path
) -> None:
    n, nconsumers = 200_000, 4
    sizes = [64 + i % 193 for i in range(n)]
    r = Ring.create(name, 256, 256)

    def consumer(w: int, out: Path) -> None:  # pragma: no cover - runs in the child
        c = Ring.attach(name)
        got = []
        report(w, "up")
        while True:
            cl = c.claim(timeout=1.0)
            if cl is None:
                continue
            c.ack(cl)
            if cl.msgid == STOP:
                break
            assert cl.data == body(cl.msgid, sizes[int(cl.msgid[1:])])
            got.append(cl.msgid)
        out.write_text("\n".join(got))
        report(w, str(len(got)))

    def producer(w: int) -> None:  # pragma: no cover - runs in the child
        p = Ring.attach(name)
        put, ok = p.put, PutResult.OK
        fulls = 0
        for i in range(n):
            m = mid(i)
            data = body(m, sizes[i])
            while put(m, data) is not ok:
                fulls += 1
                os.sched_yield()
        # one STOP per consumer, behind every message: each takes one and exits
        for _ in range(nconsumers):
            while put(STOP, b"") is not ok:
                os.sched_yield()
        report(w, f"done {fulls}")

    outs = [tmp_path / f"consumer-{k}" for k in range(nconsumers)]
    consumers = [children.fork(lambda w, out=out: consumer(w, out)) for out in outs]
    for _, fd in consumers:
        assert read_line(fd) == "up"
    t0 = time.monotonic()
    ppid, pfd = children.fork(producer)
    assert read_all(pfd, timeout=50).startswith("done")
    assert children.wait(ppid) == 0
    reports = [read_all(fd, timeout=20) for _, fd in consumers]
    assert [children.wait(pid) for pid, _ in consumers] == [0] * nconsumers
    elapsed = time.monotonic() - t0
    counts = [int(x) for x in reports]

    consumed = [m for out in outs for m in out.read_text().split()]
    assert sum(counts) == len(consumed) == n, f"{len(consumed)} consumed in {elapsed:.1f} s"
    assert Counter(consumed) == Counter(mid(i) for i in range(n)), "lost or duplicated"
    assert sum(1 for k in counts if k) >= 2, "the consumers did not actually race"
    s = r.snapshot()
    assert (s.free, s.ready, s.claimed, s.stray) == (256, 0, 0, 0)
    assert s.head == s.tail >= n + nconsumers
    r.close()


# -- crashes -------------------------------------------------------------------


@pytest.mark.parametrize("how", ["recover", "recover_dead"])
def test_sigkilled_claimer_is_requeued_with_one_more_attempt(
    name: str, children: Children, how: str
) -> None:
    r = Ring.create(name, 16, 128)
    msgids = [mid(i) for i in range(10)]
    put_all(r, msgids, 100)

    def holder(w: int) -> None:  # pragma: no cover - runs in the child
        c = Ring.attach(name)
        cl = c.claim(timeout=0)
        assert cl is not None
        report(w, f"{cl.msgid} {cl.slot}")
        signal.pause()

    pid, fd = children.fork(holder)
    held, slot = read_line(fd).split()
    os.close(fd)
    ident = identity_of(pid)
    assert held == msgids[0]
    assert ringpeek.iter_held(r) == [(int(slot), SlotState.CLAIMED, ident)]
    assert r.recover_dead() == RecoverResult(0, 0)  # alive: left alone

    children.kill(pid)
    res = r.recover(ident) if how == "recover" else r.recover_dead()
    assert res == RecoverResult(requeued=1, freed=0)
    assert ringpeek.iter_held(r) == []
    got = drain(r)
    # fresh messages first, the requeued one after every _SUSPECT_EVERY of them
    every = ringmod._SUSPECT_EVERY
    assert got == ([(m, 0) for m in msgids[1 : every + 1]] + [(msgids[0], 1)]
                   + [(m, 0) for m in msgids[every + 1 :]])
    assert r.snapshot().requeued == 1
    r.close()


@pytest.mark.parametrize("recorded", [True, False], ids=["recorded", "orphaned"])
def test_sigkilled_lock_holder_is_broken_and_consumers_proceed(
    name: str, children: Children, recorded: bool
) -> None:
    r = Ring.create(name, 16, 128)
    msgids = [mid(i) for i in range(2)]
    put_all(r, msgids, 50)

    def locker(w: int) -> None:  # pragma: no cover - runs in the child
        c = Ring.attach(name)
        if recorded:
            assert c.lock.acquire(None)
        else:
            c._lock_sem.acquire()  # killed before it could record itself
        report(w, "locked")
        signal.pause()

    def consumer(w: int) -> None:  # pragma: no cover - runs in the child
        c = Ring.attach(name)
        report(w, "up")
        cl = c.claim(timeout=30)
        assert cl is not None
        c.ack(cl)
        report(w, cl.msgid)

    lpid, lfd = children.fork(locker)
    assert read_line(lfd) == "locked"
    os.close(lfd)
    ident = identity_of(lpid)
    children.kill(lpid)
    assert r.lock.holder() == (ident if recorded else None)

    consumers = [children.fork(consumer) for _ in msgids]
    for _, fd in consumers:
        assert read_line(fd) == "up"
    blocked, _, _ = select.select([fd for _, fd in consumers], [], [], 0.5)
    assert blocked == [], "a consumer got past a lock held by a dead process"

    t0 = time.monotonic()
    deadline = t0 + lockmod._ORPHAN_LOCK_SECONDS + 10
    while not r.lock.break_lock_if_dead():
        assert recorded is False, "the dead holder's lock was not broken at once"
        assert time.monotonic() < deadline, "orphaned lock never broken"
        time.sleep(0.2)  # the supervisor's housekeeping tick
    if not recorded:
        assert time.monotonic() - t0 >= lockmod._ORPHAN_LOCK_SECONDS

    got = sorted(read_all(fd, timeout=10).strip() for _, fd in consumers)
    assert got == msgids
    assert [children.wait(pid) for pid, _ in consumers] == [0, 0]
    s = r.snapshot()
    assert (s.lock_breaks, s.lock_holder, s.free) == (1, None, 16)
    r.close()


def test_sigkilled_owner_of_a_full_ring_is_adopted_and_drained(
    name: str, children: Children
) -> None:
    slots = 32

    def owner(w: int) -> None:  # pragma: no cover - runs in the child
        o = Ring.create(name, slots, 200)
        row = o.table.register(Role.SUPERVISOR)
        row.add(C.RESTARTS, 3)
        i = 0
        while o.put(mid(i), body(mid(i), 100 + i)) is PutResult.OK:
            i += 1
        held = o.claim(timeout=0)
        assert held is not None
        report(w, f"{i} {held.msgid}")
        signal.pause()

    opid, ofd = children.fork(owner)
    count, held = read_line(ofd).split()
    os.close(ofd)
    old = identity_of(opid)
    assert int(count) == slots
    children.kill(opid)

    def adopter(w: int) -> None:  # pragma: no cover - runs in the child
        a = Ring.adopt(name, slots=slots, slot_bytes=200)
        s = a.snapshot()
        assert (s.owner, s.generation, s.requeued) == (proc.self_identity(), 1, 1)
        assert (s.rows, s.retired[C.RESTARTS]) == ((), 3)  # the dead owner's row, folded
        got = []
        while (c := a.claim(timeout=0)) is not None:
            assert c.data == body(c.msgid, 100 + int(c.msgid[1:]))
            got.append(f"{c.msgid}:{c.attempts}")
            a.ack(c)
        assert a.snapshot().free == slots
        a.unlink()
        a.close()
        report(w, " ".join(got))

    with Ring.attach(name) as r:
        assert r.owner == old
        assert r.put("late", b"x") is PutResult.FULL
    apid, afd = children.fork(adopter)
    got = read_all(afd).split()
    assert children.wait(apid) == 0
    every = ringmod._SUSPECT_EVERY
    assert got == ([f"{mid(i)}:0" for i in range(1, every + 1)] + [f"{held}:1"]
                   + [f"{mid(i)}:0" for i in range(every + 1, slots)])
    assert held == mid(0)
    assert not ringpeek.exists(name)
    assert not [p for p in os.listdir(SHM) if name in p]


def test_sigkilled_producer_loses_no_accepted_message(name: str, children: Children) -> None:
    slots = 64
    r = Ring.create(name, slots, 4096)
    rng = random.Random(7)
    consumed: Counter[str] = Counter()
    accepted: set[str] = set()
    attempted_upto = 0
    for rnd in range(6):
        base = rnd * 1_000_000

        def producer(w: int, base: int = base) -> None:  # pragma: no cover - child
            p = Ring.attach(name)
            report(w, "up")
            i = base
            while True:
                m = mid(i)
                if p.put(m, body(m, 500 + i % 3500)) is PutResult.OK:
                    report(w, m)  # the client's OK
                    i += 1
                else:
                    os.sched_yield()

        pid, fd = children.fork(producer)
        assert read_line(fd) == "up"
        ident = identity_of(pid)
        os.set_blocking(fd, False)
        pending = b""
        until = time.monotonic() + rng.uniform(0.05, 0.3)
        while time.monotonic() < until:
            for m, attempts in drain(r):
                consumed[m] += 1
                assert attempts == 0
            with_data = select.select([fd], [], [], 0)[0]
            if with_data:
                pending += os.read(fd, 1 << 16)
        children.kill(pid)
        os.set_blocking(fd, True)
        rest = read_all(fd)
        oks = (pending.decode() + rest).split()
        accepted.update(oks)
        attempted_upto = max(int(m[1:]) for m in oks) + 1 if oks else base
        res = r.recover(ident)
        assert res.requeued == 0 and res.freed <= 1
        for m, _ in drain(r):
            consumed[m] += 1
        s = r.snapshot()
        assert (s.free, s.filling, s.ready, s.claimed) == (slots, 0, 0, 0)
        assert s.head == s.tail
        # the ring goes on: a message put now comes straight out
        assert r.put(f"after{rnd}", b"x") is PutResult.OK
        c = r.claim(timeout=0)
        assert c is not None and c.msgid == f"after{rnd}"
        r.ack(c)
        # what was handed out: every accepted message, perhaps the one put as
        # the producer died, nothing else and nothing twice
        extra = set(consumed) - accepted
        assert extra <= {mid(attempted_upto)}
        accepted |= extra
    assert set(consumed) == accepted
    assert max(consumed.values()) == 1
    r.close()
