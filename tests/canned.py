"""A one-shot Unix socket server: reads a request to its end, answers a fixed reply."""

from __future__ import annotations

import socket
import threading
from pathlib import Path


class CannedReply:
    """Serves one connection on ``path``: reads until the client shuts down its
    write side, then sends ``reply``."""

    def __init__(self, path: str | Path, reply: bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(4)
        self.reply = reply
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            while conn.recv(65536):
                pass
            conn.sendall(self.reply)

    def close(self) -> None:
        self.thread.join(10)
        self.sock.close()
