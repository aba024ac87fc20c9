"""The corpus archive: each message in a Maildir per UTC day and verdict.

``<archive.dir>/YYYY-MM-DD/<verdict>/{tmp,new,cur}``: the layout
SpamAssassin's mass-check and corpus tools read (``mass-check
spam:dir:<day>/spam/new``).  A message is written whole to ``tmp/`` and
renamed into ``new/``, so a reader never sees half a message.  The file
holds the message exactly as the MTA delivered it (no envelope line), or,
with ``archive.trace_headers``, the envelope as the trace fields a
delivering MTA writes (:func:`trace_block`) and then the message as
delivered: what SpamAssassin's mass-check reads from a corpus, whose
network rules need the relay.

File names are ``<received seconds>.<message id>.ringtrap``: unique, sorted
by arrival, and the same on a retry, so a message processed twice after a
worker died replaces its own file rather than doubling the corpus.

Days older than ``retention_days`` are removed when a process first writes
on a new day.  A process that dies mid-write leaves at most a file in
``tmp/``, which the next retention pass removes with its day.
"""

from __future__ import annotations

import email.utils
import logging
import os
import re
import time
import unicodedata
from collections.abc import Callable, Collection
from pathlib import Path

from ringtrap.base import envelope
from ringtrap.base.envelope import Envelope
from ringtrap.scan.results import day_name, prune_days

log = logging.getLogger(__name__)

DIR_MODE = 0o750
FILE_MODE = 0o640
_SAFE = re.compile(r"[^A-Za-z0-9._-]")
# a HELO or host name in a Received field: a name, or (HELO) an address
# literal whole; nothing that could end the clause ("(", ";", a space) or
# forge another address in it
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_LITERAL = re.compile(r"\[(?:IPv6:)?[0-9A-Fa-f:.]{2,45}\]")
# an address in a trace field: no space, no angle bracket, no control
_ADDRESS_UNSAFE = re.compile(r"[\s<>]")
# longer values are cut: RFC 5321 allows 256 octets in a path, 255 in a domain
_MAX_VALUE = 320


def _clean(value: str, unsafe: re.Pattern[str]) -> str:
    """``value`` with what could break a header line (controls, line and paragraph
    separators, format characters) and ``unsafe`` characters replaced by ``?``."""
    out = "".join("?" if unicodedata.category(c)[0] == "C" or unicodedata.category(c)
                  in ("Zl", "Zp") else c for c in value[:_MAX_VALUE])
    return unsafe.sub("?", out)


def trace_block(msgid: str, env: Envelope, received: float, host: str,
                newline: bytes = b"\n") -> bytes:
    """The trace fields for ``env``, as a delivering MTA writes them, each line ending
    in ``newline``.

    ``Return-Path: <sender>`` (``<>`` for a null sender), an ``X-Original-To``
    and a ``Delivered-To`` per recipient, and ``Received: from HELO ([IP]) by
    host with ringtrap id <id>; <date>`` (the from-clause only when the MTA
    named a valid client address).  Hostile envelope values cannot break the
    block: every value is cleaned of controls, separators and the
    characters that would end or forge a clause.
    """
    lines: list[str] = []
    if env.sender is not None:
        lines.append(f"Return-Path: <{_clean(env.sender, _ADDRESS_UNSAFE)}>")
    for rcpt in env.recipients:
        lines.append(f"X-Original-To: {_clean(rcpt, _ADDRESS_UNSAFE)}")
        lines.append(f"Delivered-To: {_clean(rcpt, _ADDRESS_UNSAFE)}")
    ip = envelope.relay_address(env.client_address)
    by = f"by {_clean(host, _NAME_UNSAFE) or 'localhost'} with ringtrap id"
    by += f" {_clean(msgid, _NAME_UNSAFE)}; {_date(received)}"
    if ip is not None:
        helo = env.client_helo or ""
        if not _LITERAL.fullmatch(helo):
            helo = _clean(helo, _NAME_UNSAFE) or "unknown"
        literal = f"IPv6:{ip}" if ":" in ip else ip
        lines.append(f"Received: from {helo} ([{literal}])")
        lines.append(f"\t{by}")
    else:
        lines.append(f"Received: {by}")
    return b"".join(line.encode("utf-8", "replace") + newline for line in lines)


def _date(epoch: float) -> str:
    # formatdate is locale-free; "-0000" would say "offset unknown", the time is UTC
    return email.utils.formatdate(epoch, localtime=False).replace("-0000", "+0000")


def _newline(message: memoryview) -> bytes:
    """The message's own line ending, so the block matches the lines it heads."""
    end = bytes(message[:8192]).find(b"\n")
    return b"\r\n" if end > 0 and message[end - 1] == 0x0D else b"\n"


class MaildirArchive:
    """Writes messages into the day's Maildir for their verdict; one per process.

    ``verdicts`` are the verdicts archived (others are skipped); ``clock``
    (wall-clock seconds) picks the day, like the results files.
    ``trace_host`` (this trap's host name) prepends each copy's envelope as
    trace fields (:func:`trace_block`); None writes the message alone.
    """

    def __init__(self, directory: str | os.PathLike[str], verdicts: Collection[str],
                 retention_days: int, *, clock: Callable[[], float] = time.time,
                 trace_host: str | None = None) -> None:
        self.directory = Path(directory)
        self.trace_host = trace_host
        self.verdicts = frozenset(verdicts)
        self.retention_days = retention_days
        self._clock = clock
        self._day = ""
        self._ready: set[Path] = set()  # Maildirs known to exist

    def store(self, msgid: str, verdict: str, message: bytes | memoryview,
              received: float, env: Envelope | None = None) -> str | None:
        """Archive ``message``; returns its path relative to the archive dir, or None if skipped.

        ``env`` is the envelope the trace fields are made of (with ``trace_host``).

        Raises OSError when it cannot be written (the caller decides whether
        that matters); a partial file is then left only in ``tmp/``.
        """
        if verdict not in self.verdicts:
            return None
        now = self._clock()
        day = day_name(now)
        if day != self._day:
            self._day = day
            self._ready.clear()
            self.directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            prune_days(self.directory, self.retention_days, now)
        box = self.directory / day / verdict
        if box not in self._ready:
            for sub in ("tmp", "new", "cur"):
                (box / sub).mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            self._ready.add(box)
        name = f"{int(received)}.{_SAFE.sub('_', msgid)}.ringtrap"
        tmp = box / "tmp" / name
        body = memoryview(message)
        parts = [body]
        if self.trace_host is not None:
            trace = trace_block(msgid, env or Envelope(), received, self.trace_host,
                                _newline(body))
            if body[:5] == b"From ":
                # an mbox separator stays first: the block goes under it
                cut = bytes(body[:envelope.MAX_LINE]).find(b"\n") + 1
                parts = [body[:cut], memoryview(trace), body[cut:]] if cut else [
                    memoryview(trace), body]
            else:
                parts = [memoryview(trace), body]
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
        try:
            for view in parts:
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
        finally:
            os.close(fd)
        os.rename(tmp, box / "new" / name)
        return f"{day}/{verdict}/new/{name}"
