"""A pool of real spamd hosts on loopback: one killed mid-flow and started again, one
hung, one refusing, one hanging up at once.  Every message gets a real verdict from a
live host, the others' breakers open, and the killed one rejoins after its revive."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from pool_hosts import ClosingHost, HungHost, SlowHost, refusing_address
from spamd_fixture import SpamdProcess, spamd_missing_reason

from ringtrap.base.counters import C
from ringtrap.base.states import HostState
from ringtrap.scan.pool import ScannerPool
from ringtrap.scan.scanner import ScanResult, ScanTimeout
from ringtrap.scan.spamd import SpamdClient

GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
REVIVE = 2.0


def mail(n: int) -> bytes:
    body = GTUBE if n % 2 else b"See you at the meeting on Tuesday."
    return (f"From: a{n}@example.com\r\nTo: trap@example.org\r\nSubject: pool {n}\r\n"
            f"Message-ID: <{n}.pool@example.com>\r\n\r\n").encode() + body + b"\r\n"


def real(n: int, r: ScanResult) -> bool:
    """A verdict spamd reached on the message: GTUBE scores 1000 and more, the rest less."""
    return r.spam == bool(n % 2) and (r.score >= 500 if n % 2 else r.score < r.required)


@pytest.fixture(scope="module")
def spamds() -> Iterator[tuple[SpamdProcess, SpamdProcess]]:
    reason = spamd_missing_reason()
    if reason:
        pytest.skip(reason)
    with SpamdProcess(max_children=2) as a, SpamdProcess(max_children=2) as b:
        yield a, b


def test_real_hosts_fail_over_open_their_breakers_and_rejoin(
        spamds: tuple[SpamdProcess, SpamdProcess]) -> None:
    a, b = spamds
    counted: list[C] = []
    with HungHost() as hung, ClosingHost() as closing:
        refused = refusing_address()
        addresses = [a.tcp_address, b.tcp_address, hung.address, refused, closing.address]
        pool = ScannerPool([SpamdClient(x, connect_timeout=2.0, timeout=8.0, hung_check=1.0)
                            for x in addresses],
                           breaker_errors=2, breaker_window=60.0, breaker_revive=REVIVE,
                           ping_timeout=1.0, count=counted.append)
        live = {a.tcp_address, b.tcp_address}
        served: list[str] = []

        def scan(n: int) -> None:
            r = pool.scan(mail(n))  # never raises: a live host is always left
            assert r.host in live and real(n, r), (n, r)
            served.append(r.host)

        for n in range(12):
            scan(n)
        # out of the pool: open, or half-open if its revive passed on a loaded machine
        assert HostState.CLOSED not in [pool.state(i) for i in (2, 3, 4)]
        assert set(served) == live  # both live hosts take their turns
        assert hung.accepted >= 1 and closing.accepted >= 2

        # killed while scans run: whatever was in flight there fails over to a
        killer = threading.Timer(0.3, b.kill)
        killer.start()
        n = 12
        until = time.monotonic() + 4.0
        while time.monotonic() < until:
            scan(n)
            n += 1
        killer.join()
        live.discard(b.tcp_address)
        served.clear()
        for _ in range(10):
            scan(n)
            n += 1
        assert pool.state(1) is not HostState.CLOSED
        assert set(served) == {a.tcp_address}  # the survivor takes all the load

        # past its revive one PING finds it still dead: it stays out
        probes = counted.count(C.POOL_PROBES)
        time.sleep(REVIVE * 1.5)
        for _ in range(6):
            scan(n)
            n += 1
        assert counted.count(C.POOL_PROBES) > probes
        assert pool.state(1) is not HostState.CLOSED

        # started again where it listened: it rejoins after a revive
        with SpamdProcess(max_children=2, port=b.port) as again:
            live.add(again.tcp_address)
            deadline = time.monotonic() + 30.0
            served.clear()
            while b.tcp_address not in served and time.monotonic() < deadline:
                scan(n)
                n += 1
                time.sleep(0.05)
            assert b.tcp_address in served
            assert C.POOL_REVIVED in counted
    assert C.POOL_FAILOVERS in counted and C.POOL_BREAKER_OPENS in counted


def test_a_hung_host_is_found_by_ping_long_before_the_scan_timeout() -> None:
    with HungHost() as hung:
        client = SpamdClient(hung.address, connect_timeout=1.0, timeout=120.0, hung_check=0.3)
        began = time.monotonic()
        with pytest.raises(ScanTimeout, match="no PONG: hung") as info:
            client.scan(mail(1))
        assert info.value.alone is False
        assert time.monotonic() - began < 60  # the PING's 5 s, not the 120 s timeout


def test_a_slow_scan_on_a_host_that_answers_ping_is_waited_for() -> None:
    with SlowHost(1.5) as slow:
        client = SpamdClient(slow.address, connect_timeout=1.0, timeout=30.0, hung_check=0.3)
        r = client.scan(mail(1))
        assert r.spam and r.score == 7.5
        assert slow.pings >= 2  # checked while it waited, and left alone
