"""Campaign repeats: the first scan result of each body fingerprint, shared by all workers.

Trap mail arrives in campaigns: the same body thousands of times.  Workers
are separate processes, so a per-worker memory would see only its own share
of a campaign (half of it with two workers) and forget everything on every
restart.  The store is instead one small SQLite file beside the results
(``<results.dir>/dedupe.sqlite``), shared by every worker:

* WAL mode: readers never wait for the writer, and a write is one short
  transaction (an ``INSERT ... ON CONFLICT``) with ``synchronous=OFF``;
* a short busy timeout: a worker that finds the file locked treats it as a
  miss (scans the message) rather than wait, so the store can cost time but
  never hold up scanning;
* any SQLite error is a miss too, counted in :attr:`DedupeStore.errors`.

It is a cache, not a record: losing it (crash, full disk, deletion) costs
only rescans.  One file rather than one per day because the window is a
duration that crosses midnight; rows older than the window are deleted
every :data:`PRUNE_EVERY` writes.  Two workers that meet a new fingerprint
at the same instant both scan it; the first to write is kept.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from ringtrap.base import modes

log = logging.getLogger(__name__)

FILE_NAME = "dedupe.sqlite"
BUSY_TIMEOUT = 0.05
PRUNE_EVERY = 1000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS seen (
    fingerprint TEXT PRIMARY KEY,
    first_id TEXT NOT NULL,
    first_at REAL NOT NULL,
    verdict TEXT NOT NULL,
    score REAL,
    required REAL,
    rules TEXT NOT NULL,
    repeats INTEGER NOT NULL DEFAULT 0
)
"""


@dataclass(frozen=True, slots=True)
class First:
    """What the first message of a fingerprint got from spamd."""

    msgid: str
    at: float  # wall-clock seconds it was received
    verdict: str
    score: float | None
    required: float | None
    rules: tuple[str, ...]
    # the scanner kind, rspamd's action and each rule's score and options
    # (the record's ``symbols``), for a repeat's record
    scanner: str | None = None
    action: str | None = None
    symbols: dict[str, dict[str, object]] | None = None


class DedupeStore:
    """The shared fingerprint -> first result map; one instance per process.

    The connection is opened on first use in the process that uses it, so a
    store built before fork is safe.  ``window`` is seconds: a fingerprint
    first seen longer ago than that counts as new again.
    """

    def __init__(self, directory: str | os.PathLike[str], window: float, *,
                 busy_timeout: float = BUSY_TIMEOUT) -> None:
        self.path = Path(directory) / FILE_NAME
        self.window = window
        self.busy_timeout = busy_timeout
        self.errors = 0
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        self._writes = 0

    def _db(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():
            # a connection must never cross a fork: drop an inherited one unused
            self._conn = None
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout,
                                   isolation_level=None, check_same_thread=False)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=OFF")
                conn.execute(_SCHEMA)
            except sqlite3.Error:
                conn.close()
                raise
            # SQLite gives -wal and -shm the database's mode; older versions left it 0644
            modes.tighten_all(*(self.path.with_name(self.path.name + s)
                                for s in ("", "-wal", "-shm")))
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    def lookup(self, fingerprint: str, now: float) -> First | None:
        """The first result of ``fingerprint`` within the window, counting this repeat.

        None on a miss and on any store error (the caller then scans).
        """
        try:
            db = self._db()
            row = db.execute(
                "UPDATE seen SET repeats = repeats + 1 WHERE fingerprint = ? AND first_at > ?"
                " RETURNING first_id, first_at, verdict, score, required, rules",
                (fingerprint, now - self.window)).fetchone()
        except sqlite3.Error as exc:
            self._error("lookup", exc)
            return None
        if row is None:
            return None
        scanner = action = None
        symbols: dict[str, dict[str, object]] | None = None
        try:
            stored = json.loads(row[5])
            # a list of rules, or (with a scanner named) an object holding them
            if isinstance(stored, dict):
                scanner, action = _text(stored.get("scanner")), _text(stored.get("action"))
                symbols = symbols_of(stored.get("symbols"))
                stored = stored.get("rules", [])
            rules = tuple(str(r) for r in stored)
        except (ValueError, TypeError):
            rules = ()
        return First(row[0], row[1], row[2], row[3], row[4], rules, scanner, action, symbols)

    def remember(self, fingerprint: str, first: First) -> None:
        """Store ``first`` for ``fingerprint`` unless a first within the window is there."""
        try:
            db = self._db()
            db.execute(
                "INSERT INTO seen (fingerprint, first_id, first_at, verdict, score, required,"
                " rules) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (fingerprint) DO UPDATE SET first_id = excluded.first_id,"
                " first_at = excluded.first_at, verdict = excluded.verdict,"
                " score = excluded.score, required = excluded.required,"
                " rules = excluded.rules, repeats = 0"
                " WHERE seen.first_at <= excluded.first_at - ?",
                (fingerprint, first.msgid, first.at, first.verdict, first.score,
                 first.required, _rules_column(first), self.window))
            self._writes += 1
            if self._writes % PRUNE_EVERY == 0:
                db.execute("DELETE FROM seen WHERE first_at <= ?", (first.at - self.window,))
        except sqlite3.Error as exc:
            self._error("remember", exc)

    def _error(self, what: str, exc: sqlite3.Error) -> None:
        self.errors += 1
        if self.errors == 1 or self.errors % 1000 == 0:
            log.warning("dedupe store %s: %s failed (%s); %d error(s) so far, scanning anyway",
                        self.path, what, exc, self.errors)

    def close(self) -> None:
        """Close this process's connection; the store reopens on next use."""
        if self._conn is not None and self._pid == os.getpid():
            self._conn.close()
        self._conn = None


def _rules_column(first: First) -> str:
    """The ``rules`` column: the list as before, or an object when there is more to keep.

    The table's columns stay as they were, so a store written by an older
    version is read as it is and needs no migration.
    """
    if first.scanner is None and first.action is None and first.symbols is None:
        return json.dumps(list(first.rules))
    return json.dumps({"rules": list(first.rules), "scanner": first.scanner,
                       "action": first.action, "symbols": first.symbols})


def symbols_of(v: object) -> dict[str, dict[str, object]] | None:
    """A stored ``symbols`` object as the record writes it, or None if it is not one."""
    if not isinstance(v, dict):
        return None
    out: dict[str, dict[str, object]] = {}
    for name, sym in v.items():
        if not isinstance(sym, dict) or not isinstance(sym.get("score"), int | float):
            return None
        options = sym.get("options")
        out[str(name)] = {"score": float(sym["score"]),
                          "options": [str(o) for o in options] if isinstance(options, list)
                          else []}
    return out


def _text(v: object) -> str | None:
    return v if isinstance(v, str) else None
