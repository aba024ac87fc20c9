"""Supervisor logic with a recording fake of the OS: no process is forked here."""

from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Self

import pytest
from fakeos import FakeOS, exit_status, signal_status

from ringtrap import config as configmod
from ringtrap import supervisor
from ringtrap.base.counters import C
from ringtrap.base.proc import Identity
from ringtrap.base.states import ChildState, ExitCause, ProcState, Role
from ringtrap.control import adopt
from ringtrap.control.adopt import read_spamd_owner
from ringtrap.control.child import MAX_BOOT_FAILURES, Child, backoff_delay, classify, set_state
from ringtrap.control.liveness import ABORT_GRACE, BOOT_GRACE
from ringtrap.control.managed_spamd import spamd_answers_as
from ringtrap.control.purge import next_purge
from ringtrap.control.seam import OS
from ringtrap.store.segment import shm_paths, unlink_name
from ringtrap.supervisor import Phase, Supervisor


@pytest.fixture
def sup() -> tuple[Supervisor, FakeOS]:
    cfg = configmod.override(configmod.defaults(), {"workers.count": 2, "spamd.address": "off"})
    fake = FakeOS()
    s = Supervisor(cfg, None, fake.as_os())
    s.children = [Child(Role.INGEST, 0, 1), Child(Role.WORKER, 0, 2), Child(Role.WORKER, 1, 3)]
    return s, fake


def test_reconcile_starts_every_waiting_child(sup: tuple[Supervisor, FakeOS]) -> None:
    s, _ = sup
    s.reconcile()
    assert all(c.state is ChildState.RUNNING for c in s.children)
    assert sorted(c.pid for c in s.children) == [101, 102, 103]


def test_crash_restarts_at_once_and_counts(sup: tuple[Supervisor, FakeOS]) -> None:
    s, fake = sup
    s.reconcile()
    w = s.children[1]
    w.booted = True
    fake.now += 60
    fake.exits.append((w.pid, signal_status(signal.SIGKILL)))
    s.reap()
    assert w.state is ChildState.WAITING
    assert w.restart_at == fake.now
    s.reconcile()
    assert w.state is ChildState.RUNNING and w.pid == 104


def test_too_fast_deaths_back_off_then_give_up(sup: tuple[Supervisor, FakeOS]) -> None:
    s, fake = sup
    s.reconcile()
    w = s.children[1]
    delays = []
    for _ in range(MAX_BOOT_FAILURES):
        fake.exits.append((w.pid, exit_status(1)))
        s.reap()
        if w.state is not ChildState.WAITING:
            break
        delays.append(w.restart_at - fake.now)
        fake.now = w.restart_at
        s.reconcile()
    assert delays == sorted(delays) and delays[0] > 0
    assert s.exit_code != 0
    assert s.phase is Phase.DRAINING


def test_requested_stop_is_not_restarted(sup: tuple[Supervisor, FakeOS]) -> None:
    s, fake = sup
    s.reconcile()
    fake.now += 10
    w = s.children[2]
    s._stop_child(w, signal.SIGTERM, retire=True)
    assert (w.pid, signal.SIGTERM) in fake.killed
    assert classify(w, exit_status(0), booted=True) is ExitCause.REQUESTED
    fake.exits.append((w.pid, exit_status(0)))
    s.reap()
    s.reconcile()
    assert w not in s.children


def test_classify_calls_only_a_death_before_the_boot_a_boot_failure(
    sup: tuple[Supervisor, FakeOS],
) -> None:
    s, _ = sup
    s.reconcile()
    w = s.children[1]
    # never booted: a boot failure, whether it exited 0, 1 or took a signal
    for status in (exit_status(0), exit_status(1), signal_status(signal.SIGKILL)):
        assert classify(w, status, booted=False) is ExitCause.TOO_FAST
    # booted: a clean exit is a recycle, anything else a crash, however soon
    assert classify(w, exit_status(0), booted=True) is ExitCause.REQUESTED
    assert classify(w, exit_status(1), booted=True) is ExitCause.CRASHED
    assert classify(w, signal_status(signal.SIGKILL), booted=True) is ExitCause.CRASHED


def test_a_booted_child_killed_over_and_over_backs_off_and_is_never_given_up(
    sup: tuple[Supervisor, FakeOS],
) -> None:
    s, fake = sup
    s.reconcile()
    w = s.children[1]
    fake.now += 60  # it ran a while before the first kill
    delays = []
    for _ in range(4 * MAX_BOOT_FAILURES):
        w.booted = True  # its row left STARTING
        fake.exits.append((w.pid, signal_status(signal.SIGKILL)))
        s.reap()
        assert w.state is ChildState.WAITING
        delays.append(w.restart_at - fake.now)
        fake.now = w.restart_at
        s.reconcile()
        assert w.state is ChildState.RUNNING
        fake.now += 0.1  # killed again right after its boot
    assert delays[:6] == [0.0, 0.5, 1.0, 2.0, 4.0, 5.0]
    assert set(delays[6:]) == {5.0}
    assert s.phase is Phase.RUNNING and s.exit_code == 0
    # a run longer than MIN_UPTIME ends the loop: the next death costs no wait
    w.booted = True
    fake.now += 60
    fake.exits.append((w.pid, signal_status(signal.SIGKILL)))
    s.reap()
    assert w.restart_at == fake.now


def test_spamd_boots_only_when_it_answers_as_the_listener(tmp_path: Path) -> None:
    path = tmp_path / "spamd.sock"
    with socket.socket(socket.AF_UNIX) as srv:
        srv.bind(str(path))
        srv.listen()

        def answer() -> None:
            conn, _ = srv.accept()
            with conn:
                conn.recv(100)
                conn.sendall(b"SPAMD/1.5 0 PONG\r\n")

        t = threading.Thread(target=answer)
        t.start()
        assert spamd_answers_as(path, os.getpid())
        t.join()
        # another process bound the socket (an orphan of an older supervisor)
        assert not spamd_answers_as(path, os.getpid() + 1)
    assert not spamd_answers_as(tmp_path / "missing.sock", os.getpid())


def test_signal_never_reaches_a_reused_pid(sup: tuple[Supervisor, FakeOS]) -> None:
    s, fake = sup
    s.reconcile()
    w = s.children[1]
    fake.alive[w.pid] = Identity(w.pid, 999)  # the pid now belongs to someone else
    s._signal(w, signal.SIGKILL)
    assert (w.pid, signal.SIGKILL) not in fake.killed


def test_illegal_transition_is_refused(sup: tuple[Supervisor, FakeOS]) -> None:
    s, _ = sup
    c = s.children[0]
    c.state = ChildState.EXITED
    with pytest.raises(RuntimeError, match="illegal"):
        set_state(c, ChildState.RUNNING)


def test_backoff_grows_and_is_capped() -> None:
    values = [backoff_delay(n) for n in range(1, 12)]
    assert values == sorted(values)
    assert values[0] == 1.0 and values[-1] == 30.0


def test_next_purge_is_today_or_tomorrow_local() -> None:
    at = dt.time(4, 0)
    base = dt.datetime(2026, 3, 10, 3, 59, 0).astimezone()
    assert next_purge(base.timestamp(), at) == base.replace(hour=4, minute=0).timestamp()
    after = base.replace(hour=4, minute=0, second=1)
    tomorrow = (after + dt.timedelta(days=1)).replace(hour=4, minute=0, second=0)
    assert next_purge(after.timestamp(), at) == tomorrow.timestamp()


def test_second_term_escalates_to_fast_stop(sup: tuple[Supervisor, FakeOS],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    s, fake = sup
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    s.reconcile()
    s.handle_term()
    assert s.phase is Phase.DRAINING
    ingest = s.children[0]
    assert (ingest.pid, signal.SIGTERM) in fake.killed
    # workers keep running until the ingest has finished
    assert all((c.pid, signal.SIGTERM) not in fake.killed for c in s.children[1:])
    s.handle_term()
    assert s.phase is Phase.STOPPING
    assert all((c.pid, signal.SIGQUIT) in fake.killed for c in s.children[1:])


def test_drain_stops_workers_after_ingest_exits(sup: tuple[Supervisor, FakeOS],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    s, fake = sup
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    s.reconcile()
    s.handle_term()
    ingest = s.children[0]
    fake.exits.append((ingest.pid, exit_status(0)))
    s.reap()
    s.progress_shutdown(fake.now)
    assert all((c.pid, signal.SIGTERM) in fake.killed for c in s.children[1:])
    for c in s.children[1:]:
        fake.exits.append((c.pid, exit_status(0)))
    s.reap()
    s.progress_shutdown(fake.now)
    assert s.phase is Phase.DONE


def test_os_default_identity_is_real() -> None:
    ident = OS().identity(os.getpid())
    assert ident is not None and ident.pid == os.getpid()


def test_drain_stops_the_stage_after_the_workers_that_feed_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    cfg = configmod.override(configmod.defaults(), {"workers.count": 1, "spamd.address": "off"})
    fake = FakeOS()
    s = Supervisor(cfg, None, fake.as_os())
    ingest, worker, stage = Child(Role.INGEST, 0, 1), Child(Role.WORKER, 0, 2), \
        Child(Role.STAGE, 0, 63)
    s.children = [ingest, worker, stage]
    s.reconcile()
    assert stage.name == "stage 0"
    s.handle_term()
    fake.exits.append((ingest.pid, exit_status(0)))
    s.reap()
    s.progress_shutdown(fake.now)
    assert (worker.pid, signal.SIGTERM) in fake.killed
    assert (stage.pid, signal.SIGTERM) not in fake.killed  # a worker may still hand it work
    fake.exits.append((worker.pid, exit_status(0)))
    s.reap()
    s.progress_shutdown(fake.now)
    assert (stage.pid, signal.SIGTERM) in fake.killed
    fake.exits.append((stage.pid, exit_status(0)))
    s.reap()
    s.progress_shutdown(fake.now)
    assert s.phase is Phase.DONE


def test_children_killed_at_the_stop_deadline_are_cut_not_crashed(
    sup: tuple[Supervisor, FakeOS], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    s, fake = sup
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    s.cfg = configmod.override(s.cfg, {"ingest.socket": str(tmp_path / "ingest.sock")})
    spamd = Child(Role.SPAMD, 0, -1)
    s.children.append(spamd)
    s.reconcile()
    # the managed spamd's identity is on record for a supervisor started after a crash
    assert read_spamd_owner(tmp_path / "spamd.owner") == spamd.ident
    pids = [c.pid for c in s.children]
    for c in s.children:
        c.booted = True
    causes: list[ExitCause] = []
    monkeypatch.setattr(supervisor, "classify",
                        lambda *a: causes.append(classify(*a)) or causes[-1])
    s.handle_term()
    # nothing stops in time: the ingest hangs on, so workers and spamd never got TERM
    fake.now = s.drain_deadline + 1
    for c in s.children:
        fake.exits.append((c.pid, signal_status(signal.SIGKILL)))
    s.progress_shutdown(fake.now)
    assert all((pid, signal.SIGKILL) in fake.killed for pid in pids)
    assert causes == [ExitCause.CUT] * 4
    assert s.cut_processes == 4
    assert s.phase is Phase.DONE and s.exit_code == 0


@dataclass
class RowsRing:
    """The process table as the supervisor reads it, rows written by the test."""

    rows: list[SimpleNamespace] = field(default_factory=list)

    def read_rows(self) -> list[SimpleNamespace]:
        return self.rows

    @property
    def table(self) -> Self:  # the supervisor reads rows through ring.table
        return self


def test_a_stalled_heartbeat_is_aborted_then_killed_on_the_seams_clock(
    sup: tuple[Supervisor, FakeOS],
) -> None:
    s, fake = sup
    s.reconcile()
    w = s.children[1]
    fake.now += BOOT_GRACE + 1  # past the boot grace: only the beat counts now
    beat = fake.now
    ring = RowsRing([SimpleNamespace(row=w.row, pid=w.pid, start=7, state=ProcState.BUSY,
                                     heartbeat_ns=int(beat * 1e9), msgid="m1")])
    s.ring = ring  # type: ignore[assignment]
    counts: dict[int, int] = {}
    s.row = SimpleNamespace(  # type: ignore[assignment]
        add=lambda k, n=1: counts.update({k: counts.get(k, 0) + n}))
    limit = s.cfg.workers.heartbeat_timeout
    fake.now = beat + limit - 1
    s.check_heartbeats(fake.now)
    assert fake.killed == []  # it beat within the limit
    fake.now = beat + limit + 1
    s.check_heartbeats(fake.now)
    assert fake.killed == [(w.pid, signal.SIGABRT)]
    s.check_heartbeats(fake.now + ABORT_GRACE - 1)
    assert fake.killed == [(w.pid, signal.SIGABRT)]  # given time to dump core and die
    fake.now += ABORT_GRACE + 1
    s.check_heartbeats(fake.now)
    assert fake.killed[-1] == (w.pid, signal.SIGKILL)
    w.booted = True
    fake.exits.append((w.pid, signal_status(signal.SIGKILL)))
    s.reap()
    assert counts == {C.HEARTBEAT_KILLS: 1, C.RESTARTS: 1, C.RESTARTS_HUNG: 1}
    s.reconcile()
    assert w.state is ChildState.RUNNING and w.abort_sent == 0.0


def test_the_old_generation_is_termed_then_killed_on_the_seams_clock() -> None:
    fake = FakeOS()
    left = [Identity(501, 7), Identity(502, 7)]
    fake.alive.update({i.pid: i for i in left})
    fake.alive[503] = Identity(503, 9)  # the pid is reused: not the one the row names
    ring = RowsRing([SimpleNamespace(pid=i.pid, start=i.start) for i in left]
                    + [SimpleNamespace(pid=503, start=7)])
    killed_at: list[float] = []

    def kill(pid: int, sig: int) -> None:
        fake.kill(pid, sig)
        killed_at.append(fake.now)
        if pid == 501 and sig == signal.SIGTERM:
            fake.alive.pop(pid)  # obeys TERM
        if sig == signal.SIGKILL:
            fake.alive.pop(pid)

    os_ = fake.as_os()
    os_.kill = kill
    start = fake.now
    adopt.stop_old_generation(ring, 10.0, os_)  # type: ignore[arg-type]
    assert fake.killed == [(501, signal.SIGTERM), (502, signal.SIGTERM), (502, signal.SIGKILL)]
    assert killed_at[-1] - start >= 10.0  # the graceful timeout passed on the fake clock
    assert 503 in fake.alive


def test_a_ring_of_another_layout_version_is_refused_with_what_to_do() -> None:
    """The refusal names the version found, how to drain it and what to remove."""
    from ringtrap import ring as ringmod
    from ringtrap.control.setup import SetupError
    from ringtrap.store import segment as segmod

    name = f"rt-logic-layout-{os.getpid()}"
    cfg = configmod.override(configmod.defaults(), {"ring.name": name})
    old = ringmod.Ring.create(name, 64, 65536)
    try:
        old._q[segmod.H_VERSION] = segmod.VERSION - 1
        with pytest.raises(SetupError) as refused:
            Supervisor(cfg, None, FakeOS().as_os())._open_ring()
        why = str(refused.value)
        assert f"layout version {segmod.VERSION - 1}" in why
        assert "stop it with TERM" in why
        assert " ".join(shm_paths(name)) in why
        assert all(os.path.exists(p) for p in shm_paths(name))
    finally:
        old.close()
        unlink_name(name)
