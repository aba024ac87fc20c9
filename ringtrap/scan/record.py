"""The result record: what the trap writes about one message, as one JSON line.

:class:`Record` is built by :class:`~ringtrap.scan.processing.Processor` for a
processed message and by :func:`ringtrap.scan.quarantine.record` for a
quarantined one; :class:`~ringtrap.scan.results.ResultSink` writes its
:meth:`Record.to_dict`.  The line's keys, their order and their null
handling are what tools have always read: the first fourteen keys are the
original record, new keys only ever go at the end (after ``parse_error``),
and a key a record has no value for is written as null, never left out.
Code that reads result files back (reports, the CLI) reads JSON objects,
possibly written by older versions, and does not use this class.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
from dataclasses import dataclass, field
from typing import Any, Literal

from ringtrap.base.envelope import Envelope
from ringtrap.base.states import Verdict
from ringtrap.scan.extract import Attachment

__all__ = [
    "ARCHIVE_FAILED", "NOT_ARCHIVED", "RECORD_KEYS", "Archived", "Archiving", "Quarantine",
    "Record", "Store", "iso_utc",
]

# which store a quarantined message was claimed from
Store = Literal["ring", "overflow", "stage"]


class Archiving(enum.Enum):
    """What became of a message's copy in the corpus archive."""

    STORED = "stored"
    SKIPPED = "skipped"  # no archive configured, or its verdict is not archived
    FAILED = "failed"  # the archive could not be written; the record is kept all the same


@dataclass(frozen=True, slots=True)
class Archived:
    """The archive outcome of one message; ``path`` (relative to ``archive.dir``) when stored."""

    outcome: Archiving
    path: str | None = None

    @classmethod
    def at(cls, path: str) -> Archived:
        return cls(Archiving.STORED, path)

    def to_json(self) -> str | bool | None:
        """The record's ``archived`` value: the path, false when it failed, null when skipped."""
        if self.outcome is Archiving.STORED:
            return self.path
        return False if self.outcome is Archiving.FAILED else None


NOT_ARCHIVED = Archived(Archiving.SKIPPED)
ARCHIVE_FAILED = Archived(Archiving.FAILED)


@dataclass(frozen=True, slots=True)
class Quarantine:
    """Where a quarantined message went: its store, and its copy in failed/ if kept."""

    store: Store
    kept: bool
    path: str | None  # None when not kept

    def to_dict(self) -> dict[str, Any]:
        return {"store": self.store, "kept": self.kept, "path": self.path}


@dataclass(slots=True)
class Record:
    """One result record; fields in the order of the JSON keys (``from_`` is ``from``).

    A field left at its default is written as its default: null, except
    ``rules`` (an empty list) and ``archived`` (null, as not archived).  The
    list fields a processed message always has (``urls``, ``attachments``,
    ...) are None in a quarantined message's record, which parses nothing.
    """

    # The order of the keys: the first fourteen fields are the original record
    # and tools rely on them, so a new field only ever goes at the end.
    id: str
    received: str  # ISO 8601 UTC, see iso_utc
    size: int  # the message's bytes, the envelope line not counted
    verdict: Verdict
    reason: str | None = None
    score: float | None = None
    required: float | None = None
    rules: list[str] = field(default_factory=list)
    from_: str | None = None
    subject: str | None = None
    message_id: str | None = None
    scanned_ms: float | None = None
    attempts: int = 0
    envelope: Envelope | None = None
    relay_ip: str | None = None
    relay_helo: str | None = None
    relay_source: str | None = None
    from_domain: str | None = None
    reply_to_domain: str | None = None
    return_path_domain: str | None = None
    date: str | None = None
    urls: list[str] | None = None
    url_domains: list[str] | None = None
    attachments: list[Attachment] | None = None
    body_sha256: str | None = None
    fingerprint: str | None = None
    duplicate_of: str | None = None
    defects: list[str] | None = None
    archived: Archived = NOT_ARCHIVED
    timings_ms: dict[str, float] | None = None
    quarantine: Quarantine | None = None
    # why the walk could not read it as a message; it is scanned all the same
    parse_error: str | None = None
    # the scanner kind ("spamd", "rspamd") and address that gave the verdict
    scanner: str | None = None
    scanner_host: str | None = None
    # rspamd's advice ("reject", "add header", ...; null from spamd) and each
    # rule with its score and options (spamd's from its REPORT)
    action: str | None = None
    symbols: dict[str, dict[str, object]] | None = None
    # ISO 8601 UTC like ``received``: when the scan answered, or when the
    # record was made if no scan ran; a message that waited (the overflow, a
    # scanner down) shows the wait as the difference
    scanned_at: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The record as a JSON object: every key of :data:`RECORD_KEYS`, in that order."""
        out = {key: getattr(self, name) for name, key in _FIELD_KEYS}
        # the nested parts, in place (a key keeps its position when reassigned)
        out["envelope"] = self.envelope.to_dict() if self.envelope is not None else None
        if self.attachments is not None:
            out["attachments"] = [a.to_dict() for a in self.attachments]
        out["archived"] = self.archived.to_json()
        out["quarantine"] = self.quarantine.to_dict() if self.quarantine is not None else None
        return out


_FIELD_KEYS = tuple((f.name, f.name.rstrip("_")) for f in dataclasses.fields(Record))

# The record's keys, in the order they are written.
RECORD_KEYS = tuple(key for _, key in _FIELD_KEYS)


def iso_utc(epoch: float) -> str:
    """``epoch`` seconds as ISO 8601 in UTC with its offset, to the microsecond."""
    when = datetime.datetime.fromtimestamp(epoch, tz=datetime.UTC)
    return when.isoformat(timespec="microseconds")
