"""Quarantine in a running trap: its own cap, a record per message, purged on demand.

The trap starts on an overflow whose failed/ already holds 26 MiB (under a
28 MiB ``overflow.max_bytes``) and whose new/ holds a message at its attempt
limit; spills must still be taken, the poison must get a record, and
``ringtrap purge --quarantine`` must empty failed/ and count it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from trap_fixture import Trap, message, reply_id

from ringtrap.base import envelope, ids
from ringtrap.overflow import SUBDIRS, ready_name

MiB = 1 << 20


def plant(overflow_dir: Path, sub: str, payload: bytes, attempts: int) -> str:
    """A file as the trap would have left it in ``sub``; returns its id."""
    for d in ("", *SUBDIRS):
        (overflow_dir / d).mkdir(mode=0o700, exist_ok=True)
    msgid = ids.new_id()
    (overflow_dir / sub / ready_name(msgid, len(payload), attempts)).write_bytes(payload)
    return msgid


def cli(trap: Trap, *args: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "ringtrap.command.cli", *args, "-c", str(trap.config_path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout


def test_quarantine_never_blocks_spills_and_every_poison_is_recorded(tmp_path: Path) -> None:
    trap = Trap(
        tmp_path,
        {
            "overflow": {"max_bytes": "28M", "max_attempts": 3, "quarantine_max_bytes": "32M"},
            "ring": {"slots": 8},
            "ingest": {"max_message_bytes": "1M"},
        },
    )
    try:
        old = [plant(trap.overflow_dir, "failed", b"q" * (2 * MiB), 3) for _ in range(13)]
        env = envelope.Envelope(
            sender="poison@example.org",
            recipients=("trap@example.net",),
            client_address="192.0.2.7",
        )
        poison_msg = message(0)
        poison = plant(trap.overflow_dir, "new", envelope.frame(poison_msg, env), 3)
        trap.start()
        [rec] = trap.wait_records({poison}, timeout=60)
        assert (rec["verdict"], rec["attempts"], rec["size"]) == ("quarantined", 3, len(poison_msg))
        assert rec["envelope"] == env.to_dict()
        stored = len(envelope.frame(poison_msg, env))
        assert rec["quarantine"] == {
            "store": "overflow",
            "kept": True,
            "path": str(trap.overflow_dir / "failed" / ready_name(poison, stored, 3)),
        }
        st = trap.status()
        assert st is not None
        assert st["overflow"]["failed"] == 14 and st["totals"]["quarantined"] == 1

        workers = trap.child_pids("worker")
        for pid in workers:
            os.kill(pid, signal.SIGSTOP)  # everything sent now has to be spilled
        try:
            sent = {reply_id(trap.send(message(i, size=100_000))) for i in range(1, 41)}
        finally:
            for pid in workers:
                os.kill(pid, signal.SIGCONT)
        trap.wait_records(sent, timeout=120)

        out = cli(trap, "purge", "--quarantine")
        assert out.startswith("dropped 14 quarantined messages"), out
        assert [n for n in os.listdir(trap.overflow_dir / "failed")] == []
        st = trap.status()
        assert st is not None and st["totals"]["purged_quarantined"] == 14
        assert st["totals"]["refused_temp"] == 0
        report = json.loads(cli(trap, "report", "--json"))
        assert report["verdicts"]["quarantined"] == 1
        assert "quarantined" in cli(trap, "report")
        assert {r["id"] for r in trap.records()}.isdisjoint(old)
    finally:
        trap.close()


def test_the_daily_purge_drops_the_quarantine_by_its_retention(tmp_path: Path) -> None:
    from ringtrap import config as configmod
    from ringtrap.control.seam import OS
    from ringtrap.overflow import Overflow
    from ringtrap.supervisor import Supervisor

    now = 1_800_000_000.0
    cfg = configmod.override(
        configmod.defaults(),
        {
            "spamd.address": "off",
            "overflow.dir": str(tmp_path / "ovf"),
            "overflow.quarantine_retention_days": 2,
        },
    )
    sup = Supervisor(cfg, None, OS(time=lambda: now))
    sup.overflow = Overflow(cfg.overflow.dir, cfg.overflow.max_bytes)
    old, young = (f"{round((now - age) * 1e6):013x}-000001" for age in (1.5 * 86400, 3600))
    for msgid in (old, young):
        sup.overflow.quarantine_bytes(msgid, b"poison", 3, "limit")
    sup.overflow.spill(ids.new_id(), b"backlog")
    sup.purge(scheduled=False)  # 'ringtrap purge' keeps the quarantine
    st = sup.overflow.stats()
    assert (st.ready, st.failed) == (0, 2)
    sup.purge(scheduled=True)  # the daily purge keeps one day of it
    kept = [n for n in os.listdir(cfg.overflow.dir / "failed") if not n.endswith(".reason")]
    assert [n.split(",")[0] for n in kept] == [young]


def test_planted_spill_files_are_quarantined_unread_and_nothing_stalls(tmp_path: Path) -> None:
    import pwd
    import tempfile

    trap = Trap(tmp_path)
    secret_dir = Path(tempfile.mkdtemp(prefix="rt-secret-", dir="/dev/shm"))  # hard-linkable
    try:
        secret = secret_dir / "shadow"
        secret.write_bytes(b"Subject: root:SECRET-HASH\r\n\r\nroot:$6$SECRET-HASH:19000\r\n")
        nobody = pwd.getpwnam("nobody")
        new = trap.overflow_dir / "new"
        for d in ("", *SUBDIRS):
            (trap.overflow_dir / d).mkdir(mode=0o700)
        planted: dict[str, str] = {}

        def name(why: str, size: int) -> Path:
            msgid = ids.new_id()
            planted[msgid] = why
            return new / ready_name(msgid, size, 0)

        name("a symlink", 60).symlink_to(secret)
        os.mkfifo(name("a FIFO", 60))  # opening it for reading would block
        os.link(secret, name("2 hard links", secret.stat().st_size))
        theirs = name(f"owned by uid {nobody.pw_uid}", 6)
        theirs.write_bytes(b"theirs")
        os.chown(theirs, nobody.pw_uid, nobody.pw_gid)
        trap.start()
        normal = {reply_id(trap.send(message(i))) for i in range(5)}
        records = {r["id"]: r for r in trap.wait_records(normal | set(planted), timeout=60)}
        for msgid, why in planted.items():
            rec = records[msgid]
            assert rec["verdict"] == "quarantined", rec
            assert rec["reason"].startswith(f"untrusted spill file, not read: {why}"), rec
            assert rec["envelope"] is None and rec["quarantine"]["kept"] is True
            assert os.path.lexists(rec["quarantine"]["path"])
            assert Path(rec["quarantine"]["path"] + ".reason").exists()
        assert all(records[m]["verdict"] == "not_scanned" for m in normal)
        assert "SECRET-HASH" not in "".join(p.read_text() for p in trap.results_dir.glob("*.jsonl"))
        assert secret.stat().st_nlink == 2  # the link was moved, never followed
        st = trap.status()
        assert st is not None
        assert st["totals"]["quarantined"] == 4 and st["totals"]["restarts"] == 0
        assert all(p["state"] == "idle" for p in st["processes"] if p["role"] == "worker")
    finally:
        trap.close()
        import shutil

        shutil.rmtree(secret_dir, ignore_errors=True)


def test_the_stage_quarantines_planted_files_unread(tmp_path: Path) -> None:
    from ringtrap import config as configmod
    from ringtrap.overflow import Overflow
    from ringtrap.scan.results import ResultSink, read_results
    from ringtrap.scan.spamd import SpamdClient
    from ringtrap.work.stage import StageWorker

    store = Overflow(tmp_path / "stage", 1 << 24)
    secret = tmp_path / "secret"
    secret.write_bytes(b"Subject: SECRET\r\n\r\nSECRET\r\n")
    fifo = ids.new_id()
    os.mkfifo(store.path / "new" / ready_name(fifo, 10, 0))
    link = ids.new_id()
    (store.path / "new" / ready_name(link, 10, 0)).symlink_to(secret)
    cfg = configmod.from_dict(
        {"spamd": {"address": "off"}, "stage": {"workers": 1, "address": "unix:/nonexistent"}}
    )
    with ResultSink(tmp_path / "results") as sink:
        # a TELL would fail to connect: the planted files must never get that far
        worker = StageWorker(
            cfg,
            store,
            SpamdClient("unix:/nonexistent"),
            None,
            0,
            parent_pid=os.getppid(),
            sink=sink,
        )
        runner = threading.Thread(target=worker.run, kwargs={"max_messages": 2})
        runner.start()
        runner.join(30)
        blocked = runner.is_alive()
        if blocked:  # a writer releases a reader stuck opening the FIFO
            for p in (store.path / "cur").iterdir():
                with contextlib.suppress(OSError):
                    os.close(os.open(p, os.O_WRONLY | os.O_NONBLOCK))
            runner.join(30)
        assert not blocked, "the stage worker blocked on a planted FIFO"
    got = {r["id"]: r for r in read_results(tmp_path / "results")}
    assert set(got) == {fifo, link}
    assert got[fifo]["reason"] == "untrusted spill file, not read: a FIFO"
    assert got[link]["reason"] == "untrusted spill file, not read: a symlink"
    assert {r["quarantine"]["store"] for r in got.values()} == {"stage"}
    st = store.stats()
    assert (st.ready, st.claimed, st.failed, worker.done) == (0, 0, 2, 0)
