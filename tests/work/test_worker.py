"""Tests of the worker loop (ringtrap.worker) against a real ring, overflow and spamd.

Workers run either in this process (when the test drives them through the
sink or a stop) or in forked children started through ``child_main`` or an
equivalent boot, which are signalled and SIGKILLed like the supervisor would.
Every test counts each message at the end: recorded once, acked, nothing left.
"""

from __future__ import annotations

import dataclasses
import datetime
import errno
import logging
import os
import random
import signal
import socket
import tempfile
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mailbuild as mb
import psutil
import pytest
import ringpeek
from forking import Reaper
from spamd_fixture import SpamdProcess
from workerkit import (
    MAX_ATTEMPTS,
    SLOT_BYTES,
    SLOTS,
    STALL_MARKER,
    StallingSpamd,
    StopAfter,
    env_for,
    local_worker,
    make_cfg,
    open_overflow,
    put,
    run_until,
)

from ringtrap import config
from ringtrap.base import envelope, ids, proc
from ringtrap.base.counters import C
from ringtrap.base.states import ProcState, Role, SlotState
from ringtrap.config import Config
from ringtrap.overflow import Overflow, parse_ready
from ringtrap.ring import PutResult, Ring
from ringtrap.scan.archive import MaildirArchive
from ringtrap.scan.dedupe import DedupeStore
from ringtrap.scan.pool import ScannerPool
from ringtrap.scan.processing import Processor
from ringtrap.scan.record import Record
from ringtrap.scan.results import ResultSink, read_results
from ringtrap.scan.spamd import SpamdClient
from ringtrap.store.proctable import RowSnapshot
from ringtrap.store.segment import unlink_name
from ringtrap.worker import EXIT_OK, EXIT_SETUP, Worker, child_main, spamd_client

EXAMPLES = Path("/usr/share/doc/spamassassin/examples")


# -- fixtures and helpers ----------------------------------------------------------


def sample(name: str) -> bytes:
    """One of spamassassin's example messages; skips the test where it is not installed."""
    path = EXAMPLES / name
    if not path.is_file():
        pytest.skip(f"{path} is missing (it comes with Debian's spamassassin)")
    return path.read_bytes()


@pytest.fixture
def spam() -> bytes:
    return sample("sample-spam.txt")


@pytest.fixture
def ham() -> bytes:
    return sample("sample-nonspam.txt")


@pytest.fixture
def ring_name() -> Iterator[str]:
    name = f"rt-wtest-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    yield name
    unlink_name(name)


@pytest.fixture
def ring(ring_name: str) -> Iterator[Ring]:
    r = Ring.create(ring_name, SLOTS, SLOT_BYTES)
    yield r
    r.close()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path, for Unix sockets (107-byte limit)."""
    with tempfile.TemporaryDirectory(prefix="rt-w-") as d:
        yield Path(d)


def records(cfg: Config, strict: bool = True) -> list[dict[str, Any]]:
    return list(read_results(cfg.results.dir, strict=strict))


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def row_of(ring: Ring, pid: int) -> RowSnapshot | None:
    return next((r for r in ring.table.read_rows() if r.pid == pid), None)


def counters(row: RowSnapshot) -> dict[C, int]:
    return {c: row.counters[c] for c in C}


def assert_drained(ring: Ring, overflow: Overflow) -> None:
    assert set(ringpeek.slot_states(ring)) == {SlotState.FREE}
    stats = overflow.stats()
    assert (stats.ready, stats.claimed, stats.writing) == (0, 0, 0)


class Children(Reaper):
    """Forked children of one test, each logging to a file the test can show;
    any still running at teardown are killed."""

    def __init__(self, log_dir: Path) -> None:
        super().__init__()
        self.log_dir = log_dir

    def fork(self, fn: Callable[[], int]) -> int:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 1
            try:
                # the child's log goes to a file the test can show on failure
                root = logging.getLogger()
                for h in list(root.handlers):
                    root.removeHandler(h)
                handler = logging.FileHandler(self.log_dir / f"child-{os.getpid()}.log")
                handler.setFormatter(logging.Formatter("%(process)d %(name)s %(message)s"))
                root.addHandler(handler)
                root.setLevel(logging.INFO)
                code = fn()
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        self.pids.append(pid)
        return pid

    def log(self, pid: int) -> str:
        path = self.log_dir / f"child-{pid}.log"
        return path.read_text(errors="replace") if path.exists() else "(no log)"


@pytest.fixture
def children(tmp_path: Path) -> Iterator[Children]:
    c = Children(tmp_path)
    yield c
    c.reap_all()


def boot_worker(cfg: Config, index: int, row: int, make_processor: Callable[[], Processor],
                **options: Any) -> int:  # pragma: no cover - runs in a child
    """What child_main does, with Worker options (short backoffs) the config has not."""
    ring = Ring.attach(cfg.ring.name)
    worker = Worker(cfg, ring, open_overflow(cfg), ring.table.register(Role.WORKER, index, row=row),
                    index, make_processor(), ResultSink(cfg.results.dir), **options)
    signal.signal(signal.SIGTERM, lambda s, f: worker.stop(graceful=True))
    return worker.run()


def run_guarded(worker: Worker, timeout: float = 15.0) -> int:
    """Run ``worker`` here, expecting it to return by itself; fail rather than hang."""
    returned = threading.Event()
    timed_out = threading.Event()

    def guard() -> None:
        if not returned.wait(timeout):
            timed_out.set()
            worker.stop(graceful=False)

    guardian = threading.Thread(target=guard)
    guardian.start()
    try:
        return worker.run()
    finally:
        returned.set()
        guardian.join()
        assert not timed_out.is_set(), f"worker did not return by itself in {timeout} s"


def offline_processor() -> Processor:
    return Processor(scanner=None, scan_limit_bytes=500 * 1024)


# -- the whole path through child_main -------------------------------------------------


@pytest.mark.slow
@pytest.mark.spamd
def test_child_main_records_ring_and_overflow_messages_exactly_once(
    tmp_path: Path, ring: Ring, spamd_server: SpamdProcess, children: Children, spam: bytes,
    ham: bytes,
) -> None:
    cfg = make_cfg(tmp_path, ring.name, spamd_server.unix_address)
    # the same two samples over and over: every copy is to be scanned, not
    # recorded from the first as a campaign repeat
    cfg = dataclasses.replace(cfg, dedupe=dataclasses.replace(cfg.dedupe, skip_scan=False))
    overflow = open_overflow(cfg)
    sent: dict[str, tuple[int, bytes, str]] = {}
    for n in range(10):
        message = spam if n % 2 else ham
        where = "ring" if n < 6 else "overflow"
        sent[put(ring, overflow, message, n, where)] = (n, message, where)
    # larger than a slot: only the overflow can hold it
    big = spam + b"\n" + b"filler line of an oversized spam\n" * 1000
    assert ring.put(ids.new_id(), big) is PutResult.TOO_LARGE
    sent[put(ring, overflow, big, 10, "ring")] = (10, big, "overflow")
    assert overflow.stats().ready == 5

    pids = [children.fork(lambda i=i: child_main(cfg, i, 1 + i)) for i in range(2)]
    wait_for(lambda: len(records(cfg, strict=False)) >= len(sent), 60, "all records")
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    for pid in pids:
        assert children.wait(pid) == EXIT_OK, children.log(pid)

    got = records(cfg)
    assert Counter(r["id"] for r in got) == Counter(set(sent))  # each exactly once
    for r in got:
        n, message, _ = sent[r["id"]]
        assert r["verdict"] == ("spam" if message is not ham else "ham")
        assert r["size"] == len(message)
        assert r["envelope"] == env_for(n).to_dict()
        assert r["attempts"] == 0
    assert_drained(ring, overflow)
    assert overflow.stats().failed == 0
    rows = [row_of(ring, pid) for pid in pids]
    assert all(r is not None and r.state is ProcState.STOPPED for r in rows)
    totals = Counter[C]()
    for r in rows:
        assert r is not None
        totals.update(counters(r))
    assert totals[C.PROCESSED] == len(sent)
    assert totals[C.CLAIMED_RING] == 6 and totals[C.CLAIMED_OVERFLOW] == 5
    assert totals[C.SCANNED] == len(sent) and totals[C.SCAN_US] > 0
    assert totals[C.VERDICT_SPAM] == 6 and totals[C.VERDICT_HAM] == 5
    assert totals[C.RELEASED] == totals[C.QUARANTINED] == 0


def test_ring_is_drained_before_the_overflow(tmp_path: Path, ring: Ring, spam: bytes,
                                             ham: bytes) -> None:
    cfg = make_cfg(tmp_path, ring.name)
    overflow = open_overflow(cfg)
    older = put(ring, overflow, ham, 1, "overflow")
    newer = [put(ring, overflow, spam, n, "ring") for n in (2, 3)]
    worker = local_worker(cfg, ring, overflow, offline_processor(),
                          StopAfter(cfg.results.dir, 3))
    assert run_guarded(worker) == EXIT_OK
    assert [r["id"] for r in records(cfg)] == [*newer, older]
    assert_drained(ring, overflow)


class ReceivedSeenSink(StopAfter):
    """Notes, as each record is written, the received time the worker's row shows."""

    def __init__(self, directory: Path, n: int, ring: Ring) -> None:
        super().__init__(directory, n)
        self.ring = ring
        self.seen: list[float] = []

    def write(self, record: Record) -> None:
        row = next(r for r in self.ring.table.read_rows() if r.pid == os.getpid())
        self.seen.append(row.received)
        super().write(record)


@pytest.mark.spamd
def test_scans_and_skipped_repeats_count_as_analysed_prefiltered_mail_does_not(
        tmp_path: Path, ring: Ring, spamd_server: SpamdProcess) -> None:
    cfg = make_cfg(tmp_path, ring.name, spamd_server.unix_address)
    overflow = open_overflow(cfg)
    client = SpamdClient(spamd_server.unix_address)
    processor = Processor(scanner=client, scan_limit_bytes=2048,
                          dedupe=DedupeStore(tmp_path, 3600), skip_duplicates=True)
    first = put(ring, overflow, mb.campaign_copy(0), 0, "ring")
    repeats = [put(ring, overflow, mb.campaign_copy(n), n, "ring") for n in (1, 2, 3)]
    big = put(ring, overflow, mb.plain("padding line\n" * 400), 4, "ring")  # over the scan limit
    sent = [first, *repeats, big]
    sink = ReceivedSeenSink(cfg.results.dir, len(sent), ring)
    worker = local_worker(cfg, ring, overflow, processor, sink)
    assert run_guarded(worker) == EXIT_OK
    got = {r["id"]: r for r in records(cfg)}
    assert [got[m]["verdict"] for m in repeats] == ["duplicate"] * 3
    assert got[big]["verdict"] == "oversize"
    row = next(r for r in ring.table.read_rows() if r.pid == os.getpid())
    c = counters(row)
    assert c[C.SCANNED] == 1 and c[C.ANALYSED] == 4
    assert c[C.ANALYSED_AGE_US] > 0
    # each message's received time was in the row while it was worked on, and
    # is gone once the worker is done with it
    assert sink.seen == pytest.approx([ids.id_time(m) for m in sent], abs=0.01)
    assert row.received == 0.0


@pytest.mark.parametrize("order", ["oldest", "newest"])
def test_claim_order_across_ring_and_overflow(tmp_path: Path, ring: Ring, spam: bytes,
                                              order: str) -> None:
    """A flood's shape: one message spilled before the ring filled, the ring's
    FIFO, fresher spills, and an attempted spill newer than all.  Newest first
    takes the spills newer than the ring's oldest, newest first, then the ring
    in order, then the rest; attempted mail last either way; nothing left."""
    cfg = make_cfg(tmp_path, ring.name)
    cfg = dataclasses.replace(cfg, overflow=dataclasses.replace(cfg.overflow,
                                                                drain_order=order))
    overflow = open_overflow(cfg)
    early = put(ring, overflow, spam, 0, "overflow")
    in_ring = [put(ring, overflow, spam, n, "ring") for n in (1, 2, 3)]
    spilled = [put(ring, overflow, spam, n, "overflow") for n in (4, 5, 6)]
    attempted = ids.new_id()
    overflow.spill(attempted, envelope.frame(spam, env_for(7)), attempts=1)
    worker = local_worker(cfg, ring, overflow, offline_processor(),
                          StopAfter(cfg.results.dir, 8))
    assert run_guarded(worker) == EXIT_OK
    got = [r["id"] for r in records(cfg)]
    if order == "oldest":
        assert got == [*in_ring, early, *spilled, attempted]
    else:
        assert got == [*reversed(spilled), *in_ring, early, attempted]
    assert_drained(ring, overflow)


@pytest.mark.slow
def test_an_idle_worker_keeps_beating(tmp_path: Path, ring: Ring, children: Children) -> None:
    cfg = make_cfg(tmp_path, ring.name)
    pid = children.fork(lambda: child_main(cfg, 2, 4))

    def idle() -> bool:
        row = row_of(ring, pid)
        return row is not None and row.state is ProcState.IDLE

    wait_for(idle, 10, "the worker to be idle")
    gaps = []
    for _ in range(12):
        time.sleep(0.25)
        row = row_of(ring, pid)
        assert row is not None and row.state is ProcState.IDLE
        gaps.append(time.monotonic_ns() - row.heartbeat_ns)
    # the loop turns at least once a second while waiting for work
    assert max(gaps) < 1.3e9, gaps
    os.kill(pid, signal.SIGTERM)
    assert children.wait(pid) == EXIT_OK


# -- record before ack ------------------------------------------------------------------


class HeldCheckingSink(StopAfter):
    """Notes, as each record is written, whether its message is still claimed."""

    def __init__(self, directory: Path, n: int, ring: Ring, overflow: Overflow) -> None:
        super().__init__(directory, n)
        self.ring = ring
        self.overflow = overflow
        self.held_at_write: dict[str, bool] = {}

    def write(self, record: Record) -> None:
        me = proc.self_identity()
        in_ring = [s for s, st, owner in ringpeek.iter_held(self.ring)
                   if st is SlotState.CLAIMED and owner == me]
        in_cur = [n for n in os.listdir(self.overflow.path / "cur")
                  if n.startswith(record.id)]
        self.held_at_write[record.id] = len(in_ring) + len(in_cur) == 1
        super().write(record)


def test_record_is_written_while_the_claim_is_still_held(
    tmp_path: Path, ring: Ring
, spam: bytes) -> None:
    cfg = make_cfg(tmp_path, ring.name)
    overflow = open_overflow(cfg)
    sent = [put(ring, overflow, spam, n, "ring" if n < 2 else "overflow") for n in range(4)]
    sink = HeldCheckingSink(cfg.results.dir, 4, ring, overflow)
    worker = local_worker(cfg, ring, overflow, offline_processor(), sink)
    assert run_guarded(worker) == EXIT_OK
    assert sink.held_at_write == dict.fromkeys(sent, True)
    assert sorted(r["id"] for r in records(cfg)) == sorted(sent)
    assert_drained(ring, overflow)


class FailingSink(ResultSink):
    """A sink whose disk is full; it asks its worker to stop after the first try."""

    def __init__(self, directory: Path, error: BaseException) -> None:
        super().__init__(directory)
        self.error = error
        self.worker: Worker | None = None

    def write(self, record: Record) -> None:
        if self.worker is not None:
            self.worker.stop(graceful=False)
        raise self.error


@pytest.mark.parametrize("where", ["ring", "overflow"])
def test_unwritable_results_release_the_message_unacked(
    tmp_path: Path, ring: Ring, where: str
, spam: bytes) -> None:
    cfg = make_cfg(tmp_path, ring.name)
    overflow = open_overflow(cfg)
    msgid = put(ring, overflow, spam, 1, where)
    sink = FailingSink(cfg.results.dir, OSError(errno.ENOSPC, "No space left on device"))
    worker = local_worker(cfg, ring, overflow, offline_processor(), sink)
    sink.worker = worker
    assert run_guarded(worker) == EXIT_OK
    assert records(cfg) == []
    row = row_of(ring, os.getpid())
    assert row is not None
    assert counters(row)[C.RELEASED] == 1 and counters(row)[C.PROCESSED] == 0
    # given back, not acked, and with its attempts unchanged
    if where == "ring":
        assert ringpeek.slot_states(ring).count(SlotState.READY) == 1
    else:
        assert [parse_ready(n) for n in os.listdir(overflow.path / "new")] == [
            (msgid, len(envelope.frame(spam, env_for(1))), 0)
        ]
    # once the results can be written, it is recorded exactly once
    good = StopAfter(cfg.results.dir, 1)
    assert run_guarded(local_worker(cfg, ring, overflow, offline_processor(), good)) == EXIT_OK
    assert [(r["id"], r["attempts"]) for r in records(cfg)] == [(msgid, 0)]
    assert_drained(ring, overflow)


def test_a_crash_while_recording_leaves_the_claim_held(tmp_path: Path, ring: Ring,
                                                       ham: bytes) -> None:
    cfg = make_cfg(tmp_path, ring.name)
    overflow = open_overflow(cfg)
    msgid = put(ring, overflow, ham, 1, "ring")
    worker = local_worker(cfg, ring, overflow, offline_processor(),
                          FailingSink(cfg.results.dir, RuntimeError("bug in a sink")))
    with pytest.raises(RuntimeError):
        run_guarded(worker)
    # what the supervisor finds after such a death: the claim, held by us
    held = ringpeek.iter_held(ring)
    assert [(st, owner) for _, st, owner in held] == [(SlotState.CLAIMED, proc.self_identity())]
    assert ring.recover(proc.self_identity()).requeued == 1
    claim = ring.claim(0.0)
    assert claim is not None and claim.msgid == msgid and claim.attempts == 1


# -- quarantine -------------------------------------------------------------------------


def test_messages_at_the_attempt_limit_are_quarantined_not_processed(
    tmp_path: Path, ring: Ring
, spam: bytes, ham: bytes) -> None:
    cfg = make_cfg(tmp_path, ring.name)
    overflow = open_overflow(cfg)
    dead = proc.Identity(4_000_000, 1)  # an owner that cannot be alive
    doomed_ring = put(ring, overflow, spam, 1, "ring")
    payload = envelope.frame(spam, env_for(1))
    for _ in range(MAX_ATTEMPTS):  # a worker died holding it, MAX_ATTEMPTS times
        held = ring.claim(0.0, owner=dead)
        assert held is not None and held.msgid == doomed_ring
        assert ring.recover(dead).requeued == 1
    last_chance = ids.new_id()  # one attempt short of the limit: still processed
    overflow.spill(last_chance, envelope.frame(ham, env_for(2)), attempts=MAX_ATTEMPTS - 1)
    doomed_overflow = ids.new_id()
    overflow.spill(doomed_overflow, envelope.frame(ham, env_for(3)), attempts=MAX_ATTEMPTS)

    worker = local_worker(cfg, ring, overflow, offline_processor(),
                          ResultSink(cfg.results.dir))
    run_until(worker, lambda: overflow.stats().failed == 2 and len(records(cfg, False)) == 3)

    got = {r["id"]: r for r in records(cfg)}
    assert len(got) == 3
    assert (got[last_chance]["verdict"], got[last_chance]["attempts"]) == (
        "not_scanned", MAX_ATTEMPTS - 1)
    assert got[last_chance]["quarantine"] is None
    for msgid, where, n, message in ((doomed_ring, "ring", 1, spam),
                                     (doomed_overflow, "overflow", 3, ham)):
        rec = got[msgid]
        stored = len(envelope.frame(message, env_for(n)))
        assert (rec["verdict"], rec["attempts"], rec["size"]) == (
            "quarantined", MAX_ATTEMPTS, len(message))
        assert rec["reason"] == (f"attempts {MAX_ATTEMPTS} reached the limit {MAX_ATTEMPTS}"
                                 " (a worker died holding it each time)")
        assert rec["envelope"] == env_for(n).to_dict()
        assert rec["quarantine"] == {
            "store": where, "kept": True,
            "path": str(overflow.path / "failed" / f"{msgid},S={stored},A={MAX_ATTEMPTS}")}
        assert rec["score"] is None and rec["scanned_ms"] is None
    failed = {parse_ready(n) for n in os.listdir(overflow.path / "failed")
              if not n.endswith(".reason")}
    assert failed == {
        (doomed_ring, len(payload), MAX_ATTEMPTS),
        (doomed_overflow, len(envelope.frame(ham, env_for(3))), MAX_ATTEMPTS),
    }
    # the ring message is kept whole, envelope line included
    name = f"{doomed_ring},S={len(payload)},A={MAX_ATTEMPTS}"
    assert (overflow.path / "failed" / name).read_bytes() == payload
    assert (overflow.path / "failed" / (name + ".reason")).exists()
    assert_drained(ring, overflow)
    row = row_of(ring, os.getpid())
    assert row is not None
    assert counters(row)[C.QUARANTINED] == 2 and counters(row)[C.PROCESSED] == 1


# -- spamd outage --------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.spamd
def test_spamd_down_releases_without_counting_attempts_then_resumes(
    tmp_path: Path, ring: Ring, spamd_server: SpamdProcess, children: Children,
    short_dir: Path, spam: bytes,
) -> None:
    sock = short_dir / "spamd.sock"  # nothing listens here yet
    cfg = make_cfg(tmp_path, ring.name, f"unix:{sock}")
    overflow = open_overflow(cfg)
    msgid = put(ring, overflow, spam, 1, "ring")
    pid = children.fork(lambda: boot_worker(
        cfg, 0, 1, lambda: Processor(scanner=spamd_client(cfg), scan_limit_bytes=1 << 20),
        backoff_initial=0.05, backoff_max=0.2,
    ))
    seen_backoff: list[bool] = []

    def failed_often() -> bool:
        row = row_of(ring, pid)
        if row is None:
            return False
        if row.state is ProcState.BACKOFF:
            seen_backoff.append(True)
        return bool(seen_backoff) and counters(row)[C.SPAMD_ERRORS] > MAX_ATTEMPTS + 1

    wait_for(failed_often, 20, "repeated spamd failures")
    # released every time, never quarantined, nothing recorded
    assert records(cfg) == []
    assert overflow.stats().failed == 0
    row = row_of(ring, pid)
    assert row is not None and counters(row)[C.QUARANTINED] == 0
    assert counters(row)[C.RELEASED] >= MAX_ATTEMPTS + 1
    assert ringpeek.slot_states(ring).count(SlotState.FREE) == SLOTS - 1  # still held back

    os.symlink(spamd_server.socket_path, sock)  # spamd comes up at that address
    wait_for(lambda: len(records(cfg, strict=False)) == 1, 20, "the record")
    os.kill(pid, signal.SIGTERM)
    assert children.wait(pid) == EXIT_OK, children.log(pid)
    [record] = records(cfg)
    assert (record["id"], record["verdict"], record["attempts"]) == (msgid, "spam", 0)
    assert_drained(ring, overflow)


@pytest.mark.spamd
def test_scanned_at_shows_how_long_a_message_waited_in_the_overflow(
    tmp_path: Path, ring: Ring, spamd_server: SpamdProcess, short_dir: Path, spam: bytes,
) -> None:
    sock = short_dir / "spamd.sock"  # nothing listens here yet: spamd is down
    cfg = make_cfg(tmp_path, ring.name, f"unix:{sock}")
    overflow = open_overflow(cfg)
    spilled = time.time()
    msgid = put(ring, overflow, spam, 1, "overflow")
    down = 2.0
    comes_up = threading.Timer(down, os.symlink, (spamd_server.socket_path, sock))
    comes_up.start()
    try:
        worker = local_worker(cfg, ring, overflow,
                              Processor(scanner=spamd_client(cfg), scan_limit_bytes=1 << 20),
                              ResultSink(cfg.results.dir), backoff_initial=0.05,
                              backoff_max=0.2)
        run_until(worker, lambda: len(records(cfg, strict=False)) == 1, timeout=30)
    finally:
        comes_up.cancel()
    [record] = records(cfg)
    assert (record["id"], record["verdict"]) == (msgid, "spam")
    received = datetime.datetime.fromisoformat(record["received"]).timestamp()
    scanned_at = datetime.datetime.fromisoformat(record["scanned_at"])
    assert scanned_at.tzinfo == datetime.UTC
    assert abs(received - spilled) < 1.0
    # the record says the scan came after spamd's outage, not when the mail arrived
    assert scanned_at.timestamp() - received >= down - 0.1
    assert record["scanned_at"].endswith("+00:00") and len(record["scanned_at"]) == len(
        record["received"])


@pytest.mark.slow
@pytest.mark.spamd
@pytest.mark.parametrize("where", ["ring", "overflow"])
def test_a_message_that_times_out_spamd_alone_is_quarantined(
    tmp_path: Path, ring: Ring, spamd_server: SpamdProcess, short_dir: Path, where: str,
    spam: bytes, ham: bytes,
) -> None:
    stall = StallingSpamd(short_dir / "stall.sock", spamd_server.socket_path)
    try:
        cfg = make_cfg(tmp_path, ring.name, f"unix:{stall.path}")
        overflow = open_overflow(cfg)
        normal = [put(ring, overflow, spam if n % 2 else ham, n, where) for n in range(4)]
        slow = STALL_MARKER + b"\n" + spam
        doomed = put(ring, overflow, slow, 9, where)
        normal += [put(ring, overflow, ham, n, where) for n in range(10, 13)]
        client = SpamdClient(f"unix:{stall.path}", connect_timeout=5.0, timeout=1.0)
        worker = local_worker(cfg, ring, overflow,
                              Processor(scanner=client, scan_limit_bytes=1 << 20),
                              ResultSink(cfg.results.dir), backoff_initial=0.05,
                              backoff_max=0.2)
        run_until(worker, lambda: overflow.stats().failed == 1
                  and len(records(cfg, False)) == len(normal) + 1, timeout=60)
    finally:
        stall.close()
    got = records(cfg)
    scanned = [r for r in got if r["verdict"] != "quarantined"]
    assert sorted(r["id"] for r in scanned) == sorted(normal)
    assert {r["verdict"] for r in scanned} == {"spam", "ham"}
    [held] = [r for r in got if r["verdict"] == "quarantined"]
    assert (held["id"], held["attempts"]) == (doomed, MAX_ATTEMPTS)
    assert "timed out" in held["reason"]
    # one timeout per attempt, up to the limit: spamd answered PING each time
    assert stall.stalled == MAX_ATTEMPTS
    [name] = [n for n in os.listdir(overflow.path / "failed") if not n.endswith(".reason")]
    quarantined = parse_ready(name)
    assert quarantined is not None and quarantined[0] == doomed
    assert quarantined[2] == MAX_ATTEMPTS
    assert_drained(ring, overflow)
    row = row_of(ring, os.getpid())
    assert row is not None
    assert counters(row)[C.QUARANTINED] == 1
    assert counters(row)[C.SPAMD_ERRORS] == MAX_ATTEMPTS


@pytest.mark.slow
@pytest.mark.spamd
@pytest.mark.parametrize("hosts", ["one stalls", "both stall"])
def test_a_pool_fails_a_slow_message_over_and_counts_an_attempt_only_when_all_time_out(
    tmp_path: Path, ring: Ring, spamd_server: SpamdProcess, short_dir: Path, hosts: str,
    spam: bytes, ham: bytes,
) -> None:
    stall = StallingSpamd(short_dir / "stall.sock", spamd_server.socket_path)
    other = (StallingSpamd(short_dir / "stall2.sock", spamd_server.socket_path)
             if hosts == "both stall" else None)
    try:
        second = f"unix:{other.path}" if other else spamd_server.unix_address
        cfg = make_cfg(tmp_path, ring.name, "off")
        overflow = open_overflow(cfg)
        # first in the ring, and first on the stalling host (a seed whose start is 0)
        doomed = put(ring, overflow, STALL_MARKER + b"\n" + spam, 9, "ring")
        normal = [put(ring, overflow, spam if n % 2 else ham, n, "ring") for n in range(4)]
        seed = next(n for n in range(100) if random.Random(n).randrange(2) == 0)
        pool = ScannerPool([SpamdClient(a, connect_timeout=5.0, timeout=1.0)
                            for a in (f"unix:{stall.path}", second)],
                           breaker_errors=100, breaker_window=60.0, breaker_revive=60.0,
                           rand=random.Random(seed))
        worker = local_worker(cfg, ring, overflow,
                              Processor(scanner=pool, scan_limit_bytes=1 << 20),
                              ResultSink(cfg.results.dir), backoff_initial=0.05,
                              backoff_max=0.2)
        want = len(normal) + 1
        run_until(worker, lambda: len(records(cfg, False)) == want
                  and (other is None or overflow.stats().failed == 1), timeout=60)
    finally:
        stall.close()
        if other is not None:
            other.close()
    got = {r["id"]: r for r in records(cfg)}
    assert {got[m]["verdict"] for m in normal} <= {"spam", "ham"}
    if other is None:
        # timed out on the stalling host, answered by the other: scanned, no attempt spent
        assert (got[doomed]["verdict"], got[doomed]["attempts"]) == ("spam", 0)
        assert got[doomed]["scanner_host"] == spamd_server.unix_address
        assert stall.stalled >= 1
    else:
        # timed out on every host while each answered PING: an attempt per round
        assert (got[doomed]["verdict"], got[doomed]["attempts"]) == ("quarantined",
                                                                    MAX_ATTEMPTS)
        assert stall.stalled == other.stalled == MAX_ATTEMPTS


# -- a worker killed mid-scan ----------------------------------------------------------------


@pytest.fixture
def stalled_spamd(short_dir: Path) -> Iterator[str]:
    """An address where connections are accepted by the kernel and never answered."""
    path = short_dir / "stall.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(path))
        s.listen(16)
        yield f"unix:{path}"


@pytest.mark.slow
@pytest.mark.spamd
@pytest.mark.parametrize("where", ["ring", "overflow"])
def test_sigkill_mid_scan_then_another_worker_processes_it(
    tmp_path: Path, ring: Ring, spamd_server: SpamdProcess, children: Children,
    stalled_spamd: str, where: str, spam: bytes,
) -> None:
    cfg = make_cfg(tmp_path, ring.name, spamd_server.unix_address)
    overflow = open_overflow(cfg)
    msgid = put(ring, overflow, spam, 1, where)
    pid = children.fork(lambda: child_main(cfg, 0, 1, spamd_address=stalled_spamd))

    def scanning() -> bool:
        row = row_of(ring, pid)
        return row is not None and row.state is ProcState.SCANNING and row.msgid == msgid

    wait_for(scanning, 20, "the worker to be scanning")
    os.kill(pid, signal.SIGKILL)
    assert children.wait(pid) == -signal.SIGKILL
    assert records(cfg) == []
    # what the supervisor does for a dead worker
    assert ring.recover_dead().requeued + overflow.recover_dead() == 1

    client = SpamdClient(spamd_server.unix_address, connect_timeout=5.0, timeout=60.0)
    worker = local_worker(cfg, ring, overflow,
                          Processor(scanner=client, scan_limit_bytes=1 << 20),
                          StopAfter(cfg.results.dir, 1))
    assert run_guarded(worker) == EXIT_OK
    [record] = records(cfg)
    assert (record["id"], record["verdict"], record["attempts"]) == (msgid, "spam", 1)
    assert_drained(ring, overflow)


# -- memory ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("outcome", "verdicts", "archived", "errors"), [
    ("stored", ["not_scanned"], 1, 0),
    ("skipped", ["spam"], 0, 0),
    ("failed", ["not_scanned"], 0, 1),
])
def test_archive_outcomes_are_counted(tmp_path: Path, ring: Ring, spam: bytes, outcome: str,
                                      verdicts: list[str], archived: int, errors: int) -> None:
    cfg = make_cfg(tmp_path, ring.name)
    overflow = open_overflow(cfg)
    msgid = put(ring, overflow, spam, 1, "ring")
    where = tmp_path / "archive"
    if outcome == "failed":
        where.write_text("a file where the archive's directory should be")
    processor = Processor(scanner=None, scan_limit_bytes=500 * 1024,
                          archive=MaildirArchive(where, verdicts, 0))
    worker = local_worker(cfg, ring, overflow, processor, StopAfter(cfg.results.dir, 1))
    assert run_guarded(worker) == EXIT_OK
    [record] = records(cfg)
    assert record["id"] == msgid and record["verdict"] == "not_scanned"
    # the record's archived value: the copy's path, null when skipped, false when it failed
    value = {"stored": lambda v: isinstance(v, str) and (where / v).is_file(),
             "skipped": lambda v: v is None, "failed": lambda v: v is False}[outcome]
    assert value(record["archived"]), record["archived"]
    row = row_of(ring, os.getpid())
    assert row is not None
    assert (counters(row)[C.ARCHIVED], counters(row)[C.ARCHIVE_ERRORS]) == (archived, errors)
    assert counters(row)[C.PROCESSED] == 1


def test_recycles_after_the_current_message_when_over_the_memory_limit(
    tmp_path: Path, ring: Ring
, spam: bytes, ham: bytes) -> None:
    cfg = make_cfg(tmp_path, ring.name, max_rss_bytes="32M")  # the smallest valid limit
    assert psutil.Process().memory_info().rss > cfg.workers.max_rss_bytes
    overflow = open_overflow(cfg)
    first = put(ring, overflow, spam, 1, "ring")
    put(ring, overflow, ham, 2, "ring")
    worker = local_worker(cfg, ring, overflow, offline_processor(), ResultSink(cfg.results.dir))
    assert run_guarded(worker) == EXIT_OK  # returned by itself: nobody asked it to stop
    assert [r["id"] for r in records(cfg)] == [first]
    states = ringpeek.slot_states(ring)
    assert states.count(SlotState.READY) == 1  # the second waits for the replacement
    assert states.count(SlotState.CLAIMED) == 0  # the first was acked
    row = row_of(ring, os.getpid())
    assert row is not None
    assert counters(row)[C.RECYCLED] == 1 and counters(row)[C.PROCESSED] == 1


def test_no_memory_limit_means_no_recycling(tmp_path: Path, ring: Ring, spam: bytes) -> None:
    cfg = make_cfg(tmp_path, ring.name)  # max_rss_bytes 0: unlimited
    overflow = open_overflow(cfg)
    for n in range(3):
        put(ring, overflow, spam, n, "ring")
    worker = local_worker(cfg, ring, overflow, offline_processor(),
                          StopAfter(cfg.results.dir, 3))
    assert run_guarded(worker) == EXIT_OK
    assert len(records(cfg)) == 3
    row = row_of(ring, os.getpid())
    assert row is not None and counters(row)[C.RECYCLED] == 0


# -- stopping and starting -------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGQUIT])
def test_stop_signals_end_an_idle_worker_promptly(
    tmp_path: Path, ring: Ring, children: Children, sig: signal.Signals
) -> None:
    cfg = make_cfg(tmp_path, ring.name)
    pid = children.fork(lambda: child_main(cfg, 3, 5))

    def idle() -> bool:
        row = row_of(ring, pid)
        return row is not None and row.state is ProcState.IDLE

    wait_for(idle, 10, "the worker to be idle")
    sent = time.monotonic()
    os.kill(pid, sig)
    assert children.wait(pid) == EXIT_OK, children.log(pid)
    assert time.monotonic() - sent < 2.0  # a turn never waits more than about a second
    row = row_of(ring, pid)
    assert row is not None and row.state is ProcState.STOPPED and row.index == 3


@pytest.mark.slow
def test_worker_exits_when_its_parent_is_gone(
    tmp_path: Path, ring: Ring, children: Children
) -> None:
    cfg = make_cfg(tmp_path, ring.name)

    def parent() -> int:  # pragma: no cover - runs in the child
        if os.fork() == 0:
            os._exit(child_main(cfg, 7, 9))
        time.sleep(0.5)  # let the worker register, then die without a word
        return 0

    middle = children.fork(parent)
    wait_for(lambda: any(r.index == 7 and r.pid != middle for r in ring.table.read_rows()), 10,
             "the worker's row")
    [row] = [r for r in ring.table.read_rows() if r.index == 7]
    assert children.wait(middle) == 0
    wait_for(lambda: not proc.is_alive((row.pid, row.start)), 5, "the orphan to exit")
    after = row_of(ring, row.pid)
    assert after is not None and after.state is ProcState.STOPPED


@pytest.mark.parametrize(
    "change", ["missing ring", "managed spamd without an address"],
)
def test_child_main_setup_failures_exit_with_ex_config(
    tmp_path: Path, ring: Ring, children: Children, change: str
) -> None:
    cfg = make_cfg(tmp_path, ring.name)
    if change == "missing ring":
        cfg = make_cfg(tmp_path, ring.name + "-absent")
    else:
        cfg = config.override(cfg, {"spamd.address": "managed", "spamd.command": "/bin/true"})
    pid = children.fork(lambda: child_main(cfg, 0, 1))
    assert children.wait(pid) == EXIT_SETUP


def test_spamd_client_follows_the_config_and_the_override(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, "x")
    assert spamd_client(cfg) is None
    assert spamd_client(cfg, "unix:/run/x/spamd.sock") is not None
    tcp = make_cfg(tmp_path, "x", "tcp:127.0.0.1:783")
    client = spamd_client(tcp)
    assert isinstance(client, ScannerPool) and client.hosts == ("tcp:127.0.0.1:783",)
    assert spamd_client(tcp, "off") is None
    pool = spamd_client(config.override(tcp, {"spamd.address": ["tcp:127.0.0.1:783",
                                                               "tls:127.0.0.1:784"]}))
    assert isinstance(pool, ScannerPool)
    assert pool.hosts == ("tcp:127.0.0.1:783", "tls:127.0.0.1:784")
    assert pool.breakers[0].errors == tcp.scanner.breaker_errors
    managed = config.override(cfg, {"spamd.address": "managed", "spamd.command": "/bin/true"})
    with pytest.raises(ValueError):
        spamd_client(managed)
