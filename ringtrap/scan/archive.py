"""The corpus archive: each message in a Maildir per UTC day and verdict.

``<archive.dir>/YYYY-MM-DD/<verdict>/{tmp,new,cur}``: the layout
SpamAssassin's mass-check and corpus tools read (``mass-check
spam:dir:<day>/spam/new``).  A message is written whole to ``tmp/`` and
renamed into ``new/``, so a reader never sees half a message.  The file
holds the message exactly as the MTA delivered it (no envelope line).

File names are ``<received seconds>.<message id>.ringtrap``: unique, sorted
by arrival, and the same on a retry, so a message processed twice after a
worker died replaces its own file rather than doubling the corpus.

Days older than ``retention_days`` are removed when a process first writes
on a new day.  A process that dies mid-write leaves at most a file in
``tmp/``, which the next retention pass removes with its day.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Collection
from pathlib import Path

from ringtrap.scan.results import day_name, prune_days

log = logging.getLogger(__name__)

DIR_MODE = 0o750
FILE_MODE = 0o640
_SAFE = re.compile(r"[^A-Za-z0-9._-]")


class MaildirArchive:
    """Writes messages into the day's Maildir for their verdict; one per process.

    ``verdicts`` are the verdicts archived (others are skipped); ``clock``
    (wall-clock seconds) picks the day, like the results files.
    """

    def __init__(self, directory: str | os.PathLike[str], verdicts: Collection[str],
                 retention_days: int, *, clock: Callable[[], float] = time.time) -> None:
        self.directory = Path(directory)
        self.verdicts = frozenset(verdicts)
        self.retention_days = retention_days
        self._clock = clock
        self._day = ""
        self._ready: set[Path] = set()  # Maildirs known to exist

    def store(self, msgid: str, verdict: str, message: bytes | memoryview,
              received: float) -> str | None:
        """Archive ``message``; returns its path relative to the archive dir, or None if skipped.

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
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
        try:
            view = memoryview(message)
            while view:
                n = os.write(fd, view)
                view = view[n:]
        finally:
            os.close(fd)
        os.rename(tmp, box / "new" / name)
        return f"{day}/{verdict}/new/{name}"
