"""A spill written in chunks (the ingest streams a large message straight to tmp/).

The writer holds a tmp/ file and a reservation against the overflow's byte
cap; it touches the store only through :class:`SpillTarget`, the few verbs
:class:`ringtrap.overflow.Overflow` offers a writer.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from types import TracebackType
from typing import Protocol

from ringtrap.store.spilltree import (
    OverflowFull,
    check_id,
    ready_name,
    unlink_quietly,
    write_all,
)


class SpillTarget(Protocol):
    """What a :class:`SpillWriter` needs of its store."""

    def open_tmp(self, msgid: str) -> tuple[Path, int]: ...

    def reserve(self, n: int) -> None: ...

    def publish(self, tmp: Path, name: str) -> None: ...

    def settle(self, tmp: Path, reserved: int, stored: int) -> None: ...

    def filesystem_full(self, requested: int) -> OverflowFull: ...


class SpillWriter:
    """One message being written into tmp/; ``commit()`` makes it ready.

    Chunks go straight to the file; the message is never held in memory.
    Each chunk is counted toward the cap before it is written.
    """

    def __init__(self, store: SpillTarget, msgid: str, attempts: int) -> None:
        check_id(msgid, attempts)
        self.msgid = msgid
        self.attempts = attempts
        self.size = 0
        self._store = store
        self._reserved = 0
        self._tmp, fd = store.open_tmp(msgid)
        self._fd: int | None = fd

    def __enter__(self) -> SpillWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._fd is not None:
            self.abort()

    @property
    def closed(self) -> bool:
        """True once committed or aborted."""
        return self._fd is None

    def reserve(self, n: int) -> None:
        """Count ``n`` more bytes toward the cap ahead of writing them.

        Lets a caller that knows the announced size refuse early. Raises
        OverflowFull (and aborts) if the cap would be passed.
        """
        self._open_fd()
        need = self.size + n - self._reserved
        if need <= 0:
            return
        try:
            self._store.reserve(need)
        except OverflowFull:
            self.abort()
            raise
        self._reserved += need

    def write(self, chunk: bytes) -> int:
        """Append ``chunk``; raises OverflowFull (and aborts) once the cap would be passed."""
        fd = self._open_fd()
        self.reserve(len(chunk))
        try:
            write_all(fd, chunk)
        except OSError as e:
            self.abort()
            if e.errno == errno.ENOSPC:
                raise self._store.filesystem_full(len(chunk)) from e
            raise
        self.size += len(chunk)
        return len(chunk)

    def commit(self) -> str:
        """Make the message ready with one rename and return its new/ name."""
        fd = self._open_fd()
        name = ready_name(self.msgid, self.size, self.attempts)
        os.close(fd)
        self._fd = None
        try:
            self._store.publish(self._tmp, name)
        except BaseException:
            self._finish(stored=False)
            raise
        self._finish(stored=True)
        return name

    def abort(self) -> None:
        """Throw the partial message away (no-op once committed or aborted)."""
        if self._fd is None:
            return
        os.close(self._fd)
        self._fd = None
        self._finish(stored=False)

    def _finish(self, *, stored: bool) -> None:
        if not stored:
            unlink_quietly(self._tmp)
        self._store.settle(self._tmp, self._reserved, self.size if stored else 0)
        self._reserved = 0

    def _open_fd(self) -> int:
        if self._fd is None:
            raise ValueError(f"{self.msgid}: spill writer is closed")
        return self._fd
