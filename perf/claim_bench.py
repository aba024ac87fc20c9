#!/usr/bin/env python3
"""The worker's claim path, alone: microseconds per claim + ack, by store and drain order.

One process, no scanner: a worker's ``_claim()`` (the choice between the ring
and the overflow, then the claim) and the ack, timed over N messages put in
the ring (overflow empty) or spilled to the overflow at a depth of N (ring
empty), and the flood's shape (a full ring and N spills).  Each row is the
median of ``--runs`` runs in this one invocation.

    python3 perf/claim_bench.py -n 20000 --runs 5
    RINGTRAP_TREE=/tmp/old python3 perf/claim_bench.py --orders oldest   # another tree

``RINGTRAP_TREE`` puts another checkout first on ``sys.path``, so an older
revision (``git archive REV | tar -x -C /tmp/old``) runs the same rows; a tree
without ``overflow.drain_order`` runs the "oldest" rows only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.environ.get("RINGTRAP_TREE")
                or os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from ringtrap import config
from ringtrap.base import ids
from ringtrap.base.states import Role
from ringtrap.overflow import Overflow
from ringtrap.ring import Ring
from ringtrap.scan.processing import Processor
from ringtrap.scan.results import ResultSink
from ringtrap.store.segment import unlink_name
from ringtrap.worker import Worker

SLOT_BYTES = 8192


def one_run(kind: str, order: str, n: int, size: int) -> float:
    """Microseconds per claim + ack for ``n`` messages laid out as ``kind`` says."""
    tmp = Path(tempfile.mkdtemp(prefix="claim-bench-", dir="/dev/shm"))
    name = f"claimbench-{os.getpid()}"
    ring_slots = n if kind == "ring" else 1024
    overflow_cfg: dict[str, object] = {"dir": str(tmp / "ovf"), "max_bytes": "4G"}
    if order != "oldest":
        overflow_cfg["drain_order"] = order
    cfg = config.from_dict({
        "ingest": {"socket": str(tmp / "in.sock")},
        "ring": {"name": name, "slots": ring_slots, "slot_bytes": SLOT_BYTES},
        "overflow": overflow_cfg,
        "results": {"dir": str(tmp / "results")},
        "spamd": {"address": "off"},
        "workers": {"count": 1, "max_rss_bytes": 0},
    })
    extra = {} if order == "oldest" else {"drain_order": order}
    ring = Ring.create(name, ring_slots, SLOT_BYTES)
    try:
        overflow = Overflow(cfg.overflow.dir, cfg.overflow.max_bytes, **extra)  # type: ignore[arg-type]
        payload = b"x" * size
        if kind in ("ring", "flood"):
            for _ in range(ring_slots):
                ring.put(ids.new_id(), payload)
        if kind in ("overflow", "flood"):
            for _ in range(n):
                overflow.spill(ids.new_id(), payload)
        row = ring.table.register(Role.WORKER, 0)
        sink = ResultSink(cfg.results.dir)
        processor = Processor(scanner=None, scan_limit_bytes=1 << 20)
        worker = Worker(cfg, ring, overflow, row, 0, processor, sink)
        claim = worker._claim  # the path under test, without processing
        t0 = time.perf_counter()
        for _ in range(n):
            c = claim()
            assert c is not None
            c.ack()
        took = time.perf_counter() - t0
        sink.close()
        return took / n * 1e6
    finally:
        ring.close()
        unlink_name(name)
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--messages", type=int, default=20_000)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--orders", default="oldest,newest")
    ap.add_argument("--kinds", default="ring,overflow,flood")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    rows = []
    for kind in a.kinds.split(","):
        for order in a.orders.split(","):
            times = [one_run(kind, order, a.messages, a.size) for _ in range(a.runs)]
            rows.append({"name": f"{kind} {order}", "us_per_claim": statistics.median(times),
                         "runs": [round(t, 2) for t in times]})
    if a.json:
        print(json.dumps(rows))
    else:
        print("| layout, drain order | us per claim + ack (median) | runs |")
        print("|---|---|---|")
        for r in rows:
            print(f"| {r['name']} | {r['us_per_claim']:.2f} | {r['runs']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
