"""A small synchronous SPAMC/1.5 client for spamd.

One socket per call: connect, send ``VERB SPAMC/1.5``, the headers, a blank
line and the message, shut down the write side, read the reply to EOF (spamd
closes after replying) and parse it.  Every call runs against one absolute
deadline on the monotonic clock; each socket operation gets the time that is
left.  The message is never decoded, logged or copied more than once.

Errors are :mod:`ringtrap.scan.scanner`'s: a refused or missing socket, a
reset, a 0-byte or truncated reply (a spamd child killed or spamd
restarting) and timeouts are retryable; an unparseable reply and protocol
errors reported by spamd are not.

If the process dies in the middle of a call, nothing is left behind but a
closed connection; spamd discards the half-sent request.
"""

from __future__ import annotations

import logging
import re
import socket
import ssl
import time
from dataclasses import dataclass

from ringtrap.base.envelope import Envelope
from ringtrap.scan.scanner import (
    ScanConnectionError,
    ScanError,
    ScanProtocolError,
    ScanResponseError,
    ScanResult,
    ScanTimeout,
    Symbol,
)

log = logging.getLogger(__name__)

PROTOCOL = b"SPAMC/1.5"

# sysexits codes spamd answers with that say "try again later" rather than
# "this request is wrong": EX_OSERR, EX_IOERR, EX_TEMPFAIL and spamd's own
# EX_TIMEOUT (--timeout-child / --timeout-tcp).  EX_UNAVAILABLE (69) is not
# among them: spamd uses it for TELL without --allow-tell and for a bad
# compressed body, which repeat on every retry.
RETRYABLE_CODES = frozenset({71, 74, 75, 79})
# spamd's answer when its child gave up on a message (--timeout-child)
EX_TIMEOUT = 79

# Below this size the header block and the message go out in one write; the
# copy costs less than a second system call.
_COALESCE_LIMIT = 64 * 1024
_RECV_SIZE = 64 * 1024
# how long a host a scan waits on may take to answer a PING before it counts as hung
HUNG_PING_TIMEOUT = 5.0

_STATUS_RE = re.compile(rb"SPAMD/(\d+\.\d+) +(\d+)(?: +(.*))?", re.DOTALL)
_SPAM_RE = re.compile(r"(True|False|Yes|No) ; (-?\d+(?:\.\d+)?) / (-?\d+(?:\.\d+)?)")
_SPAM_FLAGS = {"True": True, "Yes": True, "False": False, "No": False}
_MESSAGE_CLASSES = frozenset({"spam", "ham"})

# The report's rule table (SpamAssassin's _SUMMARY_ tag, PerMsgStatus.pm):
# each rule is "%4.1f" (or "%4.0f" from 10 points up), a space, the name
# padded to 22, a space, the description; a description wraps onto lines
# indented by 28 spaces and the rule's log lines ("[URIs: x.example]") follow
# indented, or unindented when longer than the line.  The format is the same
# in every language spamd speaks; only the template's text around it changes.
_RULE_LINE_RE = re.compile(r"( {0,3})(-?\d+(?:\.\d)?) ([A-Za-z0-9_]+)(?: |$)")
# the dashes under the table's heading; the content preview above it cannot
# hold one, spamd deletes every run of ten dashes from the preview
_TABLE_RULE_RE = re.compile(r"-{4} -{10,} -{10,}[ \t]*")
_HAS_TABLE_RE = re.compile(rb"^-{4} -{10,} -{10,}[ \t]*\r?$", re.MULTILINE)


class SpamdResponseError(ScanResponseError):
    """spamd answered with a non-zero status line (``.code``, ``.text``)."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(code, text, retryable=code in RETRYABLE_CODES)
        self.timeout = code == EX_TIMEOUT

    def __str__(self) -> str:
        return f"spamd replied {self.code} {self.text}"


@dataclass(frozen=True, slots=True)
class SpamdResult:
    """The verdict of a CHECK, SYMBOLS or REPORT call, exactly as spamd gave it."""

    spam: bool
    score: float
    required: float
    rules: tuple[str, ...]
    report: bytes | None
    headers: dict[str, str]


@dataclass(frozen=True, slots=True)
class TellResult:
    """What a TELL call changed: ``("local",)``, ``("remote",)`` or both; empty if nothing."""

    did_set: tuple[str, ...]
    did_remove: tuple[str, ...]


def parse_address(address: str) -> tuple[int, str | tuple[str, int]]:
    """Parse ``unix:/path``, ``tcp:host:port`` or ``tls:host:port`` into a family and a
    socket address.

    IPv6 literals go in brackets (``tcp:[::1]:783``).  A host name yields
    ``AF_UNSPEC``: the client resolves it on every call, so a changed record is
    followed.  Anything else raises ValueError naming the problem.
    """
    scheme, sep, rest = address.partition(":")
    if not sep or scheme not in ("unix", "tcp", "tls"):
        raise ValueError(
            f"spamd address {address!r}: expected 'unix:/path/to/socket', 'tcp:host:port'"
            " or 'tls:host:port'"
        )
    if scheme == "unix":
        if not rest.startswith("/"):
            raise ValueError(f"spamd address {address!r}: the socket path must be absolute")
        # sun_path holds 108 bytes including the terminating NUL.
        if len(rest.encode()) > 107:
            raise ValueError(f"spamd address {address!r}: socket path longer than 107 bytes")
        return socket.AF_UNIX, rest
    if rest.startswith("["):
        host, bracket, tail = rest[1:].partition("]")
        if not bracket or not tail.startswith(":"):
            raise ValueError(f"spamd address {address!r}: expected '{scheme}:[ipv6]:port'")
        port_text = tail[1:]
        family = socket.AF_INET6
        if not _is_ip(socket.AF_INET6, host):
            raise ValueError(f"spamd address {address!r}: {host!r} is not an IPv6 address")
    else:
        host, colon, port_text = rest.rpartition(":")
        if not colon:
            raise ValueError(f"spamd address {address!r}: missing ':port'")
        if ":" in host:
            raise ValueError(
                f"spamd address {address!r}: put an IPv6 address in brackets, '{scheme}:[::1]:783'"
            )
        family = socket.AF_INET if _is_ip(socket.AF_INET, host) else socket.AF_UNSPEC
    if not host:
        raise ValueError(f"spamd address {address!r}: missing host")
    if not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"spamd address {address!r}: port must be a number from 1 to 65535")
    return family, (host, int(port_text))


def _is_ip(family: int, host: str) -> bool:
    try:
        socket.inet_pton(family, host)
    except (OSError, ValueError):
        return False
    return True


def _split_reply(data: bytes, *, complete: bool) -> tuple[dict[str, str], bytes]:
    """Check the status line of ``data`` and split it into headers and body.

    ``complete`` asks for the blank line that ends a full reply; only PING is
    answered with a status line alone.
    """
    if not data:
        raise ScanConnectionError("spamd closed the connection without a reply")
    end = data.find(b"\r\n")
    if end < 0:
        raise ScanProtocolError(f"reply without a status line: {data[:80]!r}")
    m = _STATUS_RE.fullmatch(data, 0, end)
    if m is None:
        raise ScanProtocolError(f"bad status line: {data[: min(end, 80)]!r}")
    code = int(m[2])
    if code != 0:
        raise SpamdResponseError(code, (m[3] or b"").decode("latin-1").strip())
    split = data.find(b"\r\n\r\n", end)
    if split < 0:
        if complete:
            # spamd writes the status line and the headers separately; a
            # child killed in between leaves just the status line.
            raise ScanConnectionError("reply truncated before the end of its headers")
        return {}, b""
    headers: dict[str, str] = {}
    if split > end:
        for line in data[end + 2 : split].split(b"\r\n"):
            name, colon, value = line.partition(b":")
            if not colon or not name:
                raise ScanProtocolError(f"bad reply header: {line[:80]!r}")
            headers[name.decode("latin-1").strip()] = value.decode("latin-1").strip()
    body = data[split + 4 :]
    length = _header(headers, "content-length")
    if length is not None:
        if not length.isascii() or not length.isdigit():
            raise ScanProtocolError(f"bad Content-length in reply: {length[:40]!r}")
        if len(body) < int(length):
            raise ScanConnectionError(f"reply truncated: {len(body)} of {length} body bytes")
        if len(body) > int(length):
            raise ScanProtocolError(f"reply body longer than its Content-length {length}")
    return headers, body


def _header(headers: dict[str, str], lower_name: str) -> str | None:
    # spamd's spelling is fixed ("Content-length", "DidSet"), but a lookup
    # that ignores case costs nothing with two or three headers.
    for name, value in headers.items():
        if name.lower() == lower_name:
            return value
    return None


def parse_scan_reply(data: bytes, *, rules: bool = False, report: bool = False) -> SpamdResult:
    """Parse a complete CHECK (neither flag), SYMBOLS (``rules``) or REPORT reply."""
    headers, body = _split_reply(data, complete=True)
    spam_header = _header(headers, "spam")
    if spam_header is None:
        raise ScanProtocolError("reply without a Spam header")
    m = _SPAM_RE.fullmatch(spam_header)
    if m is None:
        raise ScanProtocolError(f"bad Spam header: {spam_header[:80]!r}")
    names: tuple[str, ...] = ()
    if rules:
        text = body.decode("latin-1").strip()
        if text:
            names = tuple(name for name in map(str.strip, text.split(",")) if name)
    return SpamdResult(
        spam=_SPAM_FLAGS[m[1]],
        score=float(m[2]),
        required=float(m[3]),
        rules=names,
        report=body if report else None,
        headers=headers,
    )


def parse_report_rules(report: bytes) -> dict[str, Symbol]:
    """The rules of a REPORT body with their scores, in the report's order.

    A score is the report's, to its precision: one decimal below 10 points,
    whole points from 10 up, as ``spamc -R`` shows it.  ``options`` are the
    rule's log lines in brackets, where a rule logs any.  The table is the
    block under the heading's dashes, or (a template without them) the last
    block of rule lines; an empty dict when the report holds no table.
    Never raises on any bytes.
    """
    lines = report.decode("utf-8", "replace").replace("\r", "").split("\n")
    start = 0
    for i, line in enumerate(lines):
        if _TABLE_RULE_RE.fullmatch(line):
            start = i + 1
    table: list[tuple[str, float, list[str]]] = []
    current: list[tuple[str, float, list[str]]] | None = None
    for line in lines[start:]:
        m = _RULE_LINE_RE.match(line)
        if m is not None and _score_field(m[1], m[2]):
            if current is None:
                current = table = []
            current.append((m[3], float(m[2]), []))
        elif current is not None and line.strip() and line[:1] in (" ", "["):
            text = line.strip()
            if text.startswith("[") and text.endswith("]"):
                current[-1][2].append(text[1:-1])
        else:
            current = None
    return {name: Symbol(score, tuple(options)) for name, score, options in table}


def _score_field(pad: str, number: str) -> bool:
    """True if ``pad + number`` is a score as the report prints it ("%4.1f" or "%4.0f")."""
    if "." not in number and len(number.lstrip("-")) < 2:
        return False  # whole points only from 10 up
    return len(pad) + len(number) == 4 or (not pad and len(number) > 4)


def parse_tell_reply(data: bytes) -> TellResult:
    """Parse a complete TELL reply; a missing DidSet/DidRemove means nothing changed."""
    headers, _ = _split_reply(data, complete=True)
    return TellResult(
        did_set=_split_list(_header(headers, "didset")),
        did_remove=_split_list(_header(headers, "didremove")),
    )


def _split_list(value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    return tuple(part.strip() for part in value.split(",") if part.strip())


def parse_ping_reply(data: bytes) -> None:
    """Accept a PING reply (``SPAMD/1.5 0 PONG``) or raise."""
    _split_reply(data, complete=False)


class SpamdClient:
    """A synchronous spamd client: one connection per call, no state between calls."""

    kind = "spamd"

    def __init__(
        self,
        address: str,
        *,
        connect_timeout: float = 10.0,
        timeout: float = 330.0,
        user: str | None = None,
        tls_ca: str | None = None,
        hung_check: float | None = None,
    ) -> None:
        """Prepare a client for ``address`` (see :func:`parse_address`); nothing connects yet.

        ``timeout`` bounds a whole call and defaults above spamd's 300 s
        ``--timeout-child`` so spamd's own timeout reply (79) arrives first.
        A ``tls:`` address is verified: its certificate must chain to the
        CAs in the file ``tls_ca`` (default: the system's) and name the
        address's host (sent as SNI).  An OSError if ``tls_ca`` cannot be read.
        ``hung_check``: while a scan has had no reply for that many seconds,
        PING the host on a second connection (and again as often); no PONG
        within :data:`HUNG_PING_TIMEOUT` fails the scan as hung, a
        ScanTimeout with ``alone`` False, long before ``timeout`` (a pool's
        hosts use it, so a hung one costs seconds, not the whole timeout).
        """
        if not connect_timeout > 0 or not timeout > 0:
            raise ValueError("spamd timeouts must be positive")
        self.address = address
        self._family, self._sockaddr = parse_address(address)
        self._hung_check = hung_check
        self._tls: ssl.SSLContext | None = None
        if address.startswith("tls:"):
            self._tls = ssl.create_default_context(cafile=tls_ca)
        self._connect_timeout = float(connect_timeout)
        self._timeout = float(timeout)
        user_line = b""
        if user is not None:
            # spamd rejects control characters in User; catching them here
            # keeps a bad config from becoming a header injection.
            if not user or any(ord(c) < 0x20 or ord(c) == 0x7F for c in user):
                raise ValueError(f"spamd user {user!r}: empty or contains control characters")
            user_line = b"User: " + user.encode() + b"\r\n"
        self.user = user
        self._prefix = {
            verb: verb.encode() + b" " + PROTOCOL + b"\r\n" + user_line
            for verb in ("CHECK", "SYMBOLS", "REPORT", "TELL")
        }

    def __repr__(self) -> str:
        return f"SpamdClient({self.address!r})"

    def ping(self, timeout: float | None = None) -> None:
        """Check that spamd answers; raises a ScanError if it does not.

        ``timeout`` shortens this call's deadline (never lengthens it): a
        PING is answered by spamd's parent at once, however busy the children.
        """
        parse_ping_reply(self._call("PING", b"PING " + PROTOCOL + b"\r\n\r\n", None,
                                    timeout=timeout))

    def scan(self, message: bytes | bytearray | memoryview,
             env: Envelope | None = None) -> ScanResult:
        """Score ``message`` with each rule's score (REPORT); spamd reads no envelope.

        ``rules`` are the names in SYMBOLS' order (sorted), ``symbols`` each
        with its score as the report prints it.  A report that has lost its
        rule table (a remote spamd's own template) while the score says rules
        hit is asked again with SYMBOLS, for the names alone.
        """
        r = self.report(message)
        report = r.report or b""
        symbols = parse_report_rules(report)
        if not symbols and r.score != 0 and not _HAS_TABLE_RE.search(report):
            log.debug("spamd at %s: a report without its rule table; asking SYMBOLS",
                      self.address)
            r = self.symbols(message)
            return ScanResult("spamd", self.address, r.spam, r.score, r.required, r.rules)
        names = tuple(sorted(symbols))
        return ScanResult("spamd", self.address, r.spam, r.score, r.required, names,
                          symbols={name: symbols[name] for name in names})

    def check(self, message: bytes | bytearray | memoryview) -> SpamdResult:
        """Score ``message`` (CHECK); ``rules`` is empty and ``report`` None."""
        return parse_scan_reply(self._scan("CHECK", message))

    def symbols(self, message: bytes | bytearray | memoryview) -> SpamdResult:
        """Score ``message`` and list the rules that hit (SYMBOLS)."""
        return parse_scan_reply(self._scan("SYMBOLS", message), rules=True)

    def report(self, message: bytes | bytearray | memoryview) -> SpamdResult:
        """Score ``message`` and return spamd's text report as bytes (REPORT)."""
        return parse_scan_reply(self._scan("REPORT", message), report=True)

    def tell(
        self,
        message: bytes | bytearray | memoryview,
        message_class: str,
        *,
        set_local: bool = True,
        remove_local: bool = False,
        set_remote: bool = False,
    ) -> TellResult:
        """Teach spamd's Bayes (TELL) that ``message`` is ``"spam"`` or ``"ham"``.

        Needs spamd ``--allow-tell``.  ``did_set``/``did_remove`` are empty when
        spamd had already learned (or never learned) the message that way.
        """
        if message_class not in _MESSAGE_CLASSES:
            raise ValueError(f"message_class must be 'spam' or 'ham', not {message_class!r}")
        if set_local and remove_local:
            raise ValueError("set_local and remove_local exclude each other")
        targets = [name for name, on in (("local", set_local), ("remote", set_remote)) if on]
        extra = b"Message-class: " + message_class.encode() + b"\r\n"
        if targets:
            extra += b"Set: " + ", ".join(targets).encode() + b"\r\n"
        if remove_local:
            extra += b"Remove: local\r\n"
        if not targets and not remove_local:
            raise ValueError("tell() needs set_local, remove_local or set_remote")
        return parse_tell_reply(self._scan("TELL", message, extra))

    def _scan(
        self, verb: str, message: bytes | bytearray | memoryview, extra: bytes = b""
    ) -> bytes:
        size = message.nbytes if isinstance(message, memoryview) else len(message)
        head = self._prefix[verb] + extra + b"Content-length: %d\r\n\r\n" % size
        return self._call(verb, head, message)

    def _call(self, verb: str, head: bytes, body: bytes | bytearray | memoryview | None,
              timeout: float | None = None) -> bytes:
        """Send one request and return the raw reply, read to EOF."""
        now = time.monotonic()
        deadline = now + (self._timeout if timeout is None else min(timeout, self._timeout))
        try:
            sock = self._connect(min(deadline, now + self._connect_timeout))
            try:
                return self._exchange(sock, head, body, deadline,
                                      None if body is None else self._hung_check)
            finally:
                sock.close()
        except ScanError as exc:
            log.debug("spamd %s at %s failed: %s", verb, self.address, exc)
            raise

    def _connect(self, deadline: float) -> socket.socket:
        if self._family == socket.AF_UNSPEC:
            assert isinstance(self._sockaddr, tuple)
            host, port = self._sockaddr
            try:
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError as exc:
                raise ScanConnectionError(f"{self.address}: cannot resolve: {exc}") from exc
            targets = [(info[0], info[4]) for info in infos]
        else:
            targets = [(self._family, self._sockaddr)]
        error: OSError | None = None
        for family, sockaddr in targets:
            try:
                return self._connect_one(family, sockaddr, deadline)
            except OSError as exc:  # refused, missing socket: try the next address
                error = exc
        raise ScanConnectionError(f"{self.address}: cannot connect: {error}") from error

    def _connect_one(
        self, family: int, sockaddr: str | tuple[str, int], deadline: float
    ) -> socket.socket:
        pause = 0.001
        while True:
            left = self._left(deadline, "connecting")
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.settimeout(left)
                sock.connect(sockaddr)
            except BlockingIOError:
                # A Unix socket whose listen queue is full fails at once with
                # EAGAIN where TCP would wait; wait the same way, up to the deadline.
                sock.close()
                time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
                pause = min(pause * 2, 0.05)
                continue
            except TimeoutError as exc:
                sock.close()
                raise ScanTimeout(f"{self.address}: connect timed out") from exc
            except BaseException:
                sock.close()
                raise
            if family != socket.AF_UNIX:
                # Two writes (header block, large body) must not wait on Nagle.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._tls is not None:
                return self._handshake(sock, sockaddr, deadline)
            return sock

    def _handshake(self, sock: socket.socket, sockaddr: str | tuple[str, int],
                   deadline: float) -> socket.socket:
        assert self._tls is not None and isinstance(self._sockaddr, tuple)
        try:
            tls = self._tls.wrap_socket(sock, server_hostname=self._sockaddr[0],
                                        do_handshake_on_connect=False)
        except BaseException:
            sock.close()
            raise
        try:
            tls.settimeout(self._left(deadline, "the TLS handshake"))
            tls.do_handshake()
        except TimeoutError as exc:
            tls.close()
            raise ScanTimeout(f"{self.address}: TLS handshake timed out") from exc
        except ssl.SSLCertVerificationError as exc:
            tls.close()
            # a host the trap cannot trust is unusable, like one refusing: another may do
            raise ScanConnectionError(
                f"{self.address}: TLS certificate not trusted: {exc.verify_message}") from exc
        except BaseException:
            tls.close()
            raise
        return tls

    def _exchange(
        self,
        sock: socket.socket,
        head: bytes,
        body: bytes | bytearray | memoryview | None,
        deadline: float,
        hung_check: float | None = None,
    ) -> bytes:
        send_error: OSError | None = None
        try:
            sock.settimeout(self._left(deadline, "sending"))
            if body is None:
                sock.sendall(head)
            elif len(body) <= _COALESCE_LIMIT:
                sock.sendall(head + body)
            else:
                sock.sendall(head)
                sock.settimeout(self._left(deadline, "sending"))
                sock.sendall(body)
            # EOF tells spamd at once that nothing more is coming.  Not over TLS:
            # a half-close there ends the TLS session, and spamd reads by length.
            if self._tls is None:
                sock.shutdown(socket.SHUT_WR)
        except TimeoutError as exc:
            raise ScanTimeout(f"{self.address}: timed out sending the request") from exc
        except OSError as exc:
            # spamd may have answered early (a refused TELL) and closed; its
            # reply is still readable and says more than EPIPE would.
            send_error = exc
        chunks: list[bytes] = []
        while True:
            try:
                left = self._left(deadline, "reading the reply")
                watching = hung_check is not None and not chunks and hung_check < left
                sock.settimeout(hung_check if watching else left)
                chunk = sock.recv(_RECV_SIZE)
            except TimeoutError as exc:
                if watching:
                    if self._answers_ping():
                        continue  # a slow message on a live host: wait on
                    hung = ScanTimeout(f"{self.address}: no reply after {hung_check:g} s"
                                       " and no PONG: hung")
                    hung.alone = False
                    raise hung from exc
                raise ScanTimeout(f"{self.address}: timed out waiting for the reply") from exc
            except OSError as exc:
                if not chunks:
                    raise ScanConnectionError(f"{self.address}: {exc}") from exc
                break  # a reset after the reply: let the parser judge what arrived
            if not chunk:
                break
            chunks.append(chunk)
        if not chunks:
            detail = f" (sending failed: {send_error})" if send_error else ""
            raise ScanConnectionError(f"{self.address}: closed without a reply{detail}")
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _answers_ping(self) -> bool:
        try:
            self.ping(timeout=HUNG_PING_TIMEOUT)
        except ScanError:
            return False
        return True

    def _left(self, deadline: float, phase: str) -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ScanTimeout(f"{self.address}: deadline passed before {phase}")
        return left
