"""Model-based test of the ring lock: takers, waiters, deaths, stops and the owner.

Fake processes (this pid with other start times) go through the lock's
protocol one store at a time, as :meth:`RingLock.acquire` makes them (intent,
wait, holder and count, intent cleared), so the owner's
:meth:`RingLock.check_lock` runs between any two of them.  Whether each one is
alive or stopped is the model's to say: ``proc.is_alive`` and
``proc.stop_mark`` are answered from it.  The clock is the model's too: a
tick advances it by at most ``_LOCK_SLICE`` and ends each running waiter's
timed wait that ran out, as the semaphore's timeout would.

Proved on every step: never two live processes inside the lock, and a lock
with a live process inside is held (never broken under it); a process the
owner calls hung is stopped, or has not moved for ``_LOCK_STUCK_SECONDS``
(a live one making progress is never killed).  The ``settle`` rule proves
the ring never wedges: with the owner killing whatever it calls hung, the
running processes finish and the lock ends free within a bound.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from uuid import uuid4

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from ringtrap.base import proc
from ringtrap.base.proc import Identity
from ringtrap.ring import Ring
from ringtrap.store import lock as lockmod
from ringtrap.store import segment as segmod
from ringtrap.store.segment import owner_token, unlink_name

SHM = Path("/dev/shm")
PREFIX = f"rt-test-{os.getpid()}-lockmodel-"
SLICE = lockmod._LOCK_SLICE

IDLE, WAITING, INSIDE, HOLDING = "idle", "waiting", "inside", "holding"


@dataclass
class Fake:
    """One process of the model and where it is in the lock protocol."""

    ident: Identity
    row: int
    phase: str = IDLE  # INSIDE: the semaphore taken, the holder not yet recorded
    alive: bool = True
    stopped_at: float | None = None  # model time of its SIGSTOP
    stops: int = 0  # SIGSTOPs that stopped it: /proc's mark of each stop
    moved_at: float = 0.0  # model time of its last step
    wait_until: float = 0.0  # when its current timed wait runs out

    @property
    def tok(self) -> int:
        return owner_token(self.ident)

    @property
    def running(self) -> bool:
        return self.alive and self.stopped_at is None


class LockMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.name = f"{PREFIX}{uuid4().hex[:8]}"
        self.ring = Ring.create(self.name, 2, 16, rows=8)
        me = proc.self_identity()
        self.procs = [Fake(Identity(me.pid, me.start + 1 + i), row=1 + i) for i in range(4)]
        self.now = 1000.0
        self.breaks = 0
        self.kills = 0
        _MODEL[0] = self

    def teardown(self) -> None:
        _MODEL[0] = None
        self.ring.close()
        unlink_name(self.name)

    # -- the protocol, store by store (test-only mirror of RingLock.acquire) --------

    def intent_word(self, p: Fake) -> int:
        return self.ring._seg.rows_w + p.row * segmod.ROW_WORDS + segmod.R_INTENT

    def moved(self, p: Fake) -> None:
        p.moved_at = self.now

    def try_enter(self, p: Fake) -> bool:
        try:
            self.ring._lock_sem.acquire(0)
        except lockmod.posix_ipc.BusyError:
            return False
        p.phase = INSIDE
        return True

    def owner_turn(self) -> None:
        """The supervisor's housekeeping: check, kill what is hung."""
        held_by = [p for p in self.procs if p.alive and p.phase in (INSIDE, HOLDING)]
        check = self.ring.lock.check_lock(self.now)
        if check.broken:
            assert not held_by, f"lock broken under live {held_by[0].ident}"
            self.breaks += 1
        if check.hung is not None:
            p = next(p for p in self.procs if p.ident == check.hung)
            assert p.alive
            stopped_long = (
                p.stopped_at is not None
                and self.now - p.stopped_at >= lockmod._LOCK_STOPPED_SECONDS
            )
            still_long = self.now - p.moved_at >= lockmod._LOCK_STUCK_SECONDS
            assert stopped_long or still_long, f"{p.ident} called hung while making progress"
            assert check.stopped == (p.stopped_at is not None)
            p.alive = False  # SIGKILL
            self.kills += 1

    # -- rules -----------------------------------------------------------------------

    @rule(i=st.integers(0, 3))
    def want_lock(self, i: int) -> None:
        p = self.procs[i]
        if not (p.running and p.phase == IDLE):
            return
        self.ring._q[self.intent_word(p)] = p.tok
        self.moved(p)
        if not self.try_enter(p):
            p.phase = WAITING
            p.wait_until = self.now + SLICE

    @rule(i=st.integers(0, 3))
    def woken(self, i: int) -> None:
        """A waiter's semaphore wait returns because the lock was posted."""
        p = self.procs[i]
        if p.running and p.phase == WAITING and self.try_enter(p):
            self.moved(p)

    @rule(i=st.integers(0, 3))
    def record(self, i: int) -> None:
        p = self.procs[i]
        if not (p.running and p.phase == INSIDE):
            return
        q = self.ring._q
        q[segmod.H_LOCK] = p.tok
        q[segmod.H_LOCK_COUNT] += 1
        q[self.intent_word(p)] = 0
        p.phase = HOLDING
        self.moved(p)

    @rule(i=st.integers(0, 3))
    def release(self, i: int) -> None:
        p = self.procs[i]
        if not (p.running and p.phase == HOLDING):
            return
        self.ring._q[segmod.H_LOCK] = 0
        self.ring._lock_sem.release()
        p.phase = IDLE
        self.moved(p)

    @rule(i=st.integers(0, 3), give_up=st.booleans())
    def wait_runs_out(self, i: int, give_up: bool) -> None:
        p = self.procs[i]
        if p.running and p.phase == WAITING:
            self.slice_ends(p, give_up)

    def slice_ends(self, p: Fake, give_up: bool) -> None:
        w = self.intent_word(p)
        self.ring._q[w + 1] += 1
        if give_up:
            self.ring._q[w] = 0
            p.phase = IDLE
        p.wait_until = self.now + SLICE
        self.moved(p)

    @rule(i=st.integers(0, 3))
    def sigstop(self, i: int) -> None:
        p = self.procs[i]
        if p.running:
            p.stopped_at = self.now
            p.stops += 1

    @rule(i=st.integers(0, 3))
    def sigcont(self, i: int) -> None:
        p = self.procs[i]
        if p.alive and p.stopped_at is not None:
            p.stopped_at = None
            p.wait_until = max(p.wait_until, self.now)

    @rule(i=st.integers(0, 3))
    def die(self, i: int) -> None:
        self.procs[i].alive = False

    @precondition(lambda self: not any(p.alive for p in self.procs))
    @rule()
    def respawn(self) -> None:
        # new processes in the same rows, as a supervisor restarts them
        base = max(p.ident.start for p in self.procs)
        for i, p in enumerate(self.procs):
            self.procs[i] = Fake(Identity(p.ident.pid, base + 1 + i), row=p.row, moved_at=self.now)

    @rule(dt=st.floats(0.01, SLICE), check=st.booleans())
    def tick(self, dt: float, check: bool) -> None:
        self.now += dt
        for p in self.procs:
            # a timed wait cannot outlast its slice while the process runs
            if p.running and p.phase == WAITING and self.now >= p.wait_until:
                self.slice_ends(p, give_up=False)
        if check:
            self.owner_turn()

    @rule()
    def settle(self) -> None:
        """Running processes finish what they started; the owner keeps turning.
        Within a bound the lock is free: nothing wedges it."""
        deadline = self.now + lockmod._LOCK_STUCK_SECONDS + lockmod._ORPHAN_LOCK_SECONDS + 5
        while True:
            for p in self.procs:
                if not p.running:
                    continue
                if p.phase == WAITING and self.try_enter(p):
                    self.moved(p)
                if p.phase == INSIDE:
                    self.record(self.procs.index(p))
                if p.phase == HOLDING:
                    self.release(self.procs.index(p))
            if self.ring._lock_sem.value == 1:
                break
            assert self.now < deadline, "the lock stayed held: the ring is wedged"
            self.tick(SLICE, check=True)
        for p in self.procs:
            if p.running and p.phase == WAITING:
                self.slice_ends(p, give_up=True)

    # -- invariants --------------------------------------------------------------------

    @invariant()
    def one_live_holder_at_most(self) -> None:
        inside = [p for p in self.procs if p.alive and p.phase in (INSIDE, HOLDING)]
        assert len(inside) <= 1, "two live processes inside the lock"
        if inside:
            assert self.ring._lock_sem.value == 0, "the lock is free under a live holder"
        assert self.ring._lock_sem.value <= 1

    @invariant()
    def breaks_are_counted(self) -> None:
        assert self.ring.snapshot().lock_breaks == self.breaks


_MODEL: list[LockMachine | None] = [None]


def _fake(ident: Identity | tuple[int, int]) -> Fake | None:
    m = _MODEL[0]
    if m is None:
        return None
    return next((p for p in m.procs if tuple(p.ident) == tuple(ident)), None)


@pytest.fixture(autouse=True)
def model_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    """/proc as the model says: fake processes are alive or stopped as it decides."""
    real = proc.is_alive

    def is_alive(ident: Identity | tuple[int, int]) -> bool:
        p = _fake(ident)
        return real(ident) if p is None else p.alive

    def stop_mark(ident: Identity | tuple[int, int]) -> int | None:
        p = _fake(ident)
        return p.stops if p is not None and p.alive and p.stopped_at is not None else None

    monkeypatch.setattr(lockmod.proc, "is_alive", is_alive)
    monkeypatch.setattr(lockmod.proc, "stop_mark", stop_mark)
    monkeypatch.setattr(lockmod.proc, "is_stopped", lambda i: stop_mark(i) is not None)


LockMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=60, deadline=None, database=None
)
test_ring_lock_model = LockMachine.TestCase


@pytest.fixture(scope="module", autouse=True)
def no_leftovers() -> Iterator[None]:
    yield
    assert sorted(n for n in os.listdir(SHM) if n.removeprefix("sem.").startswith(PREFIX)) == []


def run_steps(steps: list[tuple[str, dict[str, object]]]) -> None:
    m = LockMachine()
    try:
        for name, kw in steps:
            getattr(m, name)(**kw)
            m.breaks_are_counted()
            m.one_live_holder_at_most()
    finally:
        m.teardown()


def test_a_holder_stopped_for_less_than_the_bound_is_not_hung() -> None:
    """Found by the model: the lock seen held for a second, its taker
    stopped only half a second ago, must not be called hung."""
    run_steps(
        [("want_lock", {"i": 0})]
        + [("sigcont", {"i": 0})] * 5
        + [
            ("tick", {"check": True, "dt": 0.5}),
            ("tick", {"check": False, "dt": 0.5}),
            ("sigcont", {"i": 0}),
            ("sigstop", {"i": 0}),
            ("tick", {"check": True, "dt": 0.5}),
        ]
    )


def test_a_holder_resumed_and_stopped_again_between_checks_is_not_hung() -> None:
    """Seen stopped at two checks a second apart, but resumed in between:
    it has not been stopped for that second."""
    run_steps(
        [
            ("want_lock", {"i": 0}),
            ("sigstop", {"i": 0}),
            ("tick", {"check": True, "dt": 0.5}),
            ("tick", {"check": False, "dt": 0.4}),
            ("sigcont", {"i": 0}),
            ("sigstop", {"i": 0}),
            ("tick", {"check": True, "dt": 0.1}),
            ("tick", {"check": True, "dt": 0.5}),
        ]
    )
