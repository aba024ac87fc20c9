"""The scanner pool's logic on fake hosts and a fake clock: rotation, failover, breakers."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from ringtrap.base.counters import C
from ringtrap.base.states import HostState
from ringtrap.scan.pool import Breaker, PoolUnavailable, ScannerPool
from ringtrap.scan.scanner import (
    ScanConnectionError,
    ScanError,
    ScanProtocolError,
    ScanResult,
    ScanTimeout,
)
from ringtrap.scan.spamd import SpamdResponseError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


Outcome = ScanError | Callable[[], None] | None


class FakeHost:
    """A scanner that answers, or raises what it is told to, and counts its calls."""

    kind = "spamd"

    def __init__(self, address: str) -> None:
        self.address = address
        self.fail: ScanError | None = None
        self.pong = True
        self.scans = 0
        self.pings = 0

    def scan(self, message: object, env: object = None) -> ScanResult:
        self.scans += 1
        if self.fail is not None:
            raise self.fail
        return ScanResult("spamd", self.address, True, 9.0, 5.0)

    def ping(self, timeout: float | None = None) -> None:
        self.pings += 1
        if not self.pong:
            raise ScanConnectionError(f"{self.address}: refused")


class Stats:
    def __init__(self) -> None:
        self.scanned: list[int] = []
        self.failed: list[int] = []
        self.states: list[tuple[int, HostState]] = []

    def scanned_(self, host: int, seconds: float) -> None:
        self.scanned.append(host)

    def failed_(self, host: int, *, failed_over: bool) -> None:
        self.failed.append(host)

    def state_(self, host: int, state: HostState) -> None:
        self.states.append((host, state))


class StatsFace:
    def __init__(self, s: Stats) -> None:
        self.scanned = s.scanned_
        self.failed = s.failed_
        self.state = s.state_


def pool_of(n: int, clock: Clock, **options: object) -> tuple[ScannerPool, list[FakeHost], list[C]]:
    hosts = [FakeHost(f"tcp:10.0.0.{i}:783") for i in range(n)]
    counted: list[C] = []
    pool = ScannerPool(hosts, breaker_errors=3, breaker_window=10.0, breaker_revive=60.0,
                       clock=clock, rand=random.Random(7), count=counted.append,
                       **options)  # type: ignore[arg-type]
    return pool, hosts, counted


# -- the breaker alone -------------------------------------------------------


def test_breaker_opens_after_n_errors_within_the_window_only() -> None:
    clock = Clock()
    b = Breaker(3, 10.0, 60.0, clock=clock, rand=random.Random(1))
    assert not b.failure()
    clock.now += 6
    assert not b.failure()
    clock.now += 6  # the first error left the window
    assert not b.failure()
    assert b.state is HostState.CLOSED
    clock.now += 1
    assert b.failure()
    assert b.state is HostState.OPEN
    assert not b.ready()


def test_breaker_half_opens_after_a_jittered_revive_and_one_probe_decides() -> None:
    clock = Clock()
    delays = []
    for seed in range(40):
        b = Breaker(1, 10.0, 60.0, clock=clock, rand=random.Random(seed))
        assert b.failure()
        delays.append(b.revive_at - clock.now)
    assert min(delays) >= 36.0 and max(delays) <= 84.0
    assert max(delays) - min(delays) > 10.0  # spread, not one fixed delay

    b = Breaker(1, 10.0, 60.0, clock=clock, rand=random.Random(3))
    b.failure()
    clock.now = b.revive_at - 0.001
    assert not b.ready() and b.state is HostState.OPEN
    clock.now = b.revive_at
    assert not b.ready() and b.state is HostState.HALF_OPEN
    b.probed(False)
    assert b.state is HostState.OPEN and b.revive_at > clock.now + 30
    clock.now = b.revive_at
    b.ready()
    b.probed(True)
    assert b.state is HostState.CLOSED and b.ready()


def test_a_sole_host_never_opens() -> None:
    b = Breaker(1, 10.0, 60.0, clock=Clock(), sole=True)
    assert not b.failure() and not b.trip()
    assert b.ready()


# -- the pool ------------------------------------------------------------------


def test_each_pool_rotates_round_robin_from_its_own_start() -> None:
    starts = set()
    for seed in range(20):
        hosts = [FakeHost(f"tcp:h{i}:783") for i in range(4)]
        pool = ScannerPool(hosts, rand=random.Random(seed))
        order = [pool.scan(b"m").host for _ in range(8)]
        starts.add(order[0])
        first = [h.address for h in hosts].index(order[0])
        assert order == [hosts[(first + k) % 4].address for k in range(8)]
    assert len(starts) > 1


@pytest.mark.parametrize("error", [
    ScanConnectionError("refused"), ScanConnectionError("closed without a reply"),
    SpamdResponseError(75, "tempfail"),
])
def test_a_retryable_failure_fails_over_to_the_next_host(error: ScanError) -> None:
    clock = Clock()
    pool, hosts, counted = pool_of(3, clock)
    first = pool._next
    hosts[first].fail = error
    result = pool.scan(b"m")
    assert result.host == hosts[(first + 1) % 3].address
    assert counted == [C.POOL_FAILOVERS]


@pytest.mark.parametrize("error", [
    ScanProtocolError("bad status line"), SpamdResponseError(64, "bad request"),
])
def test_a_definite_answer_is_raised_without_failing_over(error: ScanError) -> None:
    clock = Clock()
    pool, hosts, counted = pool_of(3, clock)
    first = pool._next
    hosts[first].fail = error
    with pytest.raises(type(error)):
        pool.scan(b"m")
    assert sum(h.scans for h in hosts) == 1
    assert pool.breakers[first].state is HostState.CLOSED
    assert counted == []


def test_an_open_host_is_never_chosen_until_its_revive_and_rejoins_on_pong() -> None:
    clock = Clock()
    stats = Stats()
    pool, hosts, counted = pool_of(2, clock, stats=StatsFace(stats))
    dead = hosts[0]
    dead.fail = ScanConnectionError("refused")
    dead.pong = False
    for _ in range(6):
        assert pool.scan(b"m").host == hosts[1].address
        clock.now += 0.5
    assert pool.breakers[0].state is HostState.OPEN
    assert dead.scans == 3  # breaker_errors, then never again
    assert (0, HostState.OPEN) in stats.states
    tried = dead.scans
    for _ in range(20):  # still before the revive time: no scan, no PING
        pool.scan(b"m")
    assert dead.scans == tried and dead.pings == 0
    clock.now = pool.breakers[0].revive_at
    pool.scan(b"m")
    pool.scan(b"m")
    assert dead.pings == 1 and dead.scans == tried  # one PING decided: still out
    assert pool.breakers[0].state is HostState.OPEN
    dead.fail, dead.pong = None, True
    clock.now = pool.breakers[0].revive_at
    served = {pool.scan(b"m").host for _ in range(4)}
    assert served == {hosts[0].address, hosts[1].address}
    assert stats.states[-1] == (0, HostState.CLOSED)
    assert C.POOL_REVIVED in counted and counted.count(C.POOL_PROBES) == 2


def test_every_host_open_raises_a_retryable_error() -> None:
    clock = Clock()
    pool, hosts, counted = pool_of(2, clock)
    for h in hosts:
        h.fail = ScanConnectionError("refused")
    for _ in range(3):
        with pytest.raises(ScanConnectionError) as info:
            pool.scan(b"m")
        assert info.value.retryable and not info.value.timeout
    assert all(b.state is HostState.OPEN for b in pool.breakers)
    with pytest.raises(PoolUnavailable) as unavailable:
        pool.scan(b"m")
    assert unavailable.value.retryable
    assert sum(h.scans for h in hosts) == 6
    assert counted.count(C.POOL_EXHAUSTED) == 4


def test_a_hung_host_opens_at_once_when_it_does_not_answer_ping() -> None:
    clock = Clock()
    pool, hosts, _ = pool_of(2, clock)
    first = pool._next
    hosts[first].fail = ScanTimeout("timed out waiting for the reply")
    hosts[first].pong = False
    beats = []
    pool.beat = lambda: beats.append(1)
    assert pool.scan(b"m").host == hosts[1 - first].address
    assert pool.breakers[first].state is HostState.OPEN
    assert beats == [1]


def test_a_timeout_counts_against_the_message_only_if_every_host_tried_answers_ping() -> None:
    clock = Clock()
    pool, hosts, _ = pool_of(2, clock)
    for h in hosts:
        h.fail = ScanTimeout("timed out waiting for the reply")
    with pytest.raises(ScanTimeout) as info:
        pool.scan(b"m")
    assert info.value.alone is True
    assert all(b.state is HostState.CLOSED for b in pool.breakers)  # 1 error of 3

    hosts[0].pong = False  # one of them is down: an outage, not the message
    with pytest.raises(ScanTimeout) as info:
        pool.scan(b"m")
    assert info.value.alone is False

    assert pool.breakers[0].state is HostState.OPEN  # tripped: timed out and no PONG

    pool, hosts, _ = pool_of(2, clock)
    hosts[0].fail = ScanConnectionError("refused")
    hosts[1].fail = ScanTimeout("timed out waiting for the reply")
    with pytest.raises(ScanConnectionError) as refused:
        pool.scan(b"m")
    assert refused.value.alone is False and not refused.value.timeout


def test_spamd_giving_up_on_the_message_fails_over_and_needs_no_ping() -> None:
    clock = Clock()
    pool, hosts, _ = pool_of(2, clock)
    first = pool._next
    hosts[first].fail = SpamdResponseError(79, "timeout")
    assert pool.scan(b"m").host == hosts[1 - first].address
    assert hosts[first].pings == 0


def test_a_sole_host_raises_its_own_errors_as_before() -> None:
    clock = Clock()
    pool, (host,), counted = pool_of(1, clock)
    host.fail = ScanConnectionError("refused")
    for _ in range(10):
        with pytest.raises(ScanConnectionError) as info:
            pool.scan(b"m")
        assert info.value is host.fail
    assert pool.breakers[0].state is HostState.CLOSED and host.scans == 10
    host.fail = ScanTimeout("reply")
    with pytest.raises(ScanTimeout) as timeout:
        pool.scan(b"m")
    assert timeout.value is host.fail and timeout.value.alone is True
    host.pong = False
    with pytest.raises(ScanTimeout) as timeout:
        pool.scan(b"m")
    assert timeout.value.alone is False
    assert C.POOL_BREAKER_OPENS not in counted


def test_a_pool_holds_one_kind_and_distinct_hosts() -> None:
    a, b = FakeHost("tcp:a:1"), FakeHost("tcp:a:1")
    with pytest.raises(ValueError, match="twice"):
        ScannerPool([a, b])
    other = FakeHost("tcp:b:1")
    other.kind = "rspamd"  # type: ignore[misc]
    with pytest.raises(ValueError, match="one kind"):
        ScannerPool([a, other])
