"""Tests of the rspamd client (ringtrap.scan.rspamd).

Scores, symbols, actions and the envelope against a real offline rspamd
(one for the session, :mod:`tests.rspamd_fixture`); what rspamd 3.4 never
does (keep a connection open, hang, send garbage) against small fake HTTP
servers, the only place a fake rspamd is used.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from rspamd_fixture import RspamdProcess

from ringtrap.base.envelope import Envelope
from ringtrap.scan.processing import Processor
from ringtrap.scan.rspamd import RspamdClient, envelope_headers, parse_check_reply
from ringtrap.scan.scanner import (
    ScanConnectionError,
    ScanProtocolError,
    ScanResponseError,
    ScanTimeout,
)

EXAMPLES = Path("/usr/share/doc/spamassassin/examples")


def plain(sender: str = "alice@example.com") -> bytes:
    return (f"From: Alice <{sender}>\r\nTo: trap@example.org\r\nSubject: hello\r\n"
            "Message-ID: <1.2@example.com>\r\nDate: Thu, 03 Dec 2026 10:00:00 +0000\r\n\r\n"
            "Just a few words of text in a plain message.\r\n").encode()


@pytest.fixture
def client(rspamd_server: RspamdProcess) -> Iterator[RspamdClient]:
    c = RspamdClient(rspamd_server.address, connect_timeout=5.0, timeout=30.0)
    yield c
    c.close()


# -- a real rspamd ---------------------------------------------------------------


def test_gtube_and_ham_get_rspamds_scores_symbols_and_actions(client: RspamdClient) -> None:
    client.ping()
    spam = client.scan((EXAMPLES / "sample-spam.txt").read_bytes())
    assert (spam.scanner, spam.host) == ("rspamd", client.address)
    assert spam.spam and spam.action == "reject" and spam.score >= spam.required > 0
    assert "GTUBE" in spam.rules and set(spam.rules) == set(spam.symbols)
    ham = client.scan(memoryview((EXAMPLES / "sample-nonspam.txt").read_bytes()),
                      Envelope(recipients=("trap@example.org",)))
    assert not ham.spam and ham.action in ("no action", "greylist")
    assert ham.score < ham.required
    assert "GTUBE" not in ham.rules
    # every symbol with its own score; the scores add up to the message's
    assert sum(s.score for s in ham.symbols.values()) == pytest.approx(ham.score, abs=0.05)
    assert any(s.options for s in ham.symbols.values())


def test_the_envelope_reaches_rspamd(client: RspamdClient) -> None:
    same = client.scan(plain(), Envelope(sender="alice@example.com",
                                         recipients=("trap@example.org",)))
    other = client.scan(plain(), Envelope(sender="bounce@elsewhere.example",
                                          recipients=("a@example.org", "b@example.org",
                                                      "c@example.org"),
                                          client_address="192.0.2.7",
                                          client_helo="mx.elsewhere.example",
                                          queue_id="4XyZ1"))
    assert "FROM_EQ_ENVFROM" in same.symbols and "FROM_NEQ_ENVFROM" not in same.symbols
    assert "bounce@elsewhere.example" in other.symbols["FROM_NEQ_ENVFROM"].options
    # the envelope recipients are the To: header's, or not
    assert "TO_MATCH_ENVRCPT_ALL" in same.symbols
    assert "TO_MATCH_ENVRCPT_ALL" not in other.symbols


def test_a_hostile_envelope_cannot_add_headers(client: RspamdClient) -> None:
    env = Envelope(sender="x@example.com\r\nRcpt: injected@example.org",
                   recipients=("trap@example.org", "y@example.org\nIP: 192.0.2.99"),
                   client_address="192.0.2.1\r\nHelo: forged",
                   client_helo="helo\x00.example", queue_id="Q\r\n")
    head = envelope_headers(env)
    assert head == b"Rcpt: trap@example.org\r\n"
    r = client.scan(plain(), env)
    # only the clean recipient went (it matches To:), and no sender at all
    assert "TO_MATCH_ENVRCPT_ALL" in r.symbols
    assert not {"FROM_EQ_ENVFROM", "FROM_NEQ_ENVFROM"} & set(r.symbols)


def test_one_client_scans_many_messages_whatever_the_server_does_with_the_connection(
        client: RspamdClient) -> None:
    # rspamd 3.4's normal worker answers "Connection: close": each scan connects again
    results = [client.scan(plain(f"u{i}@example.com")) for i in range(5)]
    assert all(r.action for r in results)
    assert 1 <= client.connects <= 5


def test_processor_records_rspamds_verdict_and_a_repeat_carries_it(
        rspamd_server: RspamdProcess, tmp_path: Path) -> None:
    from ringtrap.base.envelope import frame
    from ringtrap.scan.dedupe import DedupeStore

    c = RspamdClient(rspamd_server.address)
    p = Processor(scanner=c, scan_limit_bytes=1 << 20,
                  dedupe=DedupeStore(tmp_path, window=3600), skip_duplicates=True)
    payload = frame((EXAMPLES / "sample-spam.txt").read_bytes(), Envelope(sender="a@example.com"))
    first = json.loads(json.dumps(p.process("m1", payload, time.time(), 0).to_dict()))
    repeat = json.loads(json.dumps(p.process("m2", payload, time.time(), 0).to_dict()))
    c.close()
    assert (first["verdict"], first["scanner"], first["action"]) == ("spam", "rspamd", "reject")
    assert first["scanner_host"] == rspamd_server.address
    assert first["symbols"]["GTUBE"] == {"score": 0.0, "options": []}
    assert "GTUBE" in first["rules"]
    assert (repeat["verdict"], repeat["duplicate_of"]) == ("duplicate", "m1")
    assert (repeat["scanner"], repeat["action"], repeat["score"]) == ("rspamd", "reject", 15.0)


def test_a_missing_socket_is_retryable(tmp_path: Path) -> None:
    c = RspamdClient(f"unix:{tmp_path}/none.sock")
    with pytest.raises(ScanConnectionError) as info:
        c.ping()
    assert info.value.retryable


def test_a_refused_tcp_port_is_retryable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there
    c = RspamdClient(f"tcp:127.0.0.1:{port}")
    with pytest.raises(ScanConnectionError) as info:
        c.scan(plain())
    assert info.value.retryable and c._sock is None


# -- fake servers ------------------------------------------------------------------

REPLY = json.dumps({"score": 7.5, "required_score": 15.0, "action": "add header",
                    "symbols": {"R1": {"name": "R1", "score": 7.5, "options": ["a", "b"]},
                                "R0": {"name": "R0", "score": 0.0}}}).encode()


def http(body: bytes, status: str = "200 OK", extra: bytes = b"") -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n".encode() + extra
            + b"\r\n" + body)


class FakeHttp:
    """A Unix-socket HTTP server: ``answer(conn, request_number)`` handles each request."""

    def __init__(self, path: Path, answer: Callable[[socket.socket, int], bool]) -> None:
        self.path = path
        self.answer = answer
        self.connections = 0
        self.requests: list[bytes] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._conn, args=(conn,), daemon=True).start()

    def _conn(self, conn: socket.socket) -> None:
        with conn:
            buf = b""
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, _, buf = buf.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(buf) < length:
                    buf += conn.recv(65536)
                self.requests.append(head + b"\r\n\r\n" + buf[:length])
                buf = buf[length:]
                if not self.answer(conn, len(self.requests)):
                    return

    def close(self) -> None:
        self.sock.close()


_CLIENTS: list[RspamdClient] = []


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[Callable[[Callable[[socket.socket, int], bool]], FakeHttp]]:
    made: list[FakeHttp] = []

    def make(answer: Callable[[socket.socket, int], bool]) -> FakeHttp:
        made.append(FakeHttp(tmp_path / f"fake{len(made)}.sock", answer))
        return made[-1]

    yield make
    while _CLIENTS:
        _CLIENTS.pop().close()
    for f in made:
        f.close()


def client_of(server: FakeHttp, timeout: float = 5.0) -> RspamdClient:
    _CLIENTS.append(RspamdClient(f"unix:{server.path}", connect_timeout=1.0, timeout=timeout))
    return _CLIENTS[-1]


def test_a_kept_alive_connection_serves_every_scan(fake: Callable[..., FakeHttp]) -> None:
    def keep(conn: socket.socket, n: int) -> bool:
        conn.sendall(http(REPLY))
        return True

    server = fake(keep)
    c = client_of(server)
    results = [c.scan(plain(), Envelope(sender=f"s{i}@example.com")) for i in range(10)]
    assert server.connections == 1 and c.connects == 1 and len(server.requests) == 10
    r = results[-1]
    assert (r.spam, r.score, r.required, r.action) == (True, 7.5, 15.0, "add header")
    assert r.rules == ("R0", "R1") and r.symbols["R1"].options == ("a", "b")
    request = server.requests[-1]
    assert request.startswith(b"POST /checkv2 HTTP/1.1\r\n")
    assert b"\r\nConnection: keep-alive\r\n" in request
    assert b"\r\nFrom: s9@example.com\r\n" in request


def test_a_connection_the_server_closed_is_reopened_once(fake: Callable[..., FakeHttp]) -> None:
    def once(conn: socket.socket, n: int) -> bool:
        conn.sendall(http(REPLY))
        return False  # hang up after every reply, without saying so

    server = fake(once)
    c = client_of(server)
    for _ in range(3):
        assert c.scan(plain()).action == "add header"
    assert c.connects == 3 and server.connections == 3


def test_a_server_that_closes_as_the_request_arrives(fake: Callable[..., FakeHttp]) -> None:
    # the kept connection looks open when the request goes out; nothing comes back
    def first_then_drop(conn: socket.socket, n: int) -> bool:
        if n % 2 == 1:
            conn.sendall(http(REPLY))
            time.sleep(0.2)  # closes only after the client has checked and sent
        return n % 2 == 1

    server = fake(first_then_drop)
    c = client_of(server)
    c.scan(plain())
    # the second request reaches a connection about to close: resent once, fresh
    assert c.scan(plain()).score == 7.5
    assert c.connects == 2


def test_zero_bytes_on_a_fresh_connection_is_retryable(fake: Callable[..., FakeHttp]) -> None:
    server = fake(lambda conn, n: False)
    with pytest.raises(ScanConnectionError) as info:
        client_of(server).scan(plain())
    assert info.value.retryable and server.connections == 1


def test_a_hung_server_times_out_on_the_deadline(fake: Callable[..., FakeHttp]) -> None:
    def hang(conn: socket.socket, n: int) -> bool:
        time.sleep(5)
        return False

    c = client_of(fake(hang), timeout=0.5)
    started = time.monotonic()
    with pytest.raises(ScanTimeout) as info:
        c.scan(plain())
    assert info.value.retryable
    assert time.monotonic() - started < 2.0


@pytest.mark.parametrize(("reply", "error", "retryable"), [
    (http(b"not json"), ScanProtocolError, False),
    (http(b'{"score": 1}'), ScanProtocolError, False),
    (http(b'{"error": "bad request"}', "400 Bad Request"), ScanResponseError, False),
    (http(b'{"error": "busy"}', "503 Service Unavailable"), ScanResponseError, True),
    (b"SPAMD/1.5 0 EX_OK\r\n\r\n", ScanProtocolError, False),
    (http(REPLY)[:-20], ScanConnectionError, True),
])
def test_bad_replies(fake: Callable[..., FakeHttp], reply: bytes, error: type,
                     retryable: bool) -> None:
    def send(conn: socket.socket, n: int) -> bool:
        conn.sendall(reply)
        return False

    with pytest.raises(error) as info:
        client_of(fake(send)).scan(plain())
    assert info.value.retryable is retryable


def test_parse_check_reply_derives_spam_from_the_action() -> None:
    def action(a: str) -> bool:
        body = json.dumps({"score": 1, "required_score": 15, "action": a, "symbols": {}})
        return parse_check_reply(body.encode(), "h").spam

    assert [action(a) for a in ("reject", "rewrite subject", "add header")] == [True] * 3
    assert [action(a) for a in ("no action", "greylist", "soft reject")] == [False] * 3
    with pytest.raises(ScanProtocolError):
        action("discard")
