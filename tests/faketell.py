"""A TELL backend for the stage's tests: a Unix socket that answers after a delay."""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import threading


class FakeTell:
    """A TELL backend on a Unix socket that takes ``delay`` seconds per call."""

    def __init__(self, delay: float, reply: bytes = b"SPAMD/1.1 0 EX_OK\r\nDidSet: local\r\n\r\n"):
        self.dir = tempfile.mkdtemp(prefix="rt-tell-")
        self.path = f"{self.dir}/tell.sock"
        self.delay = delay
        self.reply = reply
        self.calls = 0
        self.requests: list[bytes] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(64)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"unix:{self.path}"

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if self.stopping.is_set():
                conn.close()
                return
            with conn:
                conn.settimeout(10)
                try:
                    request = b""
                    while chunk := conn.recv(65536):
                        request += chunk
                    self.requests.append(request)
                    if self.stopping.wait(self.delay):
                        return
                    self.calls += 1
                    conn.sendall(self.reply)
                except OSError:
                    pass

    def close(self) -> None:
        self.stopping.set()
        # wake a thread blocked in accept(): closing the socket alone does not
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s, contextlib.suppress(OSError):
            s.connect(self.path)
        self.thread.join(10)
        self.sock.close()
        os.unlink(self.path)
        os.rmdir(self.dir)
