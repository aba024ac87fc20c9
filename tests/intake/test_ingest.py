"""The ingest over real Unix sockets: protocol replies, limits, ring-or-overflow, stopping.

Protocol tier: an IngestServer on a socket in a temporary directory, served by
a thread, with a real ring and a real overflow.  Then the command-line clients
an MTA uses, and the forked child's entry point under signals.
"""

from __future__ import annotations

import contextlib
import grp
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from delivery_harness import Server

from ringtrap import ingest_socket
from ringtrap.base import envelope, ids, proc, titles
from ringtrap.base.counters import C
from ringtrap.base.states import ProcState
from ringtrap.base.wire import (
    ERR,
    OK,
    REASON_BUSY,
    REASON_EMPTY,
    REASON_IDLE,
    REASON_OVERFLOW_FULL,
    REASON_SHUTTING_DOWN,
    REASON_TOO_LARGE,
    TEMPFAIL,
    reply_line,
)
from ringtrap.config import Config, IngestConfig, OverflowConfig, RingConfig
from ringtrap.ingest_socket import CHUNK
from ringtrap.intake import sockets
from ringtrap.intake.child import child_main
from ringtrap.intake.sockets import bind_socket
from ringtrap.overflow import Overflow, SpillWriter
from ringtrap.ring import Ring
from ringtrap.store.segment import unlink_name

HEADER = envelope.header(None)
INGEST_COUNTERS = (
    C.CONNECTIONS,
    C.CONNECTIONS_REFUSED,
    C.ACCEPTED_RING,
    C.ACCEPTED_OVERFLOW,
    C.REFUSED_TOO_LARGE,
    C.REFUSED_EMPTY,
    C.REFUSED_TEMP,
    C.IDLE_TIMEOUTS,
    C.BYTES_IN,
)


def body(tag: str, size: int) -> bytes:
    """Deterministic bytes of every value, different per ``tag``."""
    seed = tag.encode() + bytes(range(256))
    return (seed * (size // len(seed) + 1))[:size]


def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.005)


class RecordingOverflow(Overflow):
    """A real overflow that also notes how each message reached it."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.spilled: list[str] = []
        self.streamed: list[str] = []
        self.chunks: list[int] = []

    def spill(self, msgid: str, data: bytes, attempts: int = 0) -> str:
        self.spilled.append(msgid)
        return super().spill(msgid, data, attempts)

    def spill_stream(self, msgid: str, attempts: int = 0) -> SpillWriter:
        self.streamed.append(msgid)
        writer = super().spill_stream(msgid, attempts)
        write = writer.write

        def recording_write(chunk: bytes) -> int:
            self.chunks.append(len(chunk))
            return write(chunk)

        writer.write = recording_write  # type: ignore[method-assign]
        return writer

    def files(self, sub: str = "new") -> dict[str, bytes]:
        """msgid -> content of every file in ``sub``."""
        d = self.path / sub
        return {name.split(",")[0]: (d / name).read_bytes() for name in sorted(os.listdir(d))}


class Client:
    """One connection to the ingest, driven step by step."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        try:
            self.sock.connect(str(path))
        except BaseException:
            self.sock.close()
            raise

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def finish(self) -> bytes:
        """Half-close and read the reply to EOF."""
        self.sock.shutdown(socket.SHUT_WR)
        return self.reply()

    def reply(self) -> bytes:
        out = b""
        while True:
            got = self.sock.recv(4096)
            if not got:
                break
            out += got
        self.sock.close()
        return out

    def close(self) -> None:
        self.sock.close()


class Harness(Server):
    """A ring, a recording overflow and an ingest server on the raw socket
    alone, served by a thread."""

    overflow: RecordingOverflow

    def __init__(self, base: Path, **options: Any) -> None:
        super().__init__(base, sessions=False, overflow_type=RecordingOverflow, **options)
        self.sock_path = self.raw_path

    def connect(self) -> Client:
        return Client(self.sock_path)

    def deliver(self, data: bytes) -> bytes:
        c = self.connect()
        c.send(data)
        return c.finish()

    def claim_all(self) -> list[tuple[str, bytes]]:
        """Every message in the ring, oldest first (acknowledged: the ring empties)."""
        out = []
        while True:
            claim = self.reader.claim(0)
            if claim is None:
                return out
            out.append((claim.msgid, bytes(claim.data)))
            self.reader.ack(claim)

    def counters(self) -> dict[str, int]:
        return {c.name: self.row.get(c) for c in INGEST_COUNTERS}


@pytest.fixture
def base() -> Iterator[Path]:
    # a short path: a Unix socket's name is limited to 107 bytes
    path = Path(tempfile.mkdtemp(prefix="rt-ingest-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def titles_set(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Titles the server sets; recorded instead of renaming the test process, which
    other suites looking for ``ringtrap: ingest`` processes would otherwise find."""
    seen: list[tuple[str, str]] = []

    def record(role: str, activity: str = "") -> None:
        seen.append((role, activity))

    monkeypatch.setattr(titles, "set_title", record)
    return seen


@pytest.fixture(params=["nowait", "nonblocking"])
def make(
    request: pytest.FixtureRequest,
    base: Path,
    titles_set: list[tuple[str, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Callable[..., Harness]]:
    """Harnesses, once per way of reading an accepted descriptor: preadv2 with
    RWF_NOWAIT, and a non-blocking descriptor where a kernel lacks that."""
    if request.param == "nonblocking":
        monkeypatch.setattr(ingest_socket, "_NOWAIT_IO", False)
    elif not ingest_socket._NOWAIT_IO:
        pytest.skip("this kernel does not honour RWF_NOWAIT on sockets")
    made: list[Harness] = []

    def factory(**kwargs: object) -> Harness:
        h = Harness(base, **kwargs)  # type: ignore[arg-type]
        made.append(h)
        return h

    yield factory
    for h in made:
        h.close()


def ok_id(reply: bytes) -> str:
    kind, _, rest = reply.partition(b" ")
    assert kind == OK, reply
    assert rest.endswith(b"\n") and rest.count(b"\n") == 1, reply
    msgid = rest[:-1].decode()
    assert ids.is_valid(msgid), reply
    return msgid


def expect_counters(h: Harness, **kv: int) -> None:
    """The ingest counters in the row equal ``kv`` (others 0) once the turn has ended."""
    want = {c.name: 0 for c in INGEST_COUNTERS}
    want.update(kv)
    # counts reach the row at the end of the server's turn, just after the reply
    with contextlib.suppress(AssertionError):
        wait_for(lambda: h.counters() == want, timeout=2.0)
    assert h.counters() == want


# -- protocol ------------------------------------------------------------------


def test_ok_after_the_payload_is_in_the_ring(make: Callable[..., Harness]) -> None:
    h = make()
    msg = b"From: a@example.org\r\nSubject: hi\r\n\r\nbody\r\n"
    msgid = ok_id(h.deliver(msg))
    assert h.claim_all() == [(msgid, HEADER + msg)]
    assert h.overflow.spilled == h.overflow.streamed == []
    expect_counters(h, CONNECTIONS=1, ACCEPTED_RING=1, BYTES_IN=len(msg))


def test_message_filling_a_slot_exactly_stays_in_the_ring(make: Callable[..., Harness]) -> None:
    h = make(slot_bytes=4096)
    fits = body("fit", 4096 - len(HEADER))
    over = body("over", 4096 - len(HEADER) + 1)
    a, b = ok_id(h.deliver(fits)), ok_id(h.deliver(over))
    assert h.claim_all() == [(a, HEADER + fits)]
    assert h.overflow.files() == {b: HEADER + over}
    # arriving whole it may be spilled from the receive buffer, else it streams
    assert h.overflow.streamed + h.overflow.spilled == [b]


def test_large_message_streams_to_the_overflow(make: Callable[..., Harness]) -> None:
    h = make(slot_bytes=4096, max_message_bytes=16 << 20)
    msg = body("large", 4 << 20)
    view = memoryview(msg)
    tracemalloc.start()
    try:
        c = h.connect()
        for i in range(0, len(msg), 50_000):
            c.send(view[i : i + 50_000])
        reply = c.finish()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    msgid = ok_id(reply)
    assert h.overflow.files() == {msgid: HEADER + msg}
    assert h.overflow.files("tmp") == {}
    assert h.overflow.streamed == [msgid] and h.overflow.spilled == []
    # written as it arrived: never more than a slot plus one receive at a time
    assert max(h.overflow.chunks) <= 4096 + CHUNK
    assert sum(h.overflow.chunks) == len(HEADER) + len(msg)
    assert peak < 1 << 20, f"{peak} bytes allocated while receiving 4 MiB"
    assert h.claim_all() == []
    expect_counters(h, CONNECTIONS=1, ACCEPTED_OVERFLOW=1, BYTES_IN=len(msg))


def test_full_ring_spills_and_still_answers_at_once(make: Callable[..., Harness]) -> None:
    h = make(slots=2)
    msgs = [body(f"m{i}", 300 + i) for i in range(6)]
    got = []
    for m in msgs:
        t0 = time.monotonic()
        got.append(ok_id(h.deliver(m)))
        assert time.monotonic() - t0 < 1.0  # no waiting for a consumer
    assert h.claim_all() == [(got[i], HEADER + msgs[i]) for i in range(2)]
    assert h.overflow.files() == {got[i]: HEADER + msgs[i] for i in range(2, 6)}
    assert h.overflow.spilled == got[2:]
    expect_counters(
        h, CONNECTIONS=6, ACCEPTED_RING=2, ACCEPTED_OVERFLOW=4, BYTES_IN=sum(map(len, msgs))
    )


def test_oversize_is_read_to_the_end_then_refused(make: Callable[..., Harness]) -> None:
    h = make(max_message_bytes=64 << 10)
    msg = body("big", 8 << 20)
    view = memoryview(msg)
    tracemalloc.start()
    try:
        c = h.connect()
        # sendall returns only once the server has taken nearly all: it keeps reading
        for i in range(0, len(msg), 50_000):
            c.send(view[i : i + 50_000])
        reply = c.finish()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert reply == reply_line(ERR, REASON_TOO_LARGE)
    assert peak < 1 << 20, f"{peak} bytes allocated while discarding 8 MiB"
    assert h.claim_all() == []
    assert h.overflow.files() == {} and h.overflow.files("tmp") == {}
    expect_counters(h, CONNECTIONS=1, REFUSED_TOO_LARGE=1, BYTES_IN=len(msg))


def test_oversize_found_while_streaming_leaves_no_file(make: Callable[..., Harness]) -> None:
    h = make(slot_bytes=4096, max_message_bytes=100_000)
    assert h.deliver(body("x", 100_001)) == reply_line(ERR, REASON_TOO_LARGE)
    assert len(h.overflow.streamed) == 1  # it had started to stream
    assert h.overflow.files() == {} and h.overflow.files("tmp") == {}
    exact = body("y", 100_000)
    msgid = ok_id(h.deliver(exact))
    assert h.overflow.files() == {msgid: HEADER + exact}


def test_empty_message_is_refused(make: Callable[..., Harness]) -> None:
    h = make()
    c = h.connect()
    assert c.finish() == reply_line(ERR, REASON_EMPTY)
    assert h.claim_all() == []
    expect_counters(h, CONNECTIONS=1, REFUSED_EMPTY=1)


def test_overflow_cap_gives_tempfail(make: Callable[..., Harness]) -> None:
    cap = 1 << 20
    h = make(slots=1, slot_bytes=4096, overflow_cap=cap)
    first = ok_id(h.deliver(b"fills the ring"))
    big = body("big", 600_000)
    big_id = ok_id(h.deliver(big))
    # streamed: refused mid-stream, still read to the end, nothing left behind
    assert h.deliver(body("no room", 600_000)) == reply_line(TEMPFAIL, REASON_OVERFLOW_FULL)
    assert h.overflow.files("tmp") == {}
    more = body("more", 445_000)
    more_id = ok_id(h.deliver(more))
    # small but the ring is full: the spill of the whole payload is refused
    assert cap - 2 * len(HEADER) - len(big) - len(more) < 4000 + len(HEADER)
    assert h.deliver(body("small", 4000)) == reply_line(TEMPFAIL, REASON_OVERFLOW_FULL)
    assert h.overflow.files() == {big_id: HEADER + big, more_id: HEADER + more}
    assert [m for m, _ in h.claim_all()] == [first]
    expect_counters(
        h,
        CONNECTIONS=5,
        ACCEPTED_RING=1,
        ACCEPTED_OVERFLOW=2,
        REFUSED_TEMP=2,
        BYTES_IN=14 + 600_000 + 600_000 + 445_000 + 4000,
    )


def test_permanent_refusal_wins_over_a_full_overflow(make: Callable[..., Harness]) -> None:
    h = make(slot_bytes=4096, overflow_cap=1 << 20, max_message_bytes=2 << 20)
    assert h.deliver(body("w", 3 << 20)) == reply_line(ERR, REASON_TOO_LARGE)


def test_idle_connection_gets_tempfail_after_the_timeout(make: Callable[..., Harness]) -> None:
    h = make(idle_timeout=0.3)
    c = h.connect()
    c.send(b"Subject: half a message\r\n")
    t0 = time.monotonic()
    assert c.reply() == reply_line(TEMPFAIL, REASON_IDLE)
    assert 0.29 <= time.monotonic() - t0 < 2.0
    assert h.claim_all() == []
    expect_counters(h, CONNECTIONS=1, IDLE_TIMEOUTS=1, BYTES_IN=25)


def test_slow_but_steady_client_is_not_idle(make: Callable[..., Harness]) -> None:
    h = make(idle_timeout=0.3)
    c = h.connect()
    parts = [b"line %d\r\n" % i for i in range(8)]
    for p in parts:
        c.send(p)
        time.sleep(0.1)
    msgid = ok_id(c.finish())
    assert h.claim_all() == [(msgid, HEADER + b"".join(parts))]


def test_connections_over_the_limit_are_refused_at_once(make: Callable[..., Harness]) -> None:
    h = make(max_connections=2)
    held = [h.connect(), h.connect()]
    for i, c in enumerate(held):
        c.send(b"held %d" % i)
    wait_for(lambda: h.server.connections == 2)
    extra = h.connect()
    t0 = time.monotonic()
    assert extra.reply() == reply_line(TEMPFAIL, REASON_BUSY)
    assert time.monotonic() - t0 < 1.0
    got = [ok_id(c.finish()) for c in held]
    assert h.claim_all() == [(got[0], HEADER + b"held 0"), (got[1], HEADER + b"held 1")]
    expect_counters(h, CONNECTIONS=3, CONNECTIONS_REFUSED=1, ACCEPTED_RING=2, BYTES_IN=12)
    # the limit counts connections in progress, not the total
    assert ok_id(h.deliver(b"after"))


def test_binary_garbage_is_stored_intact(make: Callable[..., Harness]) -> None:
    h = make(slot_bytes=8192)
    small = bytes(range(256)) * 4 + b"\0" * 500 + b"\r\n.\r\n\n\xff"
    large = bytes(range(256)) * 200 + b"\0" * 5000
    a, b = ok_id(h.deliver(small)), ok_id(h.deliver(large))
    assert h.claim_all() == [(a, HEADER + small)]
    assert h.overflow.files() == {b: HEADER + large}


def test_client_that_does_not_read_the_reply_harms_nothing(
    make: Callable[..., Harness],
) -> None:
    h = make(slots=64)
    for i in range(20):
        c = h.connect()
        c.send(b"fire and forget %d" % i)
        if i % 2:
            c.sock.shutdown(socket.SHUT_WR)
        c.close()
    msgid = ok_id(h.deliver(b"and then a normal one"))
    wait_for(lambda: h.row.get(C.ACCEPTED_RING) == 21)
    got = dict(h.claim_all())
    assert got.pop(msgid) == HEADER + b"and then a normal one"
    # stored in whatever order their ends were seen
    assert sorted(got.values()) == sorted(HEADER + b"fire and forget %d" % i for i in range(20))


def test_title_shows_connections_and_messages_in(
    make: Callable[..., Harness], titles_set: list[tuple[str, str]]
) -> None:
    h = make()
    for i in range(3):
        ok_id(h.deliver(b"m%d" % i))
    c = h.connect()
    c.send(b"held")
    wait_for(lambda: ("ingest", "1 conns 3 in") in titles_set, timeout=3)
    ok_id(c.finish())
    h.server.stop()
    wait_for(lambda: h.server.finished)
    assert titles_set[-1] == ("ingest", "stopped 4 in")


def test_ids_are_unique_and_increasing(make: Callable[..., Harness]) -> None:
    h = make(slots=64)
    got = [ok_id(h.deliver(b"message %d" % i)) for i in range(50)]
    assert got == sorted(got) and len(set(got)) == 50
    assert [m for m, _ in h.claim_all()] == got


def test_counters_follow_every_outcome(make: Callable[..., Harness]) -> None:
    h = make(slots=1, slot_bytes=4096, max_message_bytes=50_000, idle_timeout=0.2)
    ok_id(h.deliver(b"ring"))
    ok_id(h.deliver(b"spilled"))
    ok_id(h.deliver(body("streamed", 10_000)))
    h.deliver(body("too large", 60_000))
    h.deliver(b"")
    c = h.connect()
    c.send(b"idle")
    assert c.reply() == reply_line(TEMPFAIL, REASON_IDLE)
    expect_counters(
        h,
        CONNECTIONS=6,
        ACCEPTED_RING=1,
        ACCEPTED_OVERFLOW=2,
        REFUSED_TOO_LARGE=1,
        REFUSED_EMPTY=1,
        IDLE_TIMEOUTS=1,
        BYTES_IN=4 + 7 + 10_000 + 60_000 + 4,
    )


# -- stopping ------------------------------------------------------------------


def test_graceful_stop_lets_a_message_in_progress_finish(make: Callable[..., Harness]) -> None:
    h = make()
    c = h.connect()
    c.send(b"first half, ")
    wait_for(lambda: h.server.connections == 1)
    h.server.stop(graceful=True)

    def refused() -> bool:
        try:
            Client(h.sock_path).close()
        except ConnectionRefusedError:
            return True
        return False

    wait_for(refused)
    assert not h.server.finished
    c.send(b"second half")
    msgid = ok_id(c.finish())
    wait_for(lambda: h.server.finished)
    assert h.claim_all() == [(msgid, HEADER + b"first half, second half")]
    rows = {r.row: r for r in h.ring.table.read_rows()}
    assert rows[h.row.row].state == ProcState.STOPPED


def test_drain_deadline_answers_the_rest_tempfail(make: Callable[..., Harness]) -> None:
    h = make(slot_bytes=4096)
    slow = h.connect()
    slow.send(body("slow", 10_000))  # streaming into a tmp file
    wait_for(lambda: h.server.connections == 1)
    t0 = time.monotonic()
    h.server.stop(graceful=True, drain_timeout=0.3)
    assert slow.reply() == reply_line(TEMPFAIL, REASON_SHUTTING_DOWN)
    assert 0.25 <= time.monotonic() - t0 < 3.0
    wait_for(lambda: h.server.finished)
    assert h.overflow.files() == {} and h.overflow.files("tmp") == {}
    assert h.row.get(C.REFUSED_TEMP) == 1


def test_immediate_stop_answers_at_once(make: Callable[..., Harness]) -> None:
    h = make()
    c = h.connect()
    c.send(b"partial")
    wait_for(lambda: h.server.connections == 1)
    h.server.stop(graceful=True, drain_timeout=60)
    h.server.stop(graceful=False)  # a second, harsher request wins
    assert c.reply() == reply_line(TEMPFAIL, REASON_SHUTTING_DOWN)
    wait_for(lambda: h.server.finished)


# -- real clients --------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "replies"),
    [
        (["socat", "-u", "-", "UNIX-CONNECT:{path}"], False),
        (["socat", "-", "UNIX-CONNECT:{path}"], True),
        (["nc", "-U", "-N", "{path}"], True),
    ],
    ids=["socat -u", "socat", "nc -U -N"],
)
def test_mta_pipe_clients_deliver(
    make: Callable[..., Harness], argv: list[str], replies: bool
) -> None:
    if shutil.which(argv[0]) is None:
        pytest.skip(f"{argv[0]} not installed")
    h = make(slots=64, slot_bytes=16384)
    cmd = [a.replace("{path}", str(h.sock_path)) for a in argv]
    msgs = [body(f"{argv[0]}{i}", size) for i, size in enumerate((1, 900, 16_000, 100_000))]
    for m in msgs:
        done = subprocess.run(cmd, input=m, capture_output=True, timeout=30, check=False)
        assert done.returncode == 0, done.stderr
        if replies:
            ok_id(done.stdout)
        else:
            assert done.stdout == b""
    wait_for(lambda: h.row.get(C.ACCEPTED_RING) + h.row.get(C.ACCEPTED_OVERFLOW) == 4)
    stored = dict(h.claim_all()) | h.overflow.files()
    assert sorted(stored.values()) == sorted(HEADER + m for m in msgs)


# -- bind_socket ----------------------------------------------------------------


def test_bind_socket_sets_mode_and_group(base: Path) -> None:
    path = base / "sub" / "dir" / "in.sock"
    group = grp.getgrgid(os.getgid()).gr_name
    sock = bind_socket(path, mode=0o620, group=group)
    try:
        st = os.stat(path)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o620
        assert st.st_gid == os.getgid()
    finally:
        sock.close()


def test_bind_socket_replaces_a_stale_socket(base: Path) -> None:
    path = base / "in.sock"
    old = bind_socket(path)
    old.close()  # the file stays, nobody answers
    new = bind_socket(path)
    try:
        c = socket.socket(socket.AF_UNIX)
        c.connect(str(path))
        c.close()
    finally:
        new.close()


def test_bind_socket_refuses_a_live_socket(base: Path) -> None:
    path = base / "in.sock"
    live = bind_socket(path)
    try:
        with pytest.raises(RuntimeError, match="in use by another process"):
            bind_socket(path)
        assert stat.S_ISSOCK(os.stat(path).st_mode)
    finally:
        live.close()


def test_bind_socket_never_removes_a_regular_file(base: Path) -> None:
    path = base / "in.sock"
    path.write_text("precious")
    with pytest.raises(RuntimeError, match="not a socket"):
        bind_socket(path)
    assert path.read_text() == "precious"


# -- the forked child -------------------------------------------------------------


class Child:
    """child_main in a forked process with its own ring and overflow."""

    def __init__(self, base: Path) -> None:
        self.ring_name = f"rt-test-ingest-child-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.sock_path = base / "ingest.sock"
        cfg = Config()
        self.cfg = replace(
            cfg,
            ingest=replace(IngestConfig(), socket=self.sock_path, idle_timeout=30.0),
            ring=replace(RingConfig(), name=self.ring_name, slots=8, slot_bytes=4096),
            overflow=replace(OverflowConfig(), dir=base / "overflow", max_bytes=64 << 20),
        )
        self.ring = Ring.create(self.ring_name, 8, 4096)
        self.row_index = 3
        listener = bind_socket(self.sock_path)
        self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover - runs in the child
            code = 70
            try:
                code = child_main(self.cfg, listener, self.row_index)
            finally:
                os._exit(code)
        listener.close()  # the child's copy is the only one: stopping refuses clients
        self.status: int | None = None
        wait_for(lambda: self.state() == ProcState.IDLE)

    def state(self) -> ProcState | None:
        for r in self.ring.table.read_rows():
            if r.row == self.row_index and r.pid == self.pid:
                return r.state
        return None

    def wait(self, timeout: float = 10.0) -> int:
        deadline = time.monotonic() + timeout
        while self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = status
            elif time.monotonic() > deadline:
                raise AssertionError("ingest child did not exit")
            else:
                time.sleep(0.01)
        return os.waitstatus_to_exitcode(self.status)

    def close(self) -> None:
        if self.status is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        self.ring.close()
        unlink_name(self.ring_name)


@pytest.fixture
def child(base: Path, titles_set: list[tuple[str, str]]) -> Iterator[Child]:
    c = Child(base)
    yield c
    c.close()


@pytest.mark.slow
def test_child_finishes_in_flight_work_on_term(child: Child) -> None:
    before = Client(child.sock_path)
    before.send(b"before")
    first = ok_id(before.finish())
    c = Client(child.sock_path)
    c.send(b"in flight, ")
    time.sleep(0.1)
    os.kill(child.pid, signal.SIGTERM)
    wait_for(lambda: child.state() == ProcState.DRAINING)
    with pytest.raises(ConnectionRefusedError):
        Client(child.sock_path)
    c.send(b"finished after TERM")
    second = ok_id(c.finish())
    assert child.wait() == 0
    assert child.state() == ProcState.STOPPED
    reader = Ring.attach(child.ring_name)
    try:
        got = []
        while (claim := reader.claim(0)) is not None:
            got.append((claim.msgid, bytes(claim.data)))
            reader.ack(claim)
    finally:
        reader.close()
    assert got == [
        (first, HEADER + b"before"),
        (second, HEADER + b"in flight, finished after TERM"),
    ]
    rows = {r.row: r for r in child.ring.table.read_rows()}
    assert rows[child.row_index].counters[C.ACCEPTED_RING] == 2


@pytest.mark.slow
def test_child_stops_at_once_on_int(child: Child) -> None:
    c = Client(child.sock_path)
    c.send(b"partial")
    time.sleep(0.1)
    os.kill(child.pid, signal.SIGINT)
    assert c.reply() == reply_line(TEMPFAIL, REASON_SHUTTING_DOWN)
    assert child.wait() == 0


@pytest.mark.slow
def test_child_ignores_hup_and_survives_clients_that_leave(child: Child) -> None:
    os.kill(child.pid, signal.SIGHUP)
    for _ in range(5):
        c = Client(child.sock_path)
        c.send(b"x")
        c.close()
    c = Client(child.sock_path)
    c.send(b"still here")
    assert ok_id(c.finish())
    assert child.state() == ProcState.IDLE


@pytest.mark.slow
def test_child_exits_when_its_parent_is_gone(base: Path, titles_set: list[tuple[str, str]]) -> None:
    ring_name = f"rt-test-ingest-orphan-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    sock_path = base / "ingest.sock"
    cfg = replace(
        Config(),
        ingest=replace(IngestConfig(), socket=sock_path),
        ring=replace(RingConfig(), name=ring_name, slots=8, slot_bytes=4096),
        overflow=replace(OverflowConfig(), dir=base / "overflow", max_bytes=64 << 20),
    )
    ring = Ring.create(ring_name, 8, 4096)
    listener = bind_socket(sock_path)
    r, w = os.pipe()
    go_r, go_w = os.pipe()
    middle = os.fork()
    if middle == 0:  # pragma: no cover - the short-lived parent of the ingest
        code = 70
        try:
            os.close(r)
            os.close(go_w)
            grandchild = os.fork()
            if grandchild == 0:
                os.close(w)
                os.close(go_r)
                os._exit(child_main(cfg, listener, 2))
            os.write(w, str(grandchild).encode())
            os.read(go_r, 1)  # live until the ingest is serving, then vanish
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    os.close(go_r)
    listener.close()
    pid = 0
    ident = proc.Identity(0, 0)
    try:
        pid = int(os.read(r, 32))
        wait_for(lambda: any(x.pid == pid and x.state == ProcState.IDLE
                             for x in ring.table.read_rows()))
        ident = proc.Identity(pid, proc.start_ticks(pid) or 0)
        os.close(go_w)
        assert os.waitpid(middle, 0)[1] == 0
        # its parent has exited: the ingest notices within a turn and leaves
        wait_for(lambda: not proc.is_alive(ident), timeout=10)
        rows = {x.row: x for x in ring.table.read_rows()}
        assert rows[2].pid == pid and rows[2].state == ProcState.STOPPED
    finally:
        if pid > 0 and proc.is_alive(ident):  # only if the test failed
            os.kill(pid, signal.SIGKILL)
        os.close(r)
        ring.close()
        unlink_name(ring_name)


def test_a_failure_while_answering_never_leaks_the_descriptor(
    make: Callable[..., Harness],
) -> None:
    """A message answered on the bare descriptor: whatever goes wrong while
    storing it, the descriptor is closed and the client sees the end."""
    h = make()
    h.server.stop(graceful=False)
    h.thread.join(10)

    def broken(msgid: str, payload: object) -> None:
        raise ValueError("a bug in the store")

    h.server.store._put = broken  # type: ignore[assignment]  # the ring's put, as cached
    client, server_side = socket.socketpair()
    fd = server_side.detach()
    with pytest.raises(ValueError, match="a bug in the store"):
        h.server._answer_whole(fd, ids.new_id(), 5)
    with pytest.raises(OSError):
        os.fstat(fd)
    client.settimeout(5)
    assert client.recv(10) == b""
    client.close()


def test_the_nowait_probe_never_hangs_and_never_says_yes_wrongly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if sockets.nowait_io():
        assert ingest_socket._NOWAIT_IO
    real = os.preadv

    def ignores_the_flag(fd: int, buffers: list[bytearray], offset: int, flags: int = 0) -> int:
        return real(fd, buffers, offset)  # a kernel that accepts the flag and waits

    monkeypatch.setattr(os, "preadv", ignores_the_flag)
    t0 = time.monotonic()
    assert sockets.nowait_io() is False
    # ...even where sockets are made non-blocking by a default timeout
    socket.setdefaulttimeout(0.0)
    try:
        assert sockets.nowait_io() is False
    finally:
        socket.setdefaulttimeout(None)
    assert time.monotonic() - t0 < 5
