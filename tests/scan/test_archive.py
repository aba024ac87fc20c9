"""The Maildir archive (ringtrap.scan.archive) and the retention of days and result files."""

from __future__ import annotations

import email
import os
import shutil
import socket
import subprocess
import time
import unicodedata
from pathlib import Path

import mailbuild as mb
import pytest

from ringtrap import config
from ringtrap.base import envelope
from ringtrap.base.envelope import Envelope
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


# -- the envelope as trace fields (archive.trace_headers) ----------------------------------

TRAP_ENV = Envelope(sender="bounce@example.org", recipients=("trap1@example.net",
                                                            "trap2@example.net"),
                    client_address="192.0.2.7", client_helo="mx.example.org", queue_id="Q1")


def _traced(tmp_path: Path, message: bytes, env: Envelope) -> bytes:
    archive = MaildirArchive(tmp_path, ["spam"], 30, clock=lambda: T0, trace_host="trap.example")
    rel = archive.store("abc-01", "spam", memoryview(message), T0 - 5, env)
    assert rel is not None
    return (tmp_path / rel).read_bytes()


def test_trace_fields_head_the_message_as_delivered(tmp_path: Path) -> None:
    data = mb.plain().replace(b"\r\n", b"\n")
    stored = _traced(tmp_path, data, TRAP_ENV)
    block, message = stored[:len(stored) - len(data)], stored[len(stored) - len(data):]
    assert message == data
    assert block == (
        b"Return-Path: <bounce@example.org>\n"
        b"X-Original-To: trap1@example.net\nDelivered-To: trap1@example.net\n"
        b"X-Original-To: trap2@example.net\nDelivered-To: trap2@example.net\n"
        b"Received: from mx.example.org ([192.0.2.7])\n"
        b"\tby trap.example with ringtrap id abc-01; Fri, 15 Jan 2027 07:59:55 +0000\n")
    parsed = email.message_from_bytes(stored)
    assert parsed["Return-Path"] == "<bounce@example.org>"
    assert parsed.get_all("Delivered-To") == ["trap1@example.net", "trap2@example.net"]
    assert parsed["Subject"] == "Hello"
    assert parsed.get_all("Received")[0].startswith("from mx.example.org ([192.0.2.7])")


def test_trace_fields_follow_the_message_line_ends_and_an_mbox_line(tmp_path: Path) -> None:
    crlf = b"Subject: x\r\n\r\nbody\r\n"
    assert _traced(tmp_path, crlf, TRAP_ENV).startswith(b"Return-Path: <bounce@example.org>\r\n")
    assert b"\n" not in _traced(tmp_path, crlf, TRAP_ENV).replace(b"\r\n", b"")
    mbox = b"From bounce@example.org Thu Nov 26 10:00:00 2026\nSubject: x\n\nbody\n"
    stored = _traced(tmp_path, mbox, TRAP_ENV)
    assert stored.startswith(b"From bounce@example.org Thu Nov 26 10:00:00 2026\nReturn-Path:")
    assert stored.endswith(b"\nSubject: x\n\nbody\n")


def test_trace_fields_of_a_thin_envelope(tmp_path: Path) -> None:
    thin = Envelope(sender="", client_address="2001:db8::7")
    ipv6 = _traced(tmp_path, b"Subject: x\n\nx\n", thin)
    assert ipv6.startswith(b"Return-Path: <>\nReceived: from unknown ([IPv6:2001:db8::7])\n\tby ")
    none = _traced(tmp_path, b"Subject: x\n\nx\n", Envelope(client_address="unknown"))
    assert none.startswith(b"Received: by trap.example with ringtrap id abc-01; ")


@pytest.mark.parametrize("hostile", [
    "a@b\r\nX-Injected: 1", "a@b\nX-Injected: 1", "a@b\rX-Injected: 1", "a@b\x00\x0bX",
    "a@b\u2028X-Injected: 1", "a@b\x85X-Injected: 1", "a@b\u2029X", "a@b\ufeff", "x" * 5000,
    "<a@b> (forged) \tX", "caf\u00e9@b\u00fccher.example",
])
def test_hostile_envelope_values_cannot_break_the_block(tmp_path: Path, hostile: str) -> None:
    env = Envelope(sender=hostile, recipients=(hostile,), client_address="192.0.2.7",
                   client_helo=f"evil ([198.51.100.6]) by {hostile};")
    data = b"Subject: real\n\nbody\n"
    stored = _traced(tmp_path, data, env)
    assert stored.endswith(data)
    block = stored[:-len(data)].decode()
    lines = block.split("\n")
    assert [line.split(":", 1)[0] for line in lines if not line.startswith("\t")] == [
        "Return-Path", "X-Original-To", "Delivered-To", "Received", ""]
    assert all(len(line) < 1000 for line in lines)
    assert not any(unicodedata.category(c)[0] == "C" or c in "\u2028\u2029"
                   for c in block.replace("\n", "").replace("\t", ""))
    parsed = email.message_from_bytes(stored)
    assert parsed["X-Injected"] is None and parsed["Subject"] == "real"
    received = parsed["Received"]
    # one relay, the MTA's: the HELO cannot forge a second address literal or clause
    assert received.count("[") == 1 and "([192.0.2.7])" in received
    assert received.count(";") == 1 and received.count("by ") == 1


def test_trace_headers_off_keeps_the_copy_as_delivered(tmp_path: Path) -> None:
    archive = MaildirArchive(tmp_path, ["spam"], 30, clock=lambda: T0)
    data = mb.plain()
    rel = archive.store("abc-01", "spam", memoryview(data), T0, TRAP_ENV)
    assert rel is not None and (tmp_path / rel).read_bytes() == data


@pytest.mark.spamd
def test_spamassassin_reads_the_relay_from_the_archived_copy(tmp_path: Path) -> None:
    """SpamAssassin's own parser sees the trap's relay in the archived file."""
    spamassassin = shutil.which("spamassassin")
    if spamassassin is None:
        pytest.skip("spamassassin is not installed (Debian package 'spamassassin')")
    stored = tmp_path / "copy"
    stored.write_bytes(_traced(tmp_path / "a", mb.plain(), TRAP_ENV))
    home = tmp_path / "home"
    home.mkdir()
    with open(stored, "rb") as stdin:
        out = subprocess.run(
            [spamassassin, "--local", "--test-mode", "--cf=use_bayes 0",
             "--cf=add_header all Relays-Untrusted _RELAYSUNTRUSTED_"],
            stdin=stdin, capture_output=True, timeout=120,
            env=dict(os.environ, HOME=str(home), LC_ALL="C"))
    assert out.returncode == 0, out.stderr[-2000:]
    relays = email.message_from_bytes(out.stdout)["X-Spam-Relays-Untrusted"]
    assert relays is not None, out.stdout[:2000]
    relays = " ".join(relays.split())
    assert relays.startswith("[ ip=192.0.2.7 rdns= helo=mx.example.org by=trap.example "), relays
    assert "id=abc-01" in relays


@pytest.mark.parametrize("trace", [True, False])
def test_the_processor_archives_with_the_trace_fields_configured(tmp_path: Path,
                                                                 trace: bool) -> None:
    cfg = config.from_dict({"archive": {"dir": str(tmp_path / "archive"),
                                        "trace_headers": trace},
                            "results": {"dir": str(tmp_path / "results")}})
    proc = Processor.from_config(cfg, None)
    data = b"Subject: x\n\nbody\n"
    record = proc.process("abc-02", envelope.frame(data, TRAP_ENV), time.time(), 0)
    assert isinstance(record.archived.path, str)
    stored = (tmp_path / "archive" / record.archived.path).read_bytes()
    assert stored.endswith(data)
    assert stored.startswith(b"Return-Path: <bounce@example.org>\n") is trace
    assert (stored == data) is not trace
    if trace:
        assert f"by {socket.gethostname()} with ringtrap id abc-02;".encode() in stored
