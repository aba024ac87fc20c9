"""The operating-system calls the supervisor makes, as one injectable object.

Everything the control layer does to processes and clocks goes through an
:class:`OS`: forking, signalling, reaping, the monotonic and wall clocks,
sleeping and reading a process's identity.  The logic tests hand in a
recording fake, so a crash loop, a stalled heartbeat or a stop that runs
past its deadline plays out without a process or a second of real time.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ringtrap.base import proc
from ringtrap.base.proc import Identity


def _identity(pid: int) -> Identity | None:
    start = proc.start_ticks(pid)
    return Identity(pid, start) if start is not None else None


@dataclass
class OS:
    """The calls themselves; each field defaults to the real one."""

    fork: Callable[[], int] = os.fork
    kill: Callable[[int, int], None] = os.kill
    waitpid: Callable[[int, int], tuple[int, int]] = os.waitpid
    killpg: Callable[[int, int], None] = os.killpg
    monotonic: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    time: Callable[[], float] = time.time  # the wall clock: only for the daily purge
    identity: Callable[[int], Identity | None] = field(default=_identity)

    def is_alive(self, ident: Identity | tuple[int, int]) -> bool:
        """True if the process recorded as ``ident`` still runs (not a reused pid)."""
        return ident[0] > 0 and self.identity(ident[0]) == tuple(ident)
