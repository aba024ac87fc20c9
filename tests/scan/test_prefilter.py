"""Prefilters (ringtrap.scan.prefilter) on real messages and on messages the tests build."""

from __future__ import annotations

import mailbuild as mb
import pytest

from ringtrap.base.envelope import Envelope
from ringtrap.scan import extract, mime, prefilter

LIMIT = 500 * 1024


def judge(data: bytes, env: Envelope | None = None, limit: int = LIMIT,
          checks: tuple[str, ...] = prefilter.CHECKS) -> tuple[str, str] | None:
    msg = mime.parse(data)
    return prefilter.check(msg, data, env or Envelope(), len(data), limit,
                           extract.attachments(msg), checks)


def test_the_debian_samples_pass_every_prefilter() -> None:
    if not mb.SPAM.exists():
        pytest.skip("Debian's spamassassin samples are not installed")
    assert judge(mb.SPAM.read_bytes()) is None
    # a list message from a real person, with Precedence: list, is no bounce or auto-reply
    assert judge(mb.HAM.read_bytes(), Envelope(sender="tbtf-approval@world.std.com")) is None


# -- bounces -----------------------------------------------------------------------


def test_dsn_from_mailer_daemon() -> None:
    assert judge(mb.dsn()) == ("bounce", "From mailer-daemon")


def test_dsn_recognised_by_its_report_type_alone() -> None:
    assert judge(mb.dsn(envelope_from_header=False)) == ("bounce", "delivery status report")


def test_null_envelope_sender_is_a_bounce() -> None:
    assert judge(mb.plain(), Envelope(sender="")) == ("bounce", "null envelope sender")
    # unknown (None) is not null
    assert judge(mb.plain(), Envelope(sender=None)) is None


def test_null_return_path_counts_only_without_an_envelope() -> None:
    data = mb.plain(extra="Return-Path: <>\n")
    assert judge(data) == ("bounce", "null Return-Path")
    assert judge(data, Envelope(sender="real@example.com")) is None


@pytest.mark.parametrize("sender", ["MAILER-DAEMON@mx.example.net", "postmaster@example.net"])
def test_bounce_senders_in_the_envelope(sender: str) -> None:
    local = sender.partition("@")[0].lower()
    assert judge(mb.plain(), Envelope(sender=sender)) == ("bounce", f"envelope sender {local}")


def test_postmaster_in_from() -> None:
    data = mb.plain(sender="Postmaster <postmaster@example.net>")
    assert judge(data) == ("bounce", "From postmaster")


def test_other_reports_are_not_bounces() -> None:
    data = mb.multipart([mb.text_part("feedback\n")], subtype="report",
                        params="; report-type=feedback-report")
    assert judge(data) is None


# -- auto-replies ---------------------------------------------------------------------


@pytest.mark.parametrize(("extra", "reason"), [
    ("Auto-Submitted: auto-replied\n", "Auto-Submitted: auto-replied"),
    ("Auto-Submitted: auto-generated; owner-email=x@example.com\n",
     "Auto-Submitted: auto-generated"),
    ("X-Autoreply: yes\n", "x-autoreply field"),
    ("Precedence: auto_reply\n", "Precedence: auto_reply"),
])
def test_auto_reply_markers(extra: str, reason: str) -> None:
    assert judge(mb.autoreply(extra)) == ("autoreply", reason)


def test_auto_submitted_no_is_not_an_auto_reply() -> None:
    assert judge(mb.autoreply("Auto-Submitted: no\n")) is None


def test_out_of_office_subject() -> None:
    data = mb.autoreply("", subject="Out of Office: back on Monday")
    assert judge(data) == ("autoreply", "subject starts with 'out of office'")
    assert judge(mb.autoreply("", subject="Automatic reply: hello"))[0] == "autoreply"


# -- viruses -----------------------------------------------------------------------


def test_eicar_in_the_body() -> None:
    data = mb.plain("test file:\n" + mb.EICAR.decode() + "\n")
    assert judge(data) == ("virus", "EICAR test string")


def test_eicar_in_a_base64_attachment() -> None:
    data = mb.with_attachment("eicar.com.txt", mb.EICAR, "text/plain")
    assert mb.EICAR not in data  # only the decoded part holds it
    assert judge(data) == ("virus", "EICAR test string")


def test_executable_by_extension() -> None:
    data = mb.with_attachment("invoice.pdf.exe", b"not really a program")
    assert judge(data) == ("virus", "executable attachment 'invoice.pdf.exe'")


def test_executable_by_content_under_a_harmless_name() -> None:
    data = mb.with_attachment("invoice.pdf", mb.PE_HEAD)
    assert judge(data) == ("virus", "Windows executable (MZ header) in 'invoice.pdf'")


def test_executable_inside_a_zip() -> None:
    data = mb.with_attachment("docs.zip", mb.zip_bytes({"readme.txt": b"hello",
                                                        "scan.scr": b"x"}))
    assert judge(data) == ("virus", "executable 'scan.scr' in archive 'docs.zip'")


def test_pe_content_inside_a_zip_under_a_harmless_name() -> None:
    data = mb.with_attachment("docs.zip", mb.zip_bytes({"photo.jpg": mb.PE_HEAD}))
    assert judge(data) == (
        "virus", "Windows executable (MZ header) 'photo.jpg' in archive 'docs.zip'")


def test_executable_in_a_zip_in_a_zip() -> None:
    inner = mb.zip_bytes({"setup.dat": mb.PE_HEAD})
    data = mb.with_attachment("outer.zip", mb.zip_bytes({"inner.zip": inner}))
    verdict, reason = judge(data)  # type: ignore[misc]
    assert verdict == "virus" and "'setup.dat'" in reason and "'outer.zip'" in reason


def test_harmless_zip_and_broken_zip_pass() -> None:
    assert judge(mb.with_attachment("docs.zip", mb.zip_bytes({"a.txt": b"hi"}))) is None
    broken = b"PK\x03\x04" + b"\x00" * 100
    assert judge(mb.with_attachment("docs.zip", broken)) is None


def test_text_starting_with_mz_is_no_program() -> None:
    assert judge(mb.plain("MZ is how the letter starts.\n")) is None


# -- size, parse failures, order, switches ---------------------------------------------


def test_oversize_is_not_scanned() -> None:
    data = mb.plain()
    assert judge(data, limit=len(data)) is None
    verdict, reason = judge(data, limit=len(data) - 1)  # type: ignore[misc]
    assert verdict == "oversize" and reason.startswith(f"{len(data)} bytes")


def test_what_cannot_be_parsed_is_judged_like_the_rest() -> None:
    # a parse failure is no reason to keep a message from spamd
    assert judge(b"\x00\x01 binary garbage") is None
    assert judge(b"\x00\x01 binary garbage" + mb.EICAR) == ("virus", "EICAR test string")
    assert judge(b"\n", Envelope(sender="")) == ("bounce", "null envelope sender")


def test_a_virus_in_a_bounce_is_a_virus() -> None:
    data = mb.multipart([mb.text_part("undeliverable\n"),
                         mb.attachment("x.exe", b"MZ...")],
                        subtype="report", params="; report-type=delivery-status",
                        sender="MAILER-DAEMON@example.net")
    assert judge(data)[0] == "virus"  # type: ignore[index]
    assert judge(data, checks=("bounce",)) == ("bounce", "From mailer-daemon")


def test_checks_can_be_turned_off() -> None:
    assert judge(mb.dsn(), checks=()) is None
    assert judge(mb.autoreply(), checks=("virus", "bounce")) is None
