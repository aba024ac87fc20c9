"""The slower stage (ringtrap.work.stage): learning with a real spamd, a slow or failing backend.

The unit tests drive a :class:`StageWorker` over its spill directory; the
end-to-end tests run a whole trap with a stage pool, once against the real
spamd (``--allow-tell``, Bayes in a temporary directory: the learned count
goes up) and once against a deliberately slow TELL backend (scanning goes on
at full pace while the stage's backlog shows in ``status``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import mailbuild as mb
import pytest
from faketell import FakeTell
from spamd_fixture import SpamdProcess
from trap_fixture import reply_id, running_trap, wait_until

from ringtrap import config as configmod
from ringtrap.base import envelope
from ringtrap.base.counters import C
from ringtrap.base.states import Role
from ringtrap.overflow import Overflow
from ringtrap.ring import Ring
from ringtrap.scan.results import ResultSink, read_results
from ringtrap.scan.spamd import SpamdClient
from ringtrap.store.segment import unlink_name
from ringtrap.work.stage import StageWorker


def unique_spam() -> bytes:
    """A message spamd's Bayes has never seen (the session's spamd is shared)."""
    words = " ".join(uuid.uuid4().hex for _ in range(20))
    return mb.plain(f"Cheap offer {words}\n", subject=f"offer {uuid.uuid4().hex[:8]}")


def bayes_nspam(spamd: SpamdProcess) -> int:
    """The spam count in the Bayes database of ``spamd`` (sa-learn --dump magic)."""
    assert spamd.workdir is not None
    if not (spamd.workdir / "bayes" / "bayes_toks").exists():
        return 0  # nothing learned yet: sa-learn refuses to dump a missing database
    out = subprocess.run(
        ["sa-learn", "--dbpath", str(spamd.workdir / "bayes" / "bayes"), "--dump", "magic"],
        capture_output=True, text=True, timeout=60, check=True).stdout
    m = re.search(r"^\S+\s+\S+\s+(\d+)\s+\S+\s+non-token data: nspam$", out, re.MULTILINE)
    return int(m[1]) if m else 0


def stage_cfg(**stage: object) -> configmod.Config:
    return configmod.from_dict({"spamd": {"address": "off"},
                                "stage": {"workers": 1, "address": "unix:/nonexistent",
                                          **stage}})


# -- the stage worker alone ---------------------------------------------------------


@pytest.mark.spamd
def test_stage_worker_learns_with_real_spamd(tmp_path: Path, spamd_server: SpamdProcess) -> None:
    store = Overflow(tmp_path / "stage", 1 << 24)
    messages = [unique_spam() for _ in range(3)]
    for n, m in enumerate(messages):
        store.spill(f"{int(time.time() * 1e6):013x}-{n:06x}", envelope.frame(m))
    before = bayes_nspam(spamd_server)
    client = SpamdClient(spamd_server.unix_address, timeout=60.0)
    worker = StageWorker(stage_cfg(), store, client, None, 0, parent_pid=os.getppid())
    assert worker.run(max_messages=10) == 0
    assert worker.done == 3
    assert store.stats().ready == 0 and store.stats().claimed == 0
    assert bayes_nspam(spamd_server) == before + 3
    # learned for good: telling again changes nothing
    assert client.tell(messages[0], "spam").did_set == ()


def test_unreachable_backend_gives_the_message_back(tmp_path: Path) -> None:
    store = Overflow(tmp_path / "stage", 1 << 24)
    store.spill("0000000000001-000001", envelope.frame(mb.plain()))
    client = SpamdClient(f"unix:{tmp_path}/none.sock", connect_timeout=1.0, timeout=2.0)
    worker = StageWorker(stage_cfg(), store, client, None, 0, parent_pid=os.getppid(),
                         backoff_initial=0.01)
    claim = store.claim(worker._me)
    assert claim is not None
    worker.handle(claim)
    st = store.stats()
    assert (st.ready, st.claimed, worker.done) == (1, 0, 0)  # released, attempts unchanged


def test_refused_call_is_dropped_and_counted(tmp_path: Path) -> None:
    fake = FakeTell(0.0, b"SPAMD/1.0 69 Service Unavailable: TELL commands are not enabled\r\n")
    try:
        store = Overflow(tmp_path / "stage", 1 << 24)
        store.spill("0000000000001-000001", envelope.frame(mb.plain()))
        worker = StageWorker(stage_cfg(), store, SpamdClient(fake.address, timeout=5.0), None,
                             0, parent_pid=os.getppid())
        worker.run(max_messages=1)
        st = store.stats()
        assert (st.ready, st.claimed, worker.done, fake.calls) == (0, 0, 0, 1)
    finally:
        fake.close()


@pytest.mark.parametrize(("learn", "report", "sets"), [
    (True, False, b"Set: local\r\n"),
    (True, True, b"Set: local, remote\r\n"),
    (False, True, b"Set: remote\r\n"),
])
def test_learn_and_report_switches(tmp_path: Path, learn: bool, report: bool,
                                   sets: bytes) -> None:
    fake = FakeTell(0.0)
    try:
        store = Overflow(tmp_path / "stage", 1 << 24)
        message = mb.plain()
        store.spill("0000000000001-000001", envelope.frame(message))
        worker = StageWorker(stage_cfg(learn=learn, report=report), store,
                             SpamdClient(fake.address, timeout=5.0), None, 0,
                             parent_pid=os.getppid())
        worker.run(max_messages=1)
        assert worker.done == 1
        (request,) = fake.requests
        head, _, body = request.partition(b"\r\n\r\n")
        assert head.startswith(b"TELL SPAMC/1.5\r\n")
        assert b"\r\nMessage-class: spam\r\n" in head + b"\r\n"
        assert sets in head + b"\r\n"
        assert body == message  # the envelope line stays with ringtrap
    finally:
        fake.close()


def test_message_at_the_attempt_limit_is_quarantined_with_a_record(tmp_path: Path) -> None:
    store = Overflow(tmp_path / "stage", 1 << 24)
    env = envelope.Envelope(sender="s@example.org", recipients=("trap@example.net",))
    message = mb.plain()
    payload = envelope.frame(message, env)
    msgid = "0000000000001-000001"
    store.spill(msgid, payload, attempts=3)
    with ResultSink(tmp_path / "results") as sink:
        worker = StageWorker(stage_cfg(), store, SpamdClient("unix:/nonexistent"), None, 0,
                             parent_pid=os.getppid(), sink=sink)
        worker.run(max_messages=1)
    assert store.stats().failed == 1 and worker.done == 0
    [rec] = read_results(tmp_path / "results")
    assert (rec["id"], rec["verdict"], rec["attempts"], rec["size"]) == (
        msgid, "quarantined", 3, len(message))
    assert rec["envelope"] == env.to_dict()
    assert rec["quarantine"] == {
        "store": "stage", "kept": True,
        "path": str(store.path / "failed" / f"{msgid},S={len(payload)},A=3")}
    assert "a stage worker died holding it" in rec["reason"]


def test_a_tell_without_didset_is_not_counted_as_learned(tmp_path: Path) -> None:
    # what spamd answers when its user has no writable Bayes database
    fake = FakeTell(0.0, b"SPAMD/1.1 0 EX_OK\r\n\r\n")
    name = f"rt-stage-{uuid.uuid4().hex[:8]}"
    ring = Ring.create(name, 4, 4096)
    try:
        store = Overflow(tmp_path / "stage", 1 << 24)
        for n in range(3):
            store.spill(f"000000000000{n + 1}-000001", envelope.frame(unique_spam()))
        worker = StageWorker(stage_cfg(), store, SpamdClient(fake.address, timeout=5.0),
                             ring.table.register(Role.STAGE, 0), 0, parent_pid=os.getppid())
        worker.run(max_messages=3)
        (row,) = [r for r in ring.table.read_rows() if r.pid == os.getpid()]
        assert (worker.done, fake.calls) == (3, 3)
        assert (row.counters[C.STAGE_LEARNED], row.counters[C.STAGE_NOT_LEARNED]) == (0, 3)
    finally:
        fake.close()
        ring.close()
        unlink_name(name)


# -- the stage inside a running trap ---------------------------------------------------


@pytest.mark.slow
@pytest.mark.spamd
def test_trap_learns_what_it_scans(tmp_path: Path, spamd_server: SpamdProcess) -> None:
    settings = {"spamd": {"address": spamd_server.unix_address},
                "stage": {"workers": 1, "verdicts": ["spam", "ham"]}}
    before = bayes_nspam(spamd_server)
    with running_trap(tmp_path, settings) as trap:
        ids = {reply_id(trap.send(unique_spam())) for _ in range(5)}
        trap.wait_records(ids)

        def learned() -> int:
            return int((trap.status() or {"totals": {}})["totals"].get("stage_learned", 0))

        wait_until(lambda: learned() >= 5, 60, "the stage to learn 5 messages", step=0.2)
        st = trap.status()
        assert st is not None
        assert st["totals"]["stage_handed_on"] == 5 and st["totals"]["stage_dropped"] == 0
        assert [p["role"] for p in st["processes"] if p["alive"]].count("stage") == 1
        assert st["stage"]["ready"] == 0
    assert bayes_nspam(spamd_server) == before + 5


@pytest.mark.slow
@pytest.mark.spamd
def test_the_managed_spamd_learns_into_its_bayes_dir(tmp_path: Path) -> None:
    # spamd as nobody (started as root) must reach the directory: not under pytest's 0700 tmp
    top = Path(tempfile.mkdtemp(prefix="rt-bayes-"))
    top.chmod(0o755)
    bayes = top / "bayes"
    settings = {"spamd": {"address": "managed", "extra_args": ["--local"],
                          "bayes_dir": str(bayes)},
                "stage": {"workers": 1, "verdicts": ["spam", "ham"]}}
    try:
        with running_trap(tmp_path, settings) as trap:
            ids = {reply_id(trap.send(unique_spam())) for _ in range(3)}
            trap.wait_records(ids, timeout=180)

            def told() -> int:
                t = (trap.status() or {"totals": {}})["totals"]
                return sum(t.get(k, 0) for k in ("stage_learned", "stage_not_learned",
                                                 "stage_errors"))

            wait_until(lambda: told() >= 3, 120, "the stage to tell 3 messages", step=0.2)
            st = trap.status()
            assert st is not None
            t = st["totals"]
            assert (t["stage_learned"], t["stage_not_learned"], t["stage_errors"]) == (3, 0, 0)
        assert (bayes / "bayes_toks").exists()
    finally:
        shutil.rmtree(top, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.spamd
def test_slow_stage_never_slows_scanning(tmp_path: Path, spamd_server: SpamdProcess) -> None:
    fake = FakeTell(delay=3.0)
    n = 30
    # every copy scanned and handed on: none recorded as a campaign repeat
    settings = {"spamd": {"address": spamd_server.unix_address},
                "dedupe": {"skip_scan": False},
                "stage": {"workers": 1, "address": fake.address, "timeout": 30}}
    try:
        with running_trap(tmp_path, settings) as trap:
            ids = {reply_id(trap.send(mb.campaign_copy(i, campaign=i))) for i in range(n)}
            # every message is scanned and recorded while the stage has done at most a few
            trap.wait_records(ids, timeout=120)
            st = trap.status()
            assert st is not None
            t = st["totals"]
            assert t["processed"] == n and t["stage_handed_on"] == n
            assert fake.calls < n // 2, "scanning waited for the slow stage"
            backlog = st["stage"]["ready"] + st["stage"]["claimed"]
            assert backlog == n - t["stage_learned"] and backlog > n // 2
            text = subprocess.run(
                [sys.executable, "-m", "ringtrap.command.cli", "status", "-c",
                 str(trap.config_path)],
                capture_output=True, text=True, check=True, timeout=30).stdout
            assert re.search(r"^stage    \S+: \d+ waiting", text, re.MULTILINE), text
            assert f"handed on {n}," in text
    finally:
        fake.close()


@pytest.mark.slow
def test_full_stage_drops_hand_offs_and_scanning_goes_on(tmp_path: Path) -> None:
    fake = FakeTell(delay=30.0)  # never finishes within the test
    settings = {"stage": {"workers": 1, "address": fake.address, "timeout": 60,
                          "max_bytes": "1M", "verdicts": ["not_scanned"]}}
    big = mb.plain("filler line of text\n" * 12000)  # about 250 KB
    try:
        with running_trap(tmp_path, settings) as trap:
            ids = {reply_id(trap.send(big)) for _ in range(16)}
            records = trap.wait_records(ids, timeout=60)
            assert {r["verdict"] for r in records} == {"not_scanned"}
            wait_until(lambda: (trap.status() or {"totals": {}})["totals"].get(
                "processed", 0) == 16, 10, "counters")
            t = trap.status()["totals"]  # type: ignore[index]
            assert t["stage_handed_on"] + t["stage_dropped"] == 16
            # 1 MiB holds four of them; the two workers spill into one directory
            # and re-read what it holds once past half the cap, so only a spill
            # racing the other's gets past it (each alone would let in four)
            assert t["stage_handed_on"] <= 6, t
    finally:
        fake.close()


def test_purge_drops_the_stage_backlog_too(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from ringtrap.command.cli import main

    stage_dir = tmp_path / "stage"
    config = tmp_path / "trap.toml"
    config.write_text(f'[overflow]\ndir = "{tmp_path / "spill"}"\n[spamd]\naddress = "off"\n'
                      f'[stage]\nworkers = 1\naddress = "unix:/nonexistent"\n'
                      f'dir = "{stage_dir}"\n[ring]\nname = "rt-stage-purge-{os.getpid()}"\n')
    Overflow(tmp_path / "spill", 1 << 24)
    store = Overflow(stage_dir, 1 << 24)
    for n in range(3):
        store.spill(f"0000000000001-00000{n}", envelope.frame(mb.plain()))
    assert main(["purge", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert "dropped 3 messages" in out and str(stage_dir) in out
    assert store.stats().ready == 0
