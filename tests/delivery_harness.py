"""An ingest server on its three sockets (raw, submit, LMTP) served by a thread.

A real ring and a real overflow in a temporary directory; ``stored()`` reads
back every message the ingest accepted, split into envelope and message.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ringtrap.base import envelope, titles
from ringtrap.base.counters import C
from ringtrap.base.envelope import Envelope
from ringtrap.base.states import Role
from ringtrap.ingest_socket import IngestServer
from ringtrap.intake.sockets import bind_socket
from ringtrap.overflow import Overflow
from ringtrap.ring import Ring
from ringtrap.store.proctable import ProcRow
from ringtrap.store.segment import unlink_name

ROOT = Path(__file__).resolve().parent.parent
DELIVER = ROOT / "scripts" / "ringtrap-deliver"
SUBMIT = [sys.executable, "-m", "ringtrap.command.cli", "submit"]


def wait_for(cond: Callable[[], object], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met in {timeout} s")
        time.sleep(0.005)


class Server:
    """A ring, an overflow and an IngestServer on three sockets, served by a thread."""

    def __init__(
        self,
        base: Path,
        *,
        slots: int = 16,
        slot_bytes: int = 4096,
        overflow_cap: int = 64 << 20,
        max_message_bytes: int = 1 << 20,
        idle_timeout: float = 10.0,
        max_connections: int = 64,
        message_timeout: float = 300.0,
        submit_max_connections: int | None = None,
        lmtp_max_connections: int | None = None,
        sessions: bool = True,
        overflow_type: type[Overflow] = Overflow,
    ) -> None:
        """``sessions``: serve the submit and LMTP sockets beside the raw one."""
        self.base = base
        self.raw_path = base / "ingest.sock"
        self.submit_path = base / "submit.sock"
        self.lmtp_path = base / "lmtp.sock"
        self.ring_name = f"rt-test-dlv-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.ring = Ring.create(self.ring_name, slots, slot_bytes)
        self.reader = Ring.attach(self.ring_name)
        self.overflow = overflow_type(base / "overflow", overflow_cap)
        self.row: ProcRow = self.ring.table.register(Role.INGEST)
        self.server = IngestServer(
            bind_socket(self.raw_path),
            self.ring,
            self.overflow,
            max_message_bytes=max_message_bytes,
            idle_timeout=idle_timeout,
            max_connections=max_connections,
            message_timeout=message_timeout,
            submit_max_connections=submit_max_connections,
            lmtp_max_connections=lmtp_max_connections,
            row=self.row,
            submit_listener=bind_socket(self.submit_path) if sessions else None,
            lmtp_listener=bind_socket(self.lmtp_path) if sessions else None,
            hostname="trap.test",
        )
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            while not self.server.finished:
                self.server.serve_once(0.02)
        except BaseException as e:  # surfaced by close()
            self.errors.append(e)

    def accepted(self) -> int:
        return self.row.get(C.ACCEPTED_RING) + self.row.get(C.ACCEPTED_OVERFLOW)

    def stored(self) -> dict[str, tuple[Envelope, bytes]]:
        """msgid -> (envelope, message) of everything in the ring (taken) and the overflow."""
        out: dict[str, tuple[Envelope, bytes]] = {}
        while (claim := self.reader.claim(0)) is not None:
            env, msg = envelope.unframe(bytes(claim.data))
            out[claim.msgid] = (env, bytes(msg))
            self.reader.ack(claim)
        new = self.overflow.path / "new"
        for name in sorted(os.listdir(new)):
            env, msg = envelope.unframe((new / name).read_bytes())
            out[name.split(",")[0]] = (env, bytes(msg))
        return out

    def close(self) -> None:
        self.server.stop(graceful=False)
        self.thread.join(10)
        self.server.close()
        self.reader.close()
        self.ring.close()
        unlink_name(self.ring_name)
        if self.errors:
            raise self.errors[0]
        assert not self.thread.is_alive()


@contextlib.contextmanager
def temp_base() -> Iterator[Path]:
    """A fresh short directory: a Unix socket's name is limited to 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="rt-dlv-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def servers(base: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Server]]:
    """A factory of Servers in ``base``, all closed on exit."""
    # the server's titles would rename the test process
    monkeypatch.setattr(titles, "set_title", lambda role, activity="": None)
    made: list[Server] = []

    def factory(**kwargs: object) -> Server:
        s = Server(base, **kwargs)  # type: ignore[arg-type]
        made.append(s)
        return s

    try:
        yield factory
    finally:
        for s in made:
            s.close()
