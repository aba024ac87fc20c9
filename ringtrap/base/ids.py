"""Message ids: unique, sortable by arrival, safe in file names and logs.

An id is 13 hex digits of wall-clock microseconds followed by ``-`` and the
issuing process's pid in 6 hex digits, e.g. ``0640c3f1a2b3c-0004d2``.  Within a
process the microsecond part is strictly increasing (a step of the wall clock
backwards never produces a repeat), so (time, pid) is unique across processes
and restarts.  Ids fit the 32-byte field the stores reserve for them.
"""

from __future__ import annotations

import os
import re
import time

ID_RE = re.compile(r"[0-9a-f]{13}-[0-9a-f]{6}")  # whole string: use fullmatch
MAX_ID_BYTES = 32

_last_us = 0
_suffix = ""  # "-<pid in 6 hex digits>"


def _start_sequence() -> None:
    # The pid is read once per process, not once per id (a system call each):
    # a forked child gets its own pid and starts its own sequence.
    global _last_us, _suffix
    _last_us = 0
    _suffix = f"-{os.getpid() & 0xFFFFFF:06x}"


_start_sequence()
os.register_at_fork(after_in_child=_start_sequence)


def new_id() -> str:
    """Return a fresh message id from this process."""
    global _last_us
    us = time.time_ns() // 1000
    if us <= _last_us:
        us = _last_us + 1
    _last_us = us
    return f"{us:013x}{_suffix}"


def id_time(msgid: str) -> float:
    """Wall-clock arrival time (seconds since the epoch) encoded in ``msgid``."""
    return int(msgid[:13], 16) / 1e6


def is_valid(msgid: str) -> bool:
    """True if ``msgid`` has the form :func:`new_id` produces."""
    return ID_RE.fullmatch(msgid) is not None  # "$" would let a trailing "\n" through
