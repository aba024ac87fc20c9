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

from ringtrap.control.managed_spamd import managed_spamd_socket  # noqa: E402
from ringtrap.scan.spamd import ScanError, SpamdClient  # noqa: E402


def cpu_by_role(trap: Trap) -> dict[str, float]:
    """CPU seconds so far of the trap's ingest, workers and spamd (its reaped children too)."""
    import psutil

    out = {"ingest": 0.0, "workers": 0.0, "spamd": 0.0}
    for p in psutil.Process(trap.pid).children():
        try:
            cmd = " ".join(p.cmdline())
            t = p.cpu_times()
            own = t.user + t.system
            if "spamd" in cmd:
                # spamd recycles its children; the ones it reaped count in its own times
                own += t.children_user + t.children_system
                for kid in p.children(recursive=True):
                    kt = kid.cpu_times()
                    own += kt.user + kt.system
                out["spamd"] += own
            elif "ingest" in cmd:
                out["ingest"] += own
            elif "worker" in cmd:
                out["workers"] += own
        except psutil.Error:
            pass
    return out


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
            except ScanError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        cpu0 = cpu_by_role(trap)
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
        cpu1 = cpu_by_role(trap)
        per = {role: 1000 * (cpu1.get(role, 0.0) - cpu0.get(role, 0.0)) / len(ids)
               for role in cpu1}
        print("CPU per msg:  " + ", ".join(f"{role} {ms:.1f} ms" for role, ms in per.items()))
        scan = per.get("spamd", 0.0) + per.get("workers", 0.0)
        if scan:
            print(f"per core:     about {1000 / scan:.0f} msgs/s scanned (spamd + worker),"
                  f" about {1000 / max(per.get('ingest', 0.0), 0.001):.0f} msgs/s taken in"
                  " (ingest)")
        trap.signal(signal.SIGTERM)
        trap.wait_exit(60)
    finally:
        trap.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
