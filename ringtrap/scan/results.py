"""The results sink: one JSON line per processed message, one file per UTC day.

Every worker appends to ``<dir>/results-YYYY-MM-DD.jsonl`` (the UTC date of
the write) through its own descriptor opened with ``O_APPEND``.  Each record
goes out in one ``write(2)``; the kernel appends a regular-file write whole
under the inode lock, so lines of concurrent workers never interleave.

Durability: a record is in the page cache once :meth:`ResultSink.write`
returns, and a process crash cannot take it back, so the worker may ack
right after.  Only a crash of the machine could lose the last records, and
that loses the ring and the tmpfs overflow too; there is no fsync.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ringtrap.base import modes
from ringtrap.scan.record import Record

log = logging.getLogger(__name__)

PREFIX = "results-"
SUFFIX = ".jsonl"
FILE_MODE = 0o640
DIR_MODE = 0o750
_DAY = 86400
_DAY_NAME = re.compile(r"\d{4}-\d{2}-\d{2}")


def day_name(epoch: float) -> str:
    """``YYYY-MM-DD`` of ``epoch`` in UTC."""
    return time.strftime("%Y-%m-%d", time.gmtime(epoch))


def prune_days(directory: Path, retention_days: int, now: float) -> list[str]:
    """Remove the day entries of ``directory`` older than the retention.

    Day entries are ``YYYY-MM-DD`` (archive days) and ``results-YYYY-MM-DD.jsonl``
    (result files); nothing else is touched.

    Keeps today and the ``retention_days - 1`` days before it; 0 keeps
    everything.  Returns the names removed.  Safe to run from several
    processes at once.
    """
    if retention_days <= 0:
        return []
    oldest = day_name(now - (retention_days - 1) * _DAY)
    removed = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    for name in sorted(names):
        day = name.removeprefix(PREFIX).removesuffix(SUFFIX) if name.startswith(PREFIX) \
            and name.endswith(SUFFIX) else name
        if _DAY_NAME.fullmatch(day) is None or day >= oldest:
            continue  # not ours, or recent enough
        path = directory / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        removed.append(name)
    if removed:
        log.info("retention: removed %d day(s) older than %s from %s", len(removed), oldest,
                 directory)
    return removed


def file_name(epoch: float) -> str:
    """Name of the results file for a write at ``epoch`` (wall-clock seconds)."""
    return PREFIX + day_name(epoch) + SUFFIX


# Characters that str.splitlines() and some editors take for line breaks; JSON
# leaves them raw, so a text-mode reader would cut a record in two.
_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def encode(record: Record | dict[str, Any]) -> bytes:
    """``record`` as one JSON line, UTF-8, newline-terminated.

    A dict (a record read back from a results file, say) is written as it stands.
    """
    if isinstance(record, Record):
        record = record.to_dict()
    try:
        text = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
        # in JSON text these can only occur inside strings, where the escape is valid
        return (text.translate(_LINE_BREAKS) + "\n").encode("utf-8")
    except UnicodeEncodeError:
        # a lone surrogate cannot be UTF-8; ASCII escapes carry it intact
        return (json.dumps(record, separators=(",", ":")) + "\n").encode("ascii")


class ResultSink:
    """Appends records to the day's file under ``directory``; one per process.

    ``clock`` (wall-clock seconds, default :func:`time.time`) picks the day:
    the file name is a calendar date, so this is the one place the wall
    clock is right.  A sink inherited across fork keeps working: appends
    through a shared descriptor are still whole.
    """

    def __init__(self, directory: str | os.PathLike[str], *,
                 clock: Callable[[], float] = time.time, mode: int = FILE_MODE,
                 retention_days: int = 0) -> None:
        """Create ``directory`` if missing; no file is opened until the first write.

        ``retention_days`` > 0: when a new day's file is opened, files of days
        before the last ``retention_days`` (today included) are removed.
        """
        self.directory = Path(directory)
        self.retention_days = retention_days
        self.directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        modes.tighten(self.directory)  # one an older version made 0755
        self._clock = clock
        self._mode = mode
        self._fd = -1
        self._day: int | None = None
        self._closed = False
        self.path: Path | None = None

    def write(self, record: Record | dict[str, Any]) -> None:
        """Append ``record`` as one line; when this returns, the line is in the file.

        Raises OSError (e.g. ENOSPC) when the line could not be written: the
        caller must not ack.  Dying midway leaves the line whole or absent,
        except after a short write on a full disk (below).
        """
        if self._closed:
            raise ValueError("write to a closed ResultSink")
        line = encode(record)
        now = self._clock()
        day = int(now // _DAY)
        if day != self._day:
            self._open(day, now)
        view = memoryview(line)
        # A regular file takes a write whole unless the disk fills up; then
        # finish the line rather than leave a fragment that would swallow
        # the next record (the next write raises ENOSPC if it is still full).
        while view:
            n = os.write(self._fd, view)
            if n <= 0:
                raise OSError(errno.EIO, f"{self.path}: write accepted no bytes")
            view = view[n:]

    def _open(self, day: int, now: float) -> None:
        path = self.directory / file_name(now)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, self._mode)
        if self._fd >= 0:
            os.close(self._fd)
            log.info("results now go to %s", path)
        self._fd, self._day, self.path = fd, day, path
        prune_days(self.directory, self.retention_days, now)

    def close(self) -> None:
        """Close the current file; later writes raise ValueError.  Idempotent."""
        self._closed = True
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> ResultSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def result_files(directory: str | os.PathLike[str]) -> list[Path]:
    """The results files under ``directory``, oldest day first."""
    d = Path(directory)
    if not d.is_dir():
        return []
    names = sorted(n for n in os.listdir(d) if n.startswith(PREFIX) and n.endswith(SUFFIX))
    return [d / n for n in names]


def read_results(directory: str | os.PathLike[str], *, strict: bool = True
                 ) -> Iterator[dict[str, Any]]:
    """Every record under ``directory``, oldest file first, in file order.

    ``strict`` raises ValueError (naming file and line) on a line that is
    not a JSON object; otherwise such a line is logged and skipped.  Read-only.
    """
    for path in result_files(directory):
        with open(path, "rb") as f:
            for number, line in enumerate(f, 1):
                try:
                    record = json.loads(line)
                    if not isinstance(record, dict):
                        raise ValueError("not a JSON object")
                except ValueError as exc:
                    if strict:
                        raise ValueError(f"{path}:{number}: bad result line: {exc}") from None
                    log.warning("%s:%d: skipping a bad result line: %s", path, number, exc)
                    continue
                yield record
