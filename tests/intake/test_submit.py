"""The submit socket and its two clients, ``ringtrap submit`` and ``ringtrap-deliver``.

Protocol tier over real Unix sockets (an IngestServer in a thread), then the
clients as the MTA runs them: real processes, real exit codes.  A pipe client
must exit 0 only when the message is stored or refused for good, and 75
(defer) on everything else — never 1, which Postfix bounces.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from delivery_harness import DELIVER, SUBMIT, Server, wait_for

from ringtrap.base import wire
from ringtrap.base.envelope import Envelope
from ringtrap.base.wire import OK, REASON_BAD_REQUEST, REASON_TRUNCATED, TEMPFAIL
from ringtrap.command import submit
from ringtrap.intake.delivery import Outcome
from ringtrap.intake.submit_session import SubmitSession, dd_report_start

MSG = b"From: a@example.org\nSubject: trap\n\nbody\n"


def frame(message: bytes, lines: bytes = b"", size: int | None = None) -> bytes:
    n = len(message) if size is None else size
    return wire.MAGIC + lines + b"\n" + message + b"END %d\n" % n


def exchange(path: Path, data: bytes, half_close: bool = True) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(data)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(4096):
            out += chunk
    return out


def ok_id(reply: bytes) -> str:
    assert reply.startswith(OK + b" ") and reply.endswith(b"\n"), reply
    return reply[3:-1].decode()


# -- the protocol ----------------------------------------------------------------


def test_envelope_and_message_are_stored_exactly(serve: Callable[..., Server]) -> None:
    s = serve()
    lines = (b"sender alice@example.org\nrecipient trap1@example.net\nrecipient trap2@example.net\n"
             b"client_address 192.0.2.7\nclient_helo mx.example.org\nqueue_id 4XyZ\n")
    msgid = ok_id(exchange(s.submit_path, frame(MSG, lines)))
    assert s.stored() == {msgid: (Envelope(
        sender="alice@example.org", recipients=("trap1@example.net", "trap2@example.net"),
        client_address="192.0.2.7", client_helo="mx.example.org", queue_id="4XyZ"), MSG)}


def test_a_message_cannot_forge_the_envelope(serve: Callable[..., Server]) -> None:
    s = serve()
    forged = (wire.MAGIC + b"sender spammer@evil.example\n\n"
              b'RTM1 {"sender":"spammer@evil.example","client_address":"10.6.6.6"}\n' + MSG)
    msgid = ok_id(exchange(s.submit_path, frame(forged, b"sender real@example.org\n")))
    # and on the raw socket nothing is ever parsed: the same bytes are all message
    raw_id = ok_id(exchange(s.raw_path, forged))
    assert s.stored() == {msgid: (Envelope(sender="real@example.org"), forged),
                          raw_id: (Envelope(), forged)}


def test_a_stream_cut_short_is_refused_and_nothing_stored(serve: Callable[..., Server]) -> None:
    s = serve(slot_bytes=4096)
    truncated = wire.MAGIC + b"\n" + MSG  # no trailer: the client died
    wrong = frame(MSG, size=len(MSG) + 1)  # a trailer that does not match
    # a big one that was already streaming to the overflow when the client died
    big = wire.MAGIC + b"\n" + b"x" * 200_000 + b"END 100000\n"
    header_only = wire.MAGIC + b"sender a@b\n"
    for data in (truncated, wrong, big, header_only):
        assert exchange(s.submit_path, data) == TEMPFAIL + b" " + REASON_TRUNCATED + b"\n"
    assert s.stored() == {}
    assert os.listdir(s.overflow.path / "tmp") == []


def test_trailer_split_across_receives_and_a_message_ending_like_one() -> None:
    class Sink:
        def __init__(self) -> None:
            self.data = b""
            self.env: Envelope | None = None

        def begin(self, env: Envelope) -> str:
            self.env = env
            return "id"

        def write(self, data: bytes) -> None:
            self.data += data

        def end(self) -> Outcome:
            return Outcome.STORED

        def abort(self) -> None:
            raise AssertionError("aborted")

    tricky = b"Subject: x\n\nthe END 3\nEND 9\n"  # message bytes that look like trailers
    sink = Sink()
    session = SubmitSession(sink)  # type: ignore[arg-type]
    for byte in frame(tricky, b"recipient t@example.net\n"):
        assert session.feed(bytes([byte])) == b""
    assert session.eof() == b"OK id\n"
    assert sink.data == tricky
    assert sink.env == Envelope(recipients=("t@example.net",))


@pytest.mark.parametrize("report", [
    b"0+1 records in\n0+1 records out\n%d bytes (%s) copied, 3.1e-05 s, 88.1 MB/s\n",  # GNU
    b"0+1 records in\n0+1 records out\n%d bytes (%s) copied, 0.000031 seconds, 88MB/s\n",
    b"0+1 records in\n0+1 records out\n%d bytes transferred in 0.000031 secs (%s bytes/sec)\n",
])
@pytest.mark.parametrize("message", [MSG, MSG + b"\n0+1 records in 12", b"5", b""])
def test_dd_report_is_a_trailer(report: bytes, message: bytes) -> None:
    """What ringtrap-deliver sends: dd's closing report, right after the last byte."""
    got = []
    for n in (len(message), len(message) + 1):  # the right count, then a wrong one
        stream = message + report.replace(b"%d", str(n).encode()).replace(b"%s", b"4.1 kB")
        if len(message) == 1:
            stream = stream.replace(b"bytes", b"byte", 1)  # GNU's singular
        # the tail held back may start anywhere in the message
        for before in (0, len(message) // 2, len(message)):
            i = dd_report_start(stream[before:], before)
            got.append(stream[:before + i] if i >= 0 else None)
    assert got == [message] * 3 + [None] * 3


def test_a_dd_report_that_does_not_end_the_stream_is_no_trailer() -> None:
    report = b"0+1 records in\n0+1 records out\n5 bytes copied, 1 s, 5 B/s\n"
    assert dd_report_start(b"hello" + report, 0) == 5
    assert dd_report_start(b"hello" + report + b"more\n", 0) == -1
    assert dd_report_start(b"hello" + report[:-1], 0) == -1  # its last line cut
    assert dd_report_start(b"hello" + report.replace(b"records out\n", b""), 0) == -1


def test_not_a_submit_stream_gets_tempfail_and_is_read_to_its_end(
    serve: Callable[..., Server],
) -> None:
    # not stored, and not the message's fault: the MTA keeps it queued, where it is seen
    s = serve()
    reply = exchange(s.submit_path, MSG * 10_000)  # a raw client on the wrong socket
    assert reply.startswith(TEMPFAIL + b" " + REASON_BAD_REQUEST + b": not a submit stream"), reply
    bad = exchange(s.submit_path, wire.MAGIC + b"sender a\nsender b\n\n" + MSG + b"END 5\n")
    assert bad.startswith(TEMPFAIL + b" " + REASON_BAD_REQUEST + b": sender given twice"), bad
    assert s.stored() == {}


def test_size_limit_and_empty_message_answer_as_on_the_raw_socket(
    serve: Callable[..., Server],
) -> None:
    s = serve(max_message_bytes=64 * 1024)
    assert exchange(s.submit_path, frame(b"y" * 100_000)) == b"ERR message too large\n"
    assert exchange(s.submit_path, frame(b"")) == b"ERR empty message\n"
    big = b"z" * 60_000  # over a slot, under the limit: streamed to the overflow
    msgid = ok_id(exchange(s.submit_path, frame(big, b"sender s@example.org\n")))
    assert s.stored() == {msgid: (Envelope(sender="s@example.org"), big)}


# -- ringtrap submit ---------------------------------------------------------------


def run_submit(argv: list[str], data: bytes = MSG) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(SUBMIT + argv, input=data, capture_output=True, timeout=60)


def run_deliver(argv: list[str], data: bytes = MSG,
                client: str = "nc") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(DELIVER), "--client", client, *argv], input=data,
                          capture_output=True, timeout=60)


CLIENTS = ["submit", "deliver-nc", "deliver-socat"]


def run_client(which: str, argv: list[str],
               data: bytes = MSG) -> subprocess.CompletedProcess[bytes]:
    if which == "submit":
        return run_submit(argv, data)
    tool = which.removeprefix("deliver-")
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed")
    return run_deliver(argv, data, tool)


@pytest.mark.parametrize("which", CLIENTS)
def test_client_delivers_the_mta_envelope(serve: Callable[..., Server], which: str) -> None:
    s = serve(slot_bytes=16384)
    # text, large, binary, and ends that run into a trailer: digits with no
    # line feed (dd's report follows the last byte directly), a single byte
    msgs = [MSG, b"x" * 200_000 + b"\n", bytes(range(256)) * 40, MSG + b"\n4096 bytes 10+1", b"7"]
    ids = []
    for m in msgs:
        done = run_client(which, [
            "--socket", str(s.submit_path), "--sender=bounce@example.org",
            "--recipient", "trap@example.net", "--recipient=other@example.net",
            "--client-address", "198.51.100.4", "--client-helo", "helo.example",
            "--queue-id", "3Q9", "--timeout", "20"], m)
        assert done.returncode == 0, done.stderr
        ids.append(ok_id(done.stdout))
    env = Envelope(sender="bounce@example.org",
                   recipients=("trap@example.net", "other@example.net"),
                   client_address="198.51.100.4", client_helo="helo.example", queue_id="3Q9")
    assert s.stored() == {i: (env, m) for i, m in zip(ids, msgs, strict=True)}


@pytest.mark.parametrize("which", CLIENTS)
def test_client_null_sender_and_odd_values(serve: Callable[..., Server], which: str) -> None:
    s = serve()
    done = run_client(which, ["--socket", str(s.submit_path), "--sender", "",
                              "--recipient", '"odd local part"@example.net',
                              "--client-helo", "two\nlines"])
    assert done.returncode == 0, done.stderr
    [(env, _)] = s.stored().values()
    assert env == Envelope(sender="", recipients=('"odd local part"@example.net',),
                           client_helo="two lines")


@pytest.mark.parametrize("which", CLIENTS)
def test_client_exit_codes(serve: Callable[..., Server], which: str, base: Path) -> None:
    s = serve(max_message_bytes=64 * 1024, overflow_cap=2 * 1024 * 1024, slots=1,
              slot_bytes=1024)
    sock = ["--socket", str(s.submit_path), "--timeout", "5"]
    # stored: 0 and the id
    done = run_client(which, sock)
    assert (done.returncode, done.stdout[:3]) == (0, b"OK "), done.stderr
    # refused for good (too large): 0, never a bounce
    done = run_client(which, sock, b"x" * 100_000)
    assert (done.returncode, done.stdout) == (0, b"ERR message too large\n"), done.stderr
    # cannot store now (the overflow is full): 75
    while run_client(which, sock, b"y" * 60_000).returncode == 0:
        pass
    done = run_client(which, sock, b"y" * 60_000)
    assert done.returncode == 75 and b"TEMPFAIL overflow full" in done.stderr, done.stderr
    # no socket (ringtrap restarting): 75, not 1
    done = run_client(which, ["--socket", str(base / "missing.sock")])
    assert done.returncode == 75, done.stderr
    # a socket file nobody listens on (ringtrap died): 75
    stale = base / "stale.sock"
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(stale))
    done = run_client(which, ["--socket", str(stale)])
    assert done.returncode == 75, done.stderr
    # a usage error in the MTA's configuration: 75, so the mail waits for the fix
    done = run_client(which, [*sock, "--no-such-option", "x"])
    assert done.returncode == 75, done.stderr


@pytest.mark.parametrize("which", CLIENTS)
def test_client_times_out_with_75(base: Path, which: str) -> None:
    # a listener that never accepts: connect succeeds (the backlog), no reply ever comes
    path = base / "silent.sock"
    with socket.socket(socket.AF_UNIX) as silent:
        silent.bind(str(path))
        silent.listen(8)
        start = time.monotonic()
        done = run_client(which, ["--socket", str(path), "--timeout", "1"])
        took = time.monotonic() - start
    assert done.returncode == 75, done.stderr
    assert took < 15


@pytest.mark.parametrize("which", ["submit", "deliver-nc"])
def test_killed_client_stores_nothing(serve: Callable[..., Server], which: str) -> None:
    s = serve(slot_bytes=4096)
    argv = ["--socket", str(s.submit_path)]
    cmd = SUBMIT + argv if which == "submit" else [str(DELIVER), "--client", "nc", *argv]
    # its own process group, as Postfix's pipe(8) runs a command, so the kill takes all of it
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    assert proc.stdin is not None
    proc.stdin.write(b"Subject: half\n\n" + b"h" * 100_000)
    proc.stdin.flush()

    def streaming() -> bool:
        # the message is in progress in the ingest: past its envelope, bytes arriving
        return any(x.sink.msgid and x.sink.size > 50_000
                   for x in list(s.server._conns.values()))

    wait_for(streaming, 10, what="the message to be streaming")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    proc.stdin.close()
    wait_for(lambda: s.server.connections == 0, what="the ingest to drop the connection")
    assert s.stored() == {}
    assert s.accepted() == 0


def _dd_of(pid: int) -> psutil.Process:
    """The dd that ringtrap-deliver ``pid`` runs (a child of one of its subshells)."""
    found: list[psutil.Process] = []

    def look() -> bool:
        found[:] = [p for p in psutil.Process(pid).children(recursive=True) if p.name() == "dd"]
        return bool(found)

    wait_for(look, 10, what="ringtrap-deliver's dd")
    return found[0]


def test_signals_that_make_dd_report_early_do_not_end_a_delivery(
    serve: Callable[..., Server],
) -> None:
    # GNU dd prints its report (the trailer) on SIGINT and SIGUSR1 as well: a
    # report mid-message must not pass for the end of a shorter message.
    s = serve(slot_bytes=4096)
    proc = subprocess.Popen([str(DELIVER), "--client", "nc", "--socket", str(s.submit_path)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    assert proc.stdin is not None
    first, rest = b"Subject: whole\n\n" + b"a" * 3000, b"b" * 3000 + b"\n"
    proc.stdin.write(first)
    proc.stdin.flush()
    dd = _dd_of(proc.pid)
    for sig in (signal.SIGUSR1, signal.SIGINT):
        dd.send_signal(sig)
    time.sleep(0.3)
    assert dd.is_running() and s.stored() == {}
    proc.stdin.write(rest)
    proc.stdin.close()
    assert proc.stdout is not None
    out = proc.stdout.read()
    proc.stdout.close()
    assert proc.wait(30) == 0, out
    assert list(s.stored().values()) == [(Envelope(), first + rest)]


def test_submit_parses_the_postfix_argument_forms() -> None:
    opts = submit.parse_args(["--sender", "", "--recipient=a@x", "--recipient=b@x",
                              "--queue-id=Q"])
    assert opts == {"sender": [""], "recipient": ["a@x", "b@x"], "queue_id": ["Q"]}
    with pytest.raises(submit.UsageError):
        submit.parse_args(["--sender", "a", "--sender", "b"])
    with pytest.raises(submit.UsageError):
        submit.parse_args(["--sender"])


def test_submit_imports_nothing_heavy() -> None:
    # the MTA starts it per message: the interpreter's own start is the floor
    code = ("import sys; import ringtrap.command.submit;"
            " heavy = {'socket', 'json', 'argparse', 'ringtrap.config', 'psutil', 'posix_ipc'};"
            " print(sorted(heavy & set(sys.modules)))")
    out = subprocess.run([*SUBMIT[:1], "-S", "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2], check=True).stdout
    assert out.strip() == "[]"
