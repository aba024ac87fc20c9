"""The scanner-host table: cells each worker writes alone, read back as one row per host."""

from __future__ import annotations

from collections.abc import Iterator
from uuid import uuid4

import pytest

from ringtrap.base.states import HostState, Role
from ringtrap.command.status import host_status
from ringtrap.control.metrics import _host_families
from ringtrap.ring import Ring
from ringtrap.store.hosttable import HostCells, read_hosts
from ringtrap.store.segment import HOST_CELLS, unlink_name
from ringtrap.store.snapshot import read_snapshot

A, B, C_ = "tcp:10.0.0.1:783", "tls:10.0.0.2:783", "unix:/run/spamd.sock"


class Clock:
    def __init__(self) -> None:
        self.ns = 1_000

    def __call__(self) -> int:
        self.ns += 1_000
        return self.ns


@pytest.fixture
def ring() -> Iterator[Ring]:
    name = f"rt-hosts-{uuid4().hex[:8]}"
    r = Ring.create(name, 8, 4096)
    yield r
    r.close()
    unlink_name(name)


def test_hosts_sum_over_workers_and_show_the_state_seen_last(ring: Ring) -> None:
    seg = ring.table.segment
    clock = Clock()
    w1 = HostCells(seg, ring.table.register(Role.WORKER, 0).row, [A, B], clock)
    w2 = HostCells(seg, ring.table.register(Role.WORKER, 1).row, [B, A], clock)
    w1.scanned(0, 0.004)
    w1.scanned(0, 0.2)
    w2.scanned(1, 0.2)
    w1.failed(1, failed_over=True)
    w1.state(1, HostState.OPEN)
    w1.state(1, HostState.OPEN)  # still open: not a second opening
    hosts = {h.host: h for h in read_hosts(seg)}
    a, b = hosts[A], hosts[B]
    assert (a.scans, a.errors, a.scan_us) == (3, 0, 404_000)
    assert a.buckets[0] == 1 and sum(a.buckets) == 3
    assert (b.errors, b.opens, b.open_in, b.up) == (1, 1, 1, False)
    w2.state(0, HostState.CLOSED)  # another worker judged B since: up by the latest word
    b = {h.host: h for h in read_hosts(seg)}[B]
    assert b.up and b.open_in == 1
    assert host_status(b)["state"] == "closed" and host_status(a)["mean_ms"] == 134.7


def test_a_successor_in_the_row_counts_on_and_new_hosts_take_free_cells(ring: Ring) -> None:
    seg = ring.table.segment
    clock = Clock()
    row = ring.table.register(Role.WORKER, 0)
    HostCells(seg, row.row, [A, B], clock).scanned(0, 0.01)
    ring.table.retire_row(row.row)
    row = ring.table.register(Role.WORKER, 0, row=row.row)
    again = HostCells(seg, row.row, [C_, A], clock)  # B left the pool, C joined
    again.scanned(1, 0.01)
    hosts = {h.host: h for h in read_hosts(seg)}
    assert hosts[A].scans == 2 and hosts[C_].scans == 0 and B in hosts
    full = [f"tcp:10.0.1.{i}:783" for i in range(HOST_CELLS)]
    HostCells(seg, row.row, full, clock)  # B's and C's cells are given over
    assert {h.host for h in read_hosts(seg, [row.row])} == set(full)
    with pytest.raises(ValueError):
        HostCells(seg, row.row, [*full, A], clock)


def test_metrics_label_each_host(ring: Ring) -> None:
    seg = ring.table.segment
    cells = HostCells(seg, ring.table.register(Role.WORKER, 0).row, [A, B], Clock())
    cells.scanned(0, 0.03)
    cells.state(1, HostState.OPEN)
    fams = {f.name: f for f in _host_families(read_snapshot(ring.table))}
    up = {s.labels["host"]: s.value for s in fams["ringtrap_scanner_up"].samples}
    assert up == {A: 1, B: 0}
    count = [s for s in fams["ringtrap_scanner_scan_duration_seconds"].samples
             if s.name.endswith("_count")]
    assert {s.labels["host"]: s.value for s in count} == {A: 1, B: 0}
