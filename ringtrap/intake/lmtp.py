"""LMTP (RFC 2033) on the ingest's optional second socket: the protocol class.

:class:`LmtpSession` is one connection's state machine — LHLO, XFORWARD,
MAIL, RCPT, DATA, RSET, NOOP, QUIT — with no I/O of its own: ``feed`` takes
received bytes and returns the replies; messages go to the
:class:`~ringtrap.intake.delivery.Sink` the ingest gives it, which stores them in
the ring or the overflow exactly as the raw socket does.

Replies after DATA, one per accepted recipient (RFC 2033), all the same
since the message is stored once with every recipient in its envelope:

    250 2.0.0   stored in the ring or the overflow
    452 4.3.1   the overflow is full: cannot store now
    451 4.3.0   cannot store now for any other reason
    552 5.3.4   larger than the SIZE advertised (a client that ignored it)

5xx replies are kept for protocol errors, so an MTA never bounces trap mail
over a condition that passes.  A control character (C0 or DEL: NUL, a bare
CR...) in MAIL, RCPT or an XFORWARD value is one: 501.  Messages are stored as sent, CRLF line ends
included, with the dot-stuffing removed.

Limits: command lines of at most :data:`MAX_COMMAND` bytes, at most
:data:`MAX_RECIPIENTS` recipients and :data:`MAX_ENVELOPE` bytes of envelope
per message (past either, RCPT gets 452 and the client sends the rest in
another transaction), :data:`MAX_ERRORS` protocol errors per connection.
"""

from __future__ import annotations

import logging
import re
from enum import Enum

from ringtrap.base.envelope import Envelope
from ringtrap.intake.delivery import Outcome, Sink

log = logging.getLogger(__name__)

MAX_COMMAND = 2048
MAX_RECIPIENTS = 1000
MAX_ENVELOPE = 16 * 1024
MAX_ERRORS = 20
# what XFORWARD accepts, as Postfix's lmtp client sends it
XFORWARD_ATTRS = ("NAME", "ADDR", "PORT", "PROTO", "HELO", "IDENT", "SOURCE")

_CRLF = b"\r\n"
_DOT = 0x2E
_LF = 0x0A
_CR = 0x0D

_PATH = re.compile(rb"\s*<([^<>]*)>(.*)\Z", re.S)
# C0 controls and DEL; a tab may only separate parameters
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")
_CONTROL_BUT_TAB = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_XTEXT = re.compile(rb"\+([0-9A-Fa-f]{2})")

R_BYE = b"221 2.0.0 Bye\r\n"
R_OK = b"250 2.0.0 Ok\r\n"
R_SENDER_OK = b"250 2.1.0 Ok\r\n"
R_RCPT_OK = b"250 2.1.5 Ok\r\n"
R_DATA = b"354 End data with <CR><LF>.<CR><LF>\r\n"
R_TIMEOUT = b"421 4.4.2 Error: timeout exceeded\r\n"
R_SHUTTING_DOWN = b"421 4.3.2 Service shutting down\r\n"
R_BUSY = b"421 4.3.2 Too many connections, try again later\r\n"
R_TOO_MANY_ERRORS = b"421 4.7.0 Too many errors\r\n"
R_FULL = b"452 4.3.1 Insufficient system storage\r\n"
R_STORE_FAILED = b"451 4.3.0 Error: cannot store message now\r\n"
R_TOO_MANY_RCPTS = b"452 4.5.3 Error: too many recipients\r\n"
R_UNKNOWN = b"500 5.5.2 Error: command not recognized\r\n"
R_LINE_TOO_LONG = b"500 5.5.2 Error: line too long\r\n"
R_USE_LHLO = b"500 5.5.1 Error: this is LMTP, send LHLO\r\n"
R_SYNTAX = b"501 5.5.4 Syntax error in parameters or arguments\r\n"
R_CONTROL = b"501 5.5.4 Error: control character in the envelope\r\n"
R_NEED_LHLO = b"503 5.5.1 Error: send LHLO first\r\n"
R_NESTED_MAIL = b"503 5.5.1 Error: nested MAIL command\r\n"
R_NEED_MAIL = b"503 5.5.1 Error: need MAIL command\r\n"
R_NEED_RCPT = b"503 5.5.1 Error: need RCPT command\r\n"
R_XFORWARD_LATE = b"503 5.5.1 Error: XFORWARD only before MAIL\r\n"
R_TOO_LARGE = b"552 5.3.4 Error: message too large\r\n"
R_BAD_PARAM = b"555 5.5.4 Error: unsupported parameter\r\n"
R_NO_VRFY = b"252 2.5.2 Cannot VRFY, send some mail\r\n"


class _State(Enum):
    GREETED = "greeted"  # waiting for LHLO
    READY = "ready"  # LHLO done, no transaction
    MAIL = "mail"  # MAIL accepted, collecting recipients
    DATA = "data"  # reading the message
    CLOSED = "closed"


def xtext_decode(value: bytes) -> bytes:
    """Undo xtext (RFC 3461) encoding: ``+XX`` is the byte with hex value XX."""
    return _XTEXT.sub(lambda m: bytes([int(m.group(1), 16)]), value)


class LmtpSession:
    """One LMTP connection: see the module docstring.  Implements ``delivery.Session``."""

    def __init__(self, sink: Sink, hostname: str, max_message_bytes: int) -> None:
        self._sink = sink
        self.hostname = hostname
        self.max_message_bytes = max_message_bytes
        self._state = _State.GREETED
        self._in = bytearray()
        self._skipping = False  # inside a command line over MAX_COMMAND: drop to its LF
        self._errors = 0
        self._bol = True  # DATA: the next byte starts a line
        self._xforward: dict[str, str] = {}
        self._msgid = ""  # the message in DATA
        self._reset()
        self.closing = False

    def _reset(self) -> None:
        """Forget the transaction (RSET, a new LHLO, the end of DATA)."""
        self._sender: str | None = None
        self._recipients: list[str] = []
        self._envelope_bytes = 0

    def start(self) -> bytes:
        return f"220 {self.hostname} ringtrap LMTP ready\r\n".encode()

    def busy(self) -> bool:
        return self._state in (_State.MAIL, _State.DATA)

    def feed(self, data: bytes | memoryview) -> bytes:
        if self._state is _State.CLOSED:
            return b""
        self._in += data
        out: list[bytes] = []
        while not self.closing:
            if self._state is _State.DATA:
                reply = self._data()
                if reply is None:
                    break
                out.append(reply)
                continue
            line = self._line()
            if line is None:
                break
            if line is R_LINE_TOO_LONG:
                out.append(self._error(line))
            else:
                out.append(self._command(line))
        return b"".join(out)

    def eof(self) -> bytes:
        if self._state is _State.DATA:
            self._sink.abort()
            log.info("lmtp: client closed the connection during DATA")
        self._close()
        return b""

    def timeout(self) -> bytes:
        self._abort()
        return R_TIMEOUT

    def expired(self) -> bytes:
        self._abort()
        return R_TIMEOUT

    def shutdown(self) -> bytes:
        self._abort()
        return R_SHUTTING_DOWN

    def _abort(self) -> None:
        if self._state is _State.DATA:
            self._sink.abort()
        self._close()

    def _close(self) -> None:
        self._state = _State.CLOSED
        self.closing = True
        self._in = bytearray()

    def _line(self) -> bytes | None:
        """The next complete command line without its line end, or None for "need more".

        A line over :data:`MAX_COMMAND` comes back as the very object
        :data:`R_LINE_TOO_LONG`, its reply.
        """
        buf = self._in
        end = buf.find(b"\n")
        if self._skipping:
            if end < 0:
                buf.clear()
                return None
            del buf[: end + 1]
            self._skipping = False
            return R_LINE_TOO_LONG
        if end < 0:
            if len(buf) > MAX_COMMAND:
                buf.clear()
                self._skipping = True
            return None
        if end > MAX_COMMAND:
            del buf[: end + 1]
            return R_LINE_TOO_LONG
        line = bytes(buf[:end])
        del buf[: end + 1]
        return line[:-1] if line.endswith(b"\r") else line

    def _error(self, reply: bytes) -> bytes:
        self._errors += 1
        if self._errors >= MAX_ERRORS:
            log.info("lmtp: closing after %d protocol errors", self._errors)
            self._abort()
            return reply + R_TOO_MANY_ERRORS
        return reply

    def _command(self, line: bytes) -> bytes:
        verb, _, arg = line.partition(b" ")
        name = verb.upper().decode("ascii", "replace")
        arg = arg.strip()
        handler = _HANDLERS.get(name)
        if handler is None:
            return self._error(R_USE_LHLO if name in ("HELO", "EHLO") else R_UNKNOWN)
        return handler(self, arg)

    def _lhlo(self, arg: bytes) -> bytes:
        if not arg:
            return self._error(R_SYNTAX)
        self._reset()
        self._xforward = {}
        self._state = _State.READY
        lines = [
            self.hostname,
            "PIPELINING",
            "ENHANCEDSTATUSCODES",
            "8BITMIME",
            "SMTPUTF8",
            f"SIZE {self.max_message_bytes}",
            "XFORWARD " + " ".join(XFORWARD_ATTRS),
        ]
        out = [f"250-{text}\r\n" for text in lines[:-1]] + [f"250 {lines[-1]}\r\n"]
        return "".join(out).encode()

    def _xforward_cmd(self, arg: bytes) -> bytes:
        if self._state is _State.GREETED:
            return self._error(R_NEED_LHLO)
        if self._state is not _State.READY:
            return self._error(R_XFORWARD_LATE)
        attrs: dict[str, str] = {}
        for word in arg.split():
            name, eq, value = word.partition(b"=")
            key = name.upper().decode("ascii", "replace")
            if not eq or key not in XFORWARD_ATTRS:
                return self._error(R_SYNTAX)
            decoded = xtext_decode(value)
            if _CONTROL.search(decoded):
                return self._error(R_CONTROL)
            attrs[key] = decoded.decode("utf-8", "replace")
        if not attrs:
            return self._error(R_SYNTAX)
        self._xforward.update(attrs)
        return R_OK

    def _mail(self, arg: bytes) -> bytes:
        if self._state is _State.GREETED:
            return self._error(R_NEED_LHLO)
        if self._state is not _State.READY:
            return self._error(R_NESTED_MAIL)
        if _CONTROL_BUT_TAB.search(arg):
            return self._error(R_CONTROL)
        path = _path(arg, b"FROM:")
        if path is None:
            return self._error(R_SYNTAX)
        address, params = path
        if "\t" in address:
            return self._error(R_CONTROL)
        for param in params:
            key, _, value = param.partition(b"=")
            key = key.upper()
            if key == b"SIZE":
                if not value.isdigit():
                    return self._error(R_SYNTAX)
                if int(value) > self.max_message_bytes:
                    return self._error(R_TOO_LARGE)
            elif key == b"BODY":
                if value.upper() not in (b"7BIT", b"8BITMIME"):
                    return self._error(R_SYNTAX)
            elif key != b"SMTPUTF8":
                return self._error(R_BAD_PARAM)
        self._sender = address
        self._envelope_bytes = len(address)
        self._state = _State.MAIL
        return R_SENDER_OK

    def _rcpt(self, arg: bytes) -> bytes:
        if self._state is _State.GREETED:
            return self._error(R_NEED_LHLO)
        if self._state is not _State.MAIL:
            return self._error(R_NEED_MAIL)
        if _CONTROL_BUT_TAB.search(arg):
            return self._error(R_CONTROL)
        path = _path(arg, b"TO:")
        if path is None or not path[0]:
            return self._error(R_SYNTAX)
        address, params = path
        if "\t" in address:
            return self._error(R_CONTROL)
        for param in params:
            # delivery status notification parameters: accepted, nothing to do
            if param.partition(b"=")[0].upper() not in (b"ORCPT", b"NOTIFY"):
                return self._error(R_BAD_PARAM)
        if (len(self._recipients) >= MAX_RECIPIENTS
                or self._envelope_bytes + len(address) > MAX_ENVELOPE):
            return R_TOO_MANY_RCPTS
        self._recipients.append(address)
        self._envelope_bytes += len(address)
        return R_RCPT_OK

    def _data_cmd(self, arg: bytes) -> bytes:
        if self._state is _State.GREETED:
            return self._error(R_NEED_LHLO)
        if self._state is not _State.MAIL:
            return self._error(R_NEED_MAIL)
        if not self._recipients:
            return self._error(R_NEED_RCPT)
        if arg:
            return self._error(R_SYNTAX)
        self._msgid = self._sink.begin(self._envelope())
        self._state = _State.DATA
        self._bol = True
        return R_DATA

    def _rset(self, arg: bytes) -> bytes:
        self._reset()
        self._xforward = {}
        if self._state is not _State.GREETED:
            self._state = _State.READY
        return R_OK

    def _noop(self, arg: bytes) -> bytes:
        return R_OK

    def _vrfy(self, arg: bytes) -> bytes:
        return R_NO_VRFY

    def _quit(self, arg: bytes) -> bytes:
        self._close()
        return R_BYE

    def _envelope(self) -> Envelope:
        xf = self._xforward
        addr = _available(xf.get("ADDR"))
        if addr is not None and addr[:5].upper() == "IPV6:":
            addr = addr[5:]  # the form Postfix's ${client_address} has
        return Envelope(
            sender=self._sender,
            recipients=tuple(self._recipients),
            client_address=addr,
            client_helo=_available(xf.get("HELO")),
            queue_id=_available(xf.get("IDENT")),
        )

    def _data(self) -> bytes | None:
        """Pass the message's bytes on; the replies once its end is seen, else None.

        Scans for line starts with a dot only: the bytes between them go to
        the sink in one piece, so a large message costs a few finds per chunk.
        """
        buf = self._in
        n = len(buf)
        pos = 0
        write = self._sink.write
        while pos < n:
            if self._bol:
                if buf[pos] == _DOT:
                    # the end (".\r\n" or ".\n"), or a stuffed dot to remove
                    if n - pos < 2 or (buf[pos + 1] == _CR and n - pos < 3):
                        break  # cannot tell yet
                    if buf[pos + 1] == _LF or (buf[pos + 1] == _CR and buf[pos + 2] == _LF):
                        end = pos + (2 if buf[pos + 1] == _LF else 3)
                        del buf[:end]
                        return self._end_of_data()
                    pos += 1
                self._bol = False
            nxt = buf.find(b"\n.", pos)
            if nxt < 0:
                write(bytes(buf[pos:]))
                self._bol = buf[n - 1] == _LF
                pos = n
                break
            write(bytes(buf[pos : nxt + 1]))
            pos = nxt + 1
            self._bol = True
        del buf[:pos]
        return None

    def _end_of_data(self) -> bytes:
        outcome = self._sink.end()
        count = len(self._recipients)
        if outcome is Outcome.STORED:
            reply = b"250 2.0.0 Ok: stored as " + self._msgid.encode() + _CRLF
        elif outcome is Outcome.EMPTY:
            reply = b"250 2.6.0 Ok: empty message, nothing stored\r\n"
        elif outcome is Outcome.TOO_LARGE:
            reply = R_TOO_LARGE
        elif outcome is Outcome.OVERFLOW_FULL:
            reply = R_FULL
        else:
            reply = R_STORE_FAILED
        self._reset()
        self._xforward = {}
        self._state = _State.READY
        return reply * count


_HANDLERS = {
    "LHLO": LmtpSession._lhlo,
    "XFORWARD": LmtpSession._xforward_cmd,
    "MAIL": LmtpSession._mail,
    "RCPT": LmtpSession._rcpt,
    "DATA": LmtpSession._data_cmd,
    "RSET": LmtpSession._rset,
    "NOOP": LmtpSession._noop,
    "VRFY": LmtpSession._vrfy,
    "QUIT": LmtpSession._quit,
}


def _path(arg: bytes, prefix: bytes) -> tuple[str, list[bytes]] | None:
    """``FROM:<address> PARAMS`` as (address, params), or None if malformed."""
    if arg[: len(prefix)].upper() != prefix:
        return None
    m = _PATH.match(arg[len(prefix) :])
    if m is None:
        return None
    address = m.group(1).decode("utf-8", "replace")
    return address, m.group(2).split()


def _available(value: str | None) -> str | None:
    """An XFORWARD value, or None for Postfix's "[UNAVAILABLE]" and "[TEMPUNAVAIL]"."""
    if value is None or value in ("[UNAVAILABLE]", "[TEMPUNAVAIL]", ""):
        return None
    return value
