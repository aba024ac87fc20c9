"""Counting the spill tree: messages and bytes per state, from the names.

Sizes live in the names, so a directory is counted from one listing, and the
count is cached while the directory's stat says it is unchanged.  On tmpfs a
directory's size counts its entries, which makes the ready count one stat().
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Collection
from pathlib import Path
from typing import NamedTuple

from ringtrap.base import ids
from ringtrap.store.spilltree import parse_ready

log = logging.getLogger(__name__)

# A directory summary is trusted from cache only if the directory's mtime was
# at least this far before the listing began: tmpfs stamps mtime from a coarse
# clock, so a change in the same tick as the listing could otherwise leave the
# mtime unchanged and the cache stale.
RACY_NS = 100_000_000

# tmpfs reports a directory's st_size as 2 entries plus one per entry, 20
# bytes each. Used only after a listing has confirmed it on this filesystem.
BOGO_DIRENT = 20
BOGO_BASE = 2 * BOGO_DIRENT

# One pass over a directory's names joined by newlines yields every message's
# size; foreign names (and failed/'s .reason files) do not match.
_ID = r"[0-9a-f]{13}-[0-9a-f]{6}"
_SIZES_RE = {
    "new": re.compile(rf"^{_ID},S=(\d+),A=\d+$", re.M),
    "cur": re.compile(rf"^{_ID},S=(\d+),A=\d+,P=\d+\.\d+$", re.M),
    "failed": re.compile(rf"^{_ID},S=(\d+),A=\d+$", re.M),
}


class OverflowStats(NamedTuple):
    """Counts and bytes per state; ``total_bytes`` is what the cap counts."""

    ready: int
    ready_bytes: int
    claimed: int
    claimed_bytes: int
    failed: int
    failed_bytes: int
    writing: int
    oldest_age: float | None
    writing_bytes: int = 0

    @property
    def total_bytes(self) -> int:
        """Bytes counted toward the cap: quarantine (failed/) has a cap of its own."""
        return self.ready_bytes + self.claimed_bytes + self.writing_bytes


class _Summary(NamedTuple):
    count: int
    nbytes: int
    oldest: str | None


class _Cached(NamedTuple):
    key: tuple[int, int, int, int]
    trusted: bool
    summary: _Summary


class TreeCounts:
    """The counts of one spill tree, cached per directory in this process."""

    def __init__(self, path: Path, dirs: dict[str, Path], *, tmpfs: bool) -> None:
        self.path = path
        self._dirs = dirs
        # None: not yet confirmed that st_size counts entries; False: it does not.
        self._bogo_ok: bool | None = None if tmpfs else False
        self._cache: dict[str, _Cached] = {}

    def summary(self, sub: str) -> _Summary:
        """Count and bytes of one directory, from the names, cached by its stat."""
        d = self._dirs[sub]
        st = os.stat(d)
        key = (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)
        cached = self._cache.get(sub)
        if cached is not None and cached.trusted and cached.key == key:
            return cached.summary
        began = time.time_ns()
        names = os.listdir(d)
        sizes = _SIZES_RE[sub].findall("\n".join(names))
        oldest = None
        if sub == "new" and sizes:
            oldest = min(names)
            if parse_ready(oldest) is None:  # a foreign name sorts first
                oldest = min(n for n in names if parse_ready(n) is not None)
        summary = _Summary(len(sizes), sum(map(int, sizes)), oldest)
        trusted = max(st.st_mtime_ns, st.st_ctime_ns) <= began - RACY_NS
        self._cache[sub] = _Cached(key, trusted, summary)
        if self._bogo_ok is None and sub == "new":
            after = os.stat(d)
            if (after.st_mtime_ns, after.st_size) == (st.st_mtime_ns, st.st_size):
                # Unchanged during the listing: a fair test of the entry count.
                self._bogo_ok = st.st_size == BOGO_BASE + BOGO_DIRENT * len(names)
                if not self._bogo_ok:
                    log.info("overflow %s: directory sizes do not count entries", self.path)
        return summary

    def tmp_bytes(self, exclude: Collection[str] = ()) -> int:
        """Bytes of the writes in progress in tmp/, but for the names in ``exclude``."""
        return sum(size for name, size in self.tmp_files() if name not in exclude)

    def tmp_files(self) -> list[tuple[str, int]]:
        """(name, size) of every file in tmp/."""
        # tmp/ sizes grow without touching the directory, so it is never cached;
        # it holds only the writes in progress.
        out = []
        for name in os.listdir(self._dirs["tmp"]):
            try:
                out.append((name, os.stat(self._dirs["tmp"] / name).st_size))
            except FileNotFoundError:
                continue
        return out

    def stats(self) -> OverflowStats:
        """Counts and bytes per state, from names (cached while directories are unchanged).

        Read-only; tmp/ files are stat()ed since their size is not in the name.
        """
        new = self.summary("new")
        cur = self.summary("cur")
        failed = self.summary("failed")
        tmp = self.tmp_files()
        oldest_age = None
        if new.oldest is not None:
            oldest_age = max(0.0, time.time() - ids.id_time(new.oldest))
        return OverflowStats(
            ready=new.count,
            ready_bytes=new.nbytes,
            claimed=cur.count,
            claimed_bytes=cur.nbytes,
            failed=failed.count,
            failed_bytes=failed.nbytes,
            writing=len(tmp),
            oldest_age=oldest_age,
            writing_bytes=sum(size for _, size in tmp),
        )

    def ready_count(self) -> int:
        """Number of ready messages: one stat() on tmpfs once confirmed, else cached names.

        On the stat() path a foreign file in new/ would be counted too.
        """
        if self._bogo_ok:
            st = os.stat(self._dirs["new"])
            return max(0, (st.st_size - BOGO_BASE) // BOGO_DIRENT)
        return self.summary("new").count
