"""A pool of scanner hosts behind the one Scanner face, with a breaker per host.

:class:`ScannerPool` holds clients of one kind (spamd, rspamd: anything with
the :class:`~ringtrap.scan.scanner.Scanner` face and an ``address``) and
scans each message on one of them.  Each worker's pool starts its rotation
at a random host and moves one host on per message (round-robin), so the
workers spread over the hosts without talking to each other.

A scan that fails retryably (refused, connect or reply timeout, reset, a
0-byte or truncated reply, spamd's "try later" codes) fails over to the next
host; a definite answer about the message (an unparseable reply, an error
status that is not retryable) is raised at once, as one host gives it.
Each host is tried at most once per message.

Each host has a :class:`Breaker` (scanner.breaker_*): it opens after
``errors`` retryable failures within ``window`` seconds, and at once when a
scan timed out there and the host then does not answer PING (hung or dead:
waiting for more timeouts would cost one full timeout each).  An open host
is never chosen; ``revive`` seconds later (+-40%, so workers do not return
together) it is half-open: the next time its turn comes one PING decides,
closing the breaker or opening it for another revive delay.  A pool of one
host never opens its breaker: there is nowhere else to go, and the worker's
give-back and backoff do what a breaker would.

What the worker sees:

- a host answered: its :class:`~ringtrap.scan.scanner.ScanResult`
  (``host`` names it);
- every host is open: :class:`PoolUnavailable` (retryable), so the worker
  gives the message back and backs off;
- every host tried failed retryably: a retryable error; a sole host's own
  error as it was raised.  Its ``alone`` is True only if the message timed
  out on every host tried while each of them answered PING, the one case in
  which the message (not an outage) is to blame and the worker counts an
  attempt against it.  Hosts skipped as open do not spare the message.

All state is this process's: a worker that dies loses its breakers, and its
successor starts with every host closed.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol

from ringtrap.base.counters import C
from ringtrap.base.envelope import Envelope
from ringtrap.base.states import HostState
from ringtrap.scan.scanner import (
    ScanConnectionError,
    ScanError,
    Scanner,
    ScanResult,
    ScanTimeout,
)

__all__ = ["Breaker", "PoolStats", "PoolUnavailable", "ScannerPool"]

# how long a host whose scan timed out may take to answer PING before it
# counts as down (a spamd parent answers PING at once, however busy)
PING_TIMEOUT = 5.0
JITTER = 0.4


class PoolUnavailable(ScanConnectionError):
    """Every host of the pool is open: nothing to scan with until one revives."""


class PoolStats(Protocol):
    """Where a pool publishes per-host numbers (``ringtrap.store.hosttable.HostCells``)."""

    def scanned(self, host: int, seconds: float) -> None: ...

    def failed(self, host: int, *, failed_over: bool) -> None: ...

    def state(self, host: int, state: HostState) -> None: ...


class Breaker:
    """One host's breaker as one process sees it; pure logic on an injected clock.

    ``sole``: the host is a pool's only one, and the breaker never opens.
    """

    def __init__(self, errors: int, window: float, revive: float, *,
                 clock: Callable[[], float] = time.monotonic,
                 rand: random.Random | None = None, sole: bool = False) -> None:
        if errors < 1 or window <= 0 or revive <= 0:
            raise ValueError("a breaker needs errors >= 1 and a positive window and revive")
        self.errors = errors
        self.window = window
        self.revive = revive
        self.sole = sole
        self.state = HostState.CLOSED
        self.revive_at = 0.0
        self._clock = clock
        self._rand = rand or random.Random()
        self._failures: deque[float] = deque()

    def ready(self) -> bool:
        """True if closed; an open breaker past its revive time turns half-open (False).

        The caller probes a half-open host (one PING) and reports with :meth:`probed`.
        """
        if self.state is HostState.OPEN and self._clock() >= self.revive_at:
            self.state = HostState.HALF_OPEN
        return self.state is HostState.CLOSED

    def failure(self) -> bool:
        """Count a retryable failure; True if it opened the breaker."""
        now = self._clock()
        failures = self._failures
        failures.append(now)
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if len(failures) >= self.errors and self.state is HostState.CLOSED:
            return self._open(now)
        return False

    def trip(self) -> bool:
        """Open now (the host timed out and does not answer PING); True if it opened."""
        self._failures.append(self._clock())
        if self.state is HostState.CLOSED:
            return self._open(self._clock())
        return False

    def probed(self, answered: bool) -> None:
        """The half-open PING's outcome: close, or open for another revive delay."""
        if answered:
            self.state = HostState.CLOSED
            self._failures.clear()
        else:
            self.state = HostState.CLOSED  # _open only opens a closed breaker
            self._open(self._clock())

    def _open(self, now: float) -> bool:
        if self.sole:
            return False
        self.state = HostState.OPEN
        self.revive_at = now + self.revive * (1.0 + self._rand.uniform(-JITTER, JITTER))
        self._failures.clear()
        return True


def _timed_out(exc: ScanError) -> bool:
    return exc.timeout


class ScannerPool:
    """Several clients of one scanner kind as one :class:`Scanner`.

    ``breaker_*`` are scanner.breaker_errors, _window and _revive.
    ``stats`` receives per-host numbers and ``count`` the pool counters
    (``C.POOL_*``); ``beat`` is called after each failed host, so a worker's
    heartbeat keeps up while a message fails over from a host that timed out.
    ``clock`` and ``rand`` are injectable for tests.
    """

    def __init__(self, clients: Sequence[Scanner], *, breaker_errors: int = 4,
                 breaker_window: float = 10.0, breaker_revive: float = 60.0,
                 ping_timeout: float = PING_TIMEOUT,
                 clock: Callable[[], float] = time.monotonic,
                 rand: random.Random | None = None, stats: PoolStats | None = None,
                 count: Callable[[C], None] | None = None) -> None:
        if not clients:
            raise ValueError("a scanner pool needs at least one client")
        kinds = {c.kind for c in clients}
        if len(kinds) != 1:
            raise ValueError(f"a scanner pool holds one kind of scanner, not {sorted(kinds)}")
        self.kind = clients[0].kind
        self.clients = tuple(clients)
        self.hosts = tuple(str(getattr(c, "address", i)) for i, c in enumerate(clients))
        if len(set(self.hosts)) != len(self.hosts):
            raise ValueError(f"a scanner pool names a host twice: {list(self.hosts)}")
        self._rand = rand or random.Random()
        sole = len(clients) == 1
        self.breakers = tuple(
            Breaker(breaker_errors, breaker_window, breaker_revive, clock=clock,
                    rand=self._rand, sole=sole) for _ in clients)
        self.ping_timeout = ping_timeout
        self.stats = stats
        self.beat: Callable[[], None] | None = None
        self._count = count or (lambda counter: None)
        self._clock = clock
        self._next = self._rand.randrange(len(clients))

    @classmethod
    def from_addresses(cls, addresses: Sequence[str], factory: Callable[[str], Scanner],
                       **options: object) -> ScannerPool:
        """A pool of ``factory(address)`` for each address (options as for the class)."""
        return cls([factory(a) for a in addresses], **options)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"ScannerPool({list(self.hosts)!r})"

    def state(self, host: int) -> HostState:
        """``host``'s breaker state now (an open one past its revive time reads half-open)."""
        b = self.breakers[host]
        b.ready()
        return b.state

    def scan(self, message: bytes | bytearray | memoryview,
             env: Envelope | None = None) -> ScanResult:
        """Scan on the next host in turn, failing over as the module says; raises ScanError."""
        n = len(self.clients)
        start = self._next
        self._next = (start + 1) % n
        failures: list[ScanError] = []
        alone = True
        for k in range(n):
            i = (start + k) % n
            if not self._usable(i):
                continue
            if failures:
                self._count(C.POOL_FAILOVERS)
            began = self._clock()
            try:
                result = self.clients[i].scan(message, env)
            except ScanError as exc:
                if not exc.retryable:
                    self._publish_failure(i, failed_over=False)
                    raise
                failures.append(exc)
                alone = self._failed(i, exc) and alone
                if self.beat is not None:
                    self.beat()
                continue
            if self.stats is not None:
                self.stats.scanned(i, self._clock() - began)
            return result
        self._count(C.POOL_EXHAUSTED)
        if not failures:
            raise PoolUnavailable(f"every {self.kind} host is out of the pool (breaker open): "
                                  + ", ".join(self.hosts))
        timed_out = all(_timed_out(e) for e in failures)
        if n == 1:
            exc = failures[0]
            if timed_out:
                exc.alone = alone
            raise exc
        detail = "; ".join(str(e) for e in failures)
        out: ScanError = (ScanTimeout(f"timed out on every host tried: {detail}") if timed_out
                          else ScanConnectionError(f"every host tried failed: {detail}"))
        out.alone = alone and timed_out
        raise out

    def ping(self, timeout: float | None = None) -> None:
        """Return if any host not open answers PING; else raise the last error."""
        error: ScanError = PoolUnavailable(f"every {self.kind} host is open")
        for i, client in enumerate(self.clients):
            if not self.breakers[i].ready() and self.breakers[i].state is HostState.OPEN:
                continue
            try:
                client.ping(timeout=timeout)
            except ScanError as exc:
                error = exc
                continue
            return
        raise error

    def _usable(self, i: int) -> bool:
        """True if host ``i`` may be chosen now; a half-open host is PINGed first."""
        b = self.breakers[i]
        if b.ready():
            return True
        if b.state is not HostState.HALF_OPEN:
            return False
        self._count(C.POOL_PROBES)
        try:
            self.clients[i].ping(timeout=self.ping_timeout)
        except ScanError:
            b.probed(False)
            self._publish_failure(i, failed_over=True)
            self._publish(i, HostState.OPEN)
            return False
        b.probed(True)
        self._count(C.POOL_REVIVED)
        self._publish(i, HostState.CLOSED)
        return True

    def _failed(self, i: int, exc: ScanError) -> bool:
        """Judge a retryable failure on host ``i``; True if it was a timeout the host survived.

        A timeout is followed by a PING: a host that answers it timed out on
        this message (a breaker failure, the message may be to blame); one that
        does not is down and its breaker opens now.  spamd's own timeout
        answer (a timeout that is not a ScanTimeout) says the host is up.
        """
        b = self.breakers[i]
        self._publish_failure(i, failed_over=True)
        answered = False
        if _timed_out(exc):
            # the client's own judgement (it PINGed while waiting) needs no second PING
            answered = (not isinstance(exc, ScanTimeout) or
                        (exc.alone is not False and self._answers(i)))
        opened = b.failure() if answered or not _timed_out(exc) else b.trip()
        if opened:
            self._count(C.POOL_BREAKER_OPENS)
            self._publish(i, HostState.OPEN)
        return answered

    def _answers(self, i: int) -> bool:
        try:
            self.clients[i].ping(timeout=self.ping_timeout)
        except ScanError:
            return False
        return True

    def _publish(self, i: int, state: HostState) -> None:
        if self.stats is not None:
            self.stats.state(i, state)

    def _publish_failure(self, i: int, *, failed_over: bool) -> None:
        if self.stats is not None:
            self.stats.failed(i, failed_over=failed_over)
