"""Campaigns across the fleet: ``dedupe.store = "nats"`` with two real traps, real spamd.

A campaign first scanned on trap A is recorded on trap B as a repeat of A's
message and, with ``dedupe.skip_scan``, not scanned there; with the broker
away a trap falls back to its own store and scans, without stalling.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from nats_fixture import NatsServer, nats_missing_reason
from spamd_fixture import SpamdProcess
from trap_fixture import Trap, reply_id

pytestmark = [pytest.mark.slow, pytest.mark.nats, pytest.mark.spamd]


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    reason = nats_missing_reason()
    if reason:
        pytest.skip(reason)
    with NatsServer(tmp_path / "nats") as server:
        yield server


def campaign(body: str) -> bytes:
    return (f"From: Offers <offers@example.com>\r\nTo: trap@example.org\r\n"
            f"Subject: Cheap offer\r\nMessage-ID: <{uuid.uuid4().hex}@example.com>\r\n"
            f"Date: Thu, 03 Dec 2026 10:00:00 +0000\r\n\r\n{body}\r\n").encode()


def test_a_campaign_scanned_on_one_trap_is_a_repeat_on_another(
        tmp_path: Path, nats_server: NatsServer, spamd_server: SpamdProcess) -> None:
    traps = []
    try:
        for host in ("trap-a", "trap-b"):
            (tmp_path / host).mkdir()
            trap = Trap(tmp_path / host, {
                "spamd": {"address": spamd_server.unix_address},
                "dedupe": {"store": "nats", "skip_scan": True},
                "forward": {"servers": [nats_server.url], "host": host}})
            traps.append(trap)
            trap.start()
        a, b = traps
        body = "Buy the very best watches at the very best price. " * 20
        first = reply_id(a.send(campaign(body)))
        [ra] = a.wait_records({first})
        assert ra["verdict"] in ("spam", "ham") and ra["duplicate_of"] is None
        repeat = reply_id(b.send(campaign(body)))
        rb = next(r for r in b.wait_records({repeat}) if r["id"] == repeat)
        assert rb["duplicate_of"] == first
        assert rb["verdict"] == "duplicate" and rb["scanned_ms"] is None
        assert rb["fingerprint"] == ra["fingerprint"]

        # the broker away: a new campaign on B is scanned, the repeat found locally
        nats_server.stop()
        other = "A completely different offer of garden furniture for you. " * 20
        alone = reply_id(b.send(campaign(other)))
        rc = next(r for r in b.wait_records({alone}, timeout=60) if r["id"] == alone)
        assert rc["verdict"] in ("spam", "ham") and rc["duplicate_of"] is None
        again = reply_id(b.send(campaign(body)))
        rd = next(r for r in b.wait_records({again}) if r["id"] == again)
        assert rd["duplicate_of"] == first  # remembered from the fleet's answer
    finally:
        for trap in traps:
            trap.close()
