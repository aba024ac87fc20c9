"""A small synchronous rspamd client: ``POST /checkv2`` over HTTP/1.1.

One connection per client (one client per worker), asked to stay open
(``Connection: keep-alive``) and reused while the server keeps it; a reply
that says ``Connection: close`` (rspamd 3.4's normal worker says it to every
request) closes it, and the next call connects again.  A kept connection the
server closed while idle is noticed before the request is sent, or by the
request failing with nothing received, and is reopened once, transparently.

The envelope goes in the request headers rspamd reads (``From``, one
``Rcpt`` per recipient, ``IP``, ``Helo``, ``Queue-Id``); a value holding a
control character is left out, so a hostile envelope cannot inject a header.

Every call runs against one deadline on the monotonic clock.  Errors are
:mod:`ringtrap.scan.scanner`'s: refused, reset, a 0-byte or truncated reply
and timeouts are retryable; a reply that is not rspamd's JSON is not.

``spam`` is derived from rspamd's ``action``: True for "reject", "rewrite
subject" and "add header" (the actions that refuse or mark the message),
False for "no action", "greylist" and "soft reject" (delivery advice, not a
verdict).  rspamd 3.4's legacy ``/check`` calls greylisted mail ``is_spam``
too; ``/checkv2`` sends no such flag, and the score stays in the record.

If the process dies in a call, nothing is left but a closed connection.
"""

from __future__ import annotations

import json
import logging
import select
import socket
import time

from ringtrap.base.envelope import Envelope, has_controls, relay_address
from ringtrap.scan.scanner import (
    ScanConnectionError,
    ScanError,
    ScanProtocolError,
    ScanResponseError,
    ScanResult,
    ScanTimeout,
    Symbol,
)
from ringtrap.scan.spamd import parse_address

log = logging.getLogger(__name__)

__all__ = ["SPAM_ACTIONS", "RspamdClient", "parse_check_reply"]

SPAM_ACTIONS = frozenset({"reject", "rewrite subject", "add header"})
_KNOWN_ACTIONS = SPAM_ACTIONS | {"no action", "greylist", "soft reject"}
# a header block longer than this is not rspamd's
_MAX_HEAD = 64 * 1024
# a JSON reply longer than this is not one rspamd sends for one message
_MAX_BODY = 16 * 1024 * 1024
_RECV_SIZE = 64 * 1024
_COALESCE_LIMIT = 64 * 1024
# an envelope value longer than this is not sent (SMTP's own line limit)
_MAX_VALUE = 998
# statuses that say "try again later", not "this request is wrong"
_RETRYABLE_STATUS = frozenset({502, 503, 504})


def envelope_headers(env: Envelope | None) -> bytes:
    """The request headers for ``env``: ``From``, ``Rcpt`` (each), ``IP``, ``Helo``, ``Queue-Id``.

    A value that is empty, too long or holds a control character (CR, LF,
    NUL...) is left out; ``IP`` is sent only as a valid address.
    """
    if env is None:
        return b""
    lines: list[tuple[str, str | None]] = [("From", env.sender)]
    lines.extend(("Rcpt", r) for r in env.recipients)
    lines.append(("IP", relay_address(env.client_address)))
    lines.append(("Helo", env.client_helo))
    lines.append(("Queue-Id", env.queue_id))
    out = []
    for name, value in lines:
        if not value or len(value) > _MAX_VALUE or has_controls(value):
            continue
        out.append(f"{name}: {value.strip()}\r\n".encode("utf-8", "replace"))
    return b"".join(out)


def parse_check_reply(body: bytes, host: str) -> ScanResult:
    """Turn a ``/checkv2`` JSON reply into a ScanResult; raises ScanProtocolError."""
    try:
        d = json.loads(body)
    except ValueError:
        raise ScanProtocolError(f"{host}: reply is not JSON: {body[:80]!r}") from None
    if not isinstance(d, dict):
        raise ScanProtocolError(f"{host}: reply is not a JSON object")
    try:
        score = float(d["score"])
        required = float(d["required_score"])
        action = d["action"]
        raw_symbols = d.get("symbols") or {}
    except (KeyError, TypeError, ValueError) as exc:
        raise ScanProtocolError(f"{host}: reply without {exc}: {body[:80]!r}") from None
    if not isinstance(action, str) or action not in _KNOWN_ACTIONS:
        raise ScanProtocolError(f"{host}: unknown action {action!r}")
    if not isinstance(raw_symbols, dict):
        raise ScanProtocolError(f"{host}: symbols is not an object")
    symbols: dict[str, Symbol] = {}
    for name in sorted(raw_symbols):
        s = raw_symbols[name]
        try:
            options = s.get("options") or ()
            symbols[str(name)] = Symbol(float(s.get("score", 0.0)),
                                        tuple(str(o) for o in options))
        except (AttributeError, TypeError, ValueError):
            raise ScanProtocolError(f"{host}: bad symbol {name!r}") from None
    return ScanResult("rspamd", host, action in SPAM_ACTIONS, score, required,
                      tuple(symbols), action, symbols)


class RspamdClient:
    """A synchronous rspamd client holding at most one open connection."""

    kind = "rspamd"

    def __init__(self, address: str, *, connect_timeout: float = 10.0,
                 timeout: float = 60.0) -> None:
        """Prepare a client for ``unix:/path`` or ``tcp:host:port``; nothing connects yet."""
        if not connect_timeout > 0 or not timeout > 0:
            raise ValueError("rspamd timeouts must be positive")
        try:
            self._family, self._sockaddr = parse_address(address)
        except ValueError as exc:
            raise ValueError(str(exc).replace("spamd address", "rspamd address", 1)) from None
        self.address = address
        self._connect_timeout = float(connect_timeout)
        self._timeout = float(timeout)
        self._sock: socket.socket | None = None
        # connections opened so far (the tests count reuse by it)
        self.connects = 0

    def __repr__(self) -> str:
        return f"RspamdClient({self.address!r})"

    def close(self) -> None:
        """Close the kept connection, if any."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def ping(self, timeout: float | None = None) -> None:
        """Raise a ScanError unless rspamd answers ``GET /ping`` with ``pong``."""
        status, body = self._call(b"GET /ping HTTP/1.1\r\n", b"", None, timeout)
        if status != 200 or body.strip() != b"pong":
            raise ScanProtocolError(f"{self.address}: /ping answered {status} {body[:40]!r}")

    def scan(self, message: bytes | bytearray | memoryview,
             env: Envelope | None = None) -> ScanResult:
        """Score ``message`` with its envelope (``POST /checkv2``)."""
        status, body = self._call(b"POST /checkv2 HTTP/1.1\r\n", envelope_headers(env),
                                  message, None)
        if status != 200:
            raise ScanResponseError(status, _error_text(body),
                                    retryable=status in _RETRYABLE_STATUS)
        return parse_check_reply(body, self.address)

    def _call(self, start: bytes, headers: bytes,
              body: bytes | bytearray | memoryview | None,
              timeout: float | None) -> tuple[int, bytes]:
        now = time.monotonic()
        deadline = now + (self._timeout if timeout is None else min(timeout, self._timeout))
        size = 0 if body is None else (body.nbytes if isinstance(body, memoryview)
                                        else len(body))
        head = (start + b"Host: localhost\r\nConnection: keep-alive\r\n" + headers
                + (b"Content-Length: %d\r\n\r\n" % size if body is not None else b"\r\n"))
        try:
            reused = self._sock is not None and self._still_open(self._sock)
            if not reused:
                self.close()
                self._sock = self._connect(min(deadline, now + self._connect_timeout))
            try:
                return self._exchange(head, body, deadline)
            except _StaleConnection:
                if not reused:
                    raise ScanConnectionError(f"{self.address}: closed without a reply") from None
                # the server closed the kept connection as we sent: once more, fresh
                self.close()
                self._sock = self._connect(min(deadline, time.monotonic()
                                               + self._connect_timeout))
                try:
                    return self._exchange(head, body, deadline)
                except _StaleConnection:
                    raise ScanConnectionError(
                        f"{self.address}: closed without a reply") from None
        except ScanError as exc:
            self.close()
            log.debug("rspamd call at %s failed: %s", self.address, exc)
            raise
        except BaseException:
            self.close()  # half a request on the wire: never reuse it
            raise

    @staticmethod
    def _still_open(sock: socket.socket) -> bool:
        """False if the idle kept connection is readable: the server closed or reset it."""
        try:
            readable, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):
            return False
        return not readable

    def _connect(self, deadline: float) -> socket.socket:
        if self._family == socket.AF_UNSPEC:
            assert isinstance(self._sockaddr, tuple)
            try:
                infos = socket.getaddrinfo(*self._sockaddr, type=socket.SOCK_STREAM)
            except OSError as exc:
                raise ScanConnectionError(f"{self.address}: cannot resolve: {exc}") from exc
            targets = [(info[0], info[4]) for info in infos]
        else:
            targets = [(self._family, self._sockaddr)]
        error: OSError | None = None
        for family, sockaddr in targets:
            pause = 0.001
            while True:
                sock = socket.socket(family, socket.SOCK_STREAM)
                try:
                    sock.settimeout(self._left(deadline, "connecting"))
                    sock.connect(sockaddr)
                except BlockingIOError:
                    # a Unix socket with a full listen queue: wait as TCP would
                    sock.close()
                    time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
                    pause = min(pause * 2, 0.05)
                    continue
                except TimeoutError as exc:
                    sock.close()
                    raise ScanTimeout(f"{self.address}: connect timed out") from exc
                except OSError as exc:
                    sock.close()
                    error = exc
                    break
                except BaseException:
                    sock.close()
                    raise
                if family != socket.AF_UNIX:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.connects += 1
                return sock
        raise ScanConnectionError(f"{self.address}: cannot connect: {error}") from error

    def _exchange(self, head: bytes, body: bytes | bytearray | memoryview | None,
                  deadline: float) -> tuple[int, bytes]:
        sock = self._sock
        assert sock is not None
        try:
            sock.settimeout(self._left(deadline, "sending"))
            if body is None or len(body) <= _COALESCE_LIMIT:
                sock.sendall(head + body if body is not None else head)
            else:
                sock.sendall(head)
                sock.settimeout(self._left(deadline, "sending"))
                sock.sendall(body)
        except TimeoutError as exc:
            raise ScanTimeout(f"{self.address}: timed out sending the request") from exc
        except OSError as exc:
            raise _StaleConnection() from exc
        buf = bytearray()
        end = -1
        while end < 0:
            chunk = self._recv(sock, deadline, nothing_yet=not buf)
            if not chunk:
                if not buf:
                    raise _StaleConnection()
                raise ScanConnectionError(f"{self.address}: reply truncated in its headers")
            buf += chunk
            end = buf.find(b"\r\n\r\n")
            if end < 0 and len(buf) > _MAX_HEAD:
                raise ScanProtocolError(f"{self.address}: reply headers too long")
        status, length, close = self._parse_head(bytes(buf[:end]))
        rest = buf[end + 4 :]
        if length is None:
            close = True  # the body ends at EOF
            while chunk := self._recv(sock, deadline):
                rest += chunk
                if len(rest) > _MAX_BODY:
                    raise ScanProtocolError(f"{self.address}: reply too long")
        else:
            while len(rest) < length:
                chunk = self._recv(sock, deadline)
                if not chunk:
                    raise ScanConnectionError(
                        f"{self.address}: reply truncated: {len(rest)} of {length} bytes")
                rest += chunk
            if len(rest) > length:
                raise ScanProtocolError(f"{self.address}: more bytes than Content-Length")
        if close:
            self.close()
        return status, bytes(rest)

    def _recv(self, sock: socket.socket, deadline: float, nothing_yet: bool = False) -> bytes:
        try:
            sock.settimeout(self._left(deadline, "reading the reply"))
            return sock.recv(_RECV_SIZE)
        except TimeoutError as exc:
            raise ScanTimeout(f"{self.address}: timed out waiting for the reply") from exc
        except OSError as exc:
            if nothing_yet:
                raise _StaleConnection() from exc
            raise ScanConnectionError(f"{self.address}: {exc}") from exc

    def _parse_head(self, head: bytes) -> tuple[int, int | None, bool]:
        """The status, Content-Length and whether the server closes, from a header block."""
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if (len(parts) < 2 or not parts[0].startswith(b"HTTP/1.")
                or not parts[1].isdigit() or len(parts[1]) != 3):
            raise ScanProtocolError(f"{self.address}: bad status line {lines[0][:80]!r}")
        status = int(parts[1])
        close = parts[0] == b"HTTP/1.0"
        length: int | None = None
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon:
                raise ScanProtocolError(f"{self.address}: bad reply header {line[:80]!r}")
            name = name.strip().lower()
            value = value.strip()
            if name == b"content-length":
                if not value.isdigit():
                    raise ScanProtocolError(f"{self.address}: bad Content-Length {value[:40]!r}")
                length = int(value)
                if length > _MAX_BODY:
                    raise ScanProtocolError(f"{self.address}: reply too long ({length})")
            elif name == b"connection":
                close = value.lower() == b"close"
            elif name == b"transfer-encoding":
                raise ScanProtocolError(f"{self.address}: unexpected Transfer-Encoding")
        return status, length, close

    def _left(self, deadline: float, phase: str) -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ScanTimeout(f"{self.address}: deadline passed before {phase}")
        return left


class _StaleConnection(Exception):
    """The connection failed before any byte of a reply: closed or reset by the server."""


def _error_text(body: bytes) -> str:
    try:
        d = json.loads(body)
    except ValueError:
        return body[:200].decode("utf-8", "replace")
    if isinstance(d, dict) and "error" in d:
        return str(d["error"])[:200]
    return body[:200].decode("utf-8", "replace")
