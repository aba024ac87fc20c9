"""Tests of the SPAMC/1.5 client (ringtrap.scan.spamd).

Three parts: the reply parsers and address parsing on bytes and strings; the
error paths against tiny fake servers (the only place a fake spamd is used);
and everything else against a real spamd, with the ``spamc`` binary as the
oracle for scores, thresholds, verdicts and rule lists.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import os
import pickle
import random
import socket
import struct
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from hypothesis import given
from hypothesis import strategies as st
from spamd_fixture import SPAMC, SpamdProcess, spamc_missing_reason, spamd_missing_reason

from ringtrap.scan.spamd import (
    RETRYABLE_CODES,
    ScanConnectionError,
    ScanError,
    ScanProtocolError,
    ScanTimeout,
    SpamdClient,
    SpamdResponseError,
    SpamdResult,
    TellResult,
    parse_address,
    parse_ping_reply,
    parse_report_rules,
    parse_scan_reply,
    parse_tell_reply,
)

EXAMPLES = Path("/usr/share/doc/spamassassin/examples")
GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


# -- fixtures ------------------------------------------------------------------


@pytest.fixture(params=["unix", "tcp"])
def client(request: pytest.FixtureRequest, spamd_server: SpamdProcess) -> SpamdClient:
    """A client of the module's spamd over each transport."""
    address = spamd_server.unix_address if request.param == "unix" else spamd_server.tcp_address
    return SpamdClient(address, connect_timeout=5.0, timeout=60.0)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory short enough for Unix socket paths (tmp_path may not be)."""
    with tempfile.TemporaryDirectory(prefix="rt-") as d:
        yield Path(d)


# -- the corpus ------------------------------------------------------------------


def _date() -> bytes:
    return email.utils.formatdate().encode()


def _headers(subject: bytes, extra: bytes = b"") -> bytes:
    return (
        b"Received: from mx.example.net (mx.example.net [192.0.2.10])\n"
        b"\tby trap.example.org (Postfix) with ESMTP id 4AB12;\n\t" + _date() + b"\n"
        b"From: Sender <sender@example.net>\n"
        b"To: trap@example.org\n"
        b"Subject: " + subject + b"\n"
        b"Date: " + _date() + b"\n"
        b"Message-ID: <" + uuid.uuid4().hex.encode() + b"@example.net>\n" + extra
    )


def _multipart(subject: bytes, subtype: bytes, *parts: bytes) -> bytes:
    """A MIME message; each part is its header block, a blank line and its body."""
    boundary = b"=_ringtrap_boundary_42"
    return (
        _headers(
            subject,
            b"MIME-Version: 1.0\nContent-Type: multipart/"
            + subtype
            + b'; boundary="'
            + boundary
            + b'"\n',
        )
        + b"\n"
        + b"".join(b"--" + boundary + b"\n" + part + b"\n" for part in parts)
        + b"--"
        + boundary
        + b"--\n"
    )


def _build_corpus() -> dict[str, bytes]:
    rng = random.Random(1532)
    spammy = (
        b"Dear friend,\n\nCLICK HERE to claim your FREE prize!!! You have been selected to "
        b"receive $1,000,000 USD. Act now, limited time offer, 100% guaranteed, no risk.\n"
        b"Buy cheap viagra and cialis online without prescription. Lose weight fast!\n"
        b"http://cheap-pills.example.biz/buy-now?id=1234  Unsubscribe: reply REMOVE\n"
    )
    html = (
        b"<html><body bgcolor=#ffffff><p><font size=7 color=red><b>CLICK HERE!!!</b></font>"
        b"</p><p>Get your <a href='http://winner.example.biz/claim'>FREE iPhone</a> now."
        b"<img src='http://winner.example.biz/pixel.gif' width=1 height=1></p>"
        b"<p style='color:#fefefe'>hidden text hidden text</p></body></html>\n"
    )
    corpus: dict[str, bytes] = {}
    for name in ("sample-spam.txt", "sample-nonspam.txt"):
        path = EXAMPLES / name
        if path.exists():
            corpus[name] = path.read_bytes()
    corpus["gtube"] = _headers(b"test") + b"\n" + GTUBE + b"\n"
    corpus["headers-only"] = _headers(b"no body at all")
    corpus["body-only"] = b"Just one line of text and no header block.\n"
    corpus["latin1-8bit"] = (
        _headers(b"caf\xe9 cr\xe8me", b"Content-Type: text/plain; charset=iso-8859-1\n")
        + b"\nCaf\xe9, cr\xe8me br\xfbl\xe9e, \xa3100 \xbd price, na\xefve r\xe9sum\xe9.\n"
    )
    corpus["invalid-utf8"] = (
        _headers(b"broken \xff\xfe", b"Content-Type: text/plain; charset=utf-8\n")
        + b"\nInvalid: \xc3\x28 \xa0\xa1 \xe2\x28\xa1 \xf0\x28\x8c\xbc \xff\xfe\xfd\n"
    )
    corpus["nul-and-binary"] = (
        _headers(b"binary") + b"\n" + bytes(rng.randrange(256) for _ in range(4096)) + b"\0\0\n"
    )
    # Above spamc's 500 KB default limit (the oracle passes -s) and
    # SpamAssassin's 500 KB raw scan limit.
    corpus["large-ish"] = (
        _headers(b"newsletter") + b"\n" + (b"harmless newsletter text, " * 32 + b"\n") * 700
    )
    corpus["many-headers"] = (
        b"".join(
            b"Received: from relay%d.example.net (relay%d.example.net [192.0.2.%d])\n"
            b"\tby relay%d.example.org; " % (i, i, i % 250 + 1, i + 1) + _date() + b"\n"
            for i in range(150)
        )
        + b"".join(b"X-Custom-%d: value number %d\n" % (i, i) for i in range(300))
        + _headers(b"many headers")
        + b"\nbody\n"
    )
    corpus["html-only"] = (
        _headers(b"You are a WINNER", b"MIME-Version: 1.0\nContent-Type: text/html\n")
        + b"\n"
        + html
    )
    corpus["multipart-alternative"] = _multipart(
        b"FREE prize inside",
        b"alternative",
        b"Content-Type: text/plain\n\n" + spammy,
        b"Content-Type: text/html\n\n" + html,
    )
    corpus["base64-text"] = (
        _headers(
            b"encoded",
            b"MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n"
            b"Content-Transfer-Encoding: base64\n",
        )
        + b"\n"
        + base64.encodebytes(spammy * 3)
    )
    corpus["base64-attachment"] = _multipart(
        b"invoice attached",
        b"mixed",
        b"Content-Type: text/plain\n\nPlease see the attached invoice.",
        b'Content-Type: application/octet-stream; name="invoice.zip"\n'
        b"Content-Transfer-Encoding: base64\n"
        b'Content-Disposition: attachment; filename="invoice.zip"\n\n'
        + base64.encodebytes(bytes(rng.randrange(256) for _ in range(30000))),
    )
    corpus["quoted-printable"] = (
        _headers(
            b"=?utf-8?q?Gr=C3=BC=C3=9Fe?=",
            b"MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n"
            b"Content-Transfer-Encoding: quoted-printable\n",
        )
        + b"\nGr=C3=BC=C3=9Fe aus Z=C3=BCrich, a soft=\n line break and =3D signs.\n"
    )
    corpus["crlf"] = (_headers(b"crlf line ends") + b"\nline one\nline two\n").replace(
        b"\n", b"\r\n"
    )
    corpus["long-line"] = _headers(b"one long line") + b"\n" + b"word " * 6000 + b"\n"
    corpus["malformed-mime"] = (
        _headers(b"broken mime", b'MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="x')
        + b"\n--x\nContent-Type: text/html\nContent-Transfer-Encoding: base64\n\n"
        + b"!!!not base64 at all!!!\n--y--\n"
    )
    corpus["rfc2047-utf8"] = (
        _headers(
            b"=?UTF-8?B?" + base64.b64encode("Привет, 你好 🎉".encode()) + b"?=",
            b"MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n"
            b"Content-Transfer-Encoding: 8bit\n",
        )
        + b"\n"
        + "Ünïcödé text: Привет мир, 你好世界, emoji 🎉🚀.\n".encode()
    )
    corpus["raw-utf8-headers"] = (
        _headers("Überweisung für Sie".encode(), "X-Name: Jürgen Müller\n".encode()) + b"\nbody\n"
    )
    corpus["spammy-text"] = (
        _headers(b"URGENT!!! YOU HAVE WON $1,000,000 - CLAIM NOW", b"X-Mailer: Mass Mailer 9\n")
        + b"\n"
        + spammy * 4
    )
    corpus["nested-rfc822"] = _multipart(
        b"Fwd: offer",
        b"mixed",
        b"Content-Type: text/plain\n\nForwarded message below.",
        b"Content-Type: message/rfc822\n\n" + _headers(b"inner") + b"\n" + GTUBE,
    )
    corpus["mbox-from-line"] = (
        b"From sender@example.net Thu Nov 26 10:00:00 2026\n" + _headers(b"mbox") + b"\nhi\n"
    )
    corpus["previously-marked"] = (
        b"X-Spam-Checker-Version: SpamAssassin 4.0.1 on other.example\n"
        b"X-Spam-Flag: YES\nX-Spam-Level: ***********\n"
        b"X-Spam-Status: Yes, score=11.0 required=5.0 tests=FAKE autolearn=no\n"
        + _headers(b"[SPAM] marked elsewhere")
        + b"\n"
        + spammy
    )
    # many rules, some wrapping their description onto a second line
    corpus["lottery-html"] = (
        b"Received: from helo.example (unknown [203.0.113.9]) by trap.example with SMTP\n"
        b" id X; Thu, 3 Dec 2026 10:00:00 +0000\n"
        b'From: "PAYPAL SECURITY DEPARTMENT" <security@paypa1-verify.example.com>\n'
        b"Reply-To: winner@gmail.com\nTo: undisclosed-recipients:;\n"
        b"Subject: URGENT!!! YOU HAVE WON $5,000,000.00 USD CLAIM NOW\n"
        b"Date: Thu, 3 Dec 2031 10:00:00 +0000\nMIME-Version: 1.0\n"
        b"Content-Type: text/html; charset=iso-8859-1\n\n"
        b"<html><body><p>Dear Beneficiary,</p><p>We are pleased to inform you that you\n"
        b"have won the sum of $5,000,000.00 (FIVE MILLION UNITED STATES DOLLARS) in our\n"
        b"international lottery. To claim your prize send your bank account details, full\n"
        b"name, address and telephone number to our claims agent. This is 100% risk free\n"
        b'and guaranteed. Act now! Click <a href="http://192.0.2.1/claim.php?id=12345">\n'
        b"http://www.paypal.com/verify</a> to verify your account.</p>\n"
        b"<p>The Central Bank of Nigeria has approved the transfer of the inheritance fund\n"
        b"of the late barrister, your next of kin.</p>\n"
        b'<img src="http://192.0.2.1/x.gif" width=1 height=1></body></html>\n'
    )
    corpus["bare-cr"] = _headers(b"cr only").replace(b"\n", b"\r") + b"\rtext\rmore\r"
    return corpus


CORPUS = _build_corpus()


def _spamc(spamd: SpamdProcess, flag: str, message_file: Path) -> subprocess.Popen[bytes]:
    """Start spamc on ``message_file``; it runs while the test makes its own calls."""
    assert SPAMC is not None
    with open(message_file, "rb") as stdin:
        # -x: fail loudly instead of spamc's "0/0" safe fallback; -s: no 500 KB skip.
        return subprocess.Popen(
            [SPAMC, "-U", str(spamd.socket_path), "-x", "-s", "50000000", flag],
            stdin=stdin,
            stdout=subprocess.PIPE,
        )


# -- addresses -------------------------------------------------------------------


def test_parse_address_forms() -> None:
    assert parse_address("unix:/run/ringtrap/spamd.sock") == (
        socket.AF_UNIX,
        "/run/ringtrap/spamd.sock",
    )
    assert parse_address("tcp:127.0.0.1:783") == (socket.AF_INET, ("127.0.0.1", 783))
    assert parse_address("tcp:[::1]:10783") == (socket.AF_INET6, ("::1", 10783))
    assert parse_address("tcp:[2001:db8::1]:783") == (socket.AF_INET6, ("2001:db8::1", 783))
    # Names are resolved per call, so the family is not known yet.
    assert parse_address("tcp:spamd.example.org:783") == (
        socket.AF_UNSPEC,
        ("spamd.example.org", 783),
    )


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("", "expected"),
        ("/run/spamd.sock", "expected"),
        ("udp:127.0.0.1:783", "expected"),
        ("unix:", "absolute"),
        ("unix:relative/spamd.sock", "absolute"),
        ("unix:/" + "x" * 120, "107 bytes"),
        ("tcp:127.0.0.1", "port"),
        ("tcp:127.0.0.1:", "port"),
        ("tcp::783", "missing host"),
        ("tcp:127.0.0.1:0", "port"),
        ("tcp:127.0.0.1:65536", "port"),
        ("tcp:127.0.0.1:78x", "port"),
        ("tcp:127.0.0.1:-1", "port"),
        ("tcp:127.0.0.1:٧٨٣", "port"),
        ("tcp:::1:783", "brackets"),
        ("tcp:[::1]", "[ipv6]:port"),
        ("tcp:[::1:783", "[ipv6]:port"),
        ("tcp:[127.0.0.1]:783", "not an IPv6"),
        ("tcp:[]:783", "not an IPv6"),
    ],
)
def test_parse_address_rejects(address: str, problem: str) -> None:
    with pytest.raises(ValueError, match="spamd address") as info:
        parse_address(address)
    assert problem in str(info.value)


# -- reply parsing ----------------------------------------------------------------


def test_parse_check_reply() -> None:
    r = parse_scan_reply(b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 19.4 / 5.0\r\n\r\n")
    assert r == SpamdResult(
        spam=True,
        score=19.4,
        required=5.0,
        rules=(),
        report=None,
        headers={"Spam": "True ; 19.4 / 5.0"},
    )


@pytest.mark.parametrize(
    ("header", "spam", "score", "required"),
    [
        # spamd decides the verdict; a score equal to the threshold goes either way.
        ("False ; 5.0 / 5.0", False, 5.0, 5.0),
        ("True ; 5.0 / 5.0", True, 5.0, 5.0),
        ("True ; 4.9 / 5.0", True, 4.9, 5.0),
        ("False ; -2.5 / 5.0", False, -2.5, 5.0),
        ("False ; 0 / 10", False, 0.0, 10.0),
        ("Yes ; 6.0 / 5.0", True, 6.0, 5.0),
        ("No ; 1.0 / 5.0", False, 1.0, 5.0),
    ],
)
def test_spam_flag_is_spamds(header: str, spam: bool, score: float, required: float) -> None:
    r = parse_scan_reply(b"SPAMD/1.1 0 EX_OK\r\nSpam: " + header.encode() + b"\r\n\r\n")
    assert (r.spam, r.score, r.required) == (spam, score, required)


def test_parse_symbols_reply() -> None:
    body = b"GTUBE,NO_RECEIVED,NO_RELAYS"
    r = parse_scan_reply(
        b"SPAMD/1.1 0 EX_OK\r\nContent-length: 27\r\nSpam: True ; 1000.0 / 5.0\r\n\r\n" + body,
        rules=True,
    )
    assert r.rules == ("GTUBE", "NO_RECEIVED", "NO_RELAYS")
    assert r.report is None
    assert r.headers == {"Content-length": "27", "Spam": "True ; 1000.0 / 5.0"}


def test_parse_empty_symbols() -> None:
    r = parse_scan_reply(
        b"SPAMD/1.1 0 EX_OK\r\nContent-length: 0\r\nSpam: False ; 0.0 / 5.0\r\n\r\n", rules=True
    )
    assert r.rules == ()
    assert not r.spam


def test_parse_report_keeps_bytes() -> None:
    report = b"Content preview:  caf\xe9 \xff\xfe\n\nContent analysis details:\n"
    r = parse_scan_reply(
        b"SPAMD/1.1 0 EX_OK\r\nContent-length: %d\r\nSpam: False ; 1.0 / 5.0\r\n\r\n" % len(report)
        + report,
        report=True,
    )
    assert r.report == report
    assert r.rules == ()


def test_parse_tell_reply() -> None:
    assert parse_tell_reply(b"SPAMD/1.1 0 EX_OK\r\nDidSet: local\r\n\r\n\r\n") == TellResult(
        ("local",), ()
    )
    assert parse_tell_reply(b"SPAMD/1.1 0 EX_OK\r\n\r\n\r\n") == TellResult((), ())
    assert parse_tell_reply(
        b"SPAMD/1.1 0 EX_OK\r\nDidSet: local,remote\r\nDidRemove: local\r\n\r\n\r\n"
    ) == TellResult(("local", "remote"), ("local",))


def test_parse_ping_reply() -> None:
    parse_ping_reply(b"SPAMD/1.5 0 PONG\r\n")
    with pytest.raises(SpamdResponseError):
        parse_ping_reply(b"SPAMD/1.0 76 Bad header line: PING SPAMC/9\r\n")


@pytest.mark.parametrize(
    ("code", "retryable"),
    [(64, False), (65, False), (69, False), (71, True), (74, True), (75, True), (76, False),
     (77, False), (78, False), (79, True)],
)  # fmt: skip
def test_status_line_alone(code: int, retryable: bool) -> None:
    with pytest.raises(SpamdResponseError) as info:
        parse_scan_reply(b"SPAMD/1.0 %d Something: (detail)\r\n" % code)
    assert info.value.code == code
    assert info.value.text == "Something: (detail)"
    assert info.value.retryable is retryable
    assert (code in RETRYABLE_CODES) is retryable


def test_response_error_survives_pickling() -> None:
    # Errors may cross process boundaries (worker to supervisor).
    err = pickle.loads(pickle.dumps(SpamdResponseError(79, "Timeout: (300 second timeout)")))
    assert (err.code, err.text, err.retryable) == (79, "Timeout: (300 second timeout)", True)
    assert str(err) == "spamd replied 79 Timeout: (300 second timeout)"


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (b"", ScanConnectionError),
        # spamd writes CHECK's status line and Spam header separately: a child
        # killed in between leaves the status line alone.
        (b"SPAMD/1.1 0 EX_OK\r\n", ScanConnectionError),
        (b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 1.0 / 5.0\r\n", ScanConnectionError),
        (
            b"SPAMD/1.1 0 EX_OK\r\nContent-length: 27\r\nSpam: True ; 1000.0 / 5.0\r\n\r\nGTU",
            ScanConnectionError,
        ),
        (
            b"SPAMD/1.1 0 EX_OK\r\nContent-length: 2\r\nSpam: True ; 1000.0 / 5.0\r\n\r\nGTUBE",
            ScanProtocolError,
        ),
        (b"SPAMD/1.1 0 EX_OK\r\nContent-length: x\r\n\r\n", ScanProtocolError),
        (b"HTTP/1.1 400 Bad Request\r\n\r\n", ScanProtocolError),
        (b"SPAMD/1.1 0 EX_OK", ScanProtocolError),
        (b"SPAMD/1.1 EX_OK\r\n\r\n", ScanProtocolError),
        (b"\x00\xff\xfe garbage \r\n\r\n", ScanProtocolError),
        (b"SPAMD/1.1 0 EX_OK\r\n\r\n", ScanProtocolError),  # no Spam header
        (b"SPAMD/1.1 0 EX_OK\r\nSpam: maybe\r\n\r\n", ScanProtocolError),
        (b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; lots / 5.0\r\n\r\n", ScanProtocolError),
        (b"SPAMD/1.1 0 EX_OK\r\nno colon here\r\n\r\n", ScanProtocolError),
    ],
)
def test_bad_replies(reply: bytes, error: type[ScanError]) -> None:
    with pytest.raises(error) as info:
        parse_scan_reply(reply, rules=True)
    assert type(info.value) is error
    assert info.value.retryable is (error is ScanConnectionError)


@given(st.binary(max_size=300))
def test_any_bytes_give_a_result_or_a_spamd_error(data: bytes) -> None:
    for parse in (parse_scan_reply, parse_tell_reply, parse_ping_reply):
        with contextlib.suppress(ScanError):
            parse(data)


@given(
    spam=st.booleans(),
    score=st.decimals(min_value=-100, max_value=1000, places=1),
    required=st.decimals(min_value=0, max_value=50, places=1),
    rules=st.lists(st.from_regex(r"[A-Z][A-Z0-9_]{0,21}", fullmatch=True), max_size=40),
)
def test_symbols_round_trip(spam: bool, score: object, required: object, rules: list[str]) -> None:
    body = ",".join(rules).encode()
    reply = (
        b"SPAMD/1.1 0 EX_OK\r\nContent-length: %d\r\nSpam: %s ; %s / %s\r\n\r\n"
        % (len(body), b"True" if spam else b"False", str(score).encode(), str(required).encode())
        + body
    )
    r = parse_scan_reply(reply, rules=True)
    assert (r.spam, r.score, r.required, r.rules) == (
        spam,
        float(str(score)),
        float(str(required)),
        tuple(rules),
    )


# -- arguments ---------------------------------------------------------------------


def test_client_rejects_bad_arguments(short_dir: Path) -> None:
    address = f"unix:{short_dir}/none.sock"
    with pytest.raises(ValueError, match="spamd address"):
        SpamdClient("localhost:783")
    with pytest.raises(ValueError, match="positive"):
        SpamdClient(address, timeout=0)
    with pytest.raises(ValueError, match="positive"):
        SpamdClient(address, connect_timeout=-1)
    for user in ("", "trap\r\nCompress: zlib", "a\x00b", "tab\there"):
        with pytest.raises(ValueError, match="control characters"):
            SpamdClient(address, user=user)
    client = SpamdClient(address)
    # Argument errors come before any connection (the socket does not exist).
    with pytest.raises(ValueError, match="'spam' or 'ham'"):
        client.tell(b"x", "Spam")
    with pytest.raises(ValueError, match="exclude"):
        client.tell(b"x", "spam", remove_local=True)
    with pytest.raises(ValueError, match="needs"):
        client.tell(b"x", "ham", set_local=False)


# -- fake servers: error paths and request bytes -------------------------------------


class FakeServer:
    """A one-thread Unix or TCP server that runs ``handler`` on each connection."""

    def __init__(self, family: int, address: str | tuple[str, int], handler: Callable) -> None:
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        self.listener.bind(address)
        self.listener.listen(8)
        self.listener.settimeout(0.1)
        self.handler = handler
        self.stop = threading.Event()
        self.requests: list[bytes] = []
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        name = self.listener.getsockname()
        if self.listener.family == socket.AF_UNIX:
            return f"unix:{name}"
        return f"tcp:{name[0]}:{name[1]}"

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                try:
                    self.handler(self, conn)
                except OSError as exc:  # the client hung up first: fine, but recorded
                    self.errors.append(exc)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.listener.close()


def read_request(conn: socket.socket) -> bytes:
    """Read a request up to the client's EOF (the client shuts down its write side)."""
    data = b""
    while chunk := conn.recv(65536):
        data += chunk
    return data


@pytest.fixture(params=["unix", "tcp"])
def fake(request: pytest.FixtureRequest, short_dir: Path) -> Iterator[Callable[..., FakeServer]]:
    """Start fake servers on the parametrized transport; all are closed after the test."""
    servers: list[FakeServer] = []

    def start(handler: Callable) -> FakeServer:
        if request.param == "unix":
            server = FakeServer(socket.AF_UNIX, str(short_dir / f"{len(servers)}.sock"), handler)
        else:
            server = FakeServer(socket.AF_INET, ("127.0.0.1", 0), handler)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def test_missing_socket_is_retryable(short_dir: Path) -> None:
    client = SpamdClient(f"unix:{short_dir}/absent.sock")
    with pytest.raises(ScanConnectionError, match="cannot connect") as info:
        client.check(b"Subject: x\n\nx\n")
    assert info.value.retryable
    assert isinstance(info.value.__cause__, FileNotFoundError)


def test_refused_tcp_port_is_retryable() -> None:
    # A bound but not listening socket holds the port and refuses connections.
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        client = SpamdClient(f"tcp:127.0.0.1:{holder.getsockname()[1]}")
        with pytest.raises(ScanConnectionError, match="cannot connect") as info:
            client.ping()
    assert info.value.retryable
    assert isinstance(info.value.__cause__, ConnectionRefusedError)


def test_request_bytes(fake: Callable[..., FakeServer]) -> None:
    def record(server: FakeServer, conn: socket.socket) -> None:
        server.requests.append(read_request(conn))
        if server.requests[-1].startswith(b"PING"):
            conn.sendall(b"SPAMD/1.5 0 PONG\r\n")
        elif server.requests[-1].startswith(b"TELL"):
            conn.sendall(b"SPAMD/1.1 0 EX_OK\r\nDidSet: local\r\n\r\n\r\n")
        else:
            conn.sendall(b"SPAMD/1.1 0 EX_OK\r\nSpam: False ; 0.0 / 5.0\r\n\r\n")

    server = fake(record)
    client = SpamdClient(server.address, user="trap")
    message = b"Subject: \xff\r\n\r\nbody \x00 bytes\r\n"
    client.ping()
    client.check(message)
    client.check(memoryview(message))
    client.tell(message, "ham", set_remote=True)
    client.tell(message, "spam", set_local=False, remove_local=True)
    big = b"x" * 300_000  # beyond the single-write size: header block and body apart
    client.check(big)
    assert server.requests == [
        b"PING SPAMC/1.5\r\n\r\n",
        b"CHECK SPAMC/1.5\r\nUser: trap\r\nContent-length: %d\r\n\r\n" % len(message) + message,
        b"CHECK SPAMC/1.5\r\nUser: trap\r\nContent-length: %d\r\n\r\n" % len(message) + message,
        b"TELL SPAMC/1.5\r\nUser: trap\r\nMessage-class: ham\r\nSet: local, remote\r\n"
        b"Content-length: %d\r\n\r\n" % len(message) + message,
        b"TELL SPAMC/1.5\r\nUser: trap\r\nMessage-class: spam\r\nRemove: local\r\n"
        b"Content-length: %d\r\n\r\n" % len(message) + message,
        b"CHECK SPAMC/1.5\r\nUser: trap\r\nContent-length: 300000\r\n\r\n" + big,
    ]
    assert server.errors == []


# A report as spamd 4.0 writes it (wrapped descriptions, a name longer than
# its column, whole points from 10 up, log lines indented and unindented),
# after a content preview that imitates a rule line.
REPORT_BODY = (
    b"Spam detection software, running on the system \"vm\",\n"
    b"has identified this incoming email as possible spam.\n\n"
    b"Content preview:  Dear friend, 10 FAKE_RULE  -5.0 FAKE_TOO\n"
    b"  10 FAKE_THREE here\n\n"
    b"Content analysis details:   (1011.7 points, 5.0 required)\n\n"
    b" pts rule name              description\n"
    b"---- ---------------------- --------------------------------------------------\n"
    b"1000 GTUBE                  BODY: Generic Test for Unsolicited Bulk Email\n"
    b" 0.2 NORMAL_HTTP_TO_IP      URI: URI host has a public dotted-decimal IPv4\n"
    b"                            address\n"
    b"  12 URIBL_BLACK            Contains an URL listed in the URIBL blacklist\n"
    b"                            [URIs: shop.example.com]\n"
    b"-0.0 NO_RELAYS              Informational: message was not relayed via SMTP\n"
    b" 0.0 T_PDS_SHORT_SPOOFED_URL HTML message short and T_SPOOFED_URL (S_U_FP)\n"
    b"-1.5 LONG_LOG               BODY: \xe9t\xe9 (latin-1 description)\n"
    b"       [a log line that is longer than forty seven characters here]\n"
    b"[https://tracking.example.com/a/very/long/path/without/any/whitespace/at/all/x]\n"
    b"\n\n"
)


def test_report_rules_scores_and_options() -> None:
    rules = parse_report_rules(REPORT_BODY)
    assert list(rules) == ["GTUBE", "NORMAL_HTTP_TO_IP", "URIBL_BLACK", "NO_RELAYS",
                           "T_PDS_SHORT_SPOOFED_URL", "LONG_LOG"]
    assert {name: s.score for name, s in rules.items()} == {
        "GTUBE": 1000.0, "NORMAL_HTTP_TO_IP": 0.2, "URIBL_BLACK": 12.0, "NO_RELAYS": -0.0,
        "T_PDS_SHORT_SPOOFED_URL": 0.0, "LONG_LOG": -1.5}
    assert rules["URIBL_BLACK"].options == ("URIs: shop.example.com",)
    assert rules["LONG_LOG"].options == (
        "a log line that is longer than forty seven characters here",
        "https://tracking.example.com/a/very/long/path/without/any/whitespace/at/all/x")
    assert rules["NORMAL_HTTP_TO_IP"].options == ()


def test_report_rules_without_the_heading() -> None:
    # the French template: no heading, a footer line under the table
    body = (b"Aper\xe7u:\n   10 FAKE_RULE preview\n\n"
            b"D\xe9tails de l'analyse du message:   (3.5 points, 5.0 requis)\n"
            b" 2.5 MISSING_DATE           Missing Date: header\n"
            b" 1.0 SUBJ_ALL_CAPS          Subject is all capitals\n"
            b"-------------------- Fin de Rapport SpamAssassin ---------------------\n")
    assert {n: s.score for n, s in parse_report_rules(body).items()} == {
        "MISSING_DATE": 2.5, "SUBJ_ALL_CAPS": 1.0}


def test_report_rules_of_an_empty_table() -> None:
    head, _, _ = REPORT_BODY.partition(b"1000 GTUBE")
    assert parse_report_rules(head) == {}
    assert parse_report_rules(b"") == {}


@given(st.binary(max_size=600))
def test_report_rules_never_raise(data: bytes) -> None:
    for name, symbol in parse_report_rules(data).items():
        assert name and isinstance(symbol.score, float)


def test_scan_asks_symbols_when_the_report_has_no_table(fake: Callable[..., FakeServer]) -> None:
    def answer(server: FakeServer, conn: socket.socket) -> None:
        server.requests.append(read_request(conn))
        if server.requests[-1].startswith(b"REPORT"):
            body = b"a report template without _SUMMARY_\n"
        else:
            body = b"A_RULE,B_RULE"
        conn.sendall(b"SPAMD/1.1 0 EX_OK\r\nContent-length: %d\r\n"
                     b"Spam: False ; 1.5 / 5.0\r\n\r\n%s" % (len(body), body))

    server = fake(answer)
    r = SpamdClient(server.address).scan(b"Subject: x\r\n\r\nx\r\n")
    assert [q.split(b" ", 1)[0] for q in server.requests] == [b"REPORT", b"SYMBOLS"]
    assert r.rules == ("A_RULE", "B_RULE") and not r.symbols


def test_scan_reads_the_report(fake: Callable[..., FakeServer]) -> None:
    def answer(server: FakeServer, conn: socket.socket) -> None:
        server.requests.append(read_request(conn))
        conn.sendall(b"SPAMD/1.1 0 EX_OK\r\nContent-length: %d\r\n"
                     b"Spam: True ; 1011.7 / 5.0\r\n\r\n%s" % (len(REPORT_BODY), REPORT_BODY))

    server = fake(answer)
    r = SpamdClient(server.address).scan(b"Subject: x\r\n\r\nx\r\n")
    assert [q.split(b" ", 1)[0] for q in server.requests] == [b"REPORT"]
    assert r.rules == tuple(sorted(r.rules)) and set(r.rules) == set(r.symbols)
    assert r.symbols["URIBL_BLACK"].score == 12.0 and r.score == 1011.7


def test_close_without_reply_is_retryable(fake: Callable[..., FakeServer]) -> None:
    def swallow(server: FakeServer, conn: socket.socket) -> None:
        read_request(conn)  # then close: a spamd child killed mid-scan

    client = SpamdClient(fake(swallow).address)
    with pytest.raises(ScanConnectionError, match="without a reply") as info:
        client.symbols(b"Subject: x\n\nx\n")
    assert info.value.retryable


def test_close_before_reading_is_retryable(fake: Callable[..., FakeServer]) -> None:
    def hang_up(server: FakeServer, conn: socket.socket) -> None:
        # Zero linger: TCP resets instead of closing cleanly.
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    client = SpamdClient(fake(hang_up).address)
    with pytest.raises(ScanConnectionError) as info:
        client.check(b"x" * 2_000_000)
    assert info.value.retryable


def test_early_reply_beats_broken_pipe(fake: Callable[..., FakeServer]) -> None:
    # spamd refuses TELL without --allow-tell before reading the body and
    # closes; the client must report that answer, not the EPIPE of its send.
    def refuse(server: FakeServer, conn: socket.socket) -> None:
        conn.recv(64)
        conn.sendall(b"SPAMD/1.0 69 Service Unavailable: TELL commands are not enabled\r\n")

    client = SpamdClient(fake(refuse).address)
    with pytest.raises(SpamdResponseError) as info:
        client.tell(b"x" * 4_000_000, "spam")
    assert info.value.code == 69
    assert not info.value.retryable


def test_no_reply_times_out(fake: Callable[..., FakeServer]) -> None:
    def stall(server: FakeServer, conn: socket.socket) -> None:
        read_request(conn)
        server.stop.wait(10)

    client = SpamdClient(fake(stall).address, timeout=0.5)
    start = time.monotonic()
    with pytest.raises(ScanTimeout) as info:
        client.check(b"Subject: x\n\nx\n")
    elapsed = time.monotonic() - start
    assert info.value.retryable
    assert 0.45 <= elapsed < 1.5


def test_deadline_covers_the_whole_reply(fake: Callable[..., FakeServer]) -> None:
    # A reply that trickles in forever must not reset the clock on every byte.
    def trickle(server: FakeServer, conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(b"SPAMD/1.1 0 EX_OK\r\n")
        give_up = time.monotonic() + 3  # bounded, so a broken client fails instead of hanging
        while not server.stop.wait(0.05) and time.monotonic() < give_up:
            conn.sendall(b"X")

    client = SpamdClient(fake(trickle).address, timeout=0.6)
    start = time.monotonic()
    with pytest.raises(ScanTimeout):
        client.check(b"Subject: x\n\nx\n")
    assert time.monotonic() - start < 1.5


@pytest.mark.parametrize("family", ["unix", "tcp"])
def test_full_listen_queue_times_out_on_connect(family: str, short_dir: Path) -> None:
    # TCP waits for room in the queue; Unix sockets fail with EAGAIN at once
    # and the client waits instead.  Either way only connect_timeout passes.
    with contextlib.ExitStack() as stack:
        if family == "unix":
            listener = stack.enter_context(socket.socket(socket.AF_UNIX))
            listener.bind(str(short_dir / "full.sock"))
            target: str | tuple[str, int] = str(short_dir / "full.sock")
            address = f"unix:{target}"
        else:
            listener = stack.enter_context(socket.socket())
            listener.bind(("127.0.0.1", 0))
            target = listener.getsockname()
            address = f"tcp:127.0.0.1:{target[1]}"
        listener.listen(0)
        for _ in range(16):  # fill the queue; never accepted
            filler = stack.enter_context(socket.socket(listener.family))
            filler.settimeout(0.2)
            try:
                filler.connect(target)
            except (BlockingIOError, TimeoutError):
                break
        else:
            pytest.fail("the listen queue never filled")
        client = SpamdClient(address, connect_timeout=0.4, timeout=5)
        start = time.monotonic()
        with pytest.raises(ScanTimeout, match="connect"):
            client.ping()
        assert 0.35 <= time.monotonic() - start < 1.5


def test_garbage_reply(fake: Callable[..., FakeServer]) -> None:
    def garbage(server: FakeServer, conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(b"220 smtp.example.org ESMTP ready\r\n\xff\xfe\x00")

    client = SpamdClient(fake(garbage).address)
    with pytest.raises(ScanProtocolError) as info:
        client.report(b"Subject: x\n\nx\n")
    assert not info.value.retryable


def test_bad_header_line_is_not_retryable(fake: Callable[..., FakeServer]) -> None:
    def bad_header(server: FakeServer, conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(b"SPAMD/1.0 76 Bad header line\r\n")

    client = SpamdClient(fake(bad_header).address)
    with pytest.raises(SpamdResponseError) as info:
        client.check(b"Subject: x\n\nx\n")
    assert (info.value.code, info.value.text, info.value.retryable) == (
        76,
        "Bad header line",
        False,
    )


# -- the real spamd ------------------------------------------------------------------


@pytest.mark.spamd
def test_ping(client: SpamdClient) -> None:
    client.ping()


@pytest.mark.spamd
@pytest.mark.parametrize("name", sorted(CORPUS))
def test_agrees_with_spamc(name: str, spamd_server: SpamdProcess, tmp_path: Path) -> None:
    """SYMBOLS over Unix and CHECK over TCP give exactly what spamc reports."""
    reason = spamc_missing_reason()
    if reason:
        pytest.skip(reason)
    message = CORPUS[name]
    message_file = tmp_path / "message"
    message_file.write_bytes(message)
    spamc_symbols = _spamc(spamd_server, "-y", message_file)
    spamc_check = _spamc(spamd_server, "-c", message_file)
    ours = SpamdClient(spamd_server.unix_address, timeout=60).symbols(message)
    checked = SpamdClient(spamd_server.tcp_address, timeout=60).check(message)
    symbols, _ = spamc_symbols.communicate(timeout=60)
    verdict, _ = spamc_check.communicate(timeout=60)
    assert spamc_symbols.returncode == 0, symbols
    assert spamc_check.returncode in (0, 1), verdict
    score, required = verdict.decode().strip().split("/")
    assert ours.score == float(score)
    assert ours.required == float(required)
    assert ours.spam is (spamc_check.returncode == 1)
    assert ours.rules == tuple(filter(None, symbols.decode().strip().split(",")))
    assert (checked.spam, checked.score, checked.required) == (
        ours.spam,
        ours.score,
        ours.required,
    )
    assert checked.rules == ()


@pytest.mark.spamd
@pytest.mark.parametrize("name", sorted(CORPUS))
def test_scores_agree_with_spamc_report(name: str, spamd_server: SpamdProcess,
                                        tmp_path: Path) -> None:
    """scan()'s rules are SYMBOLS' and each score is the one ``spamc -R`` prints."""
    reason = spamc_missing_reason()
    if reason:
        pytest.skip(reason)
    message = CORPUS[name]
    message_file = tmp_path / "message"
    message_file.write_bytes(message)
    spamc_report = _spamc(spamd_server, "-R", message_file)
    client = SpamdClient(spamd_server.unix_address, timeout=60)
    ours = client.scan(message)
    names = client.symbols(message).rules
    report, _ = spamc_report.communicate(timeout=60)
    assert spamc_report.returncode in (0, 1), report
    # the oracle: the lines under the heading's dashes, read naively
    lines = report.decode("latin-1").split("\n")
    table = lines[[line.startswith("---- ---") for line in lines].index(True) + 1:]
    theirs = {}
    for line in table:
        fields = line.split()
        if fields and not line.startswith("    "):
            theirs[fields[1]] = float(fields[0])
    assert ours.rules == names
    assert {n: s.score for n, s in ours.symbols.items()} == theirs
    assert list(ours.symbols) == list(ours.rules)


@pytest.mark.spamd
def test_corpus_is_not_trivial(spamd_server: SpamdProcess) -> None:
    # The oracle test proves little if every message got the same verdict.
    client = SpamdClient(spamd_server.unix_address)
    results = [client.check(CORPUS[name]) for name in ("gtube", "crlf", "spammy-text")]
    assert [r.spam for r in results] == [True, False, True]
    assert len({r.score for r in results}) == 3


@pytest.mark.spamd
def test_empty_message(spamd_server: SpamdProcess) -> None:
    # spamc refuses to send an empty message, so the oracle is a raw exchange.
    raw = subprocess.run(
        ["socat", "-t5", "-", f"UNIX-CONNECT:{spamd_server.socket_path}"],
        input=b"SYMBOLS SPAMC/1.5\r\nContent-length: 0\r\n\r\n",
        capture_output=True,
        timeout=30,
        check=True,
    ).stdout
    r = SpamdClient(spamd_server.unix_address).symbols(b"")
    assert "EMPTY_MESSAGE" in r.rules
    assert raw.endswith(b"\r\n\r\n" + ",".join(r.rules).encode())
    assert (
        b"Spam: %s ; %s / %s\r\n"
        % (
            str(r.spam).encode(),
            str(r.score).encode(),
            str(r.required).encode(),
        )
        in raw
    )


@pytest.mark.spamd
def test_report_is_bytes_with_the_rules(client: SpamdClient) -> None:
    message = CORPUS["latin1-8bit"]
    r = client.report(message)
    rules = client.symbols(message).rules
    assert isinstance(r.report, bytes)
    assert b"Content analysis details:" in r.report
    assert b"(%.1f points, %.1f required)" % (r.score, r.required) in r.report
    assert rules
    for rule in rules:
        assert rule.encode() in r.report
    assert r.rules == ()


@pytest.mark.spamd
def test_large_message_over_both_transports(spamd_server: SpamdProcess) -> None:
    # MiBs in one call, as bytes over Unix and as a memoryview over TCP.
    message = _headers(b"big") + b"\n" + (b"padding text " * 80 + b"\n") * 3200
    assert len(message) > 3 * 1024 * 1024
    unix = SpamdClient(spamd_server.unix_address, timeout=60).check(message)
    tcp = SpamdClient(spamd_server.tcp_address, timeout=60).check(memoryview(message))
    assert (unix.spam, unix.score, unix.required) == (tcp.spam, tcp.score, tcp.required)


@pytest.mark.spamd
def test_tell_learns_once(client: SpamdClient) -> None:
    token = uuid.uuid4().hex
    message = (
        _headers(b"learn " + token.encode())
        + b"\nA message only this test has seen: "
        + token.encode()
        + b"\n"
    )
    assert client.tell(message, "spam") == TellResult(("local",), ())
    assert client.tell(message, "spam") == TellResult((), ())  # already learned
    assert client.tell(message, "spam", set_local=False, remove_local=True) == TellResult(
        (), ("local",)
    )
    assert client.tell(message, "spam", set_local=False, remove_local=True) == TellResult((), ())
    assert client.tell(message, "ham") == TellResult(("local",), ())


@pytest.mark.spamd
def test_user_header_is_accepted(spamd_server: SpamdProcess) -> None:
    r = SpamdClient(spamd_server.unix_address, user="trap").check(CORPUS["gtube"])
    assert r.spam and r.score >= 1000


# -- a spamd that loses its children ---------------------------------------------------


@pytest.mark.spamd
def test_killed_child_gives_a_retryable_error(tmp_path: Path) -> None:
    """A spamd child SIGKILLed mid-scan (OOM, restart) yields a 0-byte reply."""
    reason = spamd_missing_reason()
    if reason:
        pytest.skip(reason)
    message = _headers(b"slow") + b"\n" + b"".join(b"%07d some words\n" % i for i in range(300_000))
    with SpamdProcess(log_path=tmp_path / "spamd.log") as spamd:
        client = SpamdClient(spamd.unix_address, timeout=60)
        parent = psutil.Process(spamd.pid)
        done = threading.Event()

        def kill_children() -> None:
            # Keep killing whichever children exist (spamd respawns them) until
            # the call returns, so the one that took the connection dies.
            time.sleep(0.2)
            while not done.is_set():
                for child in parent.children():
                    with contextlib.suppress(psutil.NoSuchProcess):
                        child.kill()
                done.wait(0.1)

        killer = threading.Thread(target=kill_children)
        killer.start()
        try:
            with pytest.raises(ScanConnectionError) as info:
                client.check(message)
        finally:
            done.set()
            killer.join()
        assert info.value.retryable
        assert parent.is_running()
        # spamd replaces its children; the next call goes through.
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                break
            except ScanConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        assert client.check(CORPUS["gtube"]).spam
        pgid, workdir = spamd.pid, spamd.workdir
    # Stopping leaves no spamd process running and no scratch directory.
    assert workdir is not None and not workdir.exists()
    alive = []
    for proc in psutil.process_iter():
        with contextlib.suppress(ProcessLookupError, psutil.NoSuchProcess):
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
    assert alive == []
