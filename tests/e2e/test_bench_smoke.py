"""The sizing benchmarks in CI: each run for seconds, checked for what it counts.

A benchmark that nobody runs rots: these run each one small, against the
real servers it measures, and check that every message it sent was
answered and every row it promises is printed.  They never assert a speed:
the CI machine is shared.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from rspamd_fixture import rspamd_missing_reason
from spamd_fixture import spamc_missing_reason, spamd_missing_reason

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def _bench(*args: str, timeout: float = 240) -> Any:
    proc = subprocess.run([sys.executable, *args, "--json"], cwd=ROOT, capture_output=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-4000:]
    return json.loads(proc.stdout)


def test_open_loop_ingest_rows_answer_every_arrival() -> None:
    rows = _bench("perf/ingest_bench.py", "--open-loop", "-n", "400", "--runs", "1",
                  "--seconds", "0.3", "--loads", "25,75", "--only", "ring,full,bare")
    assert {(r["kind"], r["load_pct"]) for r in rows} == {
        (k, load) for k in ("ring", "full", "bare") for load in (25, 75)}
    for r in rows:
        assert r["not_ok"] == 0, r
        assert r["messages"] >= 200 and r["capacity"] > 0
        assert r["rate"] == round(r["capacity"] * r["load_pct"] / 100)
        assert 0 < r["p50_ms"] <= r["p99_ms"] <= r["p999_ms"]
    # each server also stored the one warm-up message that said it was listening
    for r in rows:
        if r["kind"] == "ring":
            assert (r["ring"], r["spilled"]) == (r["messages"] + 1, 0), r
        elif r["kind"] == "full":
            assert r["ring"] == 4 and r["ring"] + r["spilled"] == r["messages"] + 1, r


@pytest.mark.spamd
def test_scanner_bench_scans_every_message_with_both_scanners() -> None:
    reason = spamd_missing_reason() or spamc_missing_reason() or rspamd_missing_reason()
    if reason:
        pytest.skip(reason)
    out = _bench("perf/scanner_bench.py", "--smoke", timeout=400)
    rows = {(r["scanner"], r["way"]): r for r in out["rows"]}
    assert set(rows) == {("spamd", "spamc per message"), ("spamd", "through ringtrap"),
                         ("rspamd", "keep-alive client"), ("rspamd", "through ringtrap")}
    for r in rows.values():
        assert r["unscanned"] == 0 and r["messages"] == 6, r
        assert r["msgs_per_s"] > 0 and r["server_cpu_ms_per_msg"] > 0, r
    assert set(out["summary"]) == {"rspamd_over_spamd_through_ringtrap",
                                   "ringtrap_rspamd_of_direct_pct", "ringtrap_spamd_of_spamc_pct"}
