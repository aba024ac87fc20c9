"""``ringtrap blocklist --database``: the fleet's blocklist from a real PostgreSQL (initdb,
Unix socket) holding two traps' records, loaded as ``ringtrap collect`` loads them.

It is the blocklist of the union of the two traps' result files, entry for
entry and format for format; ``--host`` gives one trap's own list; the files
it writes hold the same, and no state file claims them for the trap's metrics.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pg_fixture import PgServer, pg_missing_reason

from ringtrap.command import cli
from ringtrap.scan.record import iso_utc
from ringtrap.scan.results import file_name

pytestmark = pytest.mark.slow

DAY = 86400
POLICY = ('min_hits = 2\nmin_recipients = 2\nexpire_days = 3\nwindow_days = 7\n'
          'allow = ["208.67.222.0/24"]\n')


@pytest.fixture
def pg() -> Iterator[PgServer]:
    reason = pg_missing_reason()
    if reason:
        pytest.skip(reason)
    with PgServer() as server:
        yield server


def hits(now: float) -> dict[str, list[dict[str, Any]]]:
    """Each trap's records: alone neither lists 8.8.8.8 or the /64 (one recipient each)."""
    def rec(host: str, n: int, ago: float, relay: str | None, rcpt: str, verdict: str = "spam",
            fp: str | None = None) -> dict[str, Any]:
        r: dict[str, Any] = {"id": f"{host}-{n}", "received": iso_utc(now - ago),
                             "verdict": verdict, "envelope": {"recipients": [rcpt]}}
        if relay is not None:
            r["relay_ip"] = relay
        if fp is not None:
            r["fingerprint"] = fp
        return r

    a = [rec("a", 1, 3600, "8.8.8.8", "T1@trap.test", fp="f1"),
         rec("a", 2, 2 * DAY, "8.8.8.8", "t1@trap.test", fp="f2"),
         rec("a", 3, 600, "2001:4860:4860::8888", "t1@trap.test"),
         rec("a", 4, 5 * DAY, "1.1.1.1", "t1@trap.test"),  # expired: quiet for 5 days
         rec("a", 5, 700, "9.9.9.9", "t1@trap.test"),
         rec("a", 6, 800, "8.8.4.4", "t1@trap.test", verdict="bounce"),
         rec("a", 7, 900, "208.67.222.222", "t1@trap.test"),  # allowed
         rec("a", 8, 1000, None, "t1@trap.test"),
         rec("a", 9, 8 * DAY, "9.9.9.9", "t2@trap.test")]  # before the window
    b = [rec("b", 1, 7200, "8.8.8.8", "t2@trap.test", fp="f1"),
         rec("b", 2, 300, "2001:4860:4860::8844", "t2@trap.test"),
         rec("b", 3, 5 * DAY + 60, "1.1.1.1", "t2@trap.test"),
         rec("b", 4, 200, "9.9.9.9", "t1@trap.test"),  # two hits, one recipient
         rec("b", 5, 100, "10.1.2.3", "t2@trap.test"),  # private: never listed
         rec("b", 6, 400, "208.67.222.222", "t2@trap.test"),
         rec("b", 7, 6 * DAY, "9.9.9.10", "t2@trap.test")]
    return {"trap-a": a, "trap-b": b}


def write_results(directory: Path, records: list[dict[str, Any]]) -> None:
    """The records into the result files of their days, as a trap writes them."""
    directory.mkdir(parents=True)
    for r in records:
        when = datetime.datetime.fromisoformat(r["received"]).timestamp()
        with open(directory / file_name(when), "a") as f:
            f.write(json.dumps(r) + "\n")


def load(pg: PgServer, per_host: dict[str, list[dict[str, Any]]]) -> None:
    """The records into the hub's database as ``ringtrap collect`` loads a batch."""
    from ringtrap.command import collect

    async def go() -> None:
        import psycopg

        conn = await psycopg.AsyncConnection.connect(pg.conninfo)
        try:
            await collect.migrate(conn)
            await collect._staging(conn)
            batch = collect.Rows()
            for seq, (host, r) in enumerate(
                    ((h, r) for h, rs in per_host.items() for r in rs), 1):
                batch.add(f"{host}:{r['id']}", r, seq)
            assert await collect.load(conn, batch) == sum(map(len, per_host.values()))
        finally:
            await conn.close()

    asyncio.run(go())


def config(path: Path, results: Path, pg: PgServer, extra: str = "") -> Path:
    path.write_text(f'[results]\ndir = "{results}"\n'
                    f"[collect]\ndatabase = {json.dumps(pg.conninfo)}\n"
                    f"[blocklist]\n{POLICY}{extra}")
    return path


def blocklist(capsys: pytest.CaptureFixture[str], conf: Path, *more: str) -> tuple[int, str]:
    code = cli.main(["blocklist", "-c", str(conf), *more])
    return code, capsys.readouterr().out


def same(doc: str) -> dict[str, Any]:
    """A JSON blocklist without what differs by the source: when written, what was read."""
    d = dict(json.loads(doc))
    return {k: v for k, v in d.items() if k not in ("written", "read")}


def test_the_fleets_blocklist_is_the_union_of_the_traps_files(
        tmp_path: Path, pg: PgServer, capsys: pytest.CaptureFixture[str]) -> None:
    now = time.time()
    per_host = hits(now)
    write_results(tmp_path / "union", per_host["trap-a"] + per_host["trap-b"])
    write_results(tmp_path / "a", per_host["trap-a"])
    union = config(tmp_path / "union.toml", tmp_path / "union", pg)
    only_a = config(tmp_path / "a.toml", tmp_path / "a", pg)
    fleet_results = tmp_path / "fleet"
    fleet_results.mkdir()
    fleet = config(tmp_path / "fleet.toml", fleet_results, pg,
                   f'plain = "{tmp_path / "fleet.txt"}"\n')

    # no schema yet: the collector never ran
    assert blocklist(capsys, fleet, "--database", "--format", "plain") == (66, "")
    load(pg, per_host)

    code, files_json = blocklist(capsys, union, "--format", "json")
    assert code == 0
    code, db_json = blocklist(capsys, fleet, "--database", "--format", "json")
    assert code == 0
    assert same(db_json) == same(files_json)
    assert json.loads(db_json)["read"] == {"source": "database", "host": None, "records": 15}
    # only the two traps together list these: one recipient on each
    listed = {e["network"]: e for e in json.loads(db_json)["entries"]}
    assert set(listed) == {"8.8.8.8/32", "2001:4860:4860::/64"}
    assert listed["8.8.8.8/32"]["hits"] == 3 and listed["8.8.8.8/32"]["campaigns"] == 2
    assert same(db_json)["records"] == {"hits": 10, "other_verdicts": 1, "no_relay": 1,
                                        "never_listed": 3}
    for fmt in ("plain", "postfix", "rbldnsd_ip4", "rbldnsd_ip6"):
        want = blocklist(capsys, union, "--format", fmt)
        got = blocklist(capsys, fleet, "--database", "--format", fmt)
        # the first line of a zone or map says when it was written
        assert got[0] == 0 and got[1].splitlines()[1:] == want[1].splitlines()[1:], fmt

    code, host_json = blocklist(capsys, fleet, "--host", "trap-a", "--format", "json")
    assert code == 0
    assert same(host_json) == same(blocklist(capsys, only_a, "--format", "json")[1])
    assert json.loads(host_json)["listed"] == 0
    assert json.loads(host_json)["read"]["records"] == 8

    # written like the trap's own files, but no state for the trap's metrics
    assert blocklist(capsys, fleet, "--database")[0] == 0
    assert (tmp_path / "fleet.txt").read_text().splitlines() == \
        ["8.8.8.8/32", "2001:4860:4860::/64"]
    assert not (fleet_results / "blocklist-state.json").exists()
