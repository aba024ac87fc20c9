"""The loop every claiming child shares: the scan worker and the stage.

A child forked by the supervisor boots in a fixed order (gunicorn's
workers/base.py, supervisord's process.py):

1. signals back to their defaults: the supervisor's queue means nothing here;
2. file descriptors it does not own closed (a worker must not hold the
   ingest socket, nor any child the parent's ring mapping);
3. a fresh random state, and its role in every log line;
4. its title (``starting``) and the dispositions it needs before its loop;
5. the segment attached (the ring, or only its process table) and the row registered;
6. the loop.

Steps 1-3 are :func:`boot` (the supervisor runs it in every child it forks,
the ingest and the spamd too); 4-6 are :func:`main`, which takes the
role's own setup as a callable.  :class:`ChildLoop` is what the worker and
the stage have in common inside their loops: the stop flags, the parent
check (a child exits when ``os.getppid()`` changes), the heartbeat and log
reopening (USR1), the state and counters in the process-table row, a pause
that keeps beating, and the backoff after a dependency failure.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import time
from collections.abc import Callable, Iterable
from types import FrameType

from ringtrap.base import exits, logs, proc
from ringtrap.base.counters import C
from ringtrap.base.states import ProcState, Role
from ringtrap.base.titles import set_title
from ringtrap.config import Config
from ringtrap.store.proctable import ProcRow
from ringtrap.store.segment import RingError

# Exit codes of a worker-like child (what main returns; the parent passes it to os._exit).
# a child's exits: stopped as asked, recycled for memory or orphaned; an
# unexpected exception (a held claim awaits recovery); could not attach the
# ring, open its stores or reach its spamd
EXIT_OK = exits.EX_OK
EXIT_CRASH = exits.EX_SOFTWARE
EXIT_SETUP = exits.EX_CONFIG

# A pause sleeps in slices of at most this long, so heartbeats and stop
# checks never stall while a child idles or backs off.
BEAT_EVERY = 1.0


def boot(name: str, handled: Iterable[int], keep: set[int]) -> None:  # pragma: no cover - child
    """Steps 1-3 of a freshly forked child's boot (see the module docstring).

    ``handled``: the signals the parent caught; ``keep``: the descriptors
    that stay open (the log's are added).  A child that dies in the middle
    simply exits: it holds nothing yet.
    """
    for sig in handled:
        signal.signal(sig, signal.SIG_DFL)
    signal.set_wakeup_fd(-1)
    close_fds_except(keep | logs.log_fds())
    random.seed()
    logs.set_role(name.replace(" ", "-"))


def close_fds_except(keep: set[int]) -> None:  # pragma: no cover - child
    """Close every descriptor of this process but ``keep``."""
    try:
        fds = [int(n) for n in os.listdir("/proc/self/fd")]
    except OSError:
        fds = list(range(3, 1024))
    for fd in fds:
        if fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)


class SetupError(Exception):
    """A child cannot start (no spamd to talk to, say): it exits with EXIT_SETUP."""


class ChildLoop:
    """The loop state the scan worker and the stage share; subclasses write ``_turn``.

    ``row`` (this process's process-table row) may be None in tools and
    tests.  ``parent_pid`` is the parent whose disappearance ends the loop
    (default: the parent at construction).  ``backoff_initial`` and
    ``backoff_max`` bound the pause after a dependency failure.  ``logger``
    is the role's module logger, which the shared lines go to.
    """

    def __init__(self, role: Role, index: int, row: ProcRow | None, *,
                 parent_pid: int | None, backoff_initial: float,
                 backoff_max: float, logger: logging.Logger) -> None:
        self.index = index
        self.row = row
        self.done = 0
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.name = f"{role.name.lower()} {index}"
        # the role's own logger: its lines keep its module's name
        self._log = logger
        self._me = proc.self_identity()
        self._ppid = os.getppid() if parent_pid is None else parent_pid
        # set from signal handlers: plain stores only
        self._stop_requested = False
        self._fast_stop = False
        self._reopen_logs = False  # USR1: acted on by _beat()
        # dependency outage bookkeeping (monotonic clock)
        self._delay = 0.0
        self._outage_since: float | None = None
        self._outage_failures = 0
        self._outage_log = logs.RateLimit(backoff_max)

    def stop(self, graceful: bool = True) -> None:
        """Ask the loop to return; safe to call from a signal handler.

        Graceful: finish the current message first.  Fast: return at the next
        check (what a child does with a claim it has not started on is its
        own).  A later graceful request never undoes a fast one.
        """
        self._stop_requested = True
        if not graceful:
            self._fast_stop = True

    def reopen_logs(self) -> None:
        """Ask the loop to reopen the log file (logrotate); safe in a signal handler."""
        self._reopen_logs = True

    def _should_exit(self) -> bool:
        """True once a stop was asked for or the parent is gone (then logged once)."""
        if self._stop_requested:
            return True
        if os.getppid() != self._ppid:
            self._log.warning("%s: parent %d is gone, exiting", self.name, self._ppid)
            self._stop_requested = True
            return True
        return False

    def run(self) -> int:
        """Loop until stopped, orphaned or ``_turn`` says so; returns the exit code.

        An unexpected exception propagates with any claim still held: the
        process dies, the supervisor requeues the claim with one more attempt,
        so a message that breaks the child is quarantined in the end.
        """
        self._state(ProcState.IDLE)
        self._title_idle()
        self._log.info("%s started (pid %d)%s", self.name, self._me.pid, self._started_note())
        while not self._should_exit():
            self._beat()
            if not self._turn():
                break
        self._state(ProcState.STOPPED)
        self._log.info("%s stopping after %d message(s)", self.name, self.done)
        return EXIT_OK

    def _turn(self) -> bool:
        """One turn of the loop (claim, handle); False ends the loop."""
        raise NotImplementedError

    def _started_note(self) -> str:
        """What the start line adds about this child's settings."""
        return ""

    def _dependency_down(self, what: str, msgid: str, exc: BaseException) -> None:
        """Note a failure of ``what`` (the claim was given back) and pause, doubling."""
        now = time.monotonic()
        self._delay = (self.backoff_initial if self._delay == 0.0
                       else min(self.backoff_max, self._delay * 2))
        self._outage_failures += 1
        if self._outage_since is None:
            self._outage_since = now
            self._outage_log.reset()
        # one line per backoff period, however many messages come and go
        held = self._outage_log.ready()
        if held is not None and self._outage_failures == 1:
            self._log.warning("%s: %s unavailable (%s); released, retrying in %.1f s",
                        msgid, what, exc, self._delay,
                        extra={"event": "unavailable", "msgid": msgid, "dependency": what})
        elif held is not None:
            self._log.warning("%s: %s still unavailable after %d failure(s) in %.0f s (%s);"
                        " retrying in %.1f s%s", msgid, what,
                        self._outage_failures, now - self._outage_since, exc, self._delay,
                        f" ({held} similar lines suppressed)" if held else "",
                        extra={"event": "unavailable", "msgid": msgid,
                               "dependency": what, "suppressed": held})
        self._state(ProcState.BACKOFF)  # the message was given back: no id
        self._title(f"backoff: {what} down")
        self._pause(self._delay)
        self._state(ProcState.IDLE)

    def _dependency_up(self, msgid: str) -> None:
        """A message went through: whatever was down is back, the backoff starts over."""
        if self._outage_since is not None:
            self._log.info("%s: processing again after %d failure(s) over %.0f s", msgid,
                     self._outage_failures, time.monotonic() - self._outage_since)
        self._delay = 0.0
        self._outage_since = None
        self._outage_failures = 0

    def _pause(self, seconds: float) -> None:
        """Sleep in slices of at most a second, beating and watching for a stop."""
        deadline = time.monotonic() + seconds
        while not self._should_exit():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(left, BEAT_EVERY))
            self._beat()

    def _beat(self) -> None:
        """Every turn of the loop and every slice of a pause: heartbeat, USR1's reopen."""
        if self._reopen_logs:
            self._reopen_logs = False
            logs.reopen()
        if self.row is not None:
            self.row.beat()

    def _state(self, state: ProcState, msgid: str = "") -> None:
        """Show ``state`` (and the message it is about) in the process-table row."""
        if self.row is not None:
            self.row.set_state(state, msgid)

    def _count(self, counter: C, n: int = 1) -> None:
        """Add ``n`` to this process's ``counter``."""
        if self.row is not None:
            self.row.add(counter, n)

    def _title(self, doing: str) -> None:
        """Title this process ``<role> <index> <doing> (<done> done)``."""
        set_title(self.name, f"{doing} ({self.done} done)")

    def _title_idle(self) -> None:
        """The title of a child waiting for work."""
        self._title("idle")


def install_signals(loop: ChildLoop) -> None:
    """The loop's signals: TERM stops gracefully, INT and QUIT fast, USR1 reopens the log.

    Handlers only record (STYLE.md): the loop acts at its next check or beat.
    """

    def graceful(signum: int, frame: FrameType | None) -> None:
        loop.stop(graceful=True)

    def fast(signum: int, frame: FrameType | None) -> None:
        loop.stop(graceful=False)

    def reopen(signum: int, frame: FrameType | None) -> None:
        loop.reopen_logs()

    signal.signal(signal.SIGTERM, graceful)
    signal.signal(signal.SIGINT, fast)
    signal.signal(signal.SIGQUIT, fast)
    signal.signal(signal.SIGUSR1, reopen)


Setup = Callable[[int, contextlib.ExitStack], ChildLoop]


def main(cfg: Config, role: Role, index: int, setup: Setup, logger: logging.Logger) -> int:
    """Boot steps 4-6 of child ``<role> <index>``; returns its exit code.

    Expects :func:`boot` done.  ``setup(parent_pid, closing)`` attaches the
    segment (the ring, or only its process table), registers the role's row
    there, opens its stores and returns its loop; what it opens it hands to
    ``closing``.  An OSError,
    RingError, ValueError or :class:`SetupError` from it means
    :data:`EXIT_SETUP`, an exception from the loop :data:`EXIT_CRASH`; both
    are logged to ``logger``, the role's own.
    """
    name = f"{role.name.lower()} {index}"
    # first of all: a parent that dies before the loop starts must still be noticed
    parent = os.getppid()
    set_title(name, "starting")
    # Writing to a spamd that closed early must raise EPIPE, not kill us.
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    # Reload belongs to the supervisor; a stray HUP sent to the whole group
    # must not kill a child in the middle of a scan.  USR1 (reopen the log)
    # is ignored until the loop exists to act on it.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    with contextlib.ExitStack() as closing:
        try:
            loop = setup(parent, closing)
        except (OSError, RingError, ValueError, SetupError) as exc:
            logger.error("%s: cannot start: %s", name, exc)
            return EXIT_SETUP
        install_signals(loop)
        try:
            return loop.run()
        except Exception:
            logger.exception("%s crashed", name)
            return EXIT_CRASH
