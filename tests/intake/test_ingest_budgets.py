"""Slow clients and a full overflow against the ingest's budgets, over real Unix sockets.

Each socket (raw, submit, LMTP) has its own connection budget, so clients
trickling bytes into the raw socket cannot keep the MTA's LMTP and submit
deliveries out; and every message has a total deadline that no trickle
resets.
"""

from __future__ import annotations

import contextlib
import logging
import smtplib
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from delivery_harness import SUBMIT, Server, wait_for

from ringtrap.base.wire import (
    REASON_BUSY,
    REASON_OVERFLOW_FULL,
    REASON_TIMEOUT,
    TEMPFAIL,
    reply_line,
)
from ringtrap.intake import lmtp
from ringtrap.intake.sink import Gate, OverflowGate
from ringtrap.overflow import Overflow, OverflowFull

MSG = b"From: a@example.org\r\nSubject: budgets\r\n\r\nbody\r\n"


class Trickler:
    """Raw-socket clients that each send one byte every ``every`` seconds, never finishing."""

    def __init__(self, path: Path, count: int, every: float) -> None:
        self.socks: list[socket.socket] = []
        for _ in range(count):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(path))
            s.send(b"X")
            self.socks.append(s)
        self.every = every
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(self.every):
            for s in self.socks:
                with contextlib.suppress(OSError):
                    s.send(b"X")

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        for s in self.socks:
            s.close()


def raw_exchange(path: Path, data: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(path))
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # answered and closed before we finished: the reply waits
        out = b""
        while got := s.recv(4096):
            out += got
        return out


def test_slow_raw_clients_cannot_starve_lmtp_and_submit(serve: Callable[..., Server]) -> None:
    s = serve(max_connections=8, idle_timeout=10.0)
    slow = Trickler(s.raw_path, 8, every=2.0)
    try:
        wait_for(lambda: s.server.connections == 8, what="8 slow raw connections")
        # the raw socket's budget is spent ...
        assert raw_exchange(s.raw_path, MSG) == reply_line(TEMPFAIL, REASON_BUSY)
        # ... the MTA's sockets still deliver, several at once
        with smtplib.LMTP(str(s.lmtp_path)) as a, smtplib.LMTP(str(s.lmtp_path)) as b:
            assert a.ehlo("mta.test")[0] == 250 and b.ehlo("mta.test")[0] == 250
            assert a.sendmail("s@example.org", ["trap@example.net"], MSG) == {}
            assert b.sendmail("s@example.org", ["trap@example.net"], MSG) == {}
        argv = ["--socket", str(s.submit_path), "--sender", "s@x.org", "--recipient", "t@x.net"]
        done = subprocess.run([*SUBMIT, *argv], input=MSG, capture_output=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(b"OK ")
        assert s.server.connections == 8  # the slow ones are all still held
        assert len(s.stored()) == 3
    finally:
        slow.close()


def test_each_session_socket_has_its_own_budget(serve: Callable[..., Server]) -> None:
    s = serve(max_connections=64, lmtp_max_connections=2, submit_max_connections=64)
    held = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(2)]
    try:
        for h in held:
            h.settimeout(10)
            h.connect(str(s.lmtp_path))
            assert h.recv(4096).startswith(b"220 ")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as extra:
            extra.settimeout(10)
            extra.connect(str(s.lmtp_path))
            assert extra.recv(4096) == lmtp.R_BUSY
        # the LMTP budget is spent; the raw socket is untouched
        assert raw_exchange(s.raw_path, MSG).startswith(b"OK ")
    finally:
        for h in held:
            h.close()
    # a closed session gives its slot back
    wait_for(lambda: s.server.connections == 0, what="sessions closed")
    with smtplib.LMTP(str(s.lmtp_path)) as c:
        c.ehlo("mta.test")
        assert c.sendmail("s@example.org", ["trap@example.net"], MSG) == {}


def _trickle_until_answered(sock: socket.socket, byte: bytes, every: float,
                            give_up: float) -> tuple[bytes, float]:
    """Send ``byte`` every ``every`` s until the server answers; (answer, seconds)."""
    t0 = time.monotonic()
    sock.setblocking(False)
    got = b""
    while time.monotonic() - t0 < give_up:
        try:
            chunk = sock.recv(4096)
        except BlockingIOError:
            chunk = None
        if chunk is not None:
            got += chunk
            if not chunk or got.endswith(b"\n"):
                break
        with contextlib.suppress(OSError):
            sock.send(byte)
        time.sleep(every)
    return got, time.monotonic() - t0


def test_a_trickling_raw_client_is_cut_at_the_total_deadline(
    serve: Callable[..., Server],
) -> None:
    s = serve(idle_timeout=10.0, message_timeout=1.0)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        c.connect(str(s.raw_path))
        # each byte resets the idle timeout; the total deadline still comes
        got, took = _trickle_until_answered(c, b"x", 0.1, give_up=8.0)
    assert got == reply_line(TEMPFAIL, REASON_TIMEOUT)
    assert took >= 1.0
    assert s.stored() == {}
    # a client that finishes in time is untouched
    assert raw_exchange(s.raw_path, MSG).startswith(b"OK ")


def test_trickling_session_clients_are_cut_at_the_total_deadline(
    serve: Callable[..., Server],
) -> None:
    s = serve(idle_timeout=10.0, message_timeout=1.0)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        c.connect(str(s.submit_path))
        c.send(b"SUBMIT ringtrap/1\nsender a@b\n\n")
        got, took = _trickle_until_answered(c, b"y", 0.1, give_up=8.0)
    assert got == reply_line(TEMPFAIL, REASON_TIMEOUT)
    assert took >= 1.0
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        c.connect(str(s.lmtp_path))
        c.settimeout(5)
        assert c.recv(4096).startswith(b"220 ")
        c.send(b"LHLO mta.test\r\nMAIL FROM:<a@b>\r\nRCPT TO:<t@x>\r\nDATA\r\n")
        wait_for(lambda: s.server.connections == 1)
        time.sleep(0.2)
        c.recv(65536)  # the replies so far
        got, took = _trickle_until_answered(c, b"z", 0.1, give_up=8.0)
    assert got == lmtp.R_TIMEOUT
    assert s.stored() == {}


# -- a full overflow: one line when refusing starts, one when it is over ---------


def test_gate_reports_one_edge_each_way_under_flapping() -> None:
    gate = OverflowGate(hold=10.0)
    edges: list[Gate] = []
    now = 100.0
    # the file system gives and takes a page at a time: outcomes alternate each ms
    for i in range(30_000):
        now += 0.001
        edges.append(gate.refused(now) if i % 2 else gate.spilled(now))
    assert [e for e in edges if e is not Gate.NONE] == [Gate.REFUSING]
    assert gate.refusing and gate.episode_refusals == 15_000
    # spills alone, but not yet for the hold: still refusing
    assert gate.spilled(now + 9.9) is Gate.NONE
    assert gate.spilled(now + 10.0) is Gate.ACCEPTING
    assert gate.spilled(now + 10.1) is Gate.NONE
    assert not gate.refusing
    # the next episode is reported again, with its own count
    assert gate.refused(now + 11) is Gate.REFUSING
    assert gate.episode_refusals == 1


class FlappingOverflow(Overflow):
    """A real overflow whose every other spill meets a full file system."""

    calls = 0

    def spill(self, msgid: str, data: bytes, attempts: int = 0) -> str:
        FlappingOverflow.calls += 1
        if FlappingOverflow.calls % 2:
            raise OverflowFull(self.path, self.max_bytes, 0, len(data), "filesystem full")
        return super().spill(msgid, data, attempts)


def test_a_flapping_full_overflow_logs_one_line(
    serve: Callable[..., Server], caplog: pytest.LogCaptureFixture
) -> None:
    s = serve(slots=1, overflow_type=FlappingOverflow)
    assert raw_exchange(s.raw_path, MSG).startswith(b"OK ")  # the one slot: now all spill
    caplog.set_level(logging.WARNING, logger="ringtrap.intake.sink")
    replies = [raw_exchange(s.raw_path, MSG) for _ in range(200)]
    assert replies.count(reply_line(TEMPFAIL, REASON_OVERFLOW_FULL)) == 100
    warnings = [r for r in caplog.records
                if r.name == "ringtrap.intake.sink" and r.levelno >= logging.WARNING]
    assert len(warnings) == 1
