"""A real trap whose ring lock is held by a stopped process.

A registered process of the trap's user takes the ring lock and is
SIGSTOPped: as a worker stopped inside ``claim()`` would, either after
recording itself as holder or in the instant between its wait and its
record.  The supervisor must keep turning (watchdog pings), restart a worker
killed meanwhile, kill the stopped holder, break its lock, and the workers
must process every message sent before, during and after.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from forking import Children, read_line, report
from trap_fixture import NotifyListener, Trap, message, reply_id, wait_until

from ringtrap import ring as ringmod
from ringtrap.base import proc
from ringtrap.base.counters import C
from ringtrap.base.states import Role
from ringtrap.ring import Ring
from ringtrap.store.segment import owner_token

pytestmark = pytest.mark.slow


@pytest.fixture
def children() -> Children:
    c = Children()
    yield c
    c.reap_all()


def run_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat", "rb") as f:
        raw = f.read()
    return raw[raw.rfind(b")") + 2 :].split()[0].decode()


@pytest.mark.parametrize("recorded", [True, False], ids=["recorded", "before-its-record"])
def test_a_stopped_lock_holder_is_killed_and_the_trap_goes_on(
    tmp_path: Path, children: Children, recorded: bool
) -> None:
    trap = Trap(tmp_path)
    listener = NotifyListener(trap.rundir / "notify.sock")
    try:
        trap.start(env_extra={"NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": "2000000"})
        before = {reply_id(trap.send(message(i))) for i in range(10)}
        trap.wait_records(before, timeout=60)

        def holder(w: int) -> None:  # pragma: no cover - runs in the child
            r = Ring.attach(trap.ring_name)
            r.table.register(Role.WORKER, index=9)
            if recorded:
                assert r.lock.acquire(5.0)
            else:
                # the stores of RingLock.acquire up to the wait: intent, semaphore
                r._q[r.lock.iw] = owner_token(proc.self_identity())
                r._lock_sem.acquire()
            report(w, "locked")
            os.kill(os.getpid(), signal.SIGSTOP)
            time.sleep(60)

        hpid, hfd = children.fork(holder)
        assert read_line(hfd) == "locked"
        wait_until(lambda: run_state(hpid) == "T", 5, "the holder to stop")
        pings = listener.count("WATCHDOG", "1")
        # a worker dies while the lock is held: its recovery needs the lock
        victim = trap.child_pids("worker")[0]
        os.kill(victim, signal.SIGKILL)
        during = {reply_id(trap.send(message(100 + i))) for i in range(20)}
        # the holder is killed (we reap it): SIGKILL, not a resume
        assert children.wait(hpid, timeout=30) == -signal.SIGKILL
        recs = trap.wait_records(during, timeout=60)
        assert {r["id"] for r in recs} >= before | during
        after = {reply_id(trap.send(message(200 + i))) for i in range(10)}
        trap.wait_records(after, timeout=60)
        # still turning: a supervisor stuck on the lock sends no more pings
        wait_until(lambda: listener.count("WATCHDOG", "1") > pings + 2, 10, "watchdog pings")
        totals = ringmod.Ring.attach(trap.ring_name)
        try:
            snap = totals.snapshot()
            counted = snap.totals()
        finally:
            totals.close()
        assert counted[C.LOCK_HOLDER_KILLS] == 1
        assert snap.lock_breaks >= 1 and snap.lock_holder is None
        assert counted[C.RESTARTS] >= 1  # the killed worker came back
        wait_until(lambda: len(trap.child_pids("worker")) == 2, 30, "two workers")
        assert victim not in trap.child_pids("worker")
        trap.signal(signal.SIGTERM)
        assert trap.wait_exit(60) == 0
    finally:
        listener.close()
        trap.close()
