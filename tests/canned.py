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


def report_reply(spam: bool, score: float, required: float,
                 rules: list[tuple[str, float]]) -> bytes:
    """A spamd REPORT reply whose rule table holds ``rules`` (name, score), as spamd prints it."""
    table = "".join(f"{(f'{s:4.0f}' if abs(s) >= 10 else f'{s:4.1f}')} {name:<22} A rule\n"
                    for name, s in rules)
    body = (f"Content analysis details:   ({score:.1f} points, {required:.1f} required)\n\n"
            " pts rule name              description\n"
            "---- ---------------------- --------------------------------------------------\n"
            f"{table}\n").encode()
    return (b"SPAMD/1.1 0 EX_OK\r\nContent-length: %d\r\nSpam: %s ; %.1f / %.1f\r\n\r\n"
            % (len(body), b"True" if spam else b"False", score, required) + body)
