"""Logging setup shared by every ringtrap process.

Lines go to stderr (journald adds its own timestamps and unit) or to a file,
with pid and role in every line so the processes of one unit can be told
apart.  ``reopen()`` serves USR1 (logrotate): it reopens the file in place.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path

_role = "supervisor"
_FORMAT = "%(asctime)s ringtrap[%(process)d] %(role)s %(levelname)s %(name)s: %(message)s"


class _RoleFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.role = _role
        return True


_handler: logging.Handler | None = None
_log_file: Path | None = None


def set_role(role: str) -> None:
    """Name this process in every later log line (called once in each child)."""
    global _role
    _role = role


def setup(level: str = "info", log_file: Path | None = None) -> None:
    """Route the ``ringtrap`` loggers to stderr or ``log_file`` at ``level``."""
    global _handler, _log_file
    root = logging.getLogger("ringtrap")
    if _handler is not None:
        root.removeHandler(_handler)
        _handler.close()
    _log_file = log_file
    if log_file is None:
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
    else:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file, encoding="utf-8")
    handler.setFormatter(logging.Formatter(_FORMAT))
    handler.addFilter(_RoleFilter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False
    _handler = handler


def reopen() -> None:
    """Reopen the log file (after logrotate moved it); no-op for stderr."""
    if isinstance(_handler, logging.FileHandler):
        _handler.acquire()
        try:
            _handler.close()
            _handler.stream = _handler._open()
        finally:
            _handler.release()


def log_fds() -> set[int]:
    """File descriptors the logging setup needs kept open across fork."""
    fds = {0, 1, 2}
    if isinstance(_handler, logging.FileHandler) and _handler.stream is not None:
        with contextlib.suppress(OSError, ValueError):
            fds.add(_handler.stream.fileno())
    return fds


