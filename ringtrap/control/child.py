"""One supervised child: its state machine, and how its exit is classified.

The supervisor holds a :class:`Child` per process it wants running.  Only
:func:`set_state` moves a child between the states of
:class:`~ringtrap.base.states.ChildState`, and refuses a move the table
below does not allow; only :func:`classify` decides what an exit was.  The
restart delay follows from that cause and the child's recent history
(:func:`note_exit`, :func:`restart_delay`): a child that never finished its
boot backs off and is given up on after a few tries, one that booted and
keeps dying is slowed down but never given up on.

Nothing here touches a process: the supervisor signals, forks and reaps.
"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass

from ringtrap.base.counters import C
from ringtrap.base.proc import Identity
from ringtrap.base.states import SCANNER_ROLES, ChildState, ExitCause, Role

log = logging.getLogger(__name__)

# a booted child that dies within this long of starting is crash-looping: back off
MIN_UPTIME = 2.0
BACKOFF_MAX = 30.0
# a crash-looping child that booted is retried for ever, at most this far apart
CRASH_BACKOFF_FIRST = 0.5
CRASH_BACKOFF_MAX = 5.0
# consecutive boot failures (deaths before the boot finished) after which the unit gives up
MAX_BOOT_FAILURES = 5


@dataclass
class Child:
    """One supervised child and its state machine (only :func:`set_state` moves it)."""

    role: Role  # INGEST, WORKER, STAGE, FORWARDER, SPAMD or RSPAMD
    index: int
    row: int  # process-table row, -1 for a managed scanner (it does not attach to the ring)
    state: ChildState = ChildState.WAITING
    pid: int = 0
    ident: Identity | None = None
    started: float = 0.0  # monotonic
    restart_at: float = 0.0  # monotonic; when WAITING
    failures: int = 0  # consecutive boot failures
    crashes: int = 0  # consecutive deaths within MIN_UPTIME of a finished boot
    booted: bool = False  # its row left STARTING (spamd: it answered PING as the listener)
    boot_checked: float = 0.0  # monotonic; the managed spamd's last boot probe
    stop_sent: float = 0.0  # monotonic; when STOPPING
    abort_sent: float = 0.0  # monotonic; SIGABRT for a stalled heartbeat
    cut: bool = False  # SIGKILLed by us because a stop ran past its deadline
    retire: bool = False  # do not restart after it exits (pool shrank, replaced)
    generation: int = 0  # config generation it was started with

    @property
    def name(self) -> str:
        role = self.role.name.lower()
        return f"{role} {self.index}" if self.role in (Role.WORKER, Role.STAGE) else role

    @property
    def active(self) -> bool:
        """Running or asked to stop: a process of it may be alive."""
        return self.state in (ChildState.RUNNING, ChildState.STOPPING)

    def started_as(self, pid: int, ident: Identity | None, now: float, generation: int) -> None:
        """Record a fresh fork of this child and move it to RUNNING."""
        self.pid = pid
        self.ident = ident
        self.started = now
        self.abort_sent = self.stop_sent = self.boot_checked = 0.0
        self.cut = self.booted = False
        self.generation = generation
        set_state(self, ChildState.RUNNING, f"pid {pid}")


_ALLOWED: dict[ChildState, set[ChildState]] = {
    ChildState.WAITING: {ChildState.RUNNING, ChildState.EXITED},
    ChildState.RUNNING: {ChildState.STOPPING, ChildState.WAITING, ChildState.EXITED},
    ChildState.STOPPING: {ChildState.WAITING, ChildState.EXITED},
    ChildState.EXITED: set(),
}


def set_state(c: Child, new: ChildState, why: str = "") -> None:
    """The one place a child changes state; an illegal move raises RuntimeError."""
    if new not in _ALLOWED[c.state]:
        raise RuntimeError(f"illegal child transition {c.name}: {c.state.name} -> {new.name}")
    log.debug("%s: %s -> %s %s", c.name, c.state.name, new.name, why)
    c.state = new


def classify(c: Child, status: int, booted: bool) -> ExitCause:
    """The one place an exit is classified.

    ``booted``: the child finished its boot (its row left STARTING; a spamd
    answered as the listener).  Only a child that never did failed to start,
    however long it took to fail (a spamd that loads its rules and cannot
    bind) or however soon a booted one died (killed right after it
    registered).
    """
    if c.cut:
        return ExitCause.CUT
    if c.abort_sent:
        return ExitCause.HUNG
    if c.state is ChildState.STOPPING:
        return ExitCause.REQUESTED
    if not booted:
        return ExitCause.TOO_FAST
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
        return ExitCause.REQUESTED  # e.g. a worker recycled over its memory limit
    return ExitCause.CRASHED


def note_exit(c: Child, cause: ExitCause, booted: bool, now: float) -> None:
    """Count the exit into the child's boot-failure and crash-loop streaks."""
    c.failures = c.failures + 1 if cause is ExitCause.TOO_FAST else 0
    if booted:
        c.crashes = c.crashes + 1 if (cause is not ExitCause.REQUESTED
                                      and now - c.started < MIN_UPTIME) else 0


def gave_up(c: Child) -> bool:
    """True when the child failed its boot too often in a row to try again."""
    return c.failures >= MAX_BOOT_FAILURES


def restart_delay(c: Child, cause: ExitCause) -> float:
    """Seconds from its exit until the child is started again."""
    if cause is ExitCause.TOO_FAST:
        return backoff_delay(c.failures)
    if cause is ExitCause.REQUESTED:
        return 0.0
    return crash_delay(c.crashes)


def backoff_delay(failures: int) -> float:
    """Seconds to wait before restarting a child that failed its boot ``failures`` times."""
    return float(min(BACKOFF_MAX, 2 ** max(0, failures - 1)))


def crash_delay(crashes: int) -> float:
    """Seconds to wait before restarting a booted child that died soon ``crashes`` times.

    Zero for a child that ran a while: one crash costs no time.  A child
    killed over and over (a poison message, an operator's loop) is slowed
    down, never given up on: it booted, so it can run.
    """
    if crashes <= 0:
        return 0.0
    return min(CRASH_BACKOFF_MAX, CRASH_BACKOFF_FIRST * 2 ** (crashes - 1))


def stop_next(children: list[Child], draining: bool) -> list[Child]:
    """The running children a shutdown stops now, so that none loses what another hands it.

    A drain stops the ingest first (done by the caller), the workers once it
    has exited, the stage once the workers that feed it have; in any stop the
    managed spamd or rspamd goes last, when nothing is left to scan with it.
    """
    active = {c.role for c in children if c.active}
    roles = set()
    if draining and Role.INGEST not in active:
        roles.add(Role.WORKER)
    if draining and not active & {Role.INGEST, Role.WORKER}:
        roles.add(Role.STAGE)
        roles.add(Role.FORWARDER)  # after the workers: it forwards their last records
    if not active - SCANNER_ROLES:
        roles.update(SCANNER_ROLES)
    return [c for c in children if c.role in roles and c.state is ChildState.RUNNING]


# what a restart for each unrequested cause adds to, beside C.RESTARTS
RESTART_COUNTERS = {
    ExitCause.CRASHED: C.RESTARTS_CRASHED,
    ExitCause.TOO_FAST: C.RESTARTS_TOO_FAST,
    ExitCause.HUNG: C.RESTARTS_HUNG,
}


def describe_status(status: int) -> str:
    """A wait status as the log says it: ``exit 1``, ``killed by SIGKILL``."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            return f"killed by {signal.Signals(sig).name}"
        except ValueError:
            return f"killed by signal {sig}"
    return f"exit {os.WEXITSTATUS(status)}"
