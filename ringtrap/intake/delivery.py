"""What a session protocol (raw, submit, LMTP) asks of the ingest: the narrow store hook.

A session class owns its framing, its state machine and its replies; it
never sees the ring or the overflow.  For each message it calls a
:class:`Sink` — ``begin`` with the envelope, ``write`` with the message's
bytes as they arrive, then ``end`` (stored or refused: an :class:`Outcome`,
which the session renders in its own reply) or ``abort`` (the client went
away, the message is dropped).  The ingest gives every connection, the raw
socket's too, a sink of
:mod:`ringtrap.intake.sink` on the same store, limits, ids and counters, so
a message is stored the same way whichever socket it came by.

Sessions are driven without I/O of their own: ``feed`` takes received bytes
and returns the bytes to send back, which keeps them testable on plain bytes.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Protocol

from ringtrap.base.envelope import Envelope
from ringtrap.base.wire import (
    ERR,
    OK,
    REASON_EMPTY,
    REASON_OVERFLOW_FULL,
    REASON_STORE_FAILED,
    REASON_TOO_LARGE,
    TEMPFAIL,
    reply_line,
)


class Outcome(IntEnum):
    """How the ingest answered one message at its end."""

    STORED = 0  # in the ring or the overflow: the reply carries its id
    TOO_LARGE = 1  # over ingest.max_message_bytes: read to its end and dropped
    EMPTY = 2  # no bytes: nothing stored
    OVERFLOW_FULL = 3  # cannot store now: the overflow is at its cap
    FAILED = 4  # cannot store now: any other reason (store error, truncated)


# the one-line reply (raw and submit sockets) to each refusal at a message's end
REFUSAL_LINES = {
    Outcome.TOO_LARGE: reply_line(ERR, REASON_TOO_LARGE),
    Outcome.EMPTY: reply_line(ERR, REASON_EMPTY),
    Outcome.OVERFLOW_FULL: reply_line(TEMPFAIL, REASON_OVERFLOW_FULL),
    Outcome.FAILED: reply_line(TEMPFAIL, REASON_STORE_FAILED),
}
_OK = OK + b" "


def one_line(outcome: Outcome, msgid: str) -> bytes:
    """The raw and submit sockets' reply to a message that ended with ``outcome``."""
    if outcome is Outcome.STORED:
        return _OK + msgid.encode() + b"\n"
    return REFUSAL_LINES[outcome]


class Sink(Protocol):
    """The store hook one session writes its messages to, one at a time."""

    def begin(self, env: Envelope) -> str:
        """Start a message with ``env``; returns its id."""
        ...

    def write(self, data: bytes) -> None:
        """Add the message's next bytes (buffered, streamed or counted and dropped)."""
        ...

    def end(self) -> Outcome:
        """Store the message (unless refused); how it ended.  Each protocol renders its reply."""
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

    def feed(self, data: bytes | memoryview) -> bytes:
        """Take received bytes (a view of the server's receive buffer, valid only
        during the call: copy what is kept); return the replies they call for."""
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
