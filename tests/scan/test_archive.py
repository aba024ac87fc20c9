"""The Maildir archive (ringtrap.scan.archive) and the retention of days and result files."""

from __future__ import annotations

import email
import os
from pathlib import Path

import mailbuild as mb
import pytest

from ringtrap.base import envelope
from ringtrap.scan.archive import MaildirArchive
from ringtrap.scan.processing import Processor
from ringtrap.scan.results import ResultSink, prune_days

DAY = 86400.0
T0 = 1_800_000_000.0  # 2027-01-15


def test_message_lands_whole_in_the_days_maildir(tmp_path: Path) -> None:
    archive = MaildirArchive(tmp_path, ["spam"], 30, clock=lambda: T0)
    data = mb.plain()
    rel = archive.store("abc-01", "spam", memoryview(data), T0 - 5)
    assert rel == "2027-01-15/spam/new/1799999995.abc-01.ringtrap"
    assert (tmp_path / rel).read_bytes() == data
    box = tmp_path / "2027-01-15" / "spam"
    assert sorted(os.listdir(box)) == ["cur", "new", "tmp"]
    assert os.listdir(box / "tmp") == []
    # a corpus tool reads it as mail
    assert email.message_from_bytes((tmp_path / rel).read_bytes())["Subject"] == "Hello"


def test_verdicts_not_configured_are_skipped(tmp_path: Path) -> None:
    archive = MaildirArchive(tmp_path, ["spam"], 30, clock=lambda: T0)
    assert archive.store("abc-01", "bounce", b"x", T0) is None
    assert not (tmp_path / "2027-01-15" / "bounce").exists()


def test_a_retry_replaces_its_own_file(tmp_path: Path) -> None:
    archive = MaildirArchive(tmp_path, ["ham"], 30, clock=lambda: T0)
    a = archive.store("abc-01", "ham", b"first", T0)
    b = archive.store("abc-01", "ham", b"second", T0)
    assert a == b and (tmp_path / str(a)).read_bytes() == b"second"
    assert len(os.listdir(tmp_path / "2027-01-15" / "ham" / "new")) == 1


def test_retention_removes_old_days_on_a_new_day(tmp_path: Path) -> None:
    now = [T0]
    archive = MaildirArchive(tmp_path, ["spam"], 2, clock=lambda: now[0])
    for day in range(4):
        now[0] = T0 + day * DAY
        archive.store(f"m{day}", "spam", b"x", now[0])
    (tmp_path / "notes.txt").write_text("kept")
    assert sorted(os.listdir(tmp_path)) == ["2027-01-17", "2027-01-18", "notes.txt"]


def test_results_retention(tmp_path: Path) -> None:
    for day in ("2027-01-01", "2027-01-14", "2027-01-15"):
        (tmp_path / f"results-{day}.jsonl").write_text("{}\n")
    (tmp_path / "dedupe.sqlite").write_bytes(b"")
    with ResultSink(tmp_path, clock=lambda: T0, retention_days=2) as sink:
        sink.write({"id": "x"})
    assert sorted(os.listdir(tmp_path)) == [
        "dedupe.sqlite", "results-2027-01-14.jsonl", "results-2027-01-15.jsonl"]
    assert prune_days(tmp_path, 0, T0 + 100 * DAY) == []


def test_processor_archives_by_verdict_and_records_the_path(tmp_path: Path) -> None:
    archive = MaildirArchive(tmp_path, ["bounce", "virus"], 30, clock=lambda: T0)
    proc = Processor(scanner=None, scan_limit_bytes=1 << 20, archive=archive)
    r = proc.process("m1", envelope.frame(mb.dsn(), envelope.Envelope(sender="")), T0, 0).to_dict()
    assert r["verdict"] == "bounce"
    assert (tmp_path / r["archived"]).read_bytes() == mb.dsn()  # no envelope line
    r = proc.process("m2", b"\x00garbage" + mb.EICAR, T0, 0).to_dict()
    assert r["verdict"] == "virus" and r["archived"].startswith("2027-01-15/virus/")
    r = proc.process("m3", envelope.frame(mb.plain()), T0, 0).to_dict()
    assert r["verdict"] == "not_scanned" and r["archived"] is None
    assert r["timings_ms"]["archive"] >= 0


def test_an_archive_that_cannot_write_is_recorded_as_false(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        blocker = tmp_path / "file-in-the-way"
        blocker.write_text("")
        directory = blocker / "archive"  # below a file: fails even for root
    else:
        directory = tmp_path / "ro"
        directory.mkdir(mode=0o500)
    archive = MaildirArchive(directory, ["bounce"], 30, clock=lambda: T0)
    proc = Processor(scanner=None, scan_limit_bytes=1 << 20, archive=archive)
    r = proc.process("m1", envelope.frame(mb.dsn()), T0, 0).to_dict()
    assert r["verdict"] == "bounce" and r["archived"] is False
    assert proc.archive_errors == 1


@pytest.mark.parametrize("verdict", ["spam", "duplicate"])
def test_names_are_safe_for_any_id(tmp_path: Path, verdict: str) -> None:
    archive = MaildirArchive(tmp_path, [verdict], 30, clock=lambda: T0)
    rel = archive.store("../../etc/x", verdict, b"x", T0)
    assert rel is not None and (tmp_path / rel).parent == tmp_path / "2027-01-15" / verdict / "new"
