"""The running trap writes the blocklist on its interval, from the records it makes."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from trap_fixture import free_port, message, reply_id, running_trap, scrape, wait_until

pytestmark = pytest.mark.slow


def relayed(n: int, ip: str) -> bytes:
    """A message whose one Received hop names ``ip``: the record's relay_ip."""
    return (f"Received: from mx{n}.example.net (mx{n}.example.net [{ip}])\r\n"
            f"\tby trap.example.org with ESMTP id {n}; Fri, 27 Nov 2026 10:00:00 +0000\r\n"
            ).encode() + message(n)


def test_the_trap_rewrites_the_files_every_interval(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    port = free_port()
    settings: dict[str, dict[str, Any]] = {
        "blocklist": {"interval": 1, "list_reserved": True, "plain": str(out / "list.txt"),
                      "json": str(out / "list.json"), "rbldnsd_ip4": str(out / "ip4set")},
        "metrics": {"listen": f"127.0.0.1:{port}"},
    }
    with running_trap(tmp_path, settings) as trap:
        ids = {reply_id(trap.send(relayed(i, "203.0.113.45"))) for i in range(2)}
        ids.add(reply_id(trap.send(relayed(2, "198.51.100.20"))))
        recs = trap.wait_records(ids)
        assert {r["relay_ip"] for r in recs} == {"203.0.113.45", "198.51.100.20"}

        def listing() -> str:
            path = out / "list.txt"
            return path.read_text() if path.exists() else ""

        wait_until(lambda: listing() == "203.0.113.45/32\n", 30, "the first list")
        # a second hit lists the other relay at the next interval, not at a restart
        ids = {reply_id(trap.send(relayed(3, "198.51.100.20")))}
        trap.wait_records(ids)
        # most hits first, then by address
        wait_until(lambda: listing() == "198.51.100.20/32\n203.0.113.45/32\n", 30,
                   "the list rewritten")
        doc = json.loads((out / "list.json").read_text())
        assert [(e["network"], e["hits"]) for e in doc["entries"]] == [
            ("198.51.100.20/32", 2), ("203.0.113.45/32", 2)]
        assert doc["read"]["skipped"] == 0 and doc["records"]["hits"] == 4
        assert (out / "ip4set").read_text().splitlines()[2:] == ["198.51.100.20",
                                                                 "203.0.113.45"]

        def counted() -> dict[str, float] | None:
            m = scrape(port)
            return m if m.get('ringtrap_blocklist_entries{family="ipv4"}') == 2 else None

        m = wait_until(counted, 30, "the metrics to count the entries", step=0.5)
        assert m['ringtrap_blocklist_entries{family="ipv6"}'] == 0
        assert time.time() - 60 < m["ringtrap_blocklist_written_timestamp_seconds"] \
            <= time.time() + 1
        # each writer is a short-lived child: none piles up, none is left a zombie
        supervisor = psutil.Process(trap.pid)
        writers = [p for p in supervisor.children()
                   if "blocklist" in " ".join(p.cmdline()) or p.status() == psutil.STATUS_ZOMBIE]
        assert len(writers) <= 1
        trap.signal(signal.SIGTERM)
        assert trap.wait_exit(60) == 0
    assert sorted(p.name for p in out.iterdir()) == ["ip4set", "list.json", "list.txt"]
