"""The ingest's side of the submit socket: envelope block, message, length trailer.

The wire format is described in :mod:`ringtrap.command.submit` (the client).  This
class parses it without doing any I/O: :meth:`SubmitSession.feed` takes what
arrived, hands the message's bytes to the :class:`~ringtrap.intake.delivery.Sink`
and returns nothing until the client has finished; :meth:`eof` then checks
the trailer and returns the one reply line.

The message's last bytes are held back (at most :data:`TAIL_MAX`) until the
end of the stream, because only then is it known that they are the trailer
and not message bytes.  The trailer is either ``END <n>`` or the report dd
writes when it has copied everything (what ``ringtrap-deliver`` sends, see
:func:`dd_report_start`).  A stream that ends without a well-formed trailer,
or with one whose length is not the number of bytes received, comes from a
client that died midway: the message is dropped and the reply is
``TEMPFAIL truncated message``, so an MTA whose client is still alive retries.

The envelope block is read line by line as it arrives and never buffered
whole: the ingest keeps at most :data:`~ringtrap.base.wire.MAX_HEADER` bytes of
it (as stored) and :data:`~ringtrap.base.wire.MAX_RECIPIENTS` recipients.  The
recipients past either are left out and counted in the envelope's
``recipients_dropped``; the message itself is always kept.  A line longer
than :data:`MAX_LINE` is no envelope value: it is skipped (a recipient one is
counted as dropped).  Control characters in values are escaped
(:func:`~ringtrap.base.envelope.escape_controls`).  Only a stream that is not a
submit stream, or a block no submit client writes (a line without a value, a
single-valued key twice), is refused, with ``TEMPFAIL bad request``: the
MTA keeps such a message queued, where an operator sees it, instead of
losing it.
"""

from __future__ import annotations

import json
import logging
import re
from enum import Enum

from ringtrap.base.envelope import Envelope, escape_controls
from ringtrap.base.wire import (
    KEYS,
    MAGIC,
    MAX_HEADER,
    MAX_RECIPIENTS,
    REASON_BAD_REQUEST,
    REASON_IDLE,
    REASON_SHUTTING_DOWN,
    REASON_TIMEOUT,
    REASON_TRUNCATED,
    TEMPFAIL,
    TRAILER,
    reply_line,
)
from ringtrap.intake.delivery import Sink, one_line

log = logging.getLogger(__name__)

# room for "END " + 20 digits + "\n" or for dd's report (about 100 bytes)
TAIL_MAX = 512
# dd's closing report on standard error: POSIX fixes the two records lines;
# GNU, BusyBox and BSD dd all start the last line with the byte count
# ("4096 bytes (4.1 kB, 4.0 KiB) copied, ...", "1 byte copied, ...",
# "4096 bytes transferred in ...")
_DD_LAST_LINE = re.compile(rb"(\d{1,20}) bytes? [^\n]*\n")
_DD_REPORT = re.compile(rb"\d{1,20}\+\d{1,20} records in\n\d{1,20}\+\d{1,20} records out\n"
                        rb"(\d{1,20}) bytes? [^\n]*\n")
_SINGLE = frozenset(k for k in KEYS if k != "recipient")
_KNOWN = frozenset(KEYS)
# an envelope line longer than this holds no address, HELO or queue id; with
# at most four single values of this size the stored envelope line stays far
# below envelope.MAX_LINE however its characters are escaped
MAX_LINE = 1024

LINE_TRUNCATED = reply_line(TEMPFAIL, REASON_TRUNCATED)
LINE_IDLE = reply_line(TEMPFAIL, REASON_IDLE)
LINE_EXPIRED = reply_line(TEMPFAIL, REASON_TIMEOUT)
LINE_SHUTTING_DOWN = reply_line(TEMPFAIL, REASON_SHUTTING_DOWN)


class _State(Enum):
    HEADER = "header"  # reading the envelope block
    BODY = "body"  # passing the message to the sink
    DISCARD = "discard"  # a bad request: reading to the end, then ERR
    DONE = "done"  # answered


class BadRequest(ValueError):
    """The envelope block is not one a submit client writes."""


class EnvelopeReader:
    """Collects an envelope from its lines (the magic line and blank line excluded).

    Values are everything after the key's space up to the line feed, decoded
    as UTF-8 (undecodable bytes replaced), control characters escaped.
    Unknown keys are skipped so an older ingest accepts a newer client; a
    repeated single-valued key is an error.  Keeps what fits the budgets of
    the module docstring and counts the recipients it leaves out.
    """

    __slots__ = ("_kept", "_recipients", "_values", "dropped", "skipped")

    def __init__(self) -> None:
        self._values: dict[str, str] = {}
        self._recipients: list[str] = []
        self._kept = 0  # bytes of kept values as the stored JSON holds them
        self.dropped = 0  # recipients left out
        self.skipped = 0  # lines over MAX_LINE left out

    def line(self, raw: bytes) -> None:
        """Take one envelope line (no line feed); raises BadRequest."""
        key_b, sep, value_b = raw.partition(b" ")
        if not sep:
            raise BadRequest(f"envelope line without a value: {raw[:40]!r}")
        key = key_b.decode("ascii", "replace")
        if key not in _KNOWN:
            return
        if key != "recipient" and key in self._values:
            raise BadRequest(f"{key} given twice")
        if len(raw) > MAX_LINE:
            self.skip(raw[:40])
            return
        value = escape_controls(value_b.decode("utf-8", "replace"))
        if key == "recipient":
            cost = len(json.dumps(value)) + 1
            if len(self._recipients) < MAX_RECIPIENTS and self._kept + cost <= MAX_HEADER:
                self._recipients.append(value)
                self._kept += cost
            else:
                self.dropped += 1
        else:
            self._values[key] = value

    def skip(self, start: bytes) -> None:
        """A line over :data:`MAX_LINE` starting with ``start`` is left out."""
        self.skipped += 1
        if start.partition(b" ")[0] == b"recipient":
            self.dropped += 1

    def envelope(self) -> Envelope:
        """The envelope collected; one warning if anything was left out."""
        if self.dropped or self.skipped:
            log.warning("submit: kept %d recipients, left out %d that did not fit the envelope"
                        " (%d lines over %d bytes)", len(self._recipients), self.dropped,
                        self.skipped, MAX_LINE)
        values = self._values
        return Envelope(
            sender=values.get("sender"),
            recipients=tuple(self._recipients),
            client_address=values.get("client_address") or None,
            client_helo=values.get("client_helo") or None,
            queue_id=values.get("queue_id") or None,
            recipients_dropped=self.dropped,
        )


def parse_block(block: bytes) -> Envelope:
    """The envelope of a complete block (magic line through the blank line)."""
    if not block.startswith(MAGIC) or not block.endswith(b"\n\n"):
        raise BadRequest("not a submit stream")
    reader = EnvelopeReader()
    for raw in block[len(MAGIC) : -2].split(b"\n") if len(block) > len(MAGIC) + 1 else ():
        reader.line(raw)
    return reader.envelope()


def dd_report_start(tail: bytes, before: int) -> int:
    """Where dd's closing report starts in ``tail``, or -1 if it does not end with one.

    ``before`` is how many message bytes came before ``tail``.  The report
    follows the message's last byte directly (the message need not end in a
    line feed, so its own last digits can run into "0+1 records in"); the
    byte count it states says where that is, and the whole report must
    match from there.
    """
    if not tail.endswith(b"\n"):
        return -1
    last = _DD_LAST_LINE.fullmatch(tail, tail.rfind(b"\n", 0, len(tail) - 1) + 1)
    if last is None:
        return -1
    i = int(last[1]) - before
    if i < 0 or _DD_REPORT.fullmatch(tail, i) is None:
        return -1
    return i


class SubmitSession:
    """One submit connection: see the module docstring.  Implements ``delivery.Session``."""

    __slots__ = (
        "_head", "_magic", "_msgid", "_problem", "_reader", "_sink", "_skipping", "_state",
        "_tail", "_written", "closing",
    )

    def __init__(self, sink: Sink) -> None:
        self._sink = sink
        self._state = _State.HEADER
        self._head = bytearray()  # the envelope line being received
        self._magic = False  # the magic line has been seen
        self._skipping = False  # inside a line over MAX_LINE: dropped to its end
        self._reader = EnvelopeReader()
        self._tail = b""
        self._written = 0  # message bytes handed to the sink
        self._msgid = ""
        self._problem = ""
        self.closing = False

    def start(self) -> bytes:
        return b""

    def busy(self) -> bool:
        return self._state is not _State.DONE

    def feed(self, data: bytes | memoryview) -> bytes:
        data = bytes(data)  # held past the call: the receive buffer is reused
        state = self._state
        if state is _State.BODY:
            self._body(data)
        elif state is _State.HEADER:
            self._header(data)
        return b""

    def _header(self, data: bytes) -> None:
        """Take envelope lines as they complete; begin the message at the blank line."""
        head = self._head
        head += data
        if not self._magic:
            if not head.startswith(MAGIC[: len(head)]):
                self._bad("not a submit stream")
                return
            if len(head) < len(MAGIC):
                return
            del head[: len(MAGIC)]
            self._magic = True
        pos = 0
        reader = self._reader
        while True:
            end = head.find(b"\n", pos)
            if self._skipping:
                if end < 0:
                    head.clear()
                    return
                self._skipping = False
                pos = end + 1
                continue
            if end < 0:
                if len(head) - pos > MAX_LINE:
                    reader.skip(bytes(head[pos : pos + 40]))
                    self._skipping = True
                    head.clear()
                else:
                    del head[:pos]
                return
            if end == pos:
                break  # the blank line: the message follows
            try:
                reader.line(bytes(head[pos:end]))
            except BadRequest as e:
                self._bad(str(e))
                return
            pos = end + 1
        rest = bytes(head[pos + 1 :])
        self._head = bytearray()
        self._msgid = self._sink.begin(reader.envelope())
        self._state = _State.BODY
        if rest:
            self._body(rest)

    def _body(self, data: bytes) -> None:
        if self._tail:
            data = self._tail + data
        if len(data) > TAIL_MAX:
            cut = len(data) - TAIL_MAX
            self._sink.write(data[:cut])
            self._written += cut
            self._tail = data[cut:]
        else:
            self._tail = data

    def _bad(self, problem: str) -> None:
        self._problem = problem
        self._head = bytearray()
        self._state = _State.DISCARD

    def eof(self) -> bytes:
        state = self._state
        self._state = _State.DONE
        self.closing = True
        if state is _State.BODY:
            return self._finish()
        if state is _State.DISCARD:
            log.warning("submit: refused a bad request: %s", self._problem)
            return reply_line(TEMPFAIL, REASON_BAD_REQUEST + b": " + self._problem.encode())
        if state is _State.HEADER and (self._head or self._magic or self._skipping):
            log.info("submit: stream ended inside the envelope block")
            return LINE_TRUNCATED
        return b""  # connected and left without a byte: nothing to answer

    def _finish(self) -> bytes:
        """Check the trailer against the bytes received; store or drop the message."""
        tail = self._tail
        received = self._written + len(tail)
        i = tail.rfind(TRAILER) if tail.endswith(b"\n") else -1
        digits = tail[i + len(TRAILER) : -1] if i >= 0 else b""
        if not (digits.isdigit() and digits.isascii() and int(digits) == self._written + i):
            i = dd_report_start(tail, self._written)
        if i < 0:
            self._sink.abort()
            log.info("submit: stream ended after %d bytes without its length trailer", received)
            return LINE_TRUNCATED
        if i:
            self._sink.write(tail[:i])
        return one_line(self._sink.end(), self._msgid)

    def timeout(self) -> bytes:
        self._drop()
        return LINE_IDLE

    def expired(self) -> bytes:
        self._drop()
        return LINE_EXPIRED

    def shutdown(self) -> bytes:
        self._drop()
        return LINE_SHUTTING_DOWN

    def _drop(self) -> None:
        if self._state is _State.BODY:
            self._sink.abort()
        self._state = _State.DONE
        self.closing = True
