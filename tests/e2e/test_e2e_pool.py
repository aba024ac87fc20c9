"""A real trap scanning on a pool of hosts: two real spamds (one killed mid-flow and
started again), one hung, one refusing, one hanging up.  Nothing is lost, nothing is
recorded unscanned, status and metrics show each host, the dead one rejoins."""

from __future__ import annotations

import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from pool_hosts import ClosingHost, HungHost, refusing_address
from prometheus_client.parser import text_string_to_metric_families
from spamd_fixture import SpamdProcess, free_tcp_port, spamd_missing_reason
from trap_fixture import reply_id, running_trap, wait_until

GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
pytestmark = pytest.mark.skipif(spamd_missing_reason() is not None,
                                reason=str(spamd_missing_reason()))


def mail(n: int) -> bytes:
    body = GTUBE if n % 2 else b"Lunch on Tuesday?"
    return (f"From: a{n}@example.com\r\nTo: trap@example.org\r\nSubject: e2e pool {n}\r\n"
            f"Message-ID: <{n}.e2epool@example.com>\r\n\r\n").encode() + body + b"\r\n"


def up_metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name in ("ringtrap_scanner_up", "ringtrap_scanner_scans_total"):
                out[f"{s.name}:{s.labels['host']}"] = s.value
    return out


def test_a_trap_on_a_pool_loses_nothing_and_records_only_real_verdicts(tmp_path: Path) -> None:
    port = free_tcp_port()
    with SpamdProcess(max_children=2) as a, SpamdProcess(max_children=2) as b, \
            HungHost() as hung, ClosingHost() as closing:
        refused = refusing_address()
        b_addr = b.tcp_address
        hosts = [a.tcp_address, b_addr, hung.address, refused, closing.address]
        settings: dict[str, dict[str, Any]] = {
            "spamd": {"address": hosts, "connect_timeout": 2},
            "scanner": {"breaker_errors": 2, "breaker_window": 60, "breaker_revive": 3,
                        "hung_after": 1},
            "metrics": {"listen": f"127.0.0.1:{port}"},
            # two bodies over and over: every copy is to reach a host, none to be
            # recorded from the first as a campaign repeat
            "dedupe": {"skip_scan": False},
        }
        with running_trap(tmp_path, settings) as trap:
            ids: set[str] = set()

            def feed(first: int, count: int, pause: float = 0.05) -> None:
                for n in range(first, first + count):
                    ids.add(reply_id(trap.send(mail(n))))
                    time.sleep(pause)

            feed(0, 20)
            wait_until(lambda: len(trap.records()) >= 10, 120, "the first records")
            # SIGKILLed while the feed goes on: its in-flight scans fail over
            killer = threading.Timer(0.5, b.kill)
            killer.start()
            feed(20, 40)
            killer.join()
            records = trap.wait_records(ids, timeout=180)
            live = {a.tcp_address, b_addr}
            for r in records:
                assert r["verdict"] in ("spam", "ham") and r["score"] is not None, r
                assert r["scanner_host"] in live, r
                assert (r["verdict"] == "spam") == (r["score"] >= 5.0)
            assert len({r["id"] for r in records}) == len(ids)

            def hosts_now() -> dict[str, dict[str, Any]]:
                st = trap.status()
                assert st is not None
                return {h["host"]: h for h in st["scanner"]["hosts"]}

            after_kill = wait_until(
                lambda: (h := hosts_now()) and not h[b_addr]["up"] and h, 30, "b open")
            assert after_kill[a.tcp_address]["up"] and after_kill[a.tcp_address]["scans"] > 0
            for dead in (hung.address, refused, closing.address):
                assert not after_kill[dead]["up"] and after_kill[dead]["scans"] == 0
            m = up_metrics(port)
            assert m[f"ringtrap_scanner_up:{a.tcp_address}"] == 1
            assert m[f"ringtrap_scanner_up:{b_addr}"] == 0
            assert m[f"ringtrap_scanner_up:{refused}"] == 0
            b_scans = after_kill[b_addr]["scans"]

            # started again where it listened: a worker's revive PING brings it back
            with SpamdProcess(max_children=2, port=b.port):
                more = 60

                def b_rejoined() -> bool:
                    nonlocal more
                    feed(more, 4, pause=0.1)
                    more += 4
                    h = hosts_now()
                    return h[b_addr]["up"] and h[b_addr]["scans"] > b_scans

                wait_until(b_rejoined, 90, "b scanning again", step=0.2)
                records = trap.wait_records(ids, timeout=120)
                assert all(r["verdict"] in ("spam", "ham") for r in records)
                assert {r["scanner_host"] for r in records} <= live
                totals = trap.status()["totals"]  # type: ignore[index]
                assert totals["pool_failovers"] > 0 and totals["pool_breaker_opens"] >= 4
                assert totals["quarantined"] == 0 and totals["verdict_error"] == 0
