"""The result record of a quarantined message.

A quarantined message is one the trap gave up on: it killed its worker
``overflow.max_attempts`` times, or it is a spill file the trap will not
read (a symlink, a FIFO, a file someone else owns).  It still gets a record,
so reports count it and an operator can find it: verdict "quarantined"
(:attr:`~ringtrap.base.states.Verdict.QUARANTINED`), the reason, the
attempts, and what is known without parsing the message: its size and, when
its envelope line could be read, the envelope.  The message itself is never
parsed here; it is what killed the worker.
"""

from __future__ import annotations

import time
from pathlib import Path

from ringtrap.base import envelope
from ringtrap.base.envelope import Envelope
from ringtrap.base.states import Verdict
from ringtrap.scan.record import Quarantine, Record, Store, iso_utc


def peek_envelope(head: bytes) -> tuple[Envelope, int] | None:
    """The envelope and the envelope line's length, from a payload's start.

    ``head`` needs only the first :data:`ringtrap.base.envelope.MAX_LINE` bytes of
    the payload.  None when it does not start with an envelope line the
    ingest wrote.
    """
    end = head.find(b"\n", 0, envelope.MAX_LINE)
    if end < 0:
        return None
    try:
        env, _ = envelope.unframe(head[: end + 1])
    except (envelope.FrameError, RecursionError):
        return None
    return env, end + 1


def record(
    msgid: str,
    received: float,
    attempts: int,
    reason: str,
    *,
    store: Store,
    kept: bool,
    path: Path | None,
    payload_size: int,
    head: bytes | None,
    now: float | None = None,
) -> Record:
    """The record of one quarantined message.

    ``payload_size`` is the stored payload's size, envelope line included;
    the record's ``size`` is the message's, as in every other record, when
    ``head`` (the payload's start) shows the envelope line, else the
    payload's.  ``path`` is the quarantined copy in failed/ (None when it was
    not kept).  ``now`` (wall-clock seconds, default the time of the call)
    is the record's ``scanned_at``: no scan ran.
    """
    env: Envelope | None = None
    size = payload_size
    peeked = peek_envelope(head) if head is not None else None
    if peeked is not None:
        env, line = peeked
        size = max(0, payload_size - line)
    return Record(
        id=msgid,
        received=iso_utc(received),
        size=size,
        verdict=Verdict.QUARANTINED,
        reason=reason,
        attempts=attempts,
        envelope=env,
        quarantine=Quarantine(store, kept, str(path) if kept and path is not None else None),
        scanned_at=iso_utc(time.time() if now is None else now),
    )


__all__ = ["peek_envelope", "record"]
