"""End to end: ``ringtrap run`` with real spamd, real clients, real signals.

Every test starts its own trap (its own ring, overflow and socket) and counts
every message it delivered in the result records at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from spamd_fixture import SpamdProcess
from trap_fixture import (
    NotifyListener,
    Trap,
    message,
    reply_id,
    running_trap,
    shm_leftovers,
    wait_until,
)

pytestmark = pytest.mark.slow

SPAM_SAMPLE = Path("/usr/share/doc/spamassassin/examples/sample-spam.txt")


def spamd_settings(spamd: SpamdProcess) -> dict[str, dict[str, object]]:
    # these tests keep the workers scanning with copies of one sample: each
    # copy is a scan, not a campaign repeat recorded from the first
    return {"spamd": {"address": spamd.unix_address}, "dedupe": {"skip_scan": False}}


def test_socat_and_nc_deliver_600_with_managed_spamd(tmp_path: Path) -> None:
    if not SPAM_SAMPLE.exists():
        pytest.skip("Debian's spamassassin samples are not installed")
    settings = {
        "spamd": {"address": "managed", "extra_args": ["--local"]},
        "ring": {"slots": 1024},
    }
    with running_trap(tmp_path, settings) as trap:
        ids = set()
        for i in range(300):
            r = trap.send_with("socat", message(i))
            assert r.returncode == 0, r.stderr
            ids.add(reply_id(r.stdout))
            r = trap.send_with("nc", message(1000 + i))
            assert r.returncode == 0, r.stderr
            ids.add(reply_id(r.stdout))
        assert len(ids) == 600
        records = trap.wait_records(ids, timeout=240)
        assert sorted(r["id"] for r in records) == sorted(ids)
        assert all(isinstance(r["score"], float) for r in records), "every message scanned"
        assert {r["verdict"] for r in records} <= {"spam", "ham"}
        st = json.loads(subprocess.run(
            [sys.executable, "-m", "ringtrap.command.cli", "status", "--json", "-c",
             str(trap.config_path)], capture_output=True, check=True).stdout)
        t = st["totals"]
        assert t["accepted_ring"] + t["accepted_overflow"] == 600
        assert t["processed"] == 600
        assert t["verdict_spam"] + t["verdict_ham"] == 600


def test_sigkill_worker_mid_scan_and_ingest_mid_stream(
    tmp_path: Path, spamd_server: SpamdProcess
) -> None:
    with running_trap(tmp_path, spamd_settings(spamd_server)) as trap:
        spam = SPAM_SAMPLE.read_bytes() if SPAM_SAMPLE.exists() else message(0)
        ids = {reply_id(trap.send(spam)) for _ in range(40)}

        def scanning_worker() -> int | None:
            st = trap.status()
            for p in (st or {}).get("processes", []):
                if p["role"] == "worker" and p["state"] == "scanning" and p["alive"]:
                    return int(p["pid"])
            return None

        victim = wait_until(scanning_worker, 30, "a worker mid-scan", step=0.005)
        os.kill(victim, signal.SIGKILL)

        ingest = trap.child_pids("ingest")[0]

        def connections() -> int:
            return int((trap.status() or {"totals": {"connections": 0}})["totals"]["connections"])

        before = connections()
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(str(trap.socket_path))
            s.sendall(message(99)[:50])  # half a message, never finished
            wait_until(lambda: connections() > before, 10, "the ingest to take the connection")
            os.kill(ingest, signal.SIGKILL)
            try:
                s.shutdown(socket.SHUT_WR)
                reply = s.recv(100)
            except OSError:
                reply = b""
            assert not reply.startswith(b"OK"), "a half-sent message must never be accepted"

        # one reading: the killed ingest may still look alive to the first of two
        wait_until(lambda: (now := trap.child_pids("ingest")) and now[0] != ingest,
                   30, "the ingest to come back")
        wait_until(lambda: len(trap.child_pids("worker")) == 2
                   and victim not in trap.child_pids("worker"), 30, "the worker to come back")
        ids |= {reply_id(trap.send(message(i))) for i in range(10)}
        records = trap.wait_records(ids, timeout=120)
        got = {r["id"] for r in records}
        assert ids <= got
        assert any(r["attempts"] >= 1 for r in records), "the killed worker's message was redone"


def test_full_ring_spills_and_everything_is_processed(
    tmp_path: Path, spamd_server: SpamdProcess
) -> None:
    with running_trap(tmp_path, {**spamd_settings(spamd_server),
                                 "ring": {"slots": 16}}) as trap:
        workers = trap.child_pids("worker")
        for pid in workers:
            os.kill(pid, signal.SIGSTOP)  # hold the workers back
        try:
            ids = set()
            worst = 0.0
            for i in range(100):
                t0 = time.monotonic()
                ids.add(reply_id(trap.send(message(i))))
                worst = max(worst, time.monotonic() - t0)
            st = trap.status()
            assert st is not None
            assert st["ring"]["used"] == 16
            assert st["overflow"]["ready"] == 100 - 16
            # the ingest publishes its counters once per loop turn: allow a moment
            wait_until(lambda: (trap.status() or {"totals": {}})["totals"].get(
                "accepted_overflow") == 100 - 16, 5, "the spill count in status")
        finally:
            for pid in workers:
                os.kill(pid, signal.SIGCONT)
        records = trap.wait_records(ids, timeout=120)
        assert len([r for r in records if r["id"] in ids]) == 100
        st = trap.status()
        assert st is not None and st["ring"]["used"] == 0 and st["overflow"]["ready"] == 0


def test_term_persists_a_full_ring_and_restart_loses_nothing(
    tmp_path: Path, spamd_server: SpamdProcess
) -> None:
    # spamd "down": workers hand every message back and back off, so the ring stays full
    down = {"spamd": {"address": f"unix:{tmp_path}/no-spamd.sock"}, "ring": {"slots": 16}}
    trap = Trap(tmp_path, down)
    try:
        trap.start()
        ids = {reply_id(trap.send(message(i))) for i in range(40)}
        wait_until(lambda: (trap.status() or {}).get("totals", {}).get("released", 0) > 0,
                   30, "workers to find spamd down")
        trap.signal(signal.SIGTERM)
        assert trap.wait_exit(60) == 0
        assert shm_leftovers(trap.ring_name) == [], "ring segment and semaphores removed"
        assert not trap.socket_path.exists()
        assert trap.records() == []
        # start again with spamd up: everything accepted before is processed
        trap.settings["spamd"] = {"address": spamd_server.unix_address}
        trap.write_config()
        trap.start()
        records = trap.wait_records(ids, timeout=120)
        assert {r["id"] for r in records} == ids
        assert all(r["score"] is not None for r in records)
        trap.signal(signal.SIGTERM)
        assert trap.wait_exit(60) == 0
    finally:
        trap.close()


def test_hup_resizes_pool_and_refuses_a_broken_config(tmp_path: Path) -> None:
    trap = Trap(tmp_path)
    listener = NotifyListener(trap.rundir / "notify.sock")
    try:
        trap.start(env_extra={"NOTIFY_SOCKET": str(listener.path)})
        before = set(trap.child_pids("worker"))
        trap.settings["workers"]["count"] = 3
        trap.write_config()
        trap.signal(signal.SIGHUP)
        wait_until(lambda: len(trap.child_pids("worker")) == 3
                   and not (set(trap.child_pids("worker")) & before), 60,
                   "three workers of the new generation")
        running = set(trap.child_pids("worker"))
        reloads = listener.keys_in_order().count("RELOADING")
        trap.config_path.write_text("[workers]\ncount = 'many'\n")
        trap.signal(signal.SIGHUP)
        # the supervisor read the broken file and is ready again on the running one
        wait_until(lambda: listener.keys_in_order().count("RELOADING") > reloads
                   and listener.keys_in_order()[-1] == "READY", 30,
                   "RELOADING=1, then READY=1 for the refused reload")
        assert trap.proc is not None and trap.proc.poll() is None
        assert set(trap.child_pids("worker")) == running
        assert reply_id(trap.send(message(1)))
    finally:
        listener.close()
        trap.close()


def test_bad_input_gets_its_answer_and_others_are_served(tmp_path: Path) -> None:
    settings = {"ingest": {"max_message_bytes": "100K", "idle_timeout": 1,
                           "max_connections": 4}}
    with running_trap(tmp_path, settings) as trap:
        assert trap.send(message(1, size=200_000)).startswith(b"ERR ")
        assert trap.send(b"").startswith(b"ERR ")
        garbage = bytes(range(256)) * 64
        gid = reply_id(trap.send(garbage))
        broken = (b"Content-Type: multipart/mixed; boundary=\"x\"\r\n\r\n--x\r\n"
                  b"Content-Type: text/plain; charset=bogus\r\nContent-Transfer-Encoding: "
                  b"base64\r\n\r\n!!!notbase64\r\n--x")  # never closed
        bid = reply_id(trap.send(broken))
        # an idle connection is answered TEMPFAIL after the idle timeout
        with socket.socket(socket.AF_UNIX) as idle:
            idle.settimeout(10)
            idle.connect(str(trap.socket_path))
            idle.sendall(b"Subject: slow\r\n")
            assert idle.recv(100).startswith(b"TEMPFAIL")
        # more connections than the limit: the extra one is refused, the rest served
        held = []
        try:
            for _ in range(4):
                s = socket.socket(socket.AF_UNIX)
                s.connect(str(trap.socket_path))
                held.append(s)
            time.sleep(0.3)
            extra = trap.send(message(2), timeout=10)
            assert extra.startswith(b"TEMPFAIL"), extra
        finally:
            for s in held:
                s.close()
        time.sleep(0.3)
        oid = reply_id(trap.send(message(3)))
        records = trap.wait_records({gid, bid, oid})
        by_id = {r["id"]: r for r in records}
        assert by_id[gid]["size"] == len(garbage)
        assert by_id[bid]["size"] == len(broken)


def test_ps_shows_titles(tmp_path: Path) -> None:
    with running_trap(tmp_path) as trap:
        def titles() -> list[str]:
            out = []
            for p in [psutil.Process(trap.pid), *trap.children()]:
                with contextlib.suppress(psutil.Error):
                    out.append(" ".join(p.cmdline()))
            return out

        def all_titled() -> list[str] | None:
            t = titles()
            ok = (any(x.startswith("ringtrap: supervisor") for x in t)
                  and any(x.startswith("ringtrap: ingest") for x in t)
                  and sum(x.startswith("ringtrap: worker") for x in t) == 2)
            return t if ok else None

        wait_until(all_titled, 10, "titles on every process")


def test_sigkill_supervisor_then_restart_adopts_everything(
    tmp_path: Path, spamd_server: SpamdProcess
) -> None:
    trap = Trap(tmp_path, {**spamd_settings(spamd_server), "ring": {"slots": 16}})
    try:
        trap.start()
        workers = trap.child_pids("worker")
        for pid in workers:
            os.kill(pid, signal.SIGSTOP)  # a backlog in the ring and the overflow
        ids = {reply_id(trap.send(message(i))) for i in range(40)}
        old_children = [p.pid for p in trap.children()]
        trap.signal(signal.SIGKILL)
        trap.wait_exit(10)
        for pid in workers:
            os.kill(pid, signal.SIGCONT)
        # the orphans notice their parent is gone and leave; a new supervisor
        # adopts the ring and the overflow and processes every message
        trap.start()
        records = trap.wait_records(ids, timeout=120)
        assert ids <= {r["id"] for r in records}
        for pid in old_children:
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
        st = trap.status()
        assert st is not None and st["ring"]["generation"] >= 1
        trap.signal(signal.SIGTERM)
        assert trap.wait_exit(60) == 0
        assert shm_leftovers(trap.ring_name) == []
    finally:
        trap.close()


def test_a_ring_of_another_layout_version_is_refused_and_kept(tmp_path: Path) -> None:
    """An upgrade over a ring left by a crash: refused with what to do, nothing removed."""
    from ringtrap import ring as ringmod
    from ringtrap.store import segment as segmod

    trap = Trap(tmp_path)
    old = ringmod.Ring.create(trap.ring_name, 64, 65536)
    try:
        assert old.put("0640c3f1a2b3c-0004d2", b"held by the old version") is ringmod.PutResult.OK
        old._q[segmod.H_VERSION] = segmod.VERSION - 1
        trap.start(wait=False)
        # EX_CONFIG; what the refusal says is test_supervisor_logic's
        assert trap.wait_exit(30) == 78
        # the segment and its message are still there for the old version to drain
        assert all(os.path.exists(p) for p in segmod.shm_paths(trap.ring_name))
        old._q[segmod.H_VERSION] = segmod.VERSION
        c = old.claim(timeout=0)
        assert c is not None and c.data == b"held by the old version"
    finally:
        old.close()
        trap.close()


def test_a_geometry_change_never_drops_what_it_cannot_move(tmp_path: Path) -> None:
    """The ring is recreated in a new size only once every message has moved."""
    from ringtrap import ring as ringmod
    from ringtrap.store import segment as segmod

    trap = Trap(tmp_path, {"ring": {"slots": 32}})
    old = ringmod.Ring.create(trap.ring_name, 64, 65536)
    try:
        for i in range(3):
            assert old.put(f"0640c3f1a2b3{i}-0004d2", b"old %d" % i) is ringmod.PutResult.OK
        held = old.claim(timeout=0)  # a live claimer the new supervisor cannot stop
        assert held is not None
        old._q[segmod.H_OWNER_START] += 1  # the supervisor that made it is gone
        trap.start(wait=False)
        assert trap.wait_exit(30) == 78
        # the two it could move are in the overflow, the held one is still in the ring
        assert all(os.path.exists(p) for p in segmod.shm_paths(trap.ring_name))
        assert len(os.listdir(trap.overflow_dir / "new")) == 2
        snap = old.snapshot()
        assert (snap.used, snap.claimed) == (1, 1)
        old.ack(held)
    finally:
        old.close()
        trap.close()


def test_purge_drops_the_backlog_and_counts_it(tmp_path: Path) -> None:
    with running_trap(tmp_path, {"ring": {"slots": 8}}) as trap:
        workers = trap.child_pids("worker")
        for pid in workers:
            os.kill(pid, signal.SIGSTOP)
        try:
            for i in range(30):
                reply_id(trap.send(message(i)))
            out = subprocess.run(
                [sys.executable, "-m", "ringtrap.command.cli", "purge", "-c",
                 str(trap.config_path)],
                capture_output=True, text=True, check=True).stdout
            assert out.startswith("dropped 22 messages"), out
            st = trap.status()
            assert st is not None
            assert st["overflow"]["ready"] == 0
            assert st["totals"]["purged_files"] == 22
        finally:
            for pid in workers:
                os.kill(pid, signal.SIGCONT)


def test_a_killed_managed_spamd_takes_its_children_and_comes_back(tmp_path: Path) -> None:
    settings = {"spamd": {"address": "managed", "extra_args": ["--local"]}}
    with running_trap(tmp_path, settings) as trap:
        def spamd_family() -> tuple[psutil.Process, list[psutil.Process]] | None:
            for p in trap.children():
                with contextlib.suppress(psutil.Error):
                    if "spamd" in " ".join(p.cmdline()):
                        kids = p.children()
                        return (p, kids) if kids else None
            return None

        parent, kids = wait_until(spamd_family, 60, "the managed spamd and its children")
        os.kill(parent.pid, signal.SIGKILL)
        wait_until(lambda: not any(k.is_running() and k.status() != psutil.STATUS_ZOMBIE
                                   for k in kids), 20, "the old spamd children to go")
        again = wait_until(spamd_family, 60, "a new managed spamd")
        assert again[0].pid != parent.pid
