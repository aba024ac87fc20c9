"""One reading a second of everything the stress report charts.

:class:`TickSampler` turns a trap's status (the ring and overflow, the
shared counters, the process table), /proc and the deliveries of the last
second into one flat JSON-ready dict per tick: rates are differences of the
shared counters, scan-time quantiles come from the workers' scan-time
buckets over the last few seconds, ingest latency from the clients' own
clocks, and queue latency (accepted until recorded) from the result lines
that appeared since the last tick.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from stress_flood import OK, OUTCOMES, Delivery, percentile
from stress_trap import ProcessMeter, StressSpamd, StressTrap

from ringtrap.base import ids
from ringtrap.base.counters import SCAN_BUCKETS

# counters whose per-second change is charted
RATE_KEYS = {
    "accepted_s": ("accepted_ring", "accepted_overflow"),
    "spilled_s": ("accepted_overflow",),
    "processed_s": ("processed",),
    "scanned_s": ("scanned",),
    "refused_s": ("refused_too_large", "refused_empty", "refused_temp"),
    "released_s": ("released",),
    "spamd_errors_s": ("spamd_errors",),
}
SCAN_WINDOW = 5  # ticks of scan-time buckets behind each quantile
PRIVATE_EVERY = 5  # ticks between smaps_rollup readings (private memory)


def bucket_quantile(counts: Sequence[int], q: float) -> float | None:
    """Upper bound in ms of the scan-time bucket holding the ``q`` quantile; None if empty."""
    total = sum(counts)
    if total <= 0:
        return None
    need = q * total
    run = 0
    for i, c in enumerate(counts):
        run += c
        if run >= need:
            bound = SCAN_BUCKETS[i] if i < len(SCAN_BUCKETS) else SCAN_BUCKETS[-1] * 2
            return bound * 1000.0
    return SCAN_BUCKETS[-1] * 2000.0


class TickSampler:
    """Takes one reading per tick of a trap, its spamd and the deliveries."""

    def __init__(self, trap: StressTrap, spamd: StressSpamd | None) -> None:
        self.trap = trap
        self.spamd = spamd
        self.meter = ProcessMeter()
        self._prev_totals: dict[str, int] | None = None
        self._prev_at = 0.0
        self._scan_hist: deque[list[int]] = deque(maxlen=SCAN_WINDOW)
        self._ticks = 0

    def sample(self, t: float, offered: float, deliveries: Sequence[Delivery],
               new_records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """One tick's reading; ``t`` is seconds since the flood started."""
        now = time.monotonic()
        wall = time.time()
        self._ticks += 1
        s: dict[str, Any] = {"t": round(t, 2), "offered": round(offered, 1)}
        for kind in OUTCOMES:
            s[kind] = sum(1 for d in deliveries if d.outcome == kind)
        lat = [d.latency * 1000 for d in deliveries if d.outcome == OK]
        s["lat_p50_ms"] = _r(percentile(lat, 0.5))
        s["lat_p99_ms"] = _r(percentile(lat, 0.99))
        s["lat_max_ms"] = _r(max(lat) if lat else None)
        waits = [wall - ids.id_time(r["id"]) for r in new_records
                 if isinstance(r.get("id"), str) and ids.is_valid(r["id"])]
        s["recorded"] = len(new_records)
        s["e2e_p50_s"] = _r(percentile(waits, 0.5))
        s["e2e_p99_s"] = _r(percentile(waits, 0.99))
        st = self.trap.status()
        s["up"] = st is not None
        if st is not None:
            self._from_status(s, st, now)
        else:
            self._prev_totals = None
        s["procs"] = self._processes(st)
        s["spamd"] = self._spamd()
        s["load1"] = round(os.getloadavg()[0], 2)
        return s

    def _from_status(self, s: dict[str, Any], st: dict[str, Any], now: float) -> None:
        ring, ov, tot = st["ring"], st["overflow"], st["totals"]
        s.update(ring_used=ring["used"], ring_slots=ring["slots"], ring_ready=ring["ready"],
                 ring_claimed=ring["claimed"],
                 ov_ready=ov["ready"], ov_bytes=ov["bytes"], ov_claimed=ov["claimed"],
                 ov_failed=ov["failed"], ov_oldest_s=ov["oldest_age_s"],
                 ring_shm_bytes=ring["slots"] * ring["slot_bytes"])
        for k in ("processed", "scanned", "purged_files", "restarts", "quarantined",
                  "accepted_ring", "accepted_overflow"):
            s["total_" + k] = tot.get(k, 0)
        prev = self._prev_totals
        dt = now - self._prev_at
        buckets = [tot.get(f"scan_bucket_{i}", 0) for i in range(len(SCAN_BUCKETS) + 1)]
        if prev is not None and dt > 0:
            for key, names in RATE_KEYS.items():
                d = sum(tot.get(n, 0) for n in names) - sum(prev.get(n, 0) for n in names)
                s[key] = round(d / dt, 2) if d >= 0 else None  # negative: counters restarted
            pb = [prev.get(f"scan_bucket_{i}", 0) for i in range(len(buckets))]
            diff = [b - p for b, p in zip(buckets, pb, strict=True)]
            if min(diff) >= 0:
                self._scan_hist.append(diff)
                s["scan_buckets"] = diff
            ds = tot.get("scanned", 0) - prev.get("scanned", 0)
            dus = tot.get("scan_us", 0) - prev.get("scan_us", 0)
            s["scan_mean_ms"] = round(dus / ds / 1000, 1) if ds > 0 and dus >= 0 else None
        window = [sum(col) for col in zip(*self._scan_hist, strict=True)] if self._scan_hist \
            else []
        s["scan_p50_ms"] = bucket_quantile(window, 0.5) if window else None
        s["scan_p99_ms"] = bucket_quantile(window, 0.99) if window else None
        self._prev_totals = dict(tot)
        self._prev_at = now
        s["supervisor_pid"] = st["supervisor_pid"]
        # seconds since accepted of the messages workers are scanning right now
        ages = (st.get("analysed") or {}).get("scanning_age_s")
        s["scanning_age_max_s"] = None if ages is None else ages["max"]

    def _processes(self, st: dict[str, Any] | None) -> dict[str, Any]:
        """Memory and CPU of every ringtrap process, keyed "supervisor", "ingest", "worker N"."""
        out: dict[str, Any] = {}
        if st is None:
            return out
        private = self._ticks % PRIVATE_EVERY == 1
        rows = [("supervisor", st["supervisor_pid"])]
        for p in st["processes"]:
            if not p["alive"] or p["role"] == "supervisor":
                continue
            label = p["role"] + (f" {p['index']}" if p["role"] in ("worker", "stage") else "")
            rows.append((label, p["pid"]))
        for label, pid in rows:
            r = self.meter.read(pid, private=private)
            if r is not None:
                r["pid"] = pid
                out[label] = r
        return out

    def _spamd(self) -> dict[str, Any]:
        """spamd's parent and children: the comparison for ringtrap's memory."""
        if self.spamd is None or self.spamd.proc is None:
            return {}
        private = self._ticks % PRIVATE_EVERY == 1
        parent = self.meter.read(self.spamd.pid, private=private)
        kids = []
        for pid in self.spamd.children_pids():
            r = self.meter.read(pid, private=private)
            if r is not None:
                r["pid"] = pid
                kids.append(r)
        return {"parent": parent, "children": kids}


def _r(v: float | None, nd: int = 2) -> float | None:
    return None if v is None else round(v, nd)


__all__ = ["RATE_KEYS", "TickSampler", "bucket_quantile"]
