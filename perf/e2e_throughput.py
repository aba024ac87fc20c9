"""End-to-end numbers: messages in through socat and nc, records out, scan rate.

Starts a real trap (managed spamd with --local, 2 workers) with the test
fixture, delivers 300 messages through ``socat`` and 300 through ``nc -U -N``,
waits for every record and prints what went in, what came out and how fast it
was scanned.  ``-n`` changes the count per client.

    python3 perf/e2e_throughput.py
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from trap_fixture import Trap, message, reply_id  # noqa: E402

from ringtrap.spamd import SpamdClient, SpamdError  # noqa: E402
from ringtrap.supervisor import managed_spamd_socket  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=300, help="messages per client (default 300)")
    args = ap.parse_args()
    trap = Trap(Path(tempfile.mkdtemp(prefix="rt-e2e-")),
                {"spamd": {"address": "managed", "extra_args": ["--local"]},
                 "ring": {"slots": 1024}})
    try:
        trap.start()
        deadline = time.monotonic() + 60
        while True:  # the managed spamd loads its rules first
            try:
                SpamdClient(f"unix:{managed_spamd_socket(trap.cfg)}", connect_timeout=1,
                            timeout=5).ping()
                break
            except SpamdError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        ids = set()
        t0 = time.monotonic()
        for i in range(args.n):
            ids.add(reply_id(trap.send_with("socat", message(i)).stdout))
            ids.add(reply_id(trap.send_with("nc", message(100_000 + i)).stdout))
        t_in = time.monotonic() - t0
        records = trap.wait_records(ids, timeout=600)
        t_all = time.monotonic() - t0
        scored = sum(1 for r in records if r["score"] is not None)
        st = trap.status() or {"totals": {}}
        tot = st["totals"]
        print(f"messages in:  {len(ids)} ({args.n} socat, {args.n} nc) in {t_in:.1f} s")
        print(f"records out:  {len(records)}, {scored} with a spamd score")
        print(f"scanned:      all recorded {t_all:.1f} s after the first send = "
              f"{len(records) / t_all:.1f} msgs/s end to end")
        accepted = tot.get("accepted_ring", 0) + tot.get("accepted_overflow", 0)
        print(f"status:       accepted {accepted}, processed {tot.get('processed')}")
        trap.signal(signal.SIGTERM)
        trap.wait_exit(60)
    finally:
        trap.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
