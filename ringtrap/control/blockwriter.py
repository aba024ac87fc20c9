"""The running trap's blocklist writes: one short-lived child every ``blocklist.interval``.

Reading a week of records can take seconds to minutes on a busy trap, and
the supervisor's loop must turn every second (heartbeats, recovery, the
watchdog).  So the supervisor only decides when a write is due and forks a
child that does the whole of it (:func:`ringtrap.control.blockfiles.write_all`)
at a lower CPU priority and exits; the supervisor reaps it like any child.
A fork costs the supervisor a millisecond; doing the work in bounded slices
inside the loop would have to keep a week's tally in the supervisor between
turns, and would still stall it on one slow read.

One writer at a time: a write that falls due while the last one still runs
is skipped, and a writer that runs longer than ``max(interval, 60)`` seconds
is killed (its temporary files removed), so a stuck read never piles up
processes.  The writer dies with the supervisor (PR_SET_PDEATHSIG).  Its
output replaces each file by rename: a writer killed at any point leaves
the previous lists whole.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Iterable
from pathlib import Path

from ringtrap.base.exits import EX_SOFTWARE
from ringtrap.base.proc import Identity
from ringtrap.base.titles import set_title
from ringtrap.config import Config
from ringtrap.control.seam import OS

log = logging.getLogger(__name__)

# the least a writer is given before it is killed, whatever the interval
MIN_RUN_BOUND = 60.0
NICENESS = 10  # behind the workers: the list can wait a little, the mail cannot


class BlocklistWriter:
    """When the next write is due, and the one writer child that may be running."""

    def __init__(self) -> None:
        self.pid = 0
        self.ident: Identity | None = None
        self.started = 0.0
        self.next_at: float | None = None
        self.paths: list[Path] = []
        self.writes = 0  # writers that exited 0
        self.failures = 0  # writers that failed or were killed

    def tick(self, cfg: Config, os_: OS, handled: Iterable[int]) -> None:
        """Start a writer if one is due, kill one that overran; never waits."""
        b = cfg.blocklist
        now = os_.monotonic()
        if self.pid:
            if now - self.started > max(float(b.interval), MIN_RUN_BOUND):
                log.error("blocklist writer (pid %d) still running after %.0f s: killed;"
                          " the files keep their last version", self.pid, now - self.started)
                self._kill(os_)
            return
        if not b.interval or not b.paths():
            self.next_at = None
            return
        if self.next_at is None:
            self.next_at = now  # the first list right after the start
        if now < self.next_at:
            return
        self.next_at = now + b.interval
        self.paths = list(b.paths().values())
        self.pid = start(os_, cfg, handled)
        self.ident = os_.identity(self.pid)
        self.started = now

    def reaped(self, pid: int, status: int) -> bool:
        """Note the exit of ``pid`` if it is the writer; False for a process not ours."""
        if not pid or pid != self.pid:
            return False
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
            self.writes += 1
        else:
            self.failures += 1
            log.error("blocklist writer (pid %d) failed (%s)", pid,
                      f"exit {os.WEXITSTATUS(status)}" if os.WIFEXITED(status)
                      else f"signal {os.WTERMSIG(status)}")
            from ringtrap.control.blockfiles import remove_temporary

            remove_temporary(self.paths, pid)
        self.pid = 0
        self.ident = None
        return True

    def stop(self, os_: OS) -> None:
        """Kill a running writer (the supervisor is stopping); its exit is reaped or not."""
        if self.pid:
            self._kill(os_)

    def _kill(self, os_: OS) -> None:
        # a pid is not an identity: never signal a process that merely reuses it
        if self.ident is not None and os_.identity(self.pid) == self.ident:
            with contextlib.suppress(ProcessLookupError):
                os_.kill(self.pid, signal.SIGKILL)


def start(os_: OS, cfg: Config, handled: Iterable[int]) -> int:
    """Fork the writer through ``os_``; returns its pid.  The child never returns."""
    parent = os.getpid()
    pid = os_.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = EX_SOFTWARE
        try:
            code = child_main(cfg, parent, handled)
        except BaseException:
            log.exception("blocklist writer failed")
        finally:
            os._exit(code)
    return pid


def child_main(cfg: Config, parent: int, handled: Iterable[int]) -> int:  # pragma: no cover
    """The writer's whole life: boot as every child does, write the files, exit 0."""
    from ringtrap.control.blockfiles import write_all
    from ringtrap.control.fork import die_with_parent
    from ringtrap.work import child as work_child

    die_with_parent(parent)
    # no descriptor of the supervisor's stays open: above all not the ingest's
    # listening sockets, which would keep taking connections after a stop
    work_child.boot("blocklist", handled, set())
    with contextlib.suppress(OSError):
        os.nice(NICENESS)
    set_title("blocklist", "writing")
    done = write_all(cfg)
    log.info("blocklist written: %d entries (%d IPv4, %d IPv6) from %d hits, %d lines"
             " skipped", done.entries, done.ipv4, done.ipv6, done.result.counted.hits,
             done.counts.skipped,
             extra={"event": "blocklist", "entries": done.entries,
                    "skipped_lines": done.counts.skipped})
    return 0
