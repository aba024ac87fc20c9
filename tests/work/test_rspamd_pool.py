"""A worker's scanner from ``rspamd.address`` as a list: a pool of real rspamd hosts.

Two offline rspamds (tests/rspamd_fixture.py); the worker's scanner comes
from the configuration exactly as a forked worker builds it, the hosts take
turns, and when one is stopped mid-flow every message is still scanned, by
the other, with rspamd's own verdict.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from rspamd_fixture import RspamdProcess, rspamd_missing_reason

from ringtrap import config
from ringtrap.scan.pool import ScannerPool
from ringtrap.worker import scanner_client

GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

pytestmark = pytest.mark.slow


def mail(n: int) -> bytes:
    return (f"From: a{n}@example.com\r\nTo: trap@example.org\r\nSubject: pool {n}\r\n"
            f"Message-ID: <{n}.rspamdpool@example.com>\r\n\r\n").encode() + GTUBE + b"\r\n"


@pytest.fixture
def second_rspamd(rspamd_server: RspamdProcess) -> Iterator[RspamdProcess]:
    reason = rspamd_missing_reason()
    if reason:
        pytest.skip(reason)
    with RspamdProcess(count=1) as proc:
        yield proc


def test_a_list_of_rspamd_hosts_is_a_pool_that_survives_one_stopping(
        rspamd_server: RspamdProcess, second_rspamd: RspamdProcess, tmp_path: Path) -> None:
    a, b = rspamd_server.address, second_rspamd.address
    path = tmp_path / "ringtrap.toml"
    path.write_text(f'[scanner]\nkind = "rspamd"\nbreaker_errors = 1\n'
                    f'[rspamd]\naddress = ["{a}", "{b}"]\n')
    cfg = config.load(path)
    scanner = scanner_client(cfg)
    assert isinstance(scanner, ScannerPool)
    first = [scanner.scan(mail(n)) for n in range(6)]
    assert {r.host for r in first} == {a, b}  # the hosts take turns
    assert all(r.scanner == "rspamd" and r.action == "reject" and "GTUBE" in r.symbols
               for r in first)
    second_rspamd.stop()
    after = [scanner.scan(mail(n)) for n in range(6, 12)]
    assert {r.host for r in after} == {a}  # the survivor takes every message
    assert all(r.action == "reject" and r.score >= r.required for r in after)
