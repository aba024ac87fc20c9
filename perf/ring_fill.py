"""How full the ring really is when it tells the ingest to spill.

A producer floods a small ring while two consumers take messages and hold
each for a few milliseconds, as scans do, finishing out of order.  Every time
put() answers FULL the harness notes how many slots were in use: a ring that
wastes slots under a flood spills while it still has room.

    python3 perf/ring_fill.py            # 64 slots, 3 s
    python3 perf/ring_fill.py --slots 1024 --seconds 10
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from ringtrap.ring import PutResult, Ring
from ringtrap.store.segment import unlink_name

CTX = mp.get_context("fork")


def consume(name: str, hold: float, seconds: float) -> None:
    r = Ring.attach(name)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        c = r.claim(0.5)
        if c is not None:
            time.sleep(hold)  # a scan in progress
            r.ack(c)
    r.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slots", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    name = f"rt-fill-{os.getpid()}"
    unlink_name(name)
    ring = Ring.create(name, args.slots, 1024)
    consumers = [CTX.Process(target=consume, args=(name, hold, args.seconds + 1))
                 for hold in (0.003, 0.005)]
    for p in consumers:
        p.start()
    used_at_full = []
    end = time.monotonic() + args.seconds
    i = 0
    try:
        while time.monotonic() < end:
            if ring.put(f"m{i}", b"x" * 100) is not PutResult.OK:
                used_at_full.append(ring.snapshot().used)
                time.sleep(0.001)
            i += 1
    finally:
        for p in consumers:
            p.join()
        ring.close()
        unlink_name(name)
    if not used_at_full:
        print("the consumers kept up: put() never answered FULL")
        return 0
    print(f"{len(used_at_full)} puts answered FULL; slots in use at that moment: "
          f"median {statistics.median(used_at_full):.0f}, min {min(used_at_full)} "
          f"of {args.slots}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
