"""Unit, recovery and model-based tests of the overflow store (ringtrap.overflow)."""

from __future__ import annotations

import logging
import os
import pwd
import re
import shutil
import signal
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from forking import Children, body, read_line, report
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from ringtrap import overflow
from ringtrap.base import ids, proc
from ringtrap.base.proc import Identity
from ringtrap.overflow import (
    Overflow,
    OverflowClaimLost,
    OverflowFull,
    OverflowStats,
    OverflowStoreError,
    PurgeResult,
    Quarantined,
    UntrustedFile,
    open_trusted,
)
from ringtrap.store import spillcount

SHM = Path("/dev/shm")
NEW_NAME = re.compile(r"^[0-9a-f]{13}-[0-9a-f]{6},S=(\d+),A=(\d+)$")


# -- helpers -----------------------------------------------------------------


def msgid_at(seconds: float, pid: int = 1) -> str:
    """A valid message id whose arrival time is ``seconds`` since the epoch."""
    return f"{round(seconds * 1e6):013x}-{pid:06x}"


def names(store: Overflow, sub: str) -> list[str]:
    return sorted(os.listdir(store.path / sub))


class Clock:
    """A monotonic clock the test advances by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def shm_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ringtrap-test-", dir=SHM))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def store(shm_dir: Path) -> Overflow:
    return Overflow(shm_dir / "ovf", 1 << 20)


@pytest.fixture
def children() -> Iterator[Children]:
    c = Children()
    yield c
    c.reap_all()


@pytest.fixture
def me() -> Identity:
    return proc.self_identity()


# -- tree, filesystem --------------------------------------------------------


def test_init_creates_tree_with_mode(shm_dir: Path) -> None:
    s = Overflow(shm_dir / "a", 1000)
    for sub in ("", "tmp", "new", "cur", "failed"):
        assert stat.S_IMODE(os.stat(shm_dir / "a" / sub).st_mode) == 0o700
    old_umask = os.umask(0o077)  # a daemon's umask must not undo the mode asked for
    try:
        s2 = Overflow(shm_dir / "b", 1000, mode=0o750)
        name = s2.spill(ids.new_id(), b"x")
        with s2.spill_stream(ids.new_id()) as w:
            w.write(b"y")
            name2 = w.commit()
    finally:
        os.umask(old_umask)
    for sub in ("", "tmp", "new", "cur", "failed"):
        assert stat.S_IMODE(os.stat(shm_dir / "b" / sub).st_mode) == 0o750
    for n in (name, name2):
        assert stat.S_IMODE(os.stat(shm_dir / "b" / "new" / n).st_mode) == 0o640
    name = s.spill(ids.new_id(), b"x")
    assert stat.S_IMODE(os.stat(shm_dir / "a" / "new" / name).st_mode) == 0o600


def test_create_false_needs_existing_tree(shm_dir: Path) -> None:
    with pytest.raises(FileNotFoundError):
        Overflow(shm_dir / "missing", 1000, create=False)
    assert not (shm_dir / "missing").exists()
    Overflow(shm_dir / "there", 1000)
    Overflow(shm_dir / "there", 1000, create=False)


def test_rejects_non_positive_cap(shm_dir: Path) -> None:
    with pytest.raises(ValueError):
        Overflow(shm_dir / "x", 0)


def test_tmpfs_is_detected_without_warning(shm_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="ringtrap.overflow")
    s = Overflow(shm_dir / "ovf", 1000)
    assert s.is_tmpfs
    assert overflow.fs_type(shm_dir) == "tmpfs"
    assert not [r for r in caplog.records if r.name == "ringtrap.overflow"]


def test_warns_when_not_on_tmpfs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fstype = overflow.fs_type(tmp_path)
    assert fstype != "tmpfs", "tmp_path is expected on the real disk"
    caplog.set_level(logging.WARNING, logger="ringtrap.overflow")
    s = Overflow(tmp_path / "ovf", 1000)
    assert not s.is_tmpfs
    warnings = [
        r for r in caplog.records if r.name == "ringtrap.overflow" and r.levelno == logging.WARNING
    ]
    assert len(warnings) == 1
    assert fstype in warnings[0].args
    # It still works, only slower.
    s.spill(ids.new_id(), b"abc")
    assert s.ready_count() == 1


# -- spill -------------------------------------------------------------------


def test_spill_name_content_and_stats(store: Overflow) -> None:
    msgid = ids.new_id()
    name = store.spill(msgid, b"hello world")
    assert name == f"{msgid},S=11,A=0"
    assert NEW_NAME.match(name)
    assert (store.path / "new" / name).read_bytes() == b"hello world"
    assert names(store, "tmp") == []
    s = store.stats()
    assert (s.ready, s.ready_bytes, s.writing) == (1, 11, 0)


def test_spill_refuses_bad_id_and_attempts(store: Overflow) -> None:
    for bad in ("", "../etc", "0640c3f1a2b3c-0004d2,S=1", "x" * 20):
        with pytest.raises(ValueError):
            store.spill(bad, b"x")
    with pytest.raises(ValueError):
        store.spill(ids.new_id(), b"x", attempts=-1)
    with pytest.raises(ValueError):
        store.spill_stream("nope")
    assert names(store, "new") == names(store, "tmp") == []


def test_spill_carries_attempts(store: Overflow, me: Identity) -> None:
    msgid = ids.new_id()
    assert store.spill(msgid, b"abc", attempts=2).endswith(",A=2")
    c = store.claim(me)
    assert c is not None and c.attempts == 2


def test_spill_refused_at_cap(shm_dir: Path) -> None:
    s = Overflow(shm_dir / "ovf", 1000)
    s.spill(ids.new_id(), b"a" * 600)
    with pytest.raises(OverflowFull) as e:
        s.spill(ids.new_id(), b"b" * 401)
    assert isinstance(e.value, OverflowStoreError)
    assert "1000" in str(e.value) and "600" in str(e.value)
    assert (e.value.cap, e.value.used, e.value.requested) == (1000, 600, 401)
    assert names(s, "tmp") == [] and len(names(s, "new")) == 1
    s.spill(ids.new_id(), b"c" * 400)  # exactly the cap is allowed
    with pytest.raises(OverflowFull):
        s.spill(ids.new_id(), b"d")
    assert s.stats().total_bytes == 1000


def test_spill_stream_commit(store: Overflow, me: Identity) -> None:
    msgid = ids.new_id()
    with store.spill_stream(msgid, attempts=1) as w:
        w.write(b"abc")
        w.write(b"")
        w.write(b"defg")
        # Not visible while being written: a reader never sees a partial file.
        assert names(store, "new") == []
        assert store.claim(me) is None
        st_ = store.stats()
        assert (st_.ready, st_.writing, st_.writing_bytes) == (0, 1, 7)
        name = w.commit()
    assert name == f"{msgid},S=7,A=1"
    assert names(store, "tmp") == []
    c = store.claim(me)
    assert c is not None and c.read() == b"abcdefg" and c.attempts == 1
    with pytest.raises(ValueError):
        w.write(b"x")
    with pytest.raises(ValueError):
        w.commit()


def test_spill_stream_left_without_commit_aborts(store: Overflow) -> None:
    with store.spill_stream(ids.new_id()) as w:
        w.write(b"abc")
    assert w.closed
    assert names(store, "tmp") == names(store, "new") == []
    with pytest.raises(RuntimeError), store.spill_stream(ids.new_id()) as w2:
        w2.write(b"abc")
        raise RuntimeError("client went away")
    assert names(store, "tmp") == names(store, "new") == []
    w.abort()  # a second abort is harmless


def test_spill_stream_refused_mid_stream(shm_dir: Path) -> None:
    s = Overflow(shm_dir / "ovf", 1000)
    w = s.spill_stream(ids.new_id())
    w.write(b"a" * 600)
    with pytest.raises(OverflowFull):
        w.write(b"b" * 401)
    assert w.closed
    assert names(s, "tmp") == names(s, "new") == []
    with pytest.raises(ValueError):
        w.write(b"c")
    # The refused stream's reservation is given back.
    s.spill(ids.new_id(), b"d" * 1000)


def test_stream_reserve_refuses_before_writing(shm_dir: Path) -> None:
    s = Overflow(shm_dir / "ovf", 1000)
    with s.spill_stream(ids.new_id()) as w:
        w.reserve(900)
        with pytest.raises(OverflowFull):
            s.spill(ids.new_id(), b"x" * 200)  # the reservation counts
        w.write(b"y" * 900)
        w.commit()
    assert s.stats().ready_bytes == 900


def test_open_streams_count_toward_cap(shm_dir: Path) -> None:
    s = Overflow(shm_dir / "ovf", 1000)
    w1 = s.spill_stream(ids.new_id())
    w2 = s.spill_stream(ids.new_id())
    w1.write(b"a" * 600)
    with pytest.raises(OverflowFull):
        w2.write(b"b" * 600)
    w1.commit()
    assert s.stats().total_bytes == 600


def test_cap_counts_what_others_stored(shm_dir: Path) -> None:
    other = Overflow(shm_dir / "ovf", 1000)
    other.spill(ids.new_id(), b"a" * 900)
    s = Overflow(shm_dir / "ovf", 1000)
    with pytest.raises(OverflowFull):
        s.spill(ids.new_id(), b"b" * 200)


def test_cap_estimate_refreshes_at_most_once_per_interval(shm_dir: Path, me: Identity) -> None:
    clock = Clock()
    ingest = Overflow(shm_dir / "ovf", 1000, clock=clock)
    worker = Overflow(shm_dir / "ovf", 1000)
    ingest.spill(ids.new_id(), b"a" * 400)
    ingest.spill(ids.new_id(), b"b" * 400)
    with pytest.raises(OverflowFull):
        ingest.spill(ids.new_id(), b"c" * 400)
    for _ in range(2):
        c = worker.claim(me)
        assert c is not None
        worker.ack(c)
    # Within the interval the estimate may only err toward refusing.
    with pytest.raises(OverflowFull):
        ingest.spill(ids.new_id(), b"c" * 400)
    clock.now += 1.0
    ingest.spill(ids.new_id(), b"c" * 400)
    assert ingest.stats().total_bytes == 400


@pytest.mark.parametrize("commits", [True, False])
def test_a_usage_refresh_while_a_message_streams_in_never_lets_the_cap_be_passed(
    shm_dir: Path, commits: bool
) -> None:
    # The ingest serves connections in turn: one message is still streaming
    # into tmp/ when another's spill, refused on the estimate, refreshes it
    # from a listing. The open writer's bytes count once: neither lost nor
    # counted again from its tmp file.
    clock = Clock()
    s = Overflow(shm_dir / "ovf", 1000, clock=clock)
    with s.spill_stream(ids.new_id()) as streaming:
        streaming.write(b"a" * 600)
        clock.now += s.refresh_interval
        with pytest.raises(OverflowFull):
            s.spill(ids.new_id(), b"b" * 401)
        s.spill(ids.new_id(), b"b" * 400)
        if commits:
            streaming.commit()
    stored = s.stats().total_bytes
    assert stored == (1000 if commits else 400)
    clock.now += s.refresh_interval
    with pytest.raises(OverflowFull):
        s.spill(ids.new_id(), b"c" * (1001 - stored))
    if not commits:
        s.spill(ids.new_id(), b"c" * (1000 - stored))  # the aborted message's room is free


def test_a_spill_whose_rename_fails_gives_its_room_back(shm_dir: Path) -> None:
    s = Overflow(shm_dir / "ovf", 1000, clock=Clock())
    new = shm_dir / "ovf" / "new"
    new.rename(shm_dir / "elsewhere")  # the rename into new/ cannot happen
    try:
        with pytest.raises(FileNotFoundError):
            s.spill(ids.new_id(), b"a" * 600)
    finally:
        (shm_dir / "elsewhere").rename(new)
    assert os.listdir(shm_dir / "ovf" / "tmp") == []
    s.spill(ids.new_id(), b"a" * 1000)


def test_purge_lets_the_next_spill_see_the_space(shm_dir: Path) -> None:
    s = Overflow(shm_dir / "ovf", 1000, clock=Clock())
    s.spill(ids.new_id(), b"a" * 1000)
    with pytest.raises(OverflowFull):
        s.spill(ids.new_id(), b"b")
    s.purge()
    s.spill(ids.new_id(), b"b" * 1000)


# -- claim, ack, release ------------------------------------------------------


def test_claim_attributes(store: Overflow, me: Identity) -> None:
    msgid = ids.new_id()
    store.spill(msgid, b"payload")
    c = store.claim(me)
    assert c is not None
    assert (c.msgid, c.size, c.attempts, c.owner) == (msgid, 7, 0, me)
    assert c.path.parent == store.path / "cur"
    assert c.path.name == f"{msgid},S=7,A=0,P={me.pid}.{me.start}"
    assert c.received == ids.id_time(msgid)
    assert c.read() == b"payload"
    with c.open() as f:
        assert f.read() == b"payload"
    assert names(store, "new") == []


def test_claim_empty_returns_none(store: Overflow, me: Identity) -> None:
    assert store.claim(me) is None
    msgid = ids.new_id()
    store.spill(msgid, b"x")  # arrives after the empty listing
    c = store.claim(me)
    assert c is not None and c.msgid == msgid
    assert store.claim(me) is None


def test_claim_oldest_first(store: Overflow, me: Identity) -> None:
    msgids = [ids.new_id() for _ in range(20)]
    for m in reversed(msgids):
        store.spill(m, body(m, 10))
    claimed = []
    while (c := store.claim(me)) is not None:
        claimed.append(c.msgid)
    assert claimed == msgids


def test_claim_oldest_first_through_a_small_window(
    store: Overflow, me: Identity, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(overflow, "CLAIM_WINDOW", 3)
    msgids = [ids.new_id() for _ in range(10)]
    for m in reversed(msgids):
        store.spill(m, b"x")
    first = store.claim(me)
    assert first is not None
    later = ids.new_id()
    store.spill(later, b"x")
    claimed = [first.msgid]
    while (c := store.claim(me)) is not None:
        claimed.append(c.msgid)
    assert claimed == [*msgids, later]


def test_claimers_skip_what_others_took(shm_dir: Path, me: Identity) -> None:
    a = Overflow(shm_dir / "ovf", 1 << 20)
    b = Overflow(shm_dir / "ovf", 1 << 20)
    msgids = [ids.new_id() for _ in range(6)]
    for m in msgids:
        a.spill(m, b"x")
    got: list[str] = []
    for _ in range(3):  # both hold a cached listing of all six
        for s in (a, b):
            c = s.claim(me)
            assert c is not None
            got.append(c.msgid)
    assert sorted(got) == msgids
    assert a.claim(me) is None and b.claim(me) is None


def test_claimer_whose_window_was_taken_keeps_looking(
    shm_dir: Path, me: Identity, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(overflow, "CLAIM_WINDOW", 3)
    thief = Overflow(shm_dir / "ovf", 1 << 20)

    class Raced(Overflow):
        def _fill_claim_cache(self) -> bool:
            complete = super()._fill_claim_cache()
            # Another claimer takes the whole window before we rename anything.
            if thief.stats().claimed == 0:
                for _ in range(3):
                    assert thief.claim(me) is not None
            return complete

    for _ in range(8):
        thief.spill(ids.new_id(), b"x")
    raced = Raced(shm_dir / "ovf", 1 << 20)
    c = raced.claim(me)
    assert c is not None
    assert raced.stats().claimed == 4


def test_ack_removes(store: Overflow, me: Identity) -> None:
    store.spill(ids.new_id(), b"abc")
    c = store.claim(me)
    assert c is not None
    store.ack(c)
    assert names(store, "cur") == names(store, "new") == []
    assert store.stats() == OverflowStats(0, 0, 0, 0, 0, 0, 0, None, 0)


def test_ack_of_a_lost_claim_warns(
    store: Overflow, me: Identity, caplog: pytest.LogCaptureFixture
) -> None:
    store.spill(ids.new_id(), b"abc")
    c = store.claim(me)
    assert c is not None
    assert store.recover(me) == 1  # e.g. wrongly believed dead
    caplog.set_level(logging.WARNING, logger="ringtrap.overflow")
    store.ack(c)
    assert [r.levelno for r in caplog.records if r.name == "ringtrap.overflow"] == [logging.WARNING]
    assert store.ready_count() == 1  # processed again rather than lost


def test_release_keeps_attempts_and_order(store: Overflow, me: Identity) -> None:
    m0, m1, m2 = ids.new_id(), ids.new_id(), ids.new_id()
    store.spill(m0, b"zero")
    store.spill(m1, b"one", attempts=3)
    store.spill(m2, b"two")
    c = store.claim(me)
    assert c is not None and c.msgid == m0
    store.release(c)
    assert names(store, "new")[0] == f"{m0},S=4,A=0"
    again = store.claim(me)
    assert again is not None
    assert (again.msgid, again.attempts, again.read()) == (m0, 0, b"zero")
    store.ack(again)
    # the attempted message after the fresh one, its attempts kept through a release
    c = store.claim(me)
    assert c is not None and c.msgid == m2
    store.ack(c)
    c = store.claim(me)
    assert c is not None and (c.msgid, c.attempts) == (m1, 3)
    store.release(c)
    again = store.claim(me)
    assert again is not None and (again.msgid, again.attempts, again.read()) == (m1, 3, b"one")


def test_attempted_messages_wait_behind_fresh_ones_but_not_past_the_window(
    store: Overflow, me: Identity, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A message a worker died on is not what its replacement takes first; it
    is still taken before anything listed after its window."""
    monkeypatch.setattr(overflow, "CLAIM_WINDOW", 4)
    poison = ids.new_id()
    store.spill(poison, b"poison", attempts=1)
    fresh = [ids.new_id() for _ in range(5)]
    for m in fresh:
        store.spill(m, b"fresh")
    order = []
    while (c := store.claim(me)) is not None:
        order.append(c.msgid)
        store.ack(c)
    assert order == [*fresh[:3], poison, *fresh[3:]]


def test_release_by_one_claimer_is_seen_by_another(shm_dir: Path, me: Identity) -> None:
    a = Overflow(shm_dir / "ovf", 1 << 20)
    b = Overflow(shm_dir / "ovf", 1 << 20)
    m = ids.new_id()
    a.spill(m, b"x")
    c = a.claim(me)
    assert c is not None and b.claim(me) is None
    a.release(c)
    c2 = b.claim(me)
    assert c2 is not None and c2.msgid == m


# -- quarantine ----------------------------------------------------------------


def test_quarantine_moves_claim_with_reason(store: Overflow, me: Identity) -> None:
    m = ids.new_id()
    store.spill(m, b"poison", attempts=4)
    c = store.claim(me)
    assert c is not None
    q = store.quarantine(c, "killed its worker 4 times")
    path = q.path
    assert q == Quarantined(store.path / "failed" / f"{m},S=6,A=4", True, PurgeResult(0, 0))
    assert path.read_bytes() == b"poison"
    reason = Path(f"{path}.reason").read_text()
    assert "killed its worker 4 times" in reason
    assert names(store, "cur") == names(store, "tmp") == []
    s = store.stats()
    assert (s.failed, s.failed_bytes, s.claimed, s.ready) == (1, 6, 0, 0)
    assert store.claim(me) is None


def test_quarantine_of_a_lost_claim_raises_and_leaves_no_reason(
    store: Overflow, me: Identity
) -> None:
    store.spill(ids.new_id(), b"abc")
    c = store.claim(me)
    assert c is not None
    store.recover(me)
    with pytest.raises(OverflowClaimLost):
        store.quarantine(c, "too late")
    assert names(store, "failed") == []


def test_quarantine_bytes_ignores_the_cap_and_does_not_count_toward_it(shm_dir: Path) -> None:
    s = Overflow(shm_dir / "ovf", 10)
    m = ids.new_id()
    q = s.quarantine_bytes(m, b"ring message", 5, "attempt limit")
    path = q.path
    assert q.kept and path.name == f"{m},S=12,A=5"
    assert path.read_bytes() == b"ring message"
    assert Path(f"{path}.reason").read_text().strip() == "attempt limit"
    assert names(s, "tmp") == []
    st_ = s.stats()
    assert (st_.failed, st_.failed_bytes, st_.total_bytes) == (1, 12, 0)
    s.spill(ids.new_id(), b"x" * 10)  # the whole cap is still free for spills
    with pytest.raises(OverflowFull):
        s.spill(ids.new_id(), b"x")


def test_a_quarantine_near_the_cap_lets_spills_through(shm_dir: Path, me: Identity) -> None:
    # 26 MiB quarantined under a 28 MiB cap once answered every spill TEMPFAIL
    cap, mib = 28 << 20, 1 << 20
    ticks = iter(range(1_000_000))
    poisons = Overflow(shm_dir / "ovf", cap, quarantine_max_bytes=32 * mib,
                       clock=lambda: float(next(ticks)))  # each refusal may list again
    for _ in range(13):
        poisons.spill(ids.new_id(), b"p" * (2 * mib), attempts=3)
        c = poisons.claim(me)
        assert c is not None
        assert poisons.quarantine(c, "attempt limit").kept
    assert poisons.stats().failed_bytes == 26 * mib
    ingest = Overflow(shm_dir / "ovf", cap)  # a fresh process counts from the listing
    for store in (ingest, poisons):
        spilled = [store.spill(ids.new_id(), b"m" * mib) for _ in range(4)]
        assert len(spilled) == 4
        assert store.purge().count == 4
    assert ingest.stats().failed_bytes == 26 * mib


def test_the_quarantine_cap_drops_the_oldest_first(shm_dir: Path, me: Identity) -> None:
    s = Overflow(shm_dir / "ovf", 1 << 20, quarantine_max_bytes=1000)
    held = []
    for _ in range(4):
        m = ids.new_id()
        s.spill(m, b"q" * 300, attempts=3)
        c = s.claim(me)
        assert c is not None
        held.append((m, s.quarantine(c, "limit")))
    assert [q.dropped for _, q in held] == [PurgeResult(0, 0)] * 3 + [PurgeResult(1, 300)]
    kept = sorted(n.split(",")[0] for n in names(s, "failed") if not n.endswith(".reason"))
    assert kept == [m for m, _ in held[1:]]
    assert len(names(s, "failed")) == 6  # each kept message has its reason, no stray reason
    assert s.stats().failed_bytes == 900


def test_a_message_over_the_whole_quarantine_cap_is_not_kept(
    shm_dir: Path, me: Identity
) -> None:
    s = Overflow(shm_dir / "ovf", 1 << 20, quarantine_max_bytes=100)
    s.quarantine_bytes(ids.new_id(), b"small", 3, "limit")
    m = ids.new_id()
    s.spill(m, b"b" * 101, attempts=3)
    c = s.claim(me)
    assert c is not None
    q = s.quarantine(c, "limit")
    assert (q.kept, q.dropped, q.path.name) == (False, PurgeResult(0, 0), f"{m},S=101,A=3")
    r = s.quarantine_bytes(ids.new_id(), b"r" * 101, 3, "limit")
    assert not r.kept and not r.path.exists()
    st_ = s.stats()
    assert (st_.failed, st_.claimed, st_.ready, st_.writing) == (1, 0, 0, 0)


# -- planted files ---------------------------------------------------------------


def plant(store: Overflow, make: Callable[[Path], None], size: int = 6) -> str:
    """Make something named like a ready message in new/; returns its id."""
    m = ids.new_id()
    make(store.path / "new" / f"{m},S={size},A=0")
    return m


def test_open_trusted_takes_only_files_the_trap_wrote(shm_dir: Path, me: Identity) -> None:
    store = Overflow(shm_dir / "ovf", 1 << 20)
    secret = shm_dir / "secret"
    secret.write_bytes(b"shadow")
    nobody = pwd.getpwnam("nobody")

    def foreign(p: Path) -> None:
        p.write_bytes(b"theirs")
        os.chown(p, nobody.pw_uid, nobody.pw_gid)

    planted = {
        plant(store, lambda p: p.symlink_to(secret)): "a symlink",
        plant(store, lambda p: os.mkfifo(p)): "a FIFO",
        plant(store, lambda p: os.link(secret, p)): "2 hard links",
        plant(store, lambda p: p.mkdir()): "a directory",
        plant(store, lambda p: p.write_bytes(b"longer than named")): "17 bytes, not the 6",
    }
    if os.geteuid() == 0:  # only root can give a file away or make a device
        planted[plant(store, foreign)] = f"owned by uid {nobody.pw_uid}, not the trap's uid 0"
        null = plant(store, lambda p: os.mknod(p, 0o600 | stat.S_IFCHR, os.makedev(1, 3)))
        planted[null] = "a character device"
    good = ids.new_id()
    store.spill(good, b"honest")
    seen = {}
    while (c := store.claim(me)) is not None:
        try:
            seen[c.msgid] = c.read()
            store.ack(c)
        except UntrustedFile as e:
            seen[c.msgid] = e.reason
            q = store.quarantine(c, e.reason)
            assert q.kept and Path(f"{q.path}.reason").read_text().strip() == e.reason
    assert seen.pop(good) == b"honest"
    assert set(seen) == set(planted)
    for m, why in planted.items():
        assert str(seen[m]).startswith(why), (seen[m], why)
    assert secret.read_bytes() == b"shadow" and os.stat(secret).st_nlink == 2
    assert names(store, "new") == names(store, "cur") == []
    assert store.purge_failed().count == len(planted) - 1  # the planted directory stays
    with pytest.raises(UntrustedFile, match="not the trap's uid 4242"):
        open_trusted(secret, uid=4242)


# -- purge -----------------------------------------------------------------------


def test_purge_all_counts_and_spares_claims(store: Overflow, me: Identity) -> None:
    for i in range(5):
        store.spill(ids.new_id(), b"x" * (i + 1))
    held = store.claim(me)
    assert held is not None and held.size == 1
    assert store.purge() == PurgeResult(4, 2 + 3 + 4 + 5)
    assert names(store, "new") == []
    assert held.read() == b"x"
    store.ack(held)
    assert store.purge() == PurgeResult(0, 0)


def test_purge_spares_claims_of_dead_owners_too(store: Overflow) -> None:
    # A dead owner's claim is recovered, not purged, so its accounting stays exact.
    store.spill(ids.new_id(), b"abc")
    dead = Identity(os.getpid(), proc.self_identity().start + 1)
    assert store.claim(dead) is not None
    assert store.purge() == PurgeResult(0, 0)
    assert store.recover_dead() == 1


def test_purge_older_than(store: Overflow, me: Identity) -> None:
    now = time.time()
    old = [msgid_at(now - 7200 + i) for i in range(3)]
    young = [msgid_at(now - 60 + i) for i in range(2)]
    for m in old + young:
        store.spill(m, b"y" * 10)
    cutoff = ids.id_time(young[0])  # exactly young[0]'s time: it is not older
    assert store.purge(older_than=cutoff) == PurgeResult(3, 30)
    assert [n.split(",")[0] for n in names(store, "new")] == young
    assert store.purge(older_than=now - 3600) == PurgeResult(0, 0)
    assert store.purge(older_than=now + 1) == PurgeResult(2, 20)


def test_purge_cutoff_is_exact_to_the_microsecond(store: Overflow) -> None:
    us = round(time.time() * 1e6)
    before, at, after = (f"{u:013x}-000001" for u in (us - 1, us, us + 1))
    for m in (before, at, after):
        store.spill(m, b"z")
    assert store.purge(older_than=ids.id_time(at)) == PurgeResult(1, 1)
    assert [n.split(",")[0] for n in names(store, "new")] == [at, after]


def test_purge_reports_the_ids_it_dropped(store: Overflow, me: Identity) -> None:
    # The stress harness's ledger counts on it: exactly the ids unlinked, never a claim.
    now = time.time()
    msgs = [msgid_at(now - 600 + i) for i in range(4)]
    for m in msgs:
        store.spill(m, b"q" * 7)
    held = store.claim(me)
    assert held is not None and held.msgid == msgs[0]
    dropped: list[str] = []
    assert store.purge(older_than=ids.id_time(msgs[3]), dropped=dropped) == PurgeResult(2, 14)
    assert sorted(dropped) == msgs[1:3]
    store.release(held)
    more: list[str] = []
    assert store.purge(dropped=more) == PurgeResult(2, 14)
    assert sorted(more) == [msgs[0], msgs[3]]
    assert store.purge(dropped=more) == PurgeResult(0, 0)
    assert len(more) == 2


def test_purge_failed(store: Overflow) -> None:
    now = time.time()
    old, young = msgid_at(now - 7200), msgid_at(now - 10)
    store.quarantine_bytes(old, b"a" * 3, 5, "old")
    store.quarantine_bytes(young, b"b" * 4, 5, "young")
    # A reason left alone by a quarantine that died halfway.
    orphan = msgid_at(now - 7100)
    (store.path / "failed" / f"{orphan},S=1,A=5.reason").write_text("orphan\n")
    assert store.purge_failed(older_than=now - 3600) == PurgeResult(1, 3)
    assert [n.split(",")[0] for n in names(store, "failed")] == [young, young]
    assert store.purge_failed() == PurgeResult(1, 4)
    assert names(store, "failed") == []


def test_purge_quarantine_follows_the_retention(store: Overflow) -> None:
    now = time.time()
    day = 86400.0
    ages = {msgid_at(now - d * day - 60): d for d in (2.5, 0.5, 0)}
    for m in ages:
        store.quarantine_bytes(m, b"q", 3, "limit")
    assert store.purge_quarantine(0, now) == PurgeResult(0, 0)  # 0: never by age
    assert store.purge_quarantine(4, now) == PurgeResult(0, 0)  # nothing 3 days old
    assert store.purge_quarantine(3, now) == PurgeResult(1, 1)  # more than 2 days old
    left = {n.split(",")[0] for n in names(store, "failed") if not n.endswith(".reason")}
    assert {ages[m] for m in left} == {0.5, 0}
    assert store.purge_quarantine(1, now) == PurgeResult(2, 2)  # 1: everything, daily
    assert names(store, "failed") == []


# -- stats -------------------------------------------------------------------


def test_stats_numbers(store: Overflow, me: Identity) -> None:
    now = time.time()
    oldest = msgid_at(now - 100)
    store.spill(oldest, b"a" * 10)
    store.spill(msgid_at(now - 50), b"b" * 20)
    store.spill(msgid_at(now - 40), b"c" * 30)
    store.spill(msgid_at(now - 30), b"d" * 40)
    c1 = store.claim(me)
    c2 = store.claim(me)
    assert c1 is not None and c2 is not None
    store.quarantine(c2, "bad")
    w = store.spill_stream(ids.new_id())
    w.write(b"e" * 5)
    before = time.time()
    s = store.stats()
    after = time.time()
    assert s[:7] == (2, 70, 1, 10, 1, 20, 1)
    assert s.writing_bytes == 5
    assert s.total_bytes == 85  # quarantine (20 bytes) has a cap of its own
    assert s.oldest_age is not None  # the oldest still ready arrived 40 s ago
    assert before - ids.id_time(msgid_at(now - 40)) <= s.oldest_age
    assert s.oldest_age <= after - ids.id_time(msgid_at(now - 40))
    assert store.ready_count() == 2
    w.abort()


def test_stats_cache_follows_changes(store: Overflow, shm_dir: Path, me: Identity) -> None:
    other = Overflow(shm_dir / "ovf", 1 << 20)
    for _ in range(3):
        other.spill(ids.new_id(), b"x" * 10)
    # Let the directories age past the racy window so the next listing is
    # cached and trusted.
    time.sleep(spillcount.RACY_NS / 1e9 + 0.05)
    assert store.stats()[:6] == (3, 30, 0, 0, 0, 0)
    assert store.stats()[:6] == (3, 30, 0, 0, 0, 0)
    c = other.claim(me)
    assert c is not None
    assert store.stats()[:6] == (2, 20, 1, 10, 0, 0)
    other.quarantine(c, "x")
    assert store.stats()[:6] == (2, 20, 0, 0, 1, 10)
    other.purge()
    assert store.stats()[:6] == (0, 0, 0, 0, 1, 10)
    assert store.stats().oldest_age is None


def test_ready_count_matches_listing(store: Overflow, me: Identity) -> None:
    assert store.ready_count() == 0
    for _ in range(7):
        store.spill(ids.new_id(), b"x")
    assert store.ready_count() == 7
    c = store.claim(me)
    assert c is not None
    assert store.ready_count() == 6
    store.release(c)
    assert store.ready_count() == 7
    store.purge()
    assert store.ready_count() == 0


def test_ready_count_off_tmpfs(tmp_path: Path) -> None:
    s = Overflow(tmp_path / "ovf", 1 << 20)
    for _ in range(3):
        s.spill(ids.new_id(), b"x")
    assert s.ready_count() == 3


# -- recovery ------------------------------------------------------------------


def test_recover_dead_requeues_claim_of_a_reused_pid(store: Overflow, me: Identity) -> None:
    m = ids.new_id()
    store.spill(m, b"abc")
    # Our own pid with another start time: a process that had this pid before.
    ghost = Identity(me.pid, me.start - 1)
    assert store.claim(ghost) is not None
    assert store.recover_dead() == 1
    assert names(store, "new") == [f"{m},S=3,A=1"]
    c = store.claim(me)
    assert c is not None and (c.msgid, c.attempts, c.read()) == (m, 1, b"abc")
    assert store.recover_dead() == 0  # a live owner's claim stays
    assert c.path.exists()


def test_recover_dead_sigkilled_claimer(store: Overflow, children: Children, me: Identity) -> None:
    msgids = [ids.new_id() for _ in range(3)]
    for m in msgids:
        store.spill(m, body(m, 100))

    def hold_one(w: int) -> None:  # pragma: no cover - runs in the child
        s = Overflow(store.path, 1 << 20)
        c = s.claim(proc.self_identity())
        assert c is not None
        report(w, c.msgid)
        signal.pause()

    pid, r = children.fork(hold_one)
    held = read_line(r)
    os.close(r)
    mine = store.claim(me)  # a live owner's claim must survive recovery
    assert mine is not None
    children.kill(pid)
    assert store.recover_dead() == 1
    assert f"{held},S=100,A=1" in names(store, "new")
    assert mine.path.exists()
    rest = []
    while (c := store.claim(me)) is not None:
        assert c.read() == body(c.msgid, 100)
        rest.append((c.msgid, c.attempts))
    assert (held, 1) in rest
    assert sorted([mine.msgid] + [m for m, _ in rest]) == msgids


def test_recover_dead_drops_tmp_files_of_dead_writers(store: Overflow, children: Children) -> None:
    def write_half(w: int) -> None:  # pragma: no cover - runs in the child
        s = Overflow(store.path, 1 << 20)
        sw = s.spill_stream(ids.new_id())
        sw.write(b"half a message")
        report(w, "writing")
        signal.pause()

    pid, r = children.fork(write_half)
    assert read_line(r) == "writing"
    os.close(r)
    own = store.spill_stream(ids.new_id())
    own.write(b"mine")
    assert len(names(store, "tmp")) == 2
    children.kill(pid)
    assert store.recover_dead() == 0  # nothing requeued: the client never got OK
    assert names(store, "tmp") == [f"{own.msgid},P={os.getpid()}.{proc.self_identity().start}"]
    assert names(store, "new") == []
    own.commit()
    assert store.ready_count() == 1


def test_recover_only_the_given_owner(store: Overflow) -> None:
    a, b = Identity(2**22 + 1, 7), Identity(2**22 + 2, 7)
    for _ in range(4):
        store.spill(ids.new_id(), b"x")
    for owner in (a, a, b):
        assert store.claim(owner) is not None
    assert store.recover(a) == 2
    assert store.recover(a) == 0
    assert store.ready_count() == 3
    assert [n.rsplit(",", 1)[1] for n in names(store, "cur")] == [f"P={b.pid}.{b.start}"]
    assert store.recover_dead() == 1  # b's pid is not a running process


def test_recovered_attempts_accumulate(store: Overflow) -> None:
    store.spill(ids.new_id(), b"x")
    for n in range(1, 4):
        ghost = Identity(2**22 + n, 1)
        c = store.claim(ghost)
        assert c is not None and c.attempts == n - 1
        assert store.recover_dead() == 1
    c = store.claim(proc.self_identity())
    assert c is not None and c.attempts == 3


def test_recover_ignores_foreign_names(store: Overflow) -> None:
    (store.path / "cur" / "README").write_text("x")
    (store.path / "tmp" / "junk,P=x.y").write_text("x")
    (store.path / "new" / "0-junk").write_text("x")  # sorts before every id
    assert store.recover_dead() == 0
    assert store.claim(proc.self_identity()) is None
    assert store.stats()[:4] == (0, 0, 0, 0)
    assert store.stats().oldest_age is None
    m = ids.new_id()
    store.spill(m, b"abc")
    s = store.stats()
    assert (s.ready, s.ready_bytes) == (1, 3)
    assert s.oldest_age is not None and s.oldest_age < 3600  # not the foreign name


def test_forked_child_writes_under_its_own_identity(store: Overflow, children: Children) -> None:
    def spill_from_inherited_store(w: int) -> None:  # pragma: no cover - child
        sw = store.spill_stream(ids.new_id())
        sw.write(b"abc")
        report(w, sw._tmp.name)
        signal.pause()

    pid, r = children.fork(spill_from_inherited_store)
    tmp_name = read_line(r)
    os.close(r)
    child = Identity(pid, proc.start_ticks(pid) or -1)
    assert overflow.parse_owner(tmp_name) == (tmp_name.split(",")[0], child)
    children.kill(pid)
    store.recover_dead()
    assert names(store, "tmp") == []


# -- model-based -----------------------------------------------------------------


@dataclass
class Held:
    """The model's view of one message."""

    size: int
    attempts: int
    state: str  # "ready" | "claimed" | "failed"
    owner: Identity | None = None
    claim: overflow.OverflowClaim | None = None


CAP = 4000


class OverflowMachine(RuleBasedStateMachine):
    """Random spill/claim/ack/release/death/recover/purge runs against a dict model.

    One instance spills (the ingest), two claim (workers), one recovers and
    purges (the supervisor), all sharing a fake liveness table and clock.
    """

    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="ringtrap-sm-", dir=SHM))
        self.live: set[Identity] = set()
        self.next_pid = 2**22 + 100
        self.clock = Clock()
        path = self.root / "ovf"
        kw = {"is_alive": self.is_alive, "clock": self.clock}
        self.ingest = Overflow(path, CAP, **kw)
        self.workers = [Overflow(path, CAP, **kw), Overflow(path, CAP, **kw)]
        self.sup = Overflow(path, CAP, **kw)
        self.model: dict[str, Held] = {}
        for _ in range(2):
            self.spawn()

    def is_alive(self, ident: Identity) -> bool:
        return ident in self.live

    def teardown(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def in_state(self, state: str) -> list[str]:
        return sorted(m for m, h in self.model.items() if h.state == state)

    def live_claims(self) -> list[str]:
        return [m for m in self.in_state("claimed") if self.model[m].owner in self.live]

    def bytes_in(self, state: str) -> int:
        return sum(self.model[m].size for m in self.in_state(state))

    @rule()
    def spawn(self) -> None:
        self.next_pid += 1
        self.live.add(Identity(self.next_pid, 1))

    @rule(size=st.integers(0, 700), tick=st.booleans())
    def spill(self, size: int, tick: bool) -> None:
        if tick:
            self.clock.now += 1.0  # the next refusal may refresh the estimate
        # the quarantine (failed/) has a cap of its own: it never blocks a spill
        used = sum(h.size for h in self.model.values() if h.state != "failed")
        msgid = ids.new_id()
        try:
            name = self.ingest.spill(msgid, body(msgid, size))
        except OverflowFull:
            # Refusing early is allowed, but never once a refresh shows room.
            assert used + size > CAP or not tick
            return
        assert used + size <= CAP
        assert name == f"{msgid},S={size},A=0"
        self.model[msgid] = Held(size, 0, "ready")

    @precondition(lambda self: self.live)
    @rule(data=st.data(), which=st.integers(0, 1))
    def claim(self, data: st.DataObject, which: int) -> None:
        owner = data.draw(st.sampled_from(sorted(self.live)))
        c = self.workers[which].claim(owner)
        ready = self.in_state("ready")
        if not ready:
            assert c is None
            return
        assert c is not None
        assert c.msgid in ready, "claimed a message that was not ready"
        h = self.model[c.msgid]
        assert (c.size, c.attempts) == (h.size, h.attempts)
        assert c.read() == body(c.msgid, h.size)
        h.state, h.owner, h.claim = "claimed", owner, c

    @precondition(lambda self: self.live_claims())
    @rule(data=st.data(), how=st.sampled_from(["ack", "release", "quarantine"]))
    def finish(self, data: st.DataObject, how: str) -> None:
        msgid = data.draw(st.sampled_from(self.live_claims()))
        h = self.model[msgid]
        assert h.claim is not None
        worker = self.workers[data.draw(st.integers(0, 1))]
        if how == "ack":
            worker.ack(h.claim)
            del self.model[msgid]
        elif how == "release":
            worker.release(h.claim)
            h.state, h.owner, h.claim = "ready", None, None
        else:
            worker.quarantine(h.claim, "model says so")
            h.state, h.owner, h.claim = "failed", None, None

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def die(self, data: st.DataObject) -> None:
        self.live.discard(data.draw(st.sampled_from(sorted(self.live))))

    def requeue(self, msgids: list[str]) -> None:
        for m in msgids:
            h = self.model[m]
            h.state, h.owner, h.claim, h.attempts = "ready", None, None, h.attempts + 1

    @rule()
    def recover_dead(self) -> None:
        dead = [m for m in self.in_state("claimed") if self.model[m].owner not in self.live]
        assert self.sup.recover_dead() == len(dead)
        self.requeue(dead)

    @precondition(
        lambda self: any(h.owner and h.owner not in self.live for h in self.model.values())
    )
    @rule(data=st.data())
    def recover_one(self, data: st.DataObject) -> None:
        dead = sorted(
            {h.owner for h in self.model.values() if h.owner and h.owner not in self.live}
        )
        owner = data.draw(st.sampled_from(dead))
        held = [m for m in self.in_state("claimed") if self.model[m].owner == owner]
        assert self.sup.recover(owner) == len(held)
        self.requeue(held)

    @rule(data=st.data())
    def purge(self, data: st.DataObject) -> None:
        ready = self.in_state("ready")
        if ready and data.draw(st.booleans()):
            cutoff_id = data.draw(st.sampled_from(ready))
            gone = [m for m in ready if m < cutoff_id]  # ids sort by time
            result = self.sup.purge(older_than=ids.id_time(cutoff_id))
        else:
            gone = ready
            result = self.sup.purge()
        assert result == PurgeResult(len(gone), sum(self.model[m].size for m in gone))
        for m in gone:
            del self.model[m]

    @invariant()
    def disk_matches_model(self) -> None:
        path = self.root / "ovf"
        on_disk: dict[str, tuple[str, int, Identity | None]] = {}
        for sub, state in (("new", "ready"), ("cur", "claimed"), ("failed", "failed")):
            for name in os.listdir(path / sub):
                if name.endswith(".reason"):
                    continue
                owner = None
                if sub == "cur":
                    parsed_owner = overflow.parse_owner(name)
                    assert parsed_owner is not None
                    name, owner = parsed_owner
                parsed = overflow.parse_ready(name)
                assert parsed is not None
                msgid, size, attempts = parsed
                assert msgid not in on_disk, f"{msgid} is in two places at once"
                on_disk[msgid] = (state, attempts, owner)
                assert size == self.model[msgid].size
        expected = {m: (h.state, h.attempts, h.owner) for m, h in self.model.items()}
        assert on_disk == expected
        assert os.listdir(path / "tmp") == []

    @invariant()
    def stats_match_model(self) -> None:
        s = self.sup.stats()
        assert s[:7] == (
            len(self.in_state("ready")),
            self.bytes_in("ready"),
            len(self.in_state("claimed")),
            self.bytes_in("claimed"),
            len(self.in_state("failed")),
            self.bytes_in("failed"),
            0,
        )
        assert (s.oldest_age is None) == (not self.in_state("ready"))
        assert s.total_bytes <= CAP
        assert self.workers[0].ready_count() == len(self.in_state("ready"))


OverflowMachine.TestCase.settings = settings(
    max_examples=40, stateful_step_count=30, deadline=None, database=None
)
test_overflow_model = OverflowMachine.TestCase


class RecordingTarget:
    """A spill writer's store, recording what the writer asks of it."""

    def __init__(self, tmp_dir: Path, cap: int) -> None:
        self.dir = tmp_dir
        self.cap = cap
        self.reserved = 0
        self.calls: list[tuple[object, ...]] = []

    def open_tmp(self, msgid: str) -> tuple[Path, int]:
        path = self.dir / f"{msgid},tmp"
        return path, os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)

    def reserve(self, n: int) -> None:
        if self.reserved + n > self.cap:
            raise OverflowFull(self.dir, self.cap, self.reserved, n)
        self.reserved += n

    def publish(self, tmp: Path, name: str) -> None:
        self.calls.append(("publish", tmp.read_bytes(), name))

    def settle(self, tmp: Path, reserved: int, stored: int) -> None:
        self.calls.append(("settle", reserved, stored, tmp.exists()))

    def filesystem_full(self, requested: int) -> OverflowFull:
        return OverflowFull(self.dir, self.cap, self.reserved, requested, "filesystem full")


def test_a_spill_writer_needs_only_its_targets_few_verbs(tmp_path: Path) -> None:
    from ringtrap.store.spill import SpillWriter as Writer

    target = RecordingTarget(tmp_path, 10)
    m = ids.new_id()
    with Writer(target, m, 2) as w:
        w.write(b"abc")
        w.write(b"de")
        assert w.commit() == f"{m},S=5,A=2"
    assert target.calls == [("publish", b"abcde", f"{m},S=5,A=2"), ("settle", 5, 5, True)]

    target.calls.clear()
    with Writer(target, ids.new_id(), 0) as w, pytest.raises(OverflowFull):
        w.write(b"x" * 6)  # past the 10 bytes: refused, the partial file removed
    assert target.calls == [("settle", 0, 0, False)]


def test_the_overflow_shadows_no_builtin_and_holds_no_thread_lock(store: Overflow) -> None:
    # the trap gives each thread that reads the overflow its own instance
    assert "OverflowError" not in vars(overflow)
    lock_type = type(threading.Lock())
    assert not [k for k, v in vars(store).items() if isinstance(v, lock_type)]
    assert not hasattr(store, "refresh")


# -- drain order newest --------------------------------------------------------


@pytest.fixture
def newest(shm_dir: Path) -> tuple[Overflow, Clock]:
    clock = Clock()
    return Overflow(shm_dir / "ovf", 1 << 20, drain_order="newest", clock=clock), clock


def drain(store: Overflow, me: Identity, newer_than: float | None = None) -> list[str]:
    order = []
    while (c := store.claim(me, newer_than=newer_than)) is not None:
        order.append(c.msgid)
        store.ack(c)
    return order


def test_newest_first_claims_fresh_newest_first_then_attempted(
        newest: tuple[Overflow, Clock], me: Identity) -> None:
    store, _ = newest
    poison = msgid_at(100.0)
    store.spill(poison, b"poison", attempts=1)
    fresh = [msgid_at(200.0 + i) for i in range(5)]
    for m in fresh:
        store.spill(m, b"fresh")
    later_poison = msgid_at(300.0)
    store.spill(later_poison, b"poison", attempts=2)
    assert drain(store, me) == [*reversed(fresh), later_poison, poison]


def test_oldest_first_is_the_default_order(store: Overflow, me: Identity) -> None:
    ms = [msgid_at(200.0 + i) for i in range(4)]
    for m in reversed(ms):
        store.spill(m, b"x")
    assert not store.newest
    assert drain(store, me) == ms


def test_newer_than_takes_only_fresh_mail_after_it(
        newest: tuple[Overflow, Clock], me: Identity) -> None:
    """The ring's oldest is the bar: nothing at or before it, no attempted
    message; without a bar everything is taken, nothing left behind."""
    store, _ = newest
    old, at, new1, new2 = (msgid_at(t) for t in (100.0, 150.0, 151.0, 152.0))
    for m in (old, at, new1, new2):
        store.spill(m, b"x")
    poison = msgid_at(160.0)
    store.spill(poison, b"p", attempts=1)
    assert drain(store, me, newer_than=150.0) == [new2, new1]
    assert store.claim(me, newer_than=150.0) is None
    assert drain(store, me) == [at, old, poison]
    assert store.ready_count() == 0


def test_newest_first_lists_again_once_the_window_has_aged(
        newest: tuple[Overflow, Clock], me: Identity, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mail that arrives behind the window is seen at the next listing, which
    comes when the window has aged, not only when it is used up."""
    monkeypatch.setattr(overflow, "CLAIM_WINDOW", 3)
    store, clock = newest
    ms = [msgid_at(200.0 + i) for i in range(5)]
    for m in ms[:4]:
        store.spill(m, b"x")
    first = store.claim(me)
    assert first is not None and first.msgid == ms[3]
    store.spill(ms[4], b"x")
    c = store.claim(me)
    assert c is not None and c.msgid == ms[2]  # the window has not aged yet
    clock.now += overflow.RELIST_MIN
    c = store.claim(me)
    assert c is not None and c.msgid == ms[4]
    # the oldest was never in a window of three until the rest were taken
    assert drain(store, me) == [ms[1], ms[0]]


def test_newest_first_release_keeps_the_place(
        newest: tuple[Overflow, Clock], me: Identity) -> None:
    store, _ = newest
    ms = [msgid_at(200.0 + i) for i in range(3)]
    for m in ms:
        store.spill(m, b"x")
    c = store.claim(me)
    assert c is not None and c.msgid == ms[2]
    c2 = store.claim(me)
    assert c2 is not None and c2.msgid == ms[1]
    store.release(c)
    store.release(c2)
    assert drain(store, me) == [ms[2], ms[1], ms[0]]


def test_drain_order_is_checked(shm_dir: Path) -> None:
    with pytest.raises(ValueError, match="drain_order"):
        Overflow(shm_dir / "ovf", 1 << 20, drain_order="lifo")
