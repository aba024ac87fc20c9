"""End to end: the supervisor's own lifecycle under repeated faults.

Real ``ringtrap run``, real spamd, real SIGKILLs: children killed over and
over stay supervised, a start refused or a stop forced costs nothing it
should not, and nothing accepted is lost.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from pathlib import Path

import psutil
import pytest
from spamd_fixture import SpamdProcess
from trap_fixture import Trap, message, reply_id, running_trap, shm_leftovers, wait_until

from ringtrap.control.child import MAX_BOOT_FAILURES

pytestmark = pytest.mark.slow

KILL_EVERY = 1.5
KILL_FOR = 30.0


class Load:
    """Delivers messages from a thread at a steady pace; keeps every OK'd id."""

    def __init__(self, trap: Trap, per_second: float) -> None:
        self.trap = trap
        self.pause = 1.0 / per_second
        self.ids: set[str] = set()
        self.failures = 0  # refused or cut connections: the sender retries later
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            try:
                reply = self.trap.send(message(n), timeout=10)
            except OSError:
                reply = b""
            line = reply.decode(errors="replace").strip()
            if line.startswith("OK "):
                self.ids.add(line[3:])
            else:
                self.failures += 1
            self._stop.wait(self.pause)


def youngest_booted(trap: Trap, role: str) -> int | None:
    """The newest live ``role`` process that has finished its boot, by its start time."""
    st = trap.status()
    pids = [p["pid"] for p in (st or {}).get("processes", [])
            if p["role"] == role and p["alive"] and p["state"] != "starting"]
    best: tuple[float, int] | None = None
    for pid in pids:
        try:
            started = psutil.Process(pid).create_time()
        except psutil.Error:
            continue
        if best is None or started > best[0]:
            best = (started, pid)
    return None if best is None else best[1]


@pytest.mark.parametrize("role", ["worker", "ingest"])
def test_a_child_sigkilled_every_1_5_s_for_30_s_leaves_the_trap_up_and_loses_nothing(
    tmp_path: Path, spamd_server: SpamdProcess, role: str
) -> None:
    settings = {
        "spamd": {"address": spamd_server.unix_address},
        # the subject is the supervisor: a message hit by several kills is no poison here
        "overflow": {"max_attempts": 50},
    }
    with running_trap(tmp_path, settings) as trap:
        kills = 0
        with Load(trap, per_second=10) as load:
            deadline = time.monotonic() + KILL_FOR
            while time.monotonic() < deadline:
                assert trap.proc is not None and trap.proc.poll() is None, (
                    f"the trap exited {trap.proc.returncode} after {kills} kills:\n"
                    f"{trap.log_tail()}")
                victim = youngest_booted(trap, role)
                if victim is not None:
                    try:
                        os.kill(victim, signal.SIGKILL)
                        kills += 1
                    except ProcessLookupError:
                        pass
                time.sleep(KILL_EVERY)
        # more deaths soon after a start than the supervisor gives boot failures
        assert kills > MAX_BOOT_FAILURES
        assert trap.proc is not None and trap.proc.poll() is None, trap.log_tail()
        trap.wait_ready(timeout=60)
        assert len(load.ids) > 20, f"only {len(load.ids)} accepted, {load.failures} refused"
        ids = load.ids | {reply_id(trap.send(message(100_000 + i))) for i in range(10)}
        records = trap.wait_records(ids, timeout=240)
        recorded = {r["id"] for r in records}
        st = trap.status()
        assert st is not None
        accepted = st["totals"]["accepted_ring"] + st["totals"]["accepted_overflow"]
        if role == "worker":
            # every OK is counted, every accepted message recorded, nothing else
            assert accepted == len(ids) == len(recorded)
        else:
            # a killed ingest may have answered OK before it added the turn's tally
            assert ids <= recorded
            assert accepted <= len(recorded)
        assert st["totals"]["quarantined"] == 0


def spamd_processes(socket_path: Path) -> list[psutil.Process]:
    """Every live spamd parent started for ``socket_path``, whoever started it."""
    found = []
    for p in psutil.process_iter(["cmdline", "status", "ppid"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if f"--socketpath={socket_path}" in cmd and p.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(p)
    # a child spamd just forked carries its parent's command line until it
    # renames itself: only those whose parent is no spamd of this socket count
    parents = {p.pid for p in found}
    return [p for p in found if p.info["ppid"] not in parents]


def session_alive(pid: int) -> list[int]:
    """Live processes whose session is ``pid``'s (a spamd and its children)."""
    out = []
    for p in psutil.process_iter(["status"]):
        try:
            if os.getsid(p.pid) == pid and p.info["status"] != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
        except OSError:
            continue
    return out


@pytest.mark.skipif(os.geteuid() != 0, reason="spamd keeps running after its parent only as root")
def test_a_managed_spamd_left_by_a_sigkilled_supervisor_is_stopped_by_the_next(
    tmp_path: Path,
) -> None:
    from ringtrap.control.managed_spamd import spamd_answers_as

    settings = {"spamd": {"address": "managed", "extra_args": ["--local"]}}
    trap = Trap(tmp_path, settings)
    sock = trap.rundir / "spamd.sock"
    try:
        trap.start()

        def answering_spamd() -> int | None:
            for p in spamd_processes(sock):
                if spamd_answers_as(sock, p.pid):
                    return p.pid
            return None

        old = wait_until(answering_spamd, 120, "the managed spamd to answer")
        trap.signal(signal.SIGKILL)
        trap.wait_exit(10)
        # the orphan outlives its parent: run as nobody, it lost the parent-death signal
        time.sleep(2)
        assert old in [p.pid for p in spamd_processes(sock)], "the scenario needs an orphan"

        trap.start()
        new = wait_until(lambda: (pid := answering_spamd()) != old and pid, 120,
                         "the new supervisor's spamd to answer")
        assert session_alive(old) == []
        assert [p.pid for p in spamd_processes(sock)] == [new]
        msgid = reply_id(trap.send(message(1)))
        [rec] = [r for r in trap.wait_records({msgid}) if r["id"] == msgid]
        assert isinstance(rec["score"], float), "scanned by the new spamd"
        time.sleep(5)  # a spamd that cannot keep its socket exits within seconds
        st = trap.status()
        assert st is not None and st["totals"]["restarts"] == 0, trap.log_tail()
        assert [p.pid for p in spamd_processes(sock)] == [new]

        trap.signal(signal.SIGTERM)
        assert trap.wait_exit(120) == 0
        wait_until(lambda: not session_alive(new), 30, "the spamd's session to be gone")
        assert spamd_processes(sock) == []
    finally:
        for pid in (p.pid for p in spamd_processes(sock)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        trap.close()


def test_stops_that_cut_a_slow_message_count_no_attempt(
    tmp_path: Path, spamd_server: SpamdProcess
) -> None:
    from ringtrap.overflow import parse_ready

    stall = tmp_path / "stall.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as slow_spamd:
        # the kernel takes the connection and the request; no answer ever comes
        slow_spamd.bind(str(stall))
        slow_spamd.listen(16)
        settings = {
            "spamd": {"address": f"unix:{stall}"},
            "supervisor": {"graceful_timeout": 2},
            "overflow": {"max_attempts": 3},
        }
        trap = Trap(tmp_path, settings)
        try:
            def scanning(msgid: str) -> bool:
                return any(p["state"] == "scanning" and p["message"] == msgid
                           for p in (trap.status() or {}).get("processes", []))

            trap.start()
            msgid = reply_id(trap.send(message(1)))
            for stop in range(3):
                if stop:
                    trap.start()
                wait_until(lambda: scanning(msgid), 30, "a worker scanning the slow message")
                trap.signal(signal.SIGTERM)
                assert trap.wait_exit(60) == 0
                kept = [parse_ready(n) for n in os.listdir(trap.overflow_dir / "new")]
                assert [(m, attempts) for m, _, attempts in kept] == [(msgid, 0)], kept
            trap.settings["spamd"] = {"address": spamd_server.unix_address}
            trap.write_config()
            trap.start()
            [rec] = [r for r in trap.wait_records({msgid}, timeout=60) if r["id"] == msgid]
            assert rec["attempts"] == 0 and rec["verdict"] in ("spam", "ham")
            st = trap.status()
            assert st is not None and st["totals"]["quarantined"] == 0
        finally:
            trap.close()


def test_a_start_refused_for_a_socket_in_use_removes_only_what_it_made(tmp_path: Path) -> None:
    pidfile = tmp_path / "ringtrap.pid"
    (tmp_path / "a").mkdir()
    with running_trap(tmp_path / "a", {"supervisor": {"pidfile": str(pidfile)}}) as first:
        assert pidfile.read_text().strip() == str(first.pid)
        (tmp_path / "b").mkdir()
        second = Trap(tmp_path / "b", {
            "ingest": {"socket": str(first.socket_path)},
            "supervisor": {"pidfile": str(pidfile)},
        })
        try:
            second.start(wait=False)
            assert second.wait_exit(30) == 78
            # nothing of the refused start is left: ring, semaphores, folders
            assert shm_leftovers(second.ring_name) == []
            assert not second.overflow_dir.exists()
            assert not second.results_dir.exists()
            # and nothing of the running trap was touched
            assert pidfile.read_text().strip() == str(first.pid)
            assert shm_leftovers(first.ring_name) != []
            msgid = reply_id(first.send(message(1)))
            first.wait_records({msgid})
        finally:
            second.close()
