"""``ringtrap collect`` end to end: a real trap forwarding to a real nats-server, the
collector loading into a PostgreSQL of the test's own (initdb, Unix socket).

Every record the trap wrote is one row, also when the collector is SIGKILLed
mid-flow and restarted (the broker redelivers what was not acknowledged, the
conflict on the message key makes a second load a no-op); the schema's
per-message tables are filled from a full record.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from collect_fixture import CollectProcess, row_count, rows, wait_fetching
from nats_fixture import NatsServer, nats_missing_reason
from pg_fixture import PgServer, pg_missing_reason
from trap_fixture import ROOT, message, reply_id, running_trap, wait_until

from ringtrap.base import ids

pytestmark = [pytest.mark.slow, pytest.mark.nats]


@pytest.fixture(autouse=True)
def _needs_servers() -> None:
    reason = nats_missing_reason() or pg_missing_reason()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def pg() -> Iterator[PgServer]:
    with PgServer() as server:
        yield server


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    with NatsServer(tmp_path / "nats") as server:
        yield server


def settings(nats_server: NatsServer, pg: PgServer, **more: Any) -> dict[str, Any]:
    return {"servers": [nats_server.url], "database": pg.conninfo, "batch": 50,
            "batch_wait": 0.2, **more}


def test_every_record_is_one_row(tmp_path: Path, nats_server: NatsServer,
                                 pg: PgServer) -> None:
    forward = {"forward": {"enabled": True, "servers": [nats_server.url], "host": "trap-a"}}
    with running_trap(tmp_path, forward) as trap:
        collector = CollectProcess(tmp_path, settings(nats_server, pg))
        collector.start()
        try:
            ids = {reply_id(trap.send(message(i))) for i in range(40)}
            trap.wait_records(ids)
            wait_until(lambda: row_count(pg) >= 40, 60, "40 rows", step=0.3)
            got = rows(pg, "SELECT msg_key, host, id, verdict, record->>'id' FROM messages")
            assert {r[2] for r in got} == ids and len(got) == 40
            assert all(r[0] == f"trap-a:{r[2]}" and r[1] == "trap-a" and r[4] == r[2]
                       for r in got)
            assert rows(pg, "SELECT version FROM schema_version") == [(1,)]
            # the fleet's report from the database is the trap's own from its files
            local = report_json(trap.config_path)
            fleet_cfg = tmp_path / "fleet.toml"
            fleet_cfg.write_text(f"[collect]\ndatabase = {json.dumps(pg.conninfo)}\n")
            assert report_json(fleet_cfg, "--database") == local
            assert report_json(fleet_cfg, "--host", "trap-a") == local
            assert report_json(fleet_cfg, "--host", "trap-b")["messages"] == 0
        finally:
            assert collector.stop() == 0


def report_json(config: Path, *more: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "ringtrap.command.cli", "report", "-c",
                           str(config), "--json", *more], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_a_collector_killed_mid_flow_loads_every_record_once(
        tmp_path: Path, nats_server: NatsServer, pg: PgServer) -> None:
    forward = {"forward": {"enabled": True, "servers": [nats_server.url], "host": "trap-a"}}
    with running_trap(tmp_path, forward) as trap:
        ids = {reply_id(trap.send(message(i))) for i in range(300)}
        trap.wait_records(ids)
        collector = CollectProcess(tmp_path, settings(nats_server, pg, batch=20, ack_wait=2))
        kills = 0
        for _ in range(3):
            collector.start()
            before = row_count(pg)
            wait_until(lambda b=before: row_count(pg) > b, 60, "rows loading", step=0.02)
            if row_count(pg) < 300:
                collector.kill()
                kills += 1
        collector.start()
        try:
            wait_until(lambda: row_count(pg) >= 300, 90, "300 rows", step=0.3)
            # msg_key is the key: a redelivered batch adds no row, and no record is missing
            assert rows(pg, "SELECT count(*), count(DISTINCT id) FROM messages") == [(300, 300)]
            assert {r[0] for r in rows(pg, "SELECT id FROM messages")} == ids
        finally:
            assert collector.stop() == 0
        assert kills >= 1


def full_record() -> dict[str, Any]:
    return {
        "id": "0640c3f1a2b3c-0004d2", "received": "2026-12-03T10:00:00.000000+00:00",
        "size": 2048, "verdict": "spam", "score": 12.5, "required": 5.0,
        "rules": ["URIBL_BLOCKED", "HTML_MESSAGE"], "from": "a@example.com",
        "subject": "win\x00ner", "envelope": {"sender": "b@example.net",
                                              "recipients": ["t1@trap.test", "t2@trap.test"],
                                              "client_address": "192.0.2.7",
                                              "client_helo": "mx.example.net"},
        "relay_ip": "192.0.2.7", "relay_helo": "mx.example.net",
        "urls": ["http://spam.example/x"], "url_domains": ["spam.example"],
        "attachments": [{"name": "a.zip", "type": "application/zip", "size": 10,
                         "sha256": "ab" * 32}],
        "fingerprint": "f" * 16, "scanner": "spamd",
    }


def test_a_full_record_fills_every_table_and_loading_it_again_changes_nothing(
        pg: PgServer) -> None:
    from ringtrap.command import collect

    async def go() -> tuple[int, int]:
        import psycopg

        conn = await psycopg.AsyncConnection.connect(pg.conninfo)
        try:
            assert await collect.migrate(conn) == 1
            assert await collect.migrate(conn) == 1  # once only
            await collect._staging(conn)
            batch = collect.Rows()
            batch.add("trap-a:0640c3f1a2b3c-0004d2", full_record(), 7)
            batch.add("trap-a:0640c3f1a2b3c-0004d2", full_record(), 8)  # a repeat in a batch
            first = await collect.load(conn, batch)
            again = collect.Rows()
            again.add("trap-a:0640c3f1a2b3c-0004d2", full_record(), 9)
            return first, await collect.load(conn, again)
        finally:
            await conn.close()

    assert asyncio.run(go()) == (1, 0)
    [m] = rows(pg, "SELECT host, relay_ip, client_address, env_sender, score, subject,"
                   " stream_seq FROM messages")
    assert m[0] == "trap-a" and str(m[1]) == "192.0.2.7" and str(m[2]) == "192.0.2.7"
    assert m[3:5] == ("b@example.net", 12.5) and m[5] == "win\ufffdner" and m[6] == 7
    assert rows(pg, "SELECT recipient FROM recipients ORDER BY 1") == [
        ("t1@trap.test",), ("t2@trap.test",)]
    assert rows(pg, "SELECT rule, score FROM rules ORDER BY 1") == [
        ("HTML_MESSAGE", None), ("URIBL_BLOCKED", None)]
    assert rows(pg, "SELECT domain FROM url_domains") == [("spam.example",)]
    assert rows(pg, "SELECT url FROM urls") == [("http://spam.example/x",)]
    assert rows(pg, "SELECT sha256, name, size FROM attachments") == [("ab" * 32, "a.zip", 10)]


def test_raw_messages_land_once_in_the_hubs_maildir(tmp_path: Path, nats_server: NatsServer,
                                                    pg: PgServer) -> None:
    forward = {"forward": {"enabled": True, "servers": [nats_server.url], "host": "trap-a",
                           "raw": True}}
    raw_dir = tmp_path / "raw"
    with running_trap(tmp_path, forward) as trap:
        sent = {reply_id(trap.send(m)): m for m in (message(i) for i in range(12))}
        trap.wait_records(set(sent))
        collector = CollectProcess(tmp_path, settings(nats_server, pg, raw_dir=str(raw_dir),
                                                      ack_wait=2))
        collector.start()
        try:
            wait_until(lambda: len(list(raw_dir.glob("trap-a/*/new/*"))) >= 12, 60,
                       "12 raw messages", step=0.3)
            # killed and started again: what was stored is not stored twice
            collector.kill()
            collector.start()
            wait_until(lambda: row_count(pg) >= 12, 60, "12 rows", step=0.3)
            wait_fetching(nats_server.url, "ringtrap-collect-raw")
        finally:
            assert collector.stop() == 0
    files = {p.name: p.read_bytes() for p in raw_dir.glob("trap-a/*/new/*")}
    assert files == sent
    assert not list(raw_dir.glob("trap-a/*/tmp/*"))


def test_a_raw_message_whose_headers_name_no_file_is_not_stored(tmp_path: Path) -> None:
    from ringtrap.command.collect import store_raw

    msgid = "0640c3f1a2b3c-0004d2"
    assert store_raw(tmp_path, "trap-a", msgid, b"one") is True
    assert store_raw(tmp_path, "trap-a", msgid, b"one") is False  # redelivered
    for host, bad_id in (("..", msgid), ("trap-a/../../etc", msgid), ("trap-a", "../x")):
        with pytest.raises(ValueError):
            store_raw(tmp_path, host, bad_id, b"x")
    day = time.strftime("%Y-%m-%d", time.gmtime(ids.id_time(msgid)))
    assert [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()] \
        == [f"trap-a/{day}/new/{msgid}"]
