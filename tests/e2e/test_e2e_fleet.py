"""A fleet on one machine: three traps, a three-node JetStream cluster, one collector.

Every message any trap answered OK reaches PostgreSQL exactly once, keyed by
its host and id, through one node killed mid-flow, the collector SIGKILLed
mid-flow, and the whole cluster down for a minute, during which the traps
go on scanning and count their backlog, which drains after.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from collect_fixture import CollectProcess, row_count, rows
from nats_fixture import NatsCluster, nats_missing_reason
from pg_fixture import PgServer, pg_missing_reason
from trap_fixture import Trap, message, reply_id, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.nats]

HOSTS = ("trap-a", "trap-b", "trap-c")
OUTAGE = 60.0


@pytest.fixture(autouse=True)
def _needs_servers() -> None:
    reason = nats_missing_reason() or pg_missing_reason()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[NatsCluster, list[Trap]]]:
    with NatsCluster(tmp_path / "cluster") as cluster:
        traps = []
        try:
            for host in HOSTS:
                workdir = tmp_path / host
                workdir.mkdir()
                trap = Trap(workdir, {
                    "workers": {"count": 1},
                    "forward": {"enabled": True, "servers": cluster.urls, "host": host,
                                "replicas": 3, "ack_timeout": 2}})
                traps.append(trap)
                trap.start()
            yield cluster, traps
        finally:
            for trap in traps:
                trap.close()


def deliver_all(traps: list[Trap], start: int, n: int) -> set[tuple[str, str]]:
    """``n`` messages to each trap at once; (host, id) of each answered OK."""
    out: set[tuple[str, str]] = set()
    lock = threading.Lock()

    def one(host: str, trap: Trap) -> None:
        got = {(host, reply_id(trap.send(message(i)))) for i in range(start, start + n)}
        with lock:
            out.update(got)

    threads = [threading.Thread(target=one, args=(h, t)) for h, t in zip(HOSTS, traps,
                                                                           strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return out


def loaded(pg: PgServer) -> set[tuple[str, str]]:
    return {(r[0], r[1]) for r in rows(pg, "SELECT host, id FROM messages")}


def backlog(trap: Trap) -> int:
    st = trap.status()
    assert st is not None
    return int(st["totals"]["forward_backlog"])


def test_every_ok_message_of_the_fleet_is_one_row_through_every_fault(
        tmp_path: Path, fleet: tuple[NatsCluster, list[Trap]]) -> None:
    cluster, traps = fleet
    with PgServer() as pg:
        collector = CollectProcess(tmp_path, {
            "servers": cluster.urls, "database": pg.conninfo, "batch": 20,
            "batch_wait": 0.2, "ack_wait": 3})
        collector.start()
        try:
            sent = deliver_all(traps, 0, 20)
            wait_until(lambda: row_count(pg) >= 60, 90, "the first 60 rows", step=0.3)

            # one node killed and the collector SIGKILLed while records flow
            flow: set[tuple[str, str]] = set()
            sender = threading.Thread(target=lambda: flow.update(deliver_all(traps, 100, 40)))
            sender.start()
            wait_until(lambda: row_count(pg) >= 80, 90, "rows flowing", step=0.05)
            cluster.nodes[0].kill()
            collector.kill()
            collector.start()
            sender.join(180)
            sent |= flow
            wait_until(lambda: row_count(pg) >= len(sent), 120, f"{len(sent)} rows", step=0.5)

            # the whole cluster down for a minute: the traps scan on, the backlog is counted
            for node in cluster.nodes:
                node.stop()
            down = time.monotonic()
            later = deliver_all(traps, 200, 15)
            for trap, host in zip(traps, HOSTS, strict=True):
                trap.wait_records({i for h, i in later if h == host})
                wait_until(lambda t=trap: backlog(t) == 15, 30, f"{host}'s backlog")
            time.sleep(max(0.0, OUTAGE - (time.monotonic() - down)))
            cluster.start()
            sent |= later
            wait_until(lambda: row_count(pg) >= len(sent), 180, f"{len(sent)} rows", step=0.5)
            for trap in traps:
                wait_until(lambda t=trap: backlog(t) == 0, 60, "the backlog drained")
            assert len(sent) == 3 * (20 + 40 + 15)
            assert loaded(pg) == sent
            assert row_count(pg) == len(sent)
        finally:
            assert collector.stop() == 0
