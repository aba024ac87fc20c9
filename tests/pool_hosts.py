"""Scanner hosts that misbehave, for pool tests: one that hangs, one that hangs up.

``HungHost`` accepts connections and never answers (a spamd wedged, or a
firewall that swallows replies); ``SlowHost`` answers PING at once and scans
late (a message that costs spamd long); ``ClosingHost`` accepts and closes at once,
as spamd does for a client outside its ``--allowed-ips``.  Both listen on
127.0.0.1 from a daemon thread and stop with :meth:`close`.  A refusing host
is just a free port nobody listens on (:func:`refusing_address`).
"""

from __future__ import annotations

import contextlib
import socket
import threading

from canned import report_reply
from spamd_fixture import free_tcp_port


class _Listener:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.accepted = 0
        self._held: list[socket.socket] = []
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"tcp:127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            self._take(conn)

    def _take(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()
        for conn in self._held:
            with contextlib.suppress(OSError):
                conn.close()

    def __enter__(self) -> _Listener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class HungHost(_Listener):
    """Accepts and holds every connection without reading or answering."""

    def _take(self, conn: socket.socket) -> None:
        self._held.append(conn)


class ClosingHost(_Listener):
    """Accepts and closes at once: the client reads 0 bytes."""

    def _take(self, conn: socket.socket) -> None:
        conn.close()


class SlowHost(_Listener):
    """A spamd stand-in that answers PING at once and every scan after ``delay`` seconds."""

    REPLY = report_reply(True, 7.5, 5.0, [("RULE1", 7.5)])

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.pings = 0
        super().__init__()

    def _take(self, conn: socket.socket) -> None:
        threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data and (chunk := conn.recv(65536)):
                data += chunk
            if data.startswith(b"PING"):
                self.pings += 1
                conn.sendall(b"SPAMD/1.5 0 PONG\r\n")
                return
            threading.Event().wait(self.delay)
            conn.sendall(self.REPLY)


def refusing_address() -> str:
    """A loopback address nobody listens on: connecting is refused."""
    return f"tcp:127.0.0.1:{free_tcp_port()}"
