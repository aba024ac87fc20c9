"""Multi-process tests of the overflow store: racing claimers, SIGKILLed holders."""

from __future__ import annotations

import os
import select
import shutil
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from forking import Children, body, read_line, report

from ringtrap.base import ids, proc
from ringtrap.overflow import Overflow, parse_ready

pytestmark = pytest.mark.slow

CAP = 256 << 20


@pytest.fixture
def shm_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ringtrap-test-", dir="/dev/shm"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def children() -> Iterator[Children]:
    c = Children()
    yield c
    c.reap_all()


def spill_many(store: Overflow, n: int, size: int) -> list[str]:
    msgids = [ids.new_id() for _ in range(n)]
    for m in msgids:
        store.spill(m, body(m, size))
    return msgids


def test_racing_claimers_take_each_file_exactly_once(shm_dir: Path, children: Children) -> None:
    path = shm_dir / "ovf"
    store = Overflow(path, CAP)
    msgids = spill_many(store, 2000, 64)
    gate_r, gate_w = os.pipe()

    def claimer(w: int, out: Path) -> None:  # pragma: no cover - runs in the child
        os.close(gate_w)
        os.read(gate_r, 1)  # EOF once the parent opens the gate: all start together
        s = Overflow(path, CAP)
        me = proc.self_identity()
        got = []
        while (c := s.claim(me)) is not None:
            assert c.read() == body(c.msgid, 64)
            got.append(c.msgid)
            s.ack(c)
        out.write_text("\n".join(got))
        report(w, str(len(got)))

    outs = [shm_dir / f"claimed-{i}" for i in range(4)]
    kids = [children.fork(lambda w, out=out: claimer(w, out)) for out in outs]
    os.close(gate_r)
    os.close(gate_w)
    counts = [int(read_line(r)) for _, r in kids]
    assert [children.wait(pid) for pid, _ in kids] == [0, 0, 0, 0]
    claimed = [m for out in outs for m in out.read_text().split()]
    assert len(claimed) == len(msgids) == sum(counts)
    assert set(claimed) == set(msgids)
    assert sum(1 for n in counts if n) >= 2, "the claimers did not actually race"
    assert store.stats()[:4] == (0, 0, 0, 0)


def test_sigkilled_holder_is_recovered_and_live_holder_kept(
    shm_dir: Path, children: Children
) -> None:
    path = shm_dir / "ovf"
    store = Overflow(path, CAP)
    msgids = spill_many(store, 50, 1000)

    def holder(w: int, n: int) -> None:  # pragma: no cover - runs in the child
        s = Overflow(path, CAP)
        held = [s.claim(proc.self_identity()) for _ in range(n)]
        report(w, " ".join(c.msgid for c in held if c is not None))
        signal.pause()

    doomed, r1 = children.fork(lambda w: holder(w, 3))
    doomed_held = read_line(r1).split()
    survivor, r2 = children.fork(lambda w: holder(w, 2))
    survivor_held = read_line(r2).split()
    assert len(doomed_held) == 3 and len(survivor_held) == 2
    assert store.stats().claimed == 5

    children.kill(doomed)
    assert store.recover_dead() == 3
    assert store.stats().claimed == 2  # the live holder's claims stay put

    me = proc.self_identity()
    drained: dict[str, int] = {}
    while (c := store.claim(me)) is not None:
        assert c.read() == body(c.msgid, 1000)
        drained[c.msgid] = c.attempts
        store.ack(c)
    assert {m for m, a in drained.items() if a == 1} == set(doomed_held)

    children.kill(survivor)
    assert store.recover_dead() == 2
    while (c := store.claim(me)) is not None:
        assert c.attempts == 1
        drained[c.msgid] = c.attempts
        store.ack(c)
    assert sorted(drained) == msgids
    assert store.stats()[:4] == (0, 0, 0, 0)


def test_sigkilled_writer_leaves_nothing_visible(shm_dir: Path, children: Children) -> None:
    path = shm_dir / "ovf"
    store = Overflow(path, CAP)

    def writer(w: int) -> None:  # pragma: no cover - runs in the child
        s = Overflow(path, CAP)
        sw = s.spill_stream(ids.new_id())
        sw.write(b"x" * 100_000)
        report(w, "half")
        signal.pause()

    pid, r = children.fork(writer)
    assert read_line(r) == "half"
    assert store.stats().writing == 1
    children.kill(pid)
    assert store.ready_count() == 0
    assert store.claim(proc.self_identity()) is None
    assert store.recover_dead() == 0
    assert store.stats().writing == 0
    assert os.listdir(path / "tmp") == []


def test_readers_never_see_a_partial_file(shm_dir: Path, children: Children) -> None:
    path = shm_dir / "ovf"
    store = Overflow(path, CAP)
    sizes = [(i * 7919) % (256 << 10) for i in range(150)]

    def writer(w: int) -> None:  # pragma: no cover - runs in the child
        s = Overflow(path, CAP)
        for size in sizes:
            m = ids.new_id()
            data = body(m, size)
            with s.spill_stream(m) as sw:
                for off in range(0, size, 4096):
                    sw.write(data[off : off + 4096])
                sw.commit()
        report(w, "done")

    pid, r = children.fork(writer)
    me = proc.self_identity()
    seen: list[int] = []
    done = False
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if not done and select.select([r], [], [], 0)[0]:
            done = read_line(r) == "done"
        for name in os.listdir(path / "new"):
            parsed = parse_ready(name)
            assert parsed is not None
            # Only this process claims, so nothing leaves new/ under our feet.
            assert os.stat(path / "new" / name).st_size == parsed[1]
        c = store.claim(me)
        if c is not None:
            assert c.read() == body(c.msgid, c.size)
            seen.append(c.size)
            store.ack(c)
        elif done:
            break
    assert children.wait(pid) == 0
    assert sorted(seen) == sorted(sizes)


def test_claimers_killed_mid_run_lose_nothing(shm_dir: Path, children: Children) -> None:
    path = shm_dir / "ovf"
    store = Overflow(path, CAP)
    msgids = spill_many(store, 2000, 200)
    log_path = shm_dir / "processed"

    def worker(w: int) -> None:  # pragma: no cover - runs in the child
        s = Overflow(path, CAP)
        me = proc.self_identity()
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        report(w, "up")
        while (c := s.claim(me)) is not None:
            assert c.read() == body(c.msgid, 200)
            time.sleep(0.0005)  # the work
            os.write(fd, f"{c.msgid} {c.attempts}\n".encode())  # recorded before the ack
            s.ack(c)

    kids = [children.fork(worker) for _ in range(3)]
    for _, r in kids:
        assert read_line(r) == "up"
    deadline = time.monotonic() + 20
    while store.ready_count() > 1500:
        assert time.monotonic() < deadline, "workers made no progress"
        time.sleep(0.005)
    for pid, _ in kids[:2]:
        children.kill(pid)
    recovered = store.recover_dead()
    assert recovered <= 2  # each worker holds at most one claim at a time
    assert children.wait(kids[2][0]) == 0

    me = proc.self_identity()
    with open(log_path, "a") as log:
        while (c := store.claim(me)) is not None:
            log.write(f"{c.msgid} {c.attempts}\n")
            store.ack(c)
    records = [line.split() for line in log_path.read_text().splitlines()]
    retried = {m for m, attempts in records if attempts != "0"}
    assert len(retried) == recovered
    processed = Counter(m for m, _ in records)
    assert set(processed) == set(msgids), "a message was lost"
    # Processed twice only if its worker died between recording and acking.
    assert {m for m, n in processed.items() if n > 1} <= retried
    assert store.stats()[:4] == (0, 0, 0, 0)
