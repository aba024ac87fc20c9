"""Who may read what the trap writes: its user and group only.

Records, the dedupe database, the log and the archive name senders, relays,
verdicts and rules; no other local user may read them.  The supervisor sets
:data:`UMASK` before it opens anything, so every file and directory any
ringtrap process creates is at most 0640 / 0750 (children inherit it).
Files an older version left readable by others are narrowed with
:func:`tighten` when the trap opens them again; nothing is ever widened.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

# group write and everything for others
UMASK = 0o027


def restrict_umask() -> int:
    """Add :data:`UMASK` to this process's umask (never loosening it); the old umask."""
    old = os.umask(UMASK)
    os.umask(old | UMASK)
    return old


def tighten(path: str | os.PathLike[str]) -> None:
    """Drop the bits :data:`UMASK` forbids from ``path``'s mode (no symlink is followed).

    A missing file, or one this process may not chmod, is left as it is.
    """
    with contextlib.suppress(OSError):
        st = os.lstat(path)
        if not os.path.islink(path) and st.st_mode & UMASK:
            os.chmod(path, st.st_mode & 0o7777 & ~UMASK)


def tighten_all(*paths: Path) -> None:
    """:func:`tighten` each of ``paths``."""
    for p in paths:
        tighten(p)


__all__ = ["UMASK", "restrict_umask", "tighten", "tighten_all"]
