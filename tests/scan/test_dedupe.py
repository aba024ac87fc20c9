"""The shared dedupe store (ringtrap.scan.dedupe) and repeats through the Processor."""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path

import mailbuild as mb
import pytest
from spamd_fixture import SpamdProcess

from ringtrap.base import envelope
from ringtrap.scan.dedupe import FILE_NAME, DedupeStore, First
from ringtrap.scan.processing import Processor
from ringtrap.scan.spamd import SpamdClient

T0 = 1_800_000_000.0


def first(msgid: str = "m1", at: float = T0) -> First:
    return First(msgid, at, "spam", 9.5, 5.0, ("RULE_A", "RULE_B"))


def test_miss_remember_hit_and_repeat_count(tmp_path: Path) -> None:
    store = DedupeStore(tmp_path, window=3600)
    assert store.lookup("fp", T0) is None
    store.remember("fp", first())
    assert store.lookup("fp", T0 + 10) == first()
    assert store.lookup("fp", T0 + 20) == first()
    repeats = sqlite3.connect(tmp_path / FILE_NAME).execute(
        "SELECT repeats FROM seen WHERE fingerprint = 'fp'").fetchone()[0]
    assert repeats == 2
    assert store.errors == 0


def test_a_first_keeps_its_scanner_and_action_and_old_rows_still_read(tmp_path: Path) -> None:
    store = DedupeStore(tmp_path, window=3600)
    scanned = First("m1", T0, "spam", 15.0, 15.0, ("GTUBE",), "rspamd", "reject")
    store.remember("fp", scanned)
    assert store.lookup("fp", T0 + 1) == scanned
    # a row written before the scanner was kept holds the rules list alone
    sqlite3.connect(tmp_path / FILE_NAME, isolation_level=None).execute(
        "UPDATE seen SET rules = '[\"RULE_A\"]' WHERE fingerprint = 'fp'")
    old = store.lookup("fp", T0 + 2)
    assert old is not None and (old.rules, old.scanner, old.action) == (("RULE_A",), None, None)


def test_a_first_keeps_its_symbols(tmp_path: Path) -> None:
    store = DedupeStore(tmp_path, window=3600)
    symbols: dict[str, dict[str, object]] = {
        "GTUBE": {"score": 1000.0, "options": []},
        "URIBL_BLACK": {"score": 1.7, "options": ["URIs: shop.example.com"]}}
    scanned = First("m1", T0, "spam", 1001.7, 5.0, ("GTUBE", "URIBL_BLACK"), "spamd", None,
                    symbols)
    store.remember("fp", scanned)
    assert store.lookup("fp", T0 + 1) == scanned
    # a damaged symbols object costs the scores, never the rules
    sqlite3.connect(tmp_path / FILE_NAME, isolation_level=None).execute(
        "UPDATE seen SET rules = '{\"rules\": [\"GTUBE\"], \"symbols\": {\"GTUBE\": 3}}'")
    damaged = store.lookup("fp", T0 + 2)
    assert damaged is not None and (damaged.rules, damaged.symbols) == (("GTUBE",), None)


def test_window_expiry_makes_the_next_one_first(tmp_path: Path) -> None:
    store = DedupeStore(tmp_path, window=3600)
    store.remember("fp", first())
    assert store.lookup("fp", T0 + 3600) is None  # exactly one window later: expired
    store.remember("fp", first("m2", T0 + 3600))
    assert store.lookup("fp", T0 + 3601) == first("m2", T0 + 3600)


def test_a_first_within_the_window_is_kept(tmp_path: Path) -> None:
    store = DedupeStore(tmp_path, window=3600)
    store.remember("fp", first("m1"))
    store.remember("fp", first("m2", T0 + 5))  # a racing worker scanned it too
    assert store.lookup("fp", T0 + 6).msgid == "m1"  # type: ignore[union-attr]


def _remember_in_child(directory: str) -> None:
    DedupeStore(directory, window=3600).remember("shared", first("child"))


def test_shared_across_processes(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    p = ctx.Process(target=_remember_in_child, args=(str(tmp_path),))
    p.start()
    p.join(30)
    assert p.exitcode == 0
    assert DedupeStore(tmp_path, window=3600).lookup("shared", T0).msgid == "child"  # type: ignore[union-attr]


def test_a_locked_store_is_a_miss_not_a_wait(tmp_path: Path) -> None:
    store = DedupeStore(tmp_path, window=3600, busy_timeout=0.01)
    store.remember("fp", first())
    blocker = sqlite3.connect(tmp_path / FILE_NAME, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        other = DedupeStore(tmp_path, window=3600, busy_timeout=0.01)
        other.remember("fp2", first())
        assert other.lookup("fp", T0) is None
        assert other.errors == 2
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert store.lookup("fp", T0) is not None


def test_a_broken_file_costs_scans_not_crashes(tmp_path: Path) -> None:
    (tmp_path / FILE_NAME).write_bytes(b"this is not a database" * 100)
    store = DedupeStore(tmp_path, window=3600)
    assert store.lookup("fp", T0) is None
    store.remember("fp", first())
    assert store.errors >= 2


@pytest.mark.spamd
def test_repeats_are_recorded_from_the_first_scan(tmp_path: Path,
                                                  spamd_server: SpamdProcess) -> None:
    client = SpamdClient(spamd_server.unix_address, connect_timeout=5.0, timeout=60.0)
    calls = []

    class CountingClient(SpamdClient):
        def report(self, message):  # type: ignore[no-untyped-def]
            calls.append(1)
            return client.report(message)

    counting = CountingClient(spamd_server.unix_address)
    skip = Processor(scanner=counting, scan_limit_bytes=1 << 20,
                     dedupe=DedupeStore(tmp_path, 3600), skip_duplicates=True)
    records = [skip.process(f"id{n}", envelope.frame(mb.campaign_copy(n)), T0 + n, 0).to_dict()
               for n in range(20)]
    assert len(calls) == 1
    head, rest = records[0], records[1:]
    assert head["symbols"] and list(head["symbols"]) == head["rules"]
    assert head["verdict"] in ("spam", "ham") and head["duplicate_of"] is None
    assert head["scanned_ms"] > 0
    for r in rest:
        assert r["verdict"] == "duplicate"
        assert r["duplicate_of"] == "id0"
        assert (r["score"], r["required"], r["rules"], r["symbols"]) == (
            head["score"], head["required"], head["rules"], head["symbols"])
        assert r["scanned_ms"] is None
        assert r["reason"] == f"repeat of id0 ({head['verdict']})"
    # without skip_scan, repeats are still recognised but scanned again
    calls.clear()
    scan = Processor(scanner=counting, scan_limit_bytes=1 << 20,
                     dedupe=DedupeStore(tmp_path, 3600))
    again = scan.process("id99", envelope.frame(mb.campaign_copy(99)), T0 + 99, 0).to_dict()
    assert len(calls) == 1
    assert again["duplicate_of"] == "id0" and again["verdict"] == head["verdict"]
