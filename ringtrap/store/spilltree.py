"""The spill tree's file names, its errors, and the checks on a file before it is read.

The tree itself, and what moves a message through it, is
:class:`ringtrap.overflow.Overflow`; names are ``<msgid>,S=<size>,A=<attempts>``
(new/, failed/), with ``,P=<pid>.<start>`` for an owner (tmp/, cur/).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
from pathlib import Path
from typing import BinaryIO

from ringtrap.base import ids
from ringtrap.base.proc import Identity
from ringtrap.store.claim import ClaimLost

log = logging.getLogger(__name__)

SUBDIRS = ("tmp", "new", "cur", "failed")
REASON_SUFFIX = ".reason"
_OCTAL_RE = re.compile(r"\\([0-7]{3})")


class OverflowStoreError(Exception):
    """Base class of the overflow store's errors."""


class OverflowFull(OverflowStoreError):
    """A spill was refused: the byte cap (or the filesystem) is full."""

    def __init__(self, path: Path, cap: int, used: int, requested: int, why: str = "") -> None:
        self.path = path
        self.cap = cap
        self.used = used
        self.requested = requested
        self.why = why or "byte cap reached"
        super().__init__(
            f"overflow {path}: {self.why}: {used} bytes used of cap {cap}, {requested} more refused"
        )


class OverflowClaimLost(OverflowStoreError, ClaimLost):
    """A claimed file is no longer in cur/ (it was recovered by someone else)."""


class UntrustedFile(OverflowStoreError):
    """A spill file the trap will not read; ``reason`` says why, ``size`` is lstat's."""

    def __init__(self, path: Path, reason: str, size: int) -> None:
        self.path = path
        self.reason = reason
        self.size = size
        super().__init__(f"{path}: {reason}")


_KINDS = ((stat.S_ISLNK, "a symlink"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISDIR, "a directory"))


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def open_trusted(path: Path, size: int | None = None, uid: int | None = None) -> BinaryIO:
    """Open a spill file for reading only if the trap itself could have written it.

    It must be a regular file (no symlink, FIFO, device...), owned by ``uid``
    (default: this process's effective uid), with one link (a hard link
    could expose any file of that user), and ``size`` bytes long when given
    (the size its name claims). Anything else raises :class:`UntrustedFile`
    without a byte read: the file is looked at with lstat() first and opened
    with O_NOFOLLOW | O_NONBLOCK | O_NOCTTY, so neither a swapped-in link nor
    a FIFO without a writer can make the open follow or block.
    FileNotFoundError passes through (the claim was recovered meanwhile).
    """
    want = os.geteuid() if uid is None else uid
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise UntrustedFile(path, _kind(st.st_mode), st.st_size)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
                     | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ENOENT:
            raise
        why = "a symlink" if e.errno == errno.ELOOP else f"cannot be opened ({e.strerror})"
        raise UntrustedFile(path, why, st.st_size) from None
    try:
        fst = os.fstat(fd)
        why = ""
        if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
            why = "replaced while being opened"
        elif not stat.S_ISREG(fst.st_mode):
            why = _kind(fst.st_mode)
        elif fst.st_uid != want:
            why = f"owned by uid {fst.st_uid}, not the trap's uid {want}"
        elif fst.st_nlink != 1:
            why = f"{fst.st_nlink} hard links"
        elif size is not None and fst.st_size != size:
            why = f"{fst.st_size} bytes, not the {size} its name says"
        if why:
            raise UntrustedFile(path, why, fst.st_size)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def ready_name(msgid: str, size: int, attempts: int) -> str:
    """File name of a message in new/ (and failed/)."""
    return f"{msgid},S={size},A={attempts}"


def owner_tag(owner: Identity) -> str:
    return f"P={owner.pid}.{owner.start}"


def parse_ready(name: str) -> tuple[str, int, int] | None:
    """Split a new/ or failed/ name into (msgid, size, attempts); None if foreign."""
    parts = name.split(",")
    if len(parts) != 3 or not parts[1].startswith("S=") or not parts[2].startswith("A="):
        return None
    try:
        size, attempts = int(parts[1][2:]), int(parts[2][2:])
    except ValueError:
        return None
    if not ids.is_valid(parts[0]) or size < 0 or attempts < 0:
        return None
    return parts[0], size, attempts


def parse_owner(name: str) -> tuple[str, Identity] | None:
    """Split a cur/ or tmp/ name into (stem, owner); None if foreign."""
    stem, sep, tag = name.rpartition(",P=")
    pid, dot, start = tag.partition(".")
    if not sep or not dot:
        return None
    try:
        return stem, Identity(int(pid), int(start))
    except ValueError:
        return None


def fs_type(path: str | os.PathLike[str]) -> str:
    """Filesystem type of ``path`` from /proc/self/mounts ("unknown" if unreadable)."""
    real = os.path.realpath(path)
    best_mnt, best_type = "", "unknown"
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return best_type
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        mnt = _OCTAL_RE.sub(lambda m: chr(int(m.group(1), 8)), fields[1])
        inside = real == mnt or real.startswith(mnt.rstrip("/") + "/")
        # The longest mount point wins; among equals the later one is on top.
        if inside and len(mnt) >= len(best_mnt):
            best_mnt, best_type = mnt, fields[2]
    return best_type


def check_id(msgid: str, attempts: int) -> None:
    """ValueError unless ``msgid`` is a message id and ``attempts`` a count."""
    if not ids.is_valid(msgid):
        raise ValueError(f"not a message id: {msgid!r}")
    if attempts < 0:
        raise ValueError(f"{msgid}: attempts must be >= 0, got {attempts}")


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd``, however many writes it takes."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def unlink_quietly(path: str | Path) -> bool:
    """Unlink ``path``; False if it was already gone."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def drop(path: Path) -> bool:
    """Unlink for a purge: a planted directory (or any other refusal) is logged, never raised."""
    try:
        return unlink_quietly(path)
    except OSError as e:
        log.warning("%s: cannot remove (%s); left in place", path, e.strerror)
        return False
