"""The LMTP socket: RFC 2033 over a real Unix socket, served by the ingest's loop.

A real client (Python's smtplib.LMTP) and a byte-level one for what smtplib
cannot say (several recipients' replies after DATA, pipelining, protocol
errors).  Every message is read back from the ring or the overflow.
"""

from __future__ import annotations

import smtplib
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from delivery_harness import Server, wait_for

from ringtrap.base.envelope import Envelope
from ringtrap.intake import lmtp

MSG = b"From: a@example.org\r\nSubject: lmtp\r\n\r\nbody\r\n"


_OPEN: list[socket.socket] = []


@pytest.fixture(autouse=True)
def _close_wires() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


class Wire:
    """A byte-level LMTP client: send lines, read whole replies."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        _OPEN.append(self.sock)
        self.sock.settimeout(10)
        self.sock.connect(str(path))
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> list[bytes]:
        """One (possibly multi-line) reply, as its lines without CRLF."""
        lines = []
        while True:
            while b"\r\n" not in self.buf:
                got = self.sock.recv(65536)
                if not got:
                    raise EOFError(f"closed after {lines!r} {self.buf!r}")
                self.buf += got
            line, self.buf = self.buf.split(b"\r\n", 1)
            lines.append(line)
            if line[3:4] != b"-":
                return lines

    def code(self) -> int:
        return int(self.reply()[-1][:3])

    def closed(self) -> bool:
        return self.buf == b"" and self.sock.recv(1) == b""

    def close(self) -> None:
        self.sock.close()


def greeted(path: Path) -> Wire:
    w = Wire(path)
    assert w.reply() == [b"220 trap.test ringtrap LMTP ready"]
    w.send(b"LHLO client.test\r\n")
    assert w.code() == 250
    return w


def test_smtplib_delivers_with_xforward(serve: Callable[..., Server]) -> None:
    s = serve(max_message_bytes=1 << 20)
    with smtplib.LMTP(str(s.lmtp_path)) as client:
        code, _ = client.ehlo("mta.test")  # smtplib's LMTP sends LHLO
        assert code == 250
        assert client.has_extn("pipelining") and client.has_extn("enhancedstatuscodes")
        assert client.esmtp_features["size"] == str(1 << 20)
        assert client.esmtp_features["xforward"].split() == list(lmtp.XFORWARD_ATTRS)
        assert client.docmd("XFORWARD", "NAME=mx.example.org ADDR=IPv6:2001:db8::7")[0] == 250
        assert client.docmd("XFORWARD", "HELO=helo+2Bx.example IDENT=4AbC PROTO=ESMTP")[0] == 250
        assert client.sendmail("sender@example.org", ["trap@example.net"], MSG) == {}
        # XFORWARD applies to one transaction only
        assert client.sendmail("<>", ["trap@example.net"], MSG) == {}
    stored = list(s.stored().values())
    assert stored == [
        (Envelope(sender="sender@example.org", recipients=("trap@example.net",),
                  client_address="2001:db8::7", client_helo="helo+x.example", queue_id="4AbC"),
         MSG),
        (Envelope(sender="", recipients=("trap@example.net",)), MSG),
    ]


def test_one_reply_per_recipient_and_pipelining(serve: Callable[..., Server]) -> None:
    s = serve()
    w = greeted(s.lmtp_path)
    # everything up to DATA in one write, as a pipelining client sends it
    w.send(b"XFORWARD ADDR=192.0.2.9 HELO=[UNAVAILABLE]\r\nMAIL FROM:<s@example.org> SIZE=40"
           b" BODY=8BITMIME\r\nRCPT TO:<a@example.net>\r\nRCPT TO:<b@example.net>"
           b" ORCPT=rfc822;b@example.net\r\nDATA\r\n")
    assert [w.code() for _ in range(5)] == [250, 250, 250, 250, 354]
    w.send(MSG + b".\r\nNOOP\r\n")
    first, second = w.reply(), w.reply()
    assert first[0].startswith(b"250 2.0.0 Ok: stored as ") and first == second
    assert w.code() == 250  # the pipelined NOOP after the message
    msgid = first[0].rsplit(b" ", 1)[1].decode()
    w.send(b"QUIT\r\n")
    assert w.reply() == [b"221 2.0.0 Bye"]
    assert w.closed()
    assert s.stored() == {msgid: (Envelope(sender="s@example.org",
                                           recipients=("a@example.net", "b@example.net"),
                                           client_address="192.0.2.9"), MSG)}


def test_dot_stuffing_is_undone_and_line_ends_kept(serve: Callable[..., Server]) -> None:
    s = serve(slot_bytes=4096)
    body = (b"Subject: dots\r\n\r\n.\r\n..two\r\n.\r\n...three\r\nbare\nlf\r\n"
            + b"z" * 9000 + b"\r\n.end")  # a last line without CRLF
    stuffed = body.replace(b"\n.", b"\n..")  # every line starting with a dot
    w = greeted(s.lmtp_path)
    w.send(b"MAIL FROM:<s@x>\r\nRCPT TO:<t@y>\r\nDATA\r\n")
    assert [w.code() for _ in range(3)] == [250, 250, 354]
    # in small pieces, so the end marker and stuffed dots straddle receives
    data = stuffed + b"\r\n.\r\n"
    for i in range(0, len(data), 7):
        w.send(data[i : i + 7])
        time.sleep(0.0005)
    assert w.code() == 250
    [(_, stored)] = s.stored().values()
    assert stored == body + b"\r\n"


def test_size_is_enforced_and_the_stream_stays_in_sync(serve: Callable[..., Server]) -> None:
    s = serve(max_message_bytes=64 * 1024)
    w = greeted(s.lmtp_path)
    w.send(b"MAIL FROM:<s@x> SIZE=70000\r\n")
    assert w.reply()[0].startswith(b"552 5.3.4")
    # a client that ignores the advertised SIZE: read to the end, refused per recipient
    w.send(b"MAIL FROM:<s@x>\r\nRCPT TO:<a@y>\r\nRCPT TO:<b@y>\r\nDATA\r\n")
    assert [w.code() for _ in range(4)] == [250, 250, 250, 354]
    w.send(b"x" * 100_000 + b"\r\n.\r\n")
    assert [w.reply()[0][:9] for _ in range(2)] == [b"552 5.3.4"] * 2
    # the same connection goes on
    w.send(b"MAIL FROM:<s@x>\r\nRCPT TO:<a@y>\r\nDATA\r\n")
    assert [w.code() for _ in range(3)] == [250, 250, 354]
    w.send(MSG + b".\r\n")
    assert w.code() == 250
    assert [m for _, m in s.stored().values()] == [MSG]


def test_cannot_store_now_is_a_4xx(serve: Callable[..., Server]) -> None:
    s = serve(slots=1, slot_bytes=1024, overflow_cap=200_000)
    w = greeted(s.lmtp_path)
    codes = []
    for _ in range(6):
        w.send(b"MAIL FROM:<s@x>\r\nRCPT TO:<a@y>\r\nRCPT TO:<b@y>\r\nDATA\r\n")
        assert [w.code() for _ in range(4)] == [250, 250, 250, 354]
        w.send(b"y" * 60_000 + b"\r\n.\r\n")
        replies = [w.reply()[0] for _ in range(2)]
        assert replies[0] == replies[1]
        codes.append(replies[0][:9])
    assert codes[0] == b"250 2.0.0"
    assert codes[-1] == b"452 4.3.1", codes  # the overflow is full: defer, never bounce


def test_protocol_errors(serve: Callable[..., Server]) -> None:
    s = serve()
    w = Wire(s.lmtp_path)
    w.reply()
    for line, code in [
        (b"EHLO x", 500), (b"HELO x", 500), (b"MAIL FROM:<a@b>", 503), (b"LHLO", 501),
        (b"LHLO client", 250), (b"RCPT TO:<a@b>", 503), (b"DATA", 503),
        (b"MAIL FROM:a@b", 501), (b"MAIL FROM:<a@b> FOO=1", 555), (b"MAIL FROM:<a@b>", 250),
        (b"MAIL FROM:<a@b>", 503), (b"XFORWARD ADDR=1.2.3.4", 503), (b"DATA", 503),
        (b"RCPT TO:<>", 501), (b"BOGUS", 500), (b"RSET", 250), (b"RCPT TO:<a@b>", 503),
        (b"XFORWARD COLOR=blue", 501), (b"VRFY a", 252), (b"NOOP", 250),
        (b"X" * 3000, 500),
    ]:
        w.send(line + b"\r\n")
        assert w.code() == code, line
    w.send(b"QUIT\r\n")
    assert w.code() == 221
    assert s.stored() == {}


def test_too_many_errors_closes_the_connection(serve: Callable[..., Server]) -> None:
    s = serve()
    w = greeted(s.lmtp_path)
    w.send(b"BOGUS\r\n" * lmtp.MAX_ERRORS)
    replies = [w.reply()[0] for _ in range(lmtp.MAX_ERRORS + 1)]
    assert replies[-1].startswith(b"421 4.7.0")
    assert w.closed()


def test_too_many_recipients_is_452(serve: Callable[..., Server],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lmtp, "MAX_RECIPIENTS", 3)
    s = serve()
    w = greeted(s.lmtp_path)
    w.send(b"MAIL FROM:<s@x>\r\n" + b"".join(b"RCPT TO:<r%d@y>\r\n" % i for i in range(4)))
    assert [w.code() for _ in range(5)] == [250, 250, 250, 250, 452]


def test_client_gone_mid_data_stores_nothing(serve: Callable[..., Server]) -> None:
    s = serve(slot_bytes=4096)
    w = greeted(s.lmtp_path)
    w.send(b"MAIL FROM:<s@x>\r\nRCPT TO:<a@y>\r\nDATA\r\n")
    assert [w.code() for _ in range(3)] == [250, 250, 354]
    w.send(b"Subject: cut\r\n\r\n" + b"c" * 50_000)
    wait_for(lambda: any(x.sink.msgid and x.sink.size > 40_000
                         for x in list(s.server._conns.values())), what="streaming")
    w.close()
    wait_for(lambda: s.server.connections == 0, what="the connection to go")
    assert s.stored() == {}
    assert list((s.overflow.path / "tmp").iterdir()) == []


def test_idle_session_gets_421(serve: Callable[..., Server]) -> None:
    s = serve(idle_timeout=0.3)
    w = greeted(s.lmtp_path)
    assert w.reply() == [lmtp.R_TIMEOUT.rstrip(b"\r\n")]
    assert w.closed()


def test_connection_limit_is_the_lmtp_sockets_own(serve: Callable[..., Server]) -> None:
    s = serve(max_connections=2, lmtp_max_connections=2)
    a, b = greeted(s.lmtp_path), greeted(s.lmtp_path)
    c = Wire(s.lmtp_path)
    assert c.reply() == [lmtp.R_BUSY.rstrip(b"\r\n")]
    # the raw socket's budget is its own: two LMTP sessions do not spend it
    raw = socket.socket(socket.AF_UNIX)
    raw.connect(str(s.raw_path))
    raw.sendall(MSG)
    raw.shutdown(socket.SHUT_WR)
    assert raw.recv(100).startswith(b"OK ")
    raw.close()
    for w in (a, b, c):
        w.close()


def test_graceful_stop_lets_a_message_finish_and_closes_idle_sessions(
    serve: Callable[..., Server],
) -> None:
    s = serve()
    idle = greeted(s.lmtp_path)
    busy = greeted(s.lmtp_path)
    busy.send(b"MAIL FROM:<s@x>\r\nRCPT TO:<a@y>\r\nDATA\r\n")
    assert [busy.code() for _ in range(3)] == [250, 250, 354]
    busy.send(MSG[:10])
    s.server.stop(graceful=True, drain_timeout=10)
    assert idle.reply()[0].startswith(b"421 4.3.2")
    busy.send(MSG[10:] + b".\r\n")
    assert busy.code() == 250
    assert busy.reply()[0].startswith(b"421 4.3.2")  # and then it goes too
    wait_for(lambda: s.server.finished, what="the server to finish")
    assert [m for _, m in s.stored().values()] == [MSG]
