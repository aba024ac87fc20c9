"""The forwarder end to end: a real ``ringtrap run``, a real nats-server, real faults.

Every record a trap writes reaches the JetStream stream once, keyed by
``<host>:<id>``: with the broker there, with the broker stopped for a while
(the trap goes on scanning, the backlog is counted and drains after), with
the forwarder SIGKILLed mid-flow (the supervisor restarts it; the stream
removes the re-sent batch), and with one node of a three-node cluster killed.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nats_fixture import NatsCluster, NatsServer, nats_missing_reason
from trap_fixture import Trap, message, reply_id, running_trap, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.nats]

STREAM = "RINGTRAP"


@pytest.fixture(autouse=True)
def _needs_nats() -> None:
    reason = nats_missing_reason()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    with NatsServer(tmp_path / "nats") as server:
        yield server


def forward_settings(servers: list[str], **more: Any) -> dict[str, dict[str, Any]]:
    return {"forward": {"enabled": True, "servers": servers, "host": "trap-a",
                        "ack_timeout": 2, **more}}


async def _stream_messages(urls: list[str]) -> list[tuple[dict[str, str], dict[str, Any]]]:
    """Every message in the stream: (headers, record); a raw message's "record" is
    ``{"raw_of": <id>}``."""
    import nats
    from nats.js.errors import NotFoundError

    nc = await nats.connect(servers=urls, allow_reconnect=False, connect_timeout=2)
    try:
        js = nc.jetstream(timeout=10)
        try:
            info = await js.stream_info(STREAM)
        except NotFoundError:
            return []
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            if info.state.messages == 0:
                break
            m = await js.get_msg(STREAM, seq)
            headers = dict(m.headers or {})
            out.append((headers, json.loads(m.data) if m.subject.endswith(".record")
                        else {"raw_of": headers.get("Ringtrap-Id")}))
        return out
    finally:
        await nc.close()


def stream_messages(urls: list[str]) -> list[tuple[dict[str, str], dict[str, Any]]]:
    return asyncio.run(_stream_messages(urls))


def totals(trap: Trap) -> dict[str, int]:
    st = trap.status()
    assert st is not None
    return st["totals"]


def deliver(trap: Trap, start: int, n: int) -> set[str]:
    return {reply_id(trap.send(message(i))) for i in range(start, start + n)}


def wait_stream(urls: list[str], want: int, timeout: float = 90.0
                ) -> list[tuple[dict[str, str], dict[str, Any]]]:
    got: list[tuple[dict[str, str], dict[str, Any]]] = []

    def enough() -> bool:
        nonlocal got
        try:
            got = stream_messages(urls)
        except Exception:  # a node coming back, an election: ask again
            return False
        return len(got) >= want

    try:
        wait_until(enough, timeout, f"{want} messages in the stream", step=0.5)
    except AssertionError:
        raise AssertionError(f"{len(got)} of {want} messages in the stream") from None
    return got


def assert_once(got: list[tuple[dict[str, str], dict[str, Any]]], ids: set[str]) -> None:
    """The stream holds exactly one message per record id, keyed <host>:<id>."""
    got = [(h, r) for h, r in got if "raw_of" not in r]
    keys = [h["Nats-Msg-Id"] for h, _ in got]
    assert len(keys) == len(set(keys)), "a record is in the stream twice"
    assert {r["id"] for _, r in got} == ids
    assert all(h["Nats-Msg-Id"] == f"trap-a:{r['id']}" for h, r in got)
    assert len(got) == len(ids)


def test_every_record_arrives_once_keyed_by_its_id(tmp_path: Path,
                                                   nats_server: NatsServer) -> None:
    with running_trap(tmp_path, forward_settings([nats_server.url])) as trap:
        ids = deliver(trap, 0, 30)
        recs = trap.wait_records(ids)
        got = wait_stream([nats_server.url], len(ids))
        assert_once(got, ids)
        # the stream carries the record as the host wrote it
        by_id = {r["id"]: r for r in recs}
        assert all(r == by_id[r["id"]] for _, r in got)
        wait_until(lambda: totals(trap)["forward_backlog"] == 0, 10, "no backlog")
        t = totals(trap)
        assert (t["forwarded"], t["forward_dropped"]) == (30, 0)
        st = trap.status()
        assert st is not None and st["forward"]["cursor"]["file"].startswith("results-")


def test_broker_away_the_trap_scans_on_and_the_backlog_drains(
        tmp_path: Path, nats_server: NatsServer) -> None:
    with running_trap(tmp_path, forward_settings([nats_server.url])) as trap:
        first = deliver(trap, 0, 10)
        trap.wait_records(first)
        wait_stream([nats_server.url], 10)
        nats_server.stop()
        later = deliver(trap, 10, 25)
        # scanning goes on without the broker
        trap.wait_records(later)
        wait_until(lambda: totals(trap)["forward_backlog"] == 25, 20, "a backlog of 25")
        wait_until(lambda: totals(trap)["forward_errors"] > 0, 20, "a failed connect")
        assert totals(trap)["processed"] == 35
        nats_server.start()
        got = wait_stream([nats_server.url], 35)
        assert_once(got, first | later)
        wait_until(lambda: totals(trap)["forward_backlog"] == 0, 20, "the backlog drained")


def test_forwarder_killed_mid_flow_loses_and_doubles_nothing(
        tmp_path: Path, nats_server: NatsServer) -> None:
    with running_trap(tmp_path, forward_settings([nats_server.url])) as trap:
        ids: set[str] = set()
        killed: list[int] = []
        for round_ in range(3):
            pids = wait_until(lambda: [p for p in trap.child_pids("forwarder")
                                       if p not in killed], 30, "a new forwarder")
            # records being written and forwarded while it dies
            ids |= deliver(trap, 100 * round_, 80)
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])
        trap.wait_records(ids)
        got = wait_stream([nats_server.url], len(ids))
        assert_once(got, ids)
        wait_until(lambda: [p for p in trap.child_pids("forwarder") if p not in killed], 30,
                   "the forwarder restarted")
        # restarted after each kill, and never crashed by itself
        assert totals(trap)["restarts_crashed"] == 3


def test_one_cluster_node_killed_mid_flow(tmp_path: Path) -> None:
    with NatsCluster(tmp_path / "cluster") as cluster, \
            running_trap(tmp_path, forward_settings(cluster.urls, replicas=3)) as trap:
        ids = deliver(trap, 0, 20)
        wait_stream(cluster.urls, 20)
        more: set[str] = set()
        sender = threading.Thread(target=lambda: more.update(deliver(trap, 20, 150)))
        sender.start()
        try:
            wait_until(lambda: totals(trap)["forwarded"] > 40, 60, "forwarding")
            # the node the trap is most likely on: the first it was given
            cluster.nodes[0].kill()
        finally:
            sender.join(120)
        ids |= more
        trap.wait_records(ids)
        alive = [n.url for n in cluster.nodes[1:]]
        got = wait_stream(alive, len(ids), timeout=120)
        assert_once(got, ids)


def test_raw_messages_go_too_and_one_over_the_limit_is_noted_on_its_record(
        tmp_path: Path, nats_server: NatsServer) -> None:
    settings = forward_settings([nats_server.url], raw=True, raw_max_bytes="4K")
    with running_trap(tmp_path, settings) as trap:
        sent = {reply_id(trap.send(m)): m for m in (message(i) for i in range(8))}
        big = {reply_id(trap.send(m)): m for m in (message(i, size=8192) for i in range(8, 10))}
        trap.wait_records(set(sent) | set(big))
        got = wait_stream([nats_server.url], 8 + 2 + 8)
        records = {r["id"]: h for h, r in got if "raw_of" not in r}
        assert set(records) == set(sent) | set(big)
        assert {i for i, h in records.items() if h.get("Ringtrap-Raw") == "too-large"} == set(big)
        raws = asyncio.run(_raw_payloads([nats_server.url]))
        assert raws == sent  # the message bytes themselves, once each
        t = totals(trap)
        assert (t["forward_raw_handed_on"], t["forward_raw_forwarded"],
                t["forward_raw_too_large"]) == (8, 8, 2)


async def _raw_payloads(urls: list[str]) -> dict[str, bytes]:
    import nats

    nc = await nats.connect(servers=urls, allow_reconnect=False)
    try:
        js = nc.jetstream(timeout=10)
        info = await js.stream_info(STREAM)
        out = {}
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            m = await js.get_msg(STREAM, seq)
            if m.subject.endswith(".raw"):
                assert m.headers is not None
                assert m.headers["Ringtrap-Id"] not in out
                out[m.headers["Ringtrap-Id"]] = bytes(m.data)
        return out
    finally:
        await nc.close()


def test_the_raw_backlog_stays_within_its_cap_and_counts_what_it_drops(
        tmp_path: Path, nats_server: NatsServer) -> None:
    settings = forward_settings([nats_server.url], raw=True, raw_max_bytes="64K",
                                spill_max_bytes="1M")
    with running_trap(tmp_path, settings) as trap:
        nats_server.stop()
        ids = {reply_id(trap.send(message(i, size=30 * 1024))) for i in range(45)}
        trap.wait_records(ids)
        t = totals(trap)
        # 45 x 30 KiB do not fit in 1 MiB: some are dropped, each counted, none waits beyond
        assert t["forward_raw_handed_on"] + t["forward_dropped"] == 45
        assert t["forward_dropped"] > 0
        st = trap.status()
        assert st is not None
        raw = st["forward"]["raw"]
        assert raw["ready"] == t["forward_raw_handed_on"]
        # past half the cap each spill re-reads the directory: only spills racing
        # each other go over, a few messages of the two workers, not the flood
        assert raw["bytes"] <= raw["max_bytes"] + 4 * 31 * 1024
        assert t["forward_dropped"] >= 45 - (raw["max_bytes"] + 4 * 31 * 1024) // (30 * 1024)
        handed = t["forward_raw_handed_on"]
        nats_server.start()
        got = wait_stream([nats_server.url], 45 + handed)
        assert len({h["Nats-Msg-Id"] for h, _ in got}) == 45 + handed
        wait_until(lambda: totals(trap)["forward_raw_forwarded"] == handed, 20, "raw drained")


def test_the_backlog_outlives_a_restart_of_the_trap(tmp_path: Path,
                                                     nats_server: NatsServer) -> None:
    settings = forward_settings([nats_server.url], raw=True)
    with running_trap(tmp_path, settings) as trap:
        nats_server.stop()
        ids = deliver(trap, 0, 15)
        trap.wait_records(ids)
        trap.signal(signal.SIGTERM)
        assert trap.wait_exit() == 0
        nats_server.start()
        trap.start()
        # the records from the cursor on, the raw messages from their spill directory
        got = wait_stream([nats_server.url], 30)
        assert_once(got, ids)
        assert {r["raw_of"] for _, r in got if "raw_of" in r} == ids


def _certificates(d: Path) -> None:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, by openssl."""
    def ossl(*argv: str) -> None:
        subprocess.run(["openssl", *argv], cwd=d, check=True, capture_output=True, timeout=60)

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    ossl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
         "-subj", "/CN=ringtrap-test-ca")
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth"),
                      ("client", "extendedKeyUsage=clientAuth")):
        (d / f"{name}.ext").write_text(ext + "\n")
        ossl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
             "-subj", f"/CN=ringtrap-test-{name}")
        ossl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", f"{name}.pem", "-days", "2",
             "-extfile", f"{name}.ext")


def test_tls_with_a_client_certificate_and_an_nkey(tmp_path: Path) -> None:
    import nkeys

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = tmp_path / "pki"
    d.mkdir()
    _certificates(d)
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    (d / "trap.nk").write_bytes(seed + b"\n")
    public = nkeys.from_seed(bytearray(seed)).public_key.decode()
    extra = (f'tls {{ cert_file: "{d}/server.pem", key_file: "{d}/server.key",'
             f' ca_file: "{d}/ca.pem", verify: true }}\n'
             f'authorization {{ users = [ {{ nkey: "{public}" }} ] }}')
    with NatsServer(tmp_path / "nats", extra_config=extra) as server:
        url = f"tls://127.0.0.1:{server.port}"
        secure = {"tls_ca_file": str(d / "ca.pem"), "tls_cert_file": str(d / "client.pem"),
                  "tls_key_file": str(d / "client.key")}
        # without the nkey the broker refuses the trap: it backs off, scanning goes on
        (tmp_path / "refused").mkdir()
        with running_trap(tmp_path / "refused", forward_settings([url], **secure)) as trap:
            ids = deliver(trap, 0, 3)
            trap.wait_records(ids)
            wait_until(lambda: totals(trap)["forward_errors"] > 0, 30, "a refused connect")
            assert totals(trap)["forwarded"] == 0
        (tmp_path / "ok").mkdir()
        with running_trap(tmp_path / "ok", forward_settings(
                [url], nkey_seed_file=str(d / "trap.nk"), **secure)) as trap:
            ids = deliver(trap, 0, 5)
            trap.wait_records(ids)
            wait_until(lambda: totals(trap)["forwarded"] == 5, 30, "5 records over TLS")
