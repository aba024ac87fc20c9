"""Tests of message work (ringtrap.scan.processing): records, header parsing, scanning.

The two sample messages Debian ships are scanned by a real private spamd (the
session's ``spamd_server`` from conftest); the parsing tests run without one
(spamd None) and feed hostile input.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import tempfile
from pathlib import Path

import pytest
from canned import CannedReply, report_reply
from hypothesis import given, settings
from hypothesis import strategies as st
from spamd_fixture import SpamdProcess

from ringtrap.base import envelope
from ringtrap.base.envelope import Envelope
from ringtrap.scan.mime import HEADER_WINDOW, MAX_HEADERS, MAX_VALUE_CHARS, decode_words
from ringtrap.scan.processing import REASON_SPAMD_OFF, Processor
from ringtrap.scan.record import RECORD_KEYS
from ringtrap.scan.spamd import ScanConnectionError, SpamdClient

EXAMPLES = Path("/usr/share/doc/spamassassin/examples")
SPAM = EXAMPLES / "sample-spam.txt"
HAM = EXAMPLES / "sample-nonspam.txt"
MSGID = "0640c3f1a2b3c-0004d2"
RECEIVED = 1714567890.123456
ENV = Envelope(
    sender="bounce@example.org",
    recipients=("trap1@example.net", "trap2@example.net"),
    client_address="192.0.2.7",
    client_helo="mx.example.org",
    queue_id="4Vabc123",
)


@pytest.fixture
def scanner(spamd_server: SpamdProcess) -> Processor:
    client = SpamdClient(spamd_server.unix_address, connect_timeout=5.0, timeout=60.0)
    return Processor(scanner=client, scan_limit_bytes=500 * 1024)


def offline() -> Processor:
    return Processor(scanner=None, scan_limit_bytes=500 * 1024)


def missing_spamd() -> SpamdClient:
    """A client whose every call fails: nothing listens at its socket."""
    path = Path(tempfile.gettempdir()) / f"ringtrap-no-spamd-{id(object())}.sock"
    return SpamdClient(f"unix:{path}", connect_timeout=1.0, timeout=2.0)


def check_shape(record: dict[str, object]) -> None:
    assert list(record) == list(RECORD_KEYS)
    json.dumps(record)  # must be serialisable as it stands


# -- real spamd ------------------------------------------------------------------


@pytest.mark.spamd
def test_spam_sample_is_spam(scanner: Processor) -> None:
    message = SPAM.read_bytes()
    record = scanner.process(MSGID, envelope.frame(message, ENV), RECEIVED, 2).to_dict()
    check_shape(record)
    assert record["verdict"] == "spam"
    assert isinstance(record["score"], float) and isinstance(record["required"], float)
    assert record["score"] >= record["required"]
    assert record["rules"] and "GTUBE" in record["rules"]
    assert record["reason"] is None
    assert record["size"] == len(message)  # the envelope line is not counted
    assert record["envelope"] == ENV.to_dict()
    assert record["envelope"]["recipients"] == ["trap1@example.net", "trap2@example.net"]
    assert record["subject"] == "Test spam mail (GTUBE)"
    assert record["message_id"] == "<GTUBE1.1010101@example.net>"
    assert record["from"] == "Sender <sender@example.net>"
    assert record["id"] == MSGID and record["attempts"] == 2
    assert record["scanned_ms"] is not None and record["scanned_ms"] > 0


@pytest.mark.spamd
def test_spam_sample_record_has_what_an_operator_mines(scanner: Processor) -> None:
    message = SPAM.read_bytes()
    record = scanner.process(MSGID, envelope.frame(message, ENV), RECEIVED, 0).to_dict()
    assert (record["relay_ip"], record["relay_helo"], record["relay_source"]) == (
        "192.0.2.7", "mx.example.org", "mta")
    assert record["from_domain"] == "example.net"
    assert record["return_path_domain"] == "example.org"  # the envelope sender
    assert record["reply_to_domain"] is None
    assert record["date"] == "Wed, 23 Jul 2003 23:30:00 +0200"
    assert record["urls"] == [] and record["url_domains"] == [] and record["attachments"] == []
    body = message.split(b"\n\n", 1)[1]
    assert record["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert isinstance(record["fingerprint"], str) and len(record["fingerprint"]) == 32
    assert record["duplicate_of"] is None and record["defects"] == []
    assert record["archived"] is None  # no archive configured
    timings = record["timings_ms"]
    assert list(timings) == ["parse", "extract", "prefilter", "scan"]
    assert timings["scan"] == record["scanned_ms"]


@pytest.mark.spamd
def test_nonspam_sample_is_ham(scanner: Processor) -> None:
    message = HAM.read_bytes()
    record = scanner.process(MSGID, envelope.frame(message, ENV), RECEIVED, 0).to_dict()
    check_shape(record)
    assert record["verdict"] == "ham"
    assert record["score"] < record["required"]
    # with local tests only, this sample hits no rule at all (score 0.0)
    assert isinstance(record["rules"], list)
    assert all(isinstance(rule, str) and rule for rule in record["rules"])
    assert record["subject"] == "TBTF ping for 2001-04-20: Reviving"
    assert record["from"] == "Keith Dawson <dawson@world.std.com>"
    assert record["envelope"]["client_helo"] == "mx.example.org"
    assert record["url_domains"] == [
        "tbtf.com", "quicktopic.com", "slashdot.org", "userland.com", "sitescooper.org",
        "pgp.com"]


@pytest.mark.spamd
def test_payload_without_envelope_line_is_the_whole_message(scanner: Processor) -> None:
    message = SPAM.read_bytes()
    record = scanner.process(MSGID, message, RECEIVED, 0).to_dict()
    assert record["envelope"] == {}
    assert record["size"] == len(message)
    assert record["verdict"] == "spam"


# -- no scan ---------------------------------------------------------------------


def test_spamd_off_is_not_scanned() -> None:
    record = offline().process(MSGID, envelope.frame(SPAM.read_bytes(), ENV), RECEIVED, 0).to_dict()
    check_shape(record)
    assert record["verdict"] == "not_scanned"
    assert record["reason"] == REASON_SPAMD_OFF
    assert record["score"] is None and record["required"] is None
    assert record["rules"] == [] and record["scanned_ms"] is None
    # headers and envelope are still recorded
    assert record["subject"] == "Test spam mail (GTUBE)"
    assert record["envelope"] == ENV.to_dict()


def test_over_scan_limit_never_contacts_spamd() -> None:
    message = SPAM.read_bytes()
    proc = Processor(scanner=missing_spamd(), scan_limit_bytes=len(message) - 1)
    record = proc.process(MSGID, envelope.frame(message), RECEIVED, 0).to_dict()
    assert record["verdict"] == "oversize"
    assert record["reason"] == f"{len(message)} bytes over the scan limit of {len(message) - 1}"
    assert record["size"] == len(message)
    assert record["scanned_ms"] is None


def test_at_scan_limit_spamd_is_contacted_and_retryable_errors_pass_through() -> None:
    message = SPAM.read_bytes()
    proc = Processor(scanner=missing_spamd(), scan_limit_bytes=len(message))
    with pytest.raises(ScanConnectionError) as info:
        proc.process(MSGID, envelope.frame(message), RECEIVED, 0)
    assert info.value.retryable


class FakeSpamd(CannedReply):
    """A one-shot spamd answering its one request with a fixed reply."""

    def __init__(self, reply: bytes) -> None:
        self.dir = tempfile.TemporaryDirectory(prefix="rt-fake-")
        self.path = f"{self.dir.name}/s.sock"
        super().__init__(self.path, reply)

    def close(self) -> None:
        super().close()
        self.dir.cleanup()


def test_verdict_is_spamds_flag_not_recomputed_from_the_score() -> None:
    reply = report_reply(True, 1.5, 5.0, [("RULE_B", 1.0), ("RULE_A", 0.5)])
    fake = FakeSpamd(reply)
    try:
        client = SpamdClient(f"unix:{fake.path}", connect_timeout=2.0, timeout=5.0)
        record = Processor(scanner=client, scan_limit_bytes=1 << 20).process(
            MSGID, envelope.frame(HAM.read_bytes()), RECEIVED, 0
        ).to_dict()
    finally:
        fake.close()
    assert (record["verdict"], record["score"], record["required"]) == ("spam", 1.5, 5.0)
    assert record["rules"] == ["RULE_A", "RULE_B"]
    assert record["symbols"] == {"RULE_A": {"score": 0.5, "options": []},
                                 "RULE_B": {"score": 1.0, "options": []}}


def test_non_retryable_spamd_error_is_recorded_as_error() -> None:
    fake = FakeSpamd(b"SPAMD/1.5 76 Bad header line: (Content-Length mismatch)\r\n")
    try:
        client = SpamdClient(f"unix:{fake.path}", connect_timeout=2.0, timeout=5.0)
        record = Processor(scanner=client, scan_limit_bytes=1 << 20).process(
            MSGID, envelope.frame(HAM.read_bytes(), ENV), RECEIVED, 1
        ).to_dict()
    finally:
        fake.close()
    check_shape(record)
    assert record["verdict"] == "error"
    assert "76" in record["reason"]
    assert record["score"] is None and record["rules"] == []
    assert record["envelope"] == ENV.to_dict()


# -- record fields -----------------------------------------------------------------


def test_received_is_iso_utc_with_offset() -> None:
    record = offline().process(MSGID, b"Subject: x\n\nbody\n", RECEIVED, 0).to_dict()
    when = datetime.datetime.fromisoformat(record["received"])
    assert when.utcoffset() == datetime.timedelta(0)
    assert when.timestamp() == pytest.approx(RECEIVED, abs=1e-6)
    assert record["received"].endswith("+00:00")


def test_missing_headers_are_null() -> None:
    record = offline().process(MSGID, envelope.frame(b"just a body line\n"), RECEIVED, 0).to_dict()
    assert record["from"] is None and record["subject"] is None
    assert record["message_id"] is None


# -- header parsing on hostile input ---------------------------------------------------


def parse_headers(message: bytes) -> dict[str, str]:
    """From, Subject and Message-ID as the record of ``message`` gives them, when present."""
    record = offline().process(MSGID, envelope.frame(message), RECEIVED, 0).to_dict()
    return {key: record[key] for key in ("from", "subject", "message_id")
            if record[key] is not None}


def test_rfc2047_words_are_decoded() -> None:
    raw = (
        b"From: =?utf-8?q?J=C3=B6rg_M=C3=BCller?= <jm@example.org>\r\n"
        b"Subject: =?koi8-r?B?8NLJ18XU?= =?UTF-8?Q?_w=C3=B6rld?=\r\n"
        b"\tand more\r\n"
        b"Message-ID: <abc@example.org>\r\n\r\nbody\r\n"
    )
    headers = parse_headers(raw)
    assert headers == {
        "from": "Jörg Müller <jm@example.org>",
        "subject": "Привет wörld and more",
        "message_id": "<abc@example.org>",
    }


def test_character_split_across_two_words_survives() -> None:
    # "ö" is C3 B6 in UTF-8; bulk mailers cut words at byte boundaries
    assert decode_words(b"=?utf-8?Q?a=C3?= =?utf-8?Q?=B6b?=") == "aöb"
    assert decode_words(b"=?utf-8?B?w6E=?= =?utf-8?B?w7Y=?=") == "áö"


@pytest.mark.parametrize(
    "raw",
    [
        b"=?no-such-charset?Q?abc?=",
        b"=?base64?Q?abc?=",  # a codec, but not a text encoding
        b"=?idna?Q?abc?=",  # refuses errors="replace"
        b"=?utf-8?B?!!!***?=",
        b"=?utf-8?B?A?=",
        b"=?utf-8?Q?=ZZ=C3?=",
        b"=?utf-8?X?abc?=",
        b"=??Q?abc?=",
        b"=?utf-8\x00?Q?abc?=",
        b"=?" + b"x" * 5000 + b"?Q?abc?=",
        b"\xff\xfe\x00 =?utf-8?Q?\xff?=",
    ],
)
def test_broken_encoded_words_never_raise(raw: bytes) -> None:
    assert isinstance(decode_words(raw), str)
    record = offline().process(MSGID, b"Subject: " + raw + b"\n\nbody\n", RECEIVED, 0).to_dict()
    assert isinstance(record["subject"], str)


def test_garbage_bytes_give_a_record() -> None:
    garbage = bytes(range(256)) * 400
    record = offline().process(MSGID, garbage, RECEIVED, 0).to_dict()
    check_shape(record)
    assert record["size"] == len(garbage)
    assert record["subject"] is None
    assert (record["verdict"], record["reason"], record["parse_error"]) == (
        "not_scanned", REASON_SPAMD_OFF, "no header fields")


GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
UNPARSEABLE = {
    "bsmtp": b"HELO relay.example.org\r\nMAIL FROM:<s@example.com>\r\nRCPT TO:<t@example.org>"
             b"\r\nDATA\r\nSubject: hi\r\n\r\n" + GTUBE + b"\r\n.\r\nQUIT\r\n",
    "lone newline": b"\n",
    "body without header": b"Cheap watches, best prices in town.\r\n\r\n" + GTUBE + b"\r\n",
}


@pytest.mark.spamd
@pytest.mark.parametrize("name", sorted(UNPARSEABLE))
def test_what_cannot_be_parsed_is_scanned(name: str, scanner: Processor) -> None:
    record = scanner.process(MSGID, envelope.frame(UNPARSEABLE[name], ENV), RECEIVED, 0).to_dict()
    assert record["parse_error"] == "no header fields"
    assert record["verdict"] in ("spam", "ham") and record["score"] is not None, record
    assert (record["verdict"] == "spam") == (record["score"] >= record["required"])
    if GTUBE in UNPARSEABLE[name]:
        assert "GTUBE" in record["rules"]


def test_ten_thousand_headers_are_capped() -> None:
    many = b"".join(b"X-Filler-%d: value\r\n" % i for i in range(10_000))
    message = b"Subject: first\r\n" + many + b"From: late@example.org\r\n\r\nbody\r\n"
    record = offline().process(MSGID, envelope.frame(message), RECEIVED, 0).to_dict()
    assert record["subject"] == "first"
    assert record["from"] is None  # beyond the header cap and the window
    # a wanted header just inside the cap is still found
    near = b"".join(b"X-F%d: v\n" % i for i in range(MAX_HEADERS - 1))
    assert parse_headers(near + b"Subject: in\n\n")["subject"] == "in"
    assert "subject" not in parse_headers(near + b"X-Last: v\nSubject: out\n\n")


def test_headers_past_the_window_are_not_read() -> None:
    big = b"X-Big: " + b"a" * HEADER_WINDOW + b"\n"
    assert parse_headers(big + b"Subject: late\n\n") == {}


def test_first_occurrence_wins_and_values_are_cut() -> None:
    headers = parse_headers(
        b"Subject: one\nsubject: two\nFROM: " + b"x" * 10_000 + b"\n\n"
    )
    assert headers["subject"] == "one"
    assert headers["from"] == "x" * MAX_VALUE_CHARS


def test_mbox_separator_line_is_skipped_and_body_is_not_headers() -> None:
    headers = parse_headers(
        b"From someone@example.org Mon Jan  1 00:00:00 2024\n"
        b"Subject: real\n\nFrom: not-a-header@example.org\n"
    )
    assert headers == {"subject": "real"}


def test_forged_envelope_prefix_is_handled() -> None:
    # a payload that starts like an envelope line but is not one
    payload = b"RTM1 " + b"[" * 100_000 + b"\nSubject: x\n\n"
    record = offline().process(MSGID, payload, RECEIVED, 0).to_dict()
    assert record["envelope"] == {}
    assert record["size"] == len(payload)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_never_crash(payload: bytes) -> None:
    record = offline().process(MSGID, payload, RECEIVED, 0).to_dict()
    check_shape(record)
    for key in ("from", "subject", "message_id"):
        assert record[key] is None or isinstance(record[key], str)


_word = st.builds(
    lambda cs, enc, text: b"=?" + cs + b"?" + enc + b"?" + text + b"?=",
    st.sampled_from([b"utf-8", b"iso-8859-1", b"koi8-r", b"gb2312", b"utf-16", b"bogus",
                     b"base64", b"idna", b"utf-8*en", b""]),
    st.sampled_from([b"Q", b"b", b"B", b"q", b"x"]),
    st.binary(max_size=40).filter(lambda b: b"?" not in b),
)
_value = st.lists(st.one_of(_word, st.binary(max_size=20)), max_size=6).map(b" ".join)
_line = st.builds(
    lambda name, value, fold: name + b": " + value + (b"\r\n\t" + value if fold else b""),
    st.sampled_from([b"Subject", b"From", b"Message-ID", b"X-Junk", b"subject", b"Bad Name"]),
    _value,
    st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_line, max_size=30), st.sampled_from([b"\n", b"\r\n"]))
def test_header_shaped_garbage_never_crashes(lines: list[bytes], eol: bytes) -> None:
    message = eol.join(lines) + eol + eol + b"body"
    record = offline().process(MSGID, envelope.frame(message, ENV), RECEIVED, 0).to_dict()
    check_shape(record)
    assert record["envelope"] == ENV.to_dict()
    for key in ("from", "subject", "message_id"):
        value = record[key]
        assert value is None or (isinstance(value, str) and len(value) <= MAX_VALUE_CHARS)
