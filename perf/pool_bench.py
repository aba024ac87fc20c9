"""A pool of two spamd hosts under a steady feed, one of them killed, then hung, partway.

Two real spamds on loopback TCP (``--local``), a real trap (``ringtrap run``,
4 workers) with ``spamd.address`` listing both and the [scanner] defaults, and a
feed of ``--rate`` messages a second (half GTUBE, half plain) through the
ingest socket.  After ``--phase`` seconds one host is SIGKILLed (first run) or
SIGSTOPped, so it accepts and never answers (second run).  The table gives
msgs/s scanned before the fault, during the ``--during`` seconds after it and
after that; the longest stall (no message processed) after the fault, which
is how long the survivor took to carry the load; the time until every
worker's breaker for the host is open (from the host table; a killed host is
failed over from at once before that); and what was recorded unscanned or
with a verdict that is not the message's (must be 0).  Not a test: numbers
depend on the machine.

    python3 perf/pool_bench.py [--rate 10] [--phase 20] [--during 20]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from spamd_fixture import SpamdProcess  # noqa: E402
from trap_fixture import Trap, reply_id  # noqa: E402

GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
WORKERS = 4


def mail(n: int) -> bytes:
    body = GTUBE if n % 2 else b"The minutes of Tuesday's meeting are attached."
    return (f"From: a{n}@example.com\r\nTo: trap@example.org\r\nSubject: bench {n}\r\n"
            f"Message-ID: <{n}.poolbench@example.com>\r\n\r\n").encode() + body + b"\r\n"


class Feed:
    """Sends ``rate`` messages a second from a thread; remembers each id's message number."""

    def __init__(self, trap: Trap, rate: float) -> None:
        self.trap = trap
        self.rate = rate
        self.ids: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        start = time.monotonic()
        while not self._stop.is_set():
            self.ids[reply_id(self.trap.send(mail(n)))] = n
            n += 1
            self._stop.wait(max(0.0, start + n / self.rate - time.monotonic()))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


def processed(trap: Trap) -> int:
    st = trap.status()
    return 0 if st is None else int(st["totals"]["processed"])


def open_in(trap: Trap, host: str) -> int:
    st = trap.status()
    for h in (st or {}).get("scanner", {}).get("hosts", []):
        if h["host"] == host:
            return int(h["open_in"])
    return 0


def run(fault: str, rate: float, phase: float, during: float) -> dict[str, Any]:
    """One run: feed, fault one host at ``phase`` s, feed on, drain; the numbers."""
    with SpamdProcess(max_children=2) as a, SpamdProcess(max_children=2) as b:
        trap = Trap(Path(tempfile.mkdtemp(prefix="rt-poolbench-")), {
            "spamd": {"address": [a.tcp_address, b.tcp_address]},
            "workers": {"count": WORKERS},
            "ring": {"slots": 4096, "slot_bytes": "16K"},
            "supervisor": {"log_level": "info"},
            # two bodies over and over: each copy is a scan the pool must place
            "dedupe": {"skip_scan": False},
        })
        try:
            trap.start()
            feed = Feed(trap, rate)
            feed.start()
            t0 = time.monotonic()
            time.sleep(phase)
            before = processed(trap)
            t_fault = time.monotonic()
            if fault == "killed":
                b.kill()
            else:
                os.killpg(b.pid, signal.SIGSTOP)
            took_over = None
            stall = 0.0
            last, last_at = before, t_fault

            def watch(until: float) -> int:
                nonlocal took_over, stall, last, last_at
                while (now := time.monotonic()) < until:
                    if took_over is None and open_in(trap, b.tcp_address) >= WORKERS:
                        took_over = now - t_fault
                    done = processed(trap)
                    if done != last:
                        last, last_at = done, now
                    stall = max(stall, now - last_at)
                    time.sleep(0.1)
                return processed(trap)

            mid = watch(t_fault + during)
            t_mid = time.monotonic()
            after = watch(t_mid + phase)
            t_end = time.monotonic()
            feed.stop()
            ids = feed.ids
            records = trap.wait_records(set(ids), timeout=600)
            bad = 0
            hosts: dict[str, int] = {}
            for r in records:
                n = ids.get(r["id"])
                ok = (r["verdict"] in ("spam", "ham") and r["score"] is not None
                      and r["scanner_host"] in (a.tcp_address, b.tcp_address)
                      and (r["verdict"] == "spam") == bool(n is not None and n % 2))
                bad += not ok
                hosts[r["scanner_host"]] = hosts.get(r["scanner_host"], 0) + 1
            st = trap.status() or {}
            totals = st.get("totals", {})
            return {
                "fault": fault, "sent": len(ids), "recorded": len({r["id"] for r in records}),
                "before": before / (t_fault - t0), "during": (mid - before) / (t_mid - t_fault),
                "after": (after - mid) / (t_end - t_mid), "took_over": took_over, "stall": stall,
                "unscanned": bad, "failovers": totals.get("pool_failovers", 0),
                "quarantined": totals.get("quarantined", 0),
                "survivor_share": hosts.get(a.tcp_address, 0) / max(1, len(records)),
            }
        finally:
            if fault == "hung" and b.proc is not None:
                os.killpg(b.pid, signal.SIGCONT)
            trap.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=10.0, help="messages fed per second")
    ap.add_argument("--phase", type=float, default=20.0, help="seconds before and after")
    ap.add_argument("--during", type=float, default=20.0, help="seconds counted as during")
    args = ap.parse_args()
    rows = [run(fault, args.rate, args.phase, args.during) for fault in ("killed", "hung")]
    print(f"pool of 2 spamd hosts, {WORKERS} workers, feed {args.rate:g} msgs/s, "
          f"phases {args.phase:g} s / {args.during:g} s / {args.phase:g} s")
    print(f"{'fault':<7} {'sent':>5} {'recorded':>8} {'before/s':>9} {'during/s':>9} "
          f"{'after/s':>8} {'stall':>7} {'all open':>9} {'failovers':>9} {'unscanned':>9}")
    for r in rows:
        took = "-" if r["took_over"] is None else f"{r['took_over']:.1f} s"
        print(f"{r['fault']:<7} {r['sent']:>5} {r['recorded']:>8} {r['before']:>9.1f} "
              f"{r['during']:>9.1f} {r['after']:>8.1f} {r['stall']:>5.1f} s {took:>9} "
              f"{r['failovers']:>9} "
              f"{r['unscanned']:>9}")
    return 0 if all(r["unscanned"] == 0 and r["recorded"] == r["sent"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
