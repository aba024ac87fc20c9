"""Helpers shared by the worker's tests and the tests that drive a worker or
stall spamd: a config, an overflow, a stored message, a worker run here, a
spamd proxy that never answers one message."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ringtrap import config
from ringtrap.base import envelope, ids
from ringtrap.base.envelope import Envelope
from ringtrap.base.states import Role
from ringtrap.config import Config
from ringtrap.overflow import Overflow
from ringtrap.ring import PutResult, Ring
from ringtrap.scan.processing import Processor
from ringtrap.scan.record import Record
from ringtrap.scan.results import ResultSink
from ringtrap.worker import Worker

SLOTS = 16
SLOT_BYTES = 16 * 1024
MAX_ATTEMPTS = 3


def make_cfg(tmp_path: Path, ring_name: str, spamd_address: str = "off",
             **workers: object) -> Config:
    return config.from_dict({
        "ingest": {"socket": str(tmp_path / "ingest.sock"), "max_message_bytes": "1M"},
        "ring": {"name": ring_name, "slots": SLOTS, "slot_bytes": SLOT_BYTES},
        "overflow": {"dir": str(tmp_path / "overflow"), "max_bytes": "64M",
                     "max_attempts": MAX_ATTEMPTS},
        "results": {"dir": str(tmp_path / "results")},
        "spamd": {"address": spamd_address, "connect_timeout": 5},
        "workers": {"count": 2, "max_rss_bytes": 0, **workers},
    })


def open_overflow(cfg: Config) -> Overflow:
    return Overflow(cfg.overflow.dir, cfg.overflow.max_bytes,
                    drain_order=cfg.overflow.drain_order)


def env_for(n: int) -> Envelope:
    return Envelope(sender=f"s{n}@example.org", recipients=(f"trap{n}@example.net",),
                    client_address="192.0.2.1")


def put(ring: Ring, overflow: Overflow, message: bytes, n: int, where: str) -> str:
    """Store one message as the ingest would; returns its id."""
    msgid = ids.new_id()
    payload = envelope.frame(message, env_for(n))
    if where == "ring" and ring.put(msgid, payload) is PutResult.OK:
        return msgid
    overflow.spill(msgid, payload)
    return msgid


class StopAfter(ResultSink):
    """A real sink that stops its worker once it has written ``n`` records."""

    def __init__(self, directory: Path, n: int) -> None:
        super().__init__(directory)
        self.n = n
        self.worker: Worker | None = None

    def write(self, record: Record) -> None:
        super().write(record)
        self.n -= 1
        if self.n <= 0 and self.worker is not None:
            self.worker.stop()


def local_worker(cfg: Config, ring: Ring, overflow: Overflow, processor: Processor,
                 sink: ResultSink, **options: Any) -> Worker:
    """A worker in this process with its own process-table row."""
    row = ring.table.register(Role.WORKER, 0)
    worker = Worker(cfg, ring, overflow, row, 0, processor, sink, **options)
    if isinstance(sink, StopAfter):
        sink.worker = worker
    return worker


def run_until(worker: Worker, cond: Callable[[], bool], timeout: float = 15.0) -> int:
    """Run ``worker`` here until ``cond()`` holds (checked from a thread), then stop it."""
    failed: list[str] = []

    def watch() -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                failed.append("condition not met in time")
                break
            time.sleep(0.02)
        worker.stop(graceful=True)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        return worker.run()
    finally:
        watcher.join()
        assert not failed, failed


STALL_MARKER = b"X-Stall-Spamd: this one"


class StallingSpamd:
    """A Unix socket in front of the real spamd that never answers a request
    carrying :data:`STALL_MARKER` (spamd busy on it past any deadline) and
    passes everything else, PING included, through to spamd."""

    def __init__(self, path: Path, spamd: Path) -> None:
        self.path = path
        self.spamd = spamd
        self.stalled = 0
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(16)
        self.done = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.done.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        # a client killed mid-call (as the tests do) is no error of the proxy's
        with conn, contextlib.suppress(OSError):
            request = b""
            while chunk := conn.recv(65536):
                request += chunk
            if STALL_MARKER in request:
                self.stalled += 1
                self.done.wait()  # until the test ends: the client gives up first
                return
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as up:
                up.connect(str(self.spamd))
                up.sendall(request)
                up.shutdown(socket.SHUT_WR)
                while chunk := up.recv(65536):
                    conn.sendall(chunk)

    def close(self) -> None:
        self.done.set()
        self.sock.close()
