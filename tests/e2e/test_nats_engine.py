"""The engine the fleet stands on, as the tests start it: JetStream alone and in a cluster.

These pin what ringtrap's forwarder relies on, on the server the tests run:
a re-publish with the same ``Nats-Msg-Id`` inside the duplicate window is
acknowledged as a duplicate and stores nothing, a store survives a restart
of its server, and a replicated stream takes publishes with one of three
nodes killed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nats_fixture import NatsCluster, NatsServer, nats_missing_reason

pytestmark = [pytest.mark.slow, pytest.mark.nats]


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    reason = nats_missing_reason()
    if reason:
        pytest.skip(reason)
    with NatsServer(tmp_path / "nats") as server:
        yield server


async def _publish_twice(url: str) -> tuple[bool, bool, int]:
    import nats

    nc = await nats.connect(url, allow_reconnect=False)
    try:
        js = nc.jetstream()
        await js.add_stream(name="T", subjects=["t.>"], duplicate_window=120.0)
        first = await js.publish("t.x", b"one", headers={"Nats-Msg-Id": "id-1"})
        again = await js.publish("t.x", b"one", headers={"Nats-Msg-Id": "id-1"})
        info = await js.stream_info("T")
        return first.duplicate, again.duplicate, info.state.messages
    finally:
        await nc.close()


async def _count(urls: list[str], stream: str) -> int:
    import nats

    nc = await nats.connect(servers=urls, allow_reconnect=False)
    try:
        return (await nc.jetstream().stream_info(stream)).state.messages
    finally:
        await nc.close()


def test_a_repeated_msg_id_is_stored_once_and_kept_across_a_restart(
        nats_server: NatsServer) -> None:
    first, again, stored = asyncio.run(_publish_twice(nats_server.url))
    assert (bool(first), bool(again), stored) == (False, True, 1)
    nats_server.kill()
    nats_server.start()
    assert asyncio.run(_count([nats_server.url], "T")) == 1


async def _replicated(cluster: NatsCluster, n: int) -> int:
    import nats
    import nats.errors

    nc = await nats.connect(servers=cluster.urls, connect_timeout=2)
    try:
        js = nc.jetstream(timeout=5)
        await js.add_stream(name="R", subjects=["r.>"], num_replicas=3)
        for i in range(n):
            if i == n // 2:
                # whichever node this client is on, another one goes
                cluster.nodes[0].kill()
            # while a new leader is elected a publish may go unanswered: sent again, as
            # the forwarder does, and stored once by its Nats-Msg-Id
            deadline = time.monotonic() + 60
            while True:
                try:
                    await js.publish("r.x", b"%d" % i, headers={"Nats-Msg-Id": f"r-{i}"})
                    break
                except nats.errors.Error:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.5)
        return (await js.stream_info("R")).state.messages
    finally:
        await nc.close()


def test_a_replicated_stream_takes_publishes_with_one_node_killed(tmp_path: Path) -> None:
    reason = nats_missing_reason()
    if reason:
        pytest.skip(reason)
    with NatsCluster(tmp_path / "cluster") as cluster:
        assert asyncio.run(_replicated(cluster, 40)) == 40
