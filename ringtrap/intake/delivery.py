"""What a session protocol (submit, LMTP) asks of the ingest: the narrow store hook.

A session class owns its framing, its state machine and its replies; it
never sees the ring or the overflow.  For each message it calls a
:class:`Sink` — ``begin`` with the envelope, ``write`` with the message's
bytes as they arrive, then ``end`` (stored or refused: an :class:`Outcome`)
or ``abort`` (the client went away, the message is dropped).  The ingest
implements the sink with the same store, limits, ids and counters as its raw
socket, so a message is stored the same way whichever socket it came by.

Sessions are driven without I/O of their own: ``feed`` takes received bytes
and returns the bytes to send back, which keeps them testable on plain bytes.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Protocol

from ringtrap.base.envelope import Envelope

# The one-line replies of the raw and submit sockets: prefixes, then reasons.
OK = b"OK"
ERR = b"ERR"
TEMPFAIL = b"TEMPFAIL"
REASON_TOO_LARGE = b"message too large"
REASON_EMPTY = b"empty message"
REASON_OVERFLOW_FULL = b"overflow full"
REASON_STORE_FAILED = b"cannot store message"
REASON_IDLE = b"idle timeout"
# the message took longer than ingest.message_timeout, however steadily it came
REASON_TIMEOUT = b"message timeout"
REASON_BUSY = b"too many connections"
REASON_SHUTTING_DOWN = b"shutting down"
# submit socket only: the stream ended without its length trailer, or not as announced
REASON_TRUNCATED = b"truncated message"
# submit socket only: not a submit stream, or a malformed envelope block
REASON_BAD_REQUEST = b"bad request"


def reply_line(kind: bytes, text: bytes) -> bytes:
    """The reply line ``<kind> <text>\\n`` as sent to the client."""
    return kind + b" " + text + b"\n"


class Outcome(IntEnum):
    """How the ingest answered one message at its end."""

    STORED = 0  # in the ring or the overflow: the reply carries its id
    TOO_LARGE = 1  # over ingest.max_message_bytes: read to its end and dropped
    EMPTY = 2  # no bytes: nothing stored
    OVERFLOW_FULL = 3  # cannot store now: the overflow is at its cap
    FAILED = 4  # cannot store now: any other reason (store error, truncated)


class Sink(Protocol):
    """The store hook one session writes its messages to, one at a time."""

    def begin(self, env: Envelope) -> str:
        """Start a message with ``env``; returns its id."""
        ...

    def write(self, data: bytes) -> None:
        """Add the message's next bytes (buffered, streamed or counted and dropped)."""
        ...

    def end(self) -> tuple[Outcome, bytes]:
        """Store the message; returns the outcome and the raw socket's reply line."""
        ...

    def abort(self) -> None:
        """Drop the message in progress: the client failed, nothing is stored."""
        ...


class Session(Protocol):
    """A connection's protocol, driven by the ingest's loop."""

    closing: bool  # close once the returned bytes are sent

    def start(self) -> bytes:
        """Bytes to send when the connection is accepted (a greeting, or none)."""
        ...

    def feed(self, data: bytes) -> bytes:
        """Take received bytes; return the replies they call for."""
        ...

    def eof(self) -> bytes:
        """The client will send nothing more; return the last replies."""
        ...

    def busy(self) -> bool:
        """True while a message is in progress (a graceful stop waits for it)."""
        ...

    def timeout(self) -> bytes:
        """The connection was idle too long: drop any message, return the last reply."""
        ...

    def expired(self) -> bytes:
        """The message took longer than its total deadline: drop it, return the last reply."""
        ...

    def shutdown(self) -> bytes:
        """The ingest is stopping: drop any message, return the last reply."""
        ...
