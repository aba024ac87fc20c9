"""Logging setup shared by every ringtrap process.

Lines go to stderr (journald adds its own timestamps and unit) or to a file,
with pid and role in every line so the processes of one unit can be told
apart.  ``reopen()`` serves USR1 (logrotate): it reopens the file in place.

Two formats: "human" (one readable line) and "json" (one JSON object per
line, for log shippers).  Fields passed with ``extra=`` (``msgid``,
``verdict``, ``event``...) become keys of the JSON object; the human line
carries the same facts in its text.  :class:`RateLimit` keeps a condition
that repeats on every message (spamd unreachable) down to one line a period.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

from ringtrap.base import modes

_role = "supervisor"
_FORMAT = "%(asctime)s ringtrap[%(process)d] %(role)s %(levelname)s %(name)s: %(message)s"


class _RoleFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.role = _role
        return True


# attributes every LogRecord has; anything else on a record came from extra=
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "role", "taskName",
}

FORMATS = ("human", "json")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, pid, role, logger, msg and the extras."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"),
            "level": record.levelname.lower(),
            "pid": record.process,
            "role": getattr(record, "role", _role),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in out:
                out[key] = value if isinstance(value, str | int | float | bool | None) \
                    else str(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


class RateLimit:
    """Lets one log line per ``interval`` seconds through for a repeating condition.

    ``ready()`` is asked before each would-be line: None means "stay quiet",
    a number means "log now" and says how many lines were held back since the
    last one (to append as "N similar suppressed").  ``reset()`` when the
    condition ends, so its next occurrence is logged at once.  Monotonic clock.
    """

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._last: float | None = None
        self._held = 0

    def ready(self) -> int | None:
        """None to suppress this line, else the count suppressed before it."""
        now = self._clock()
        if self._last is not None and now - self._last < self.interval:
            self._held += 1
            return None
        self._last = now
        held, self._held = self._held, 0
        return held

    def reset(self) -> None:
        """The condition is over: the next occurrence is logged at once."""
        self._last = None
        self._held = 0


_handler: logging.Handler | None = None
_log_file: Path | None = None


def set_role(role: str) -> None:
    """Name this process in every later log line (called once in each child)."""
    global _role
    _role = role


def setup(level: str = "info", log_file: Path | None = None, fmt: str = "human") -> None:
    """Route the ``ringtrap`` loggers to stderr or ``log_file`` at ``level`` in ``fmt``.

    ``fmt`` is one of :data:`FORMATS`; forked children inherit the setup.
    """
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
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
        modes.tighten(log_file)  # the log names senders: not for other users
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(_FORMAT))
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


