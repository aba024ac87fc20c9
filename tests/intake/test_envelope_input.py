"""Envelope values from outside the trap are validated before they become fields.

relay_ip holds only an IP address; control characters are refused by LMTP
(501) and escaped on the submit socket; an envelope too large to keep whole
never costs the message.  Unit tests on the session classes, then the real
clients over real Unix sockets.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from canned import CannedReply
from delivery_harness import DELIVER, SUBMIT, Server

from ringtrap.base import envelope, wire
from ringtrap.base.envelope import Envelope
from ringtrap.command import submit
from ringtrap.intake import lmtp
from ringtrap.intake.delivery import Outcome
from ringtrap.intake.submit_session import MAX_LINE, SubmitSession, parse_block
from ringtrap.scan.processing import Processor

MSG = b"From: a@example.org\r\nSubject: envelope\r\n\r\nbody\r\n"


# -- relay_ip ---------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "ip"), [
    ("192.0.2.7", "192.0.2.7"),
    ("2001:DB8::7", "2001:db8::7"),
    ("IPv6:2001:db8::7", "2001:db8::7"),
    ("[198.51.100.1]", "198.51.100.1"),
    ("not-an-ip", None),
    ("unknown", None),
    ("192.0.2.300", None),
    ("192.0.2.7\x00", None),
    ("", None),
])
def test_relay_address_takes_only_an_ip(raw: str, ip: str | None) -> None:
    assert envelope.relay_address(raw) == ip


def test_a_bad_client_address_stays_in_the_envelope_but_is_no_relay_ip() -> None:
    offline = Processor(scanner=None, scan_limit_bytes=500 * 1024)
    msg = b"Received: from x ([203.0.113.9]) by y\r\n" + MSG
    env = Envelope(sender="s@example.org", client_address="not-an-ip", client_helo="h.example")
    record = offline.process("661b6ceb95adf-000001", envelope.frame(msg, env), 1.7e9, 0).to_dict()
    assert record["relay_ip"] is None
    assert record["relay_source"] == "mta_invalid"
    assert record["envelope"]["client_address"] == "not-an-ip"
    good = Envelope(client_address="IPv6:2001:DB8::1")
    record = offline.process("661b6ceb95adf-000002", envelope.frame(msg, good), 1.7e9, 0).to_dict()
    assert (record["relay_ip"], record["relay_source"]) == ("2001:db8::1", "mta")


# -- LMTP: control characters get 501 --------------------------------------------------


class Sink:
    def __init__(self) -> None:
        self.begun: list[Envelope] = []

    def begin(self, env: Envelope) -> str:
        self.begun.append(env)
        return "id"

    def write(self, data: bytes) -> None:
        pass

    def end(self) -> Outcome:
        return Outcome.STORED

    def abort(self) -> None:
        pass


@pytest.mark.parametrize("command", [
    b"MAIL FROM:<a\x00b@example.org>",
    b"MAIL FROM:<a\rb@example.org>",
    b"MAIL FROM:<a\x1bb@example.org>",
    b"MAIL FROM:<a\tb@example.org>",
    b"MAIL FROM:<a@example.org> SIZE=10\x00",
    b"XFORWARD ADDR=192.0.2.1+00",
    b"XFORWARD HELO=a+0Db",
])
def test_lmtp_refuses_control_characters_in_mail_and_xforward(command: bytes) -> None:
    session = lmtp.LmtpSession(Sink(), "trap.test", 1 << 20)
    session.start()
    session.feed(b"LHLO mta.test\r\n")
    assert session.feed(command + b"\r\n") == lmtp.R_CONTROL
    assert lmtp.R_CONTROL.startswith(b"501 ")


@pytest.mark.parametrize("rcpt", [b"t\x00@example.net", b"t\r@example.net", b"t\x7f@example.net"])
def test_lmtp_refuses_control_characters_in_rcpt(rcpt: bytes) -> None:
    sink = Sink()
    session = lmtp.LmtpSession(sink, "trap.test", 1 << 20)
    session.feed(b"LHLO mta.test\r\nMAIL FROM:<a@example.org>\r\n")
    assert session.feed(b"RCPT TO:<" + rcpt + b">\r\n") == lmtp.R_CONTROL
    # the transaction goes on with the recipients that are clean
    assert session.feed(b"RCPT TO:<ok@example.net>\r\nDATA\r\n") == lmtp.R_RCPT_OK + lmtp.R_DATA
    assert sink.begun == [Envelope(sender="a@example.org", recipients=("ok@example.net",))]


def test_lmtp_control_characters_over_a_real_socket(serve: Callable[..., Server]) -> None:
    s = serve()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        c.settimeout(10)
        c.connect(str(s.lmtp_path))
        f = c.makefile("rb")
        assert f.readline().startswith(b"220 ")
        c.sendall(b"LHLO mta.test\r\n")
        while not f.readline().startswith(b"250 "):
            pass
        c.sendall(b"MAIL FROM:<nul\x00@example.org>\r\n")
        assert f.readline() == lmtp.R_CONTROL
        c.sendall(b"MAIL FROM:<cr\r@example.org>\r\n")
        assert f.readline() == lmtp.R_CONTROL
        c.sendall(b"MAIL FROM:<s@example.org>\r\nRCPT TO:<t@example.net>\r\nDATA\r\n")
        assert [f.readline()[:3] for _ in range(3)] == [b"250", b"250", b"354"]
        c.sendall(MSG + b".\r\nQUIT\r\n")
        assert f.readline().startswith(b"250 2.0.0 Ok: stored as ")
        f.close()
    [(env, msg)] = s.stored().values()
    assert env == Envelope(sender="s@example.org", recipients=("t@example.net",)) and msg == MSG


# -- submit: control characters escaped, an oversized envelope keeps the message ------


def block(*lines: bytes) -> bytes:
    return wire.MAGIC + b"".join(line + b"\n" for line in lines) + b"\n"


def test_submit_escapes_control_characters() -> None:
    env = parse_block(block(b"sender a\x00b\rc@example.org", b"recipient t\x01@example.net",
                            b"client_helo h\x7f"))
    assert env.sender == "a\\x00b\\x0dc@example.org"
    assert env.recipients == ("t\\x01@example.net",)
    assert env.client_helo == "h\\x7f"


def test_submit_keeps_the_recipients_that_fit_and_counts_the_rest() -> None:
    rcpts = [b"recipient trap%05d@example.net" % i for i in range(3000)]
    env = parse_block(block(b"sender s@example.org", *rcpts))
    kept = len(env.recipients)
    assert 0 < kept <= wire.MAX_RECIPIENTS
    assert env.recipients == tuple(f"trap{i:05d}@example.net" for i in range(kept))
    assert env.recipients_dropped == 3000 - kept
    line = envelope.header(env)
    assert len(line) < envelope.MAX_LINE
    assert envelope.unframe(line + MSG)[0] == env


def test_submit_budget_counts_escaped_bytes() -> None:
    # 1000 recipients of control characters would grow fivefold when escaped
    rcpts = [b"recipient " + b"\x01" * 200 for _ in range(1000)]
    env = parse_block(block(*rcpts))
    assert len(envelope.header(env)) <= wire.MAX_HEADER + 1024
    assert env.recipients_dropped == 1000 - len(env.recipients) > 0


def test_submit_streams_a_huge_envelope_in_small_pieces() -> None:
    sink = Sink()
    session = SubmitSession(sink)
    stream = block(b"sender s@example.org", b"recipient " + b"x" * (MAX_LINE * 5),
                   b"client_helo " + b"h" * (MAX_LINE * 3),
                   *[b"recipient r%d@example.net" % i for i in range(5000)])
    data = stream + MSG + b"END %d\n" % len(MSG)
    for i in range(0, len(data), 7):  # tiny receives: lines straddle them
        assert session.feed(data[i : i + 7]) == b""
    assert session.eof() == b"OK id\n"
    [env] = sink.begun
    assert env.sender == "s@example.org" and env.client_helo is None
    assert env.recipients[0] == "r0@example.net"
    assert len(env.recipients) + env.recipients_dropped == 5001


def run_client(which: str, argv: list[str],
               data: bytes = MSG) -> subprocess.CompletedProcess[bytes]:
    if which == "submit":
        cmd = [*SUBMIT, *argv]
    else:
        if shutil.which("nc") is None:
            pytest.skip("nc is not installed")
        cmd = [str(DELIVER), "--client", "nc", *argv]
    return subprocess.run(cmd, input=data, capture_output=True, timeout=60)


@pytest.mark.parametrize("which", ["submit", "deliver"])
def test_an_oversized_envelope_keeps_the_message(
    serve: Callable[..., Server], which: str
) -> None:
    s = serve()
    rcpts = [f"--recipient=trap{i:05d}@example.net" for i in range(2000)]
    done = run_client(which, ["--socket", str(s.submit_path), "--sender", "s@example.org",
                              "--client-address", "not-an-ip", *rcpts])
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(b"OK ")
    [(msgid, (env, msg))] = s.stored().items()
    assert msg == MSG
    assert env.client_address == "not-an-ip"  # kept as given; no relay_ip (see above)
    assert 0 < len(env.recipients) < 2000
    assert env.recipients_dropped == 2000 - len(env.recipients)
    # the worker's record carries the count
    offline = Processor(scanner=None, scan_limit_bytes=500 * 1024)
    record = offline.process(msgid, envelope.frame(msg, env), 1.7e9, 0).to_dict()
    assert record["envelope"]["recipients_dropped"] == env.recipients_dropped
    assert (record["relay_ip"], record["relay_source"]) == (None, "mta_invalid")


@pytest.mark.parametrize("which", ["submit", "deliver"])
def test_control_characters_from_the_clients_are_escaped(
    serve: Callable[..., Server], which: str
) -> None:
    s = serve()
    done = run_client(which, ["--socket", str(s.submit_path), "--sender", "a\x01b\rc@x.org",
                              "--recipient", "t\x1b@example.net"])
    assert done.returncode == 0, done.stderr
    [(env, _)] = s.stored().values()
    # the Python client turns CR into a space itself; the sh wrapper passes it on
    cr = " " if which == "submit" else "\\x0d"
    assert env.sender == f"a\\x01b{cr}c@x.org"
    assert env.recipients == ("t\\x1b@example.net",)


@pytest.mark.parametrize("which", ["submit", "deliver"])
@pytest.mark.parametrize(("reply", "code"), [
    (b"ERR bad request: envelope block over 16384 bytes\n", 75),  # what an older ingest says
    (b"ERR something new\n", 75),
    (b"ERR message too large\n", 0),
    (b"ERR empty message\n", 0),
])
def test_the_clients_exit_0_only_on_a_refusal_for_good(
    base: Path, which: str, reply: bytes, code: int
) -> None:
    path = base / f"one-{code}.sock"
    server = CannedReply(path, reply)
    try:
        done = run_client(which, ["--socket", str(path), "--timeout", "10"])
    finally:
        server.close()
    assert done.returncode == code, done.stderr
    assert submit.exit_code(reply) == code
