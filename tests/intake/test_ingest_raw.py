"""The raw protocol as a session, on plain bytes: what it asks of its sink, what it answers.

Protocol tier without sockets: a recording sink stands in for the ingest's
(:mod:`ringtrap.intake.sink`), so the reply each :class:`Outcome` renders to
is checked against the wire constants, as a client reads them.
"""

from __future__ import annotations

import pytest

from ringtrap.base.envelope import Envelope
from ringtrap.base.wire import (
    ERR,
    OK,
    REASON_EMPTY,
    REASON_IDLE,
    REASON_OVERFLOW_FULL,
    REASON_SHUTTING_DOWN,
    REASON_STORE_FAILED,
    REASON_TIMEOUT,
    REASON_TOO_LARGE,
    TEMPFAIL,
    reply_line,
)
from ringtrap.intake.delivery import Outcome
from ringtrap.intake.raw import RawSession


class Sink:
    """Records the calls; ``end`` answers the outcome it was given."""

    def __init__(self, outcome: Outcome = Outcome.STORED) -> None:
        self.outcome = outcome
        self.calls: list[tuple[str, object]] = []
        self.msgid = ""

    def begin(self, env: Envelope | None, msgid: str = "") -> str:
        self.calls.append(("begin", env))
        self.msgid = msgid
        return msgid

    def write(self, data: bytes | memoryview) -> None:
        self.calls.append(("write", bytes(data)))

    def end(self) -> Outcome:
        self.calls.append(("end", None))
        return self.outcome

    def abort(self) -> None:
        self.calls.append(("abort", None))

    def drop(self) -> None:
        self.calls.append(("drop", None))


def test_the_bytes_are_the_message_and_the_end_of_stream_its_end() -> None:
    sink = Sink()
    session = RawSession(sink, "661b6ceb95adf-000001")  # type: ignore[arg-type]
    assert session.start() == b"" and session.busy()
    assert session.feed(b"Subject: a\n\n") == b""
    assert session.feed(memoryview(b"body\n")) == b""
    assert session.eof() == OK + b" 661b6ceb95adf-000001\n"
    assert session.closing and not session.busy()
    assert sink.calls == [("begin", None), ("write", b"Subject: a\n\n"), ("write", b"body\n"),
                          ("end", None)]


@pytest.mark.parametrize(("outcome", "line"), [
    (Outcome.TOO_LARGE, reply_line(ERR, REASON_TOO_LARGE)),
    (Outcome.EMPTY, reply_line(ERR, REASON_EMPTY)),
    (Outcome.OVERFLOW_FULL, reply_line(TEMPFAIL, REASON_OVERFLOW_FULL)),
    (Outcome.FAILED, reply_line(TEMPFAIL, REASON_STORE_FAILED)),
])
def test_each_refusal_has_its_line(outcome: Outcome, line: bytes) -> None:
    session = RawSession(Sink(outcome), "661b6ceb95adf-000002")  # type: ignore[arg-type]
    assert session.eof() == line


@pytest.mark.parametrize(("end", "line", "call"), [
    ("timeout", reply_line(TEMPFAIL, REASON_IDLE), "drop"),
    ("expired", reply_line(TEMPFAIL, REASON_TIMEOUT), "drop"),
    ("shutdown", reply_line(TEMPFAIL, REASON_SHUTTING_DOWN), "abort"),
])
def test_a_connection_ended_midway_drops_its_message(end: str, line: bytes, call: str) -> None:
    """The deadlines drop the message as the client's loss; a shutdown counts it refused."""
    sink = Sink()
    session = RawSession(sink, "661b6ceb95adf-000003")  # type: ignore[arg-type]
    session.feed(b"partial")
    assert getattr(session, end)() == line
    assert session.closing
    assert sink.calls[-1] == (call, None)
