"""The raw socket's protocol: one message per connection, one line to answer it.

Wire protocol::

    client  connect, send the message, then shutdown(SHUT_WR) or close
    server  exactly one line, then close:
              OK <id>             stored (ring or overflow); never sent before
              ERR <reason>        permanent refusal: too large, empty
              TEMPFAIL <reason>   cannot store now: overflow full, idle,
                                  too many connections, shutting down

A refused message is still read to its end, so the stream stays in sync and
the reply reaches a client that writes everything before reading.  The reply
prefixes and reasons are the constants of :mod:`ringtrap.base.wire`.

:class:`RawSession` drives a connection the loop has to wait on, like the
submit and LMTP sessions; a message that has arrived whole by the time it is
accepted never gets one: the server answers it on the bare descriptor
(:meth:`~ringtrap.intake.sink.Store.whole` and :func:`~ringtrap.intake.delivery.one_line`).
"""

from __future__ import annotations

from ringtrap.base.wire import (
    REASON_BUSY,
    REASON_IDLE,
    REASON_SHUTTING_DOWN,
    REASON_TIMEOUT,
    TEMPFAIL,
    reply_line,
)
from ringtrap.intake.delivery import one_line
from ringtrap.intake.sink import Sink

LINE_IDLE = reply_line(TEMPFAIL, REASON_IDLE)
LINE_EXPIRED = reply_line(TEMPFAIL, REASON_TIMEOUT)
LINE_SHUTTING_DOWN = reply_line(TEMPFAIL, REASON_SHUTTING_DOWN)
# what a connection over the socket's budget gets (the submit socket's too)
LINE_BUSY = reply_line(TEMPFAIL, REASON_BUSY)


class RawSession:
    """One raw connection: its bytes are the message, its end of stream the message's end.

    Implements ``delivery.Session``; ``sink`` is the connection's, and the
    message ``msgid`` begins at once.  The idle and total deadlines drop the
    message uncounted as a refusal (the client has stopped sending); a
    shutdown counts it refused for now.
    """

    __slots__ = ("_sink", "closing")

    def __init__(self, sink: Sink, msgid: str) -> None:
        self._sink = sink
        self.closing = False
        sink.begin(None, msgid)

    def start(self) -> bytes:
        return b""

    def busy(self) -> bool:
        return not self.closing

    def feed(self, data: bytes | memoryview) -> bytes:
        self._sink.write(data)
        return b""

    def eof(self) -> bytes:
        self.closing = True
        sink = self._sink
        msgid = sink.msgid
        return one_line(sink.end(), msgid)

    def timeout(self) -> bytes:
        self.closing = True
        self._sink.drop()
        return LINE_IDLE

    def expired(self) -> bytes:
        self.closing = True
        self._sink.drop()
        return LINE_EXPIRED

    def shutdown(self) -> bytes:
        self.closing = True
        self._sink.abort()
        return LINE_SHUTTING_DOWN
