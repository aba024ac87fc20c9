"""The stress harness in CI: ``perf/stress.py --smoke`` end to end, checked for correctness.

One run of under a minute against a real spamd, with chaos (a worker, the
ingest, the supervisor and a spamd child killed, the overflow filled to its
cap) and the accelerated day: every message that got ``OK`` must be recorded
or purged by id (lost = 0), and the report, the side-by-side rows and the
charts must be there.  Where an offline rspamd can run, the same smoke
floods a second, shorter trap scanning with rspamd beside it (the grid of
scanner x drain order), and each row of the grid must be there with lost = 0
and its purge periods.  It never asserts a speed: the CI machine is shared.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from rspamd_fixture import rspamd_missing_reason
from spamd_fixture import spamc_missing_reason, spamd_missing_reason

pytestmark = [pytest.mark.slow, pytest.mark.spamd]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """One smoke run for the module: its summary and output folder."""
    reason = spamd_missing_reason() or spamc_missing_reason()
    if reason:
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("stress") / "out"
    scanners = "spamd" if rspamd_missing_reason() else "spamd,rspamd"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "perf" / "stress.py"), "--smoke", "--json", "--out", str(out),
         "--scanner", scanners],
        cwd=ROOT, capture_output=True, timeout=300, stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-4000:]
    return json.loads(proc.stdout), out


def test_smoke_run_loses_nothing_and_reports(smoke: tuple[dict[str, Any], Path]) -> None:
    summary, out = smoke
    led = summary["ledger"]
    assert summary["lost"] == 0 and led["lost"] == 0 and led["lost_ids"] == []
    assert led["accepted"] > 100
    # every accepted id lands in exactly one column
    assert led["recorded"] + led["purged"] + led["quarantined"] == led["accepted"]
    assert led["recorded"] > 0 and led["purged"] > 0, "the accelerated day purged nothing"
    assert led["duplicate_oks"] == 0

    done = [e for e in summary["chaos_events"] if "error" not in e]
    assert {"worker", "ingest"} <= {e["action"] for e in done}, summary["chaos_events"]
    assert all(e.get("recovered_s") is not None for e in done), summary["chaos_events"]
    assert any(p["why"] == "day" for p in summary["purges"])

    assert set(summary["compare"]["rows"]) == {"ringtrap", "dirqueue", "spamc"}
    assert summary["compare"]["rows"]["ringtrap"]["msgs_per_s"] > 0
    assert [r["depth"] for r in summary["pickup_cost"]] == [200, 1000]
    assert {r["process"] for r in summary["memory"]} >= {"supervisor", "ingest", "worker 0"}

    report = (out / "report.md").read_text()
    assert "lost = 0" in report and "## Side by side" in report
    samples = (out / "samples.jsonl").read_text().splitlines()
    assert len(samples) >= 10
    if importlib.util.find_spec("matplotlib") is not None:
        for name in ("backlog", "rates", "latency", "memory", "overview", "compare",
                     "analysed"):
            assert (out / f"{name}.png").stat().st_size > 1000

    # the first row of the grid: this run, cut at its purges
    first = summary["grid"][0]
    assert (first["scanner"], first["drain_order"], first["lost"]) == ("spamd", "oldest", 0)
    assert len(first["periods"]) >= 2
    assert sum(p["accepted"] for p in first["periods"]) == first["accepted"]
    assert sum(p["dropped"] for p in first["periods"]) == first["purged"] > 0
    assert "### By purge period" in report


def test_smoke_grid_has_a_row_per_scanner(smoke: tuple[dict[str, Any], Path]) -> None:
    reason = rspamd_missing_reason()
    if reason:
        pytest.skip(f"the rspamd row of the grid: {reason}")
    summary, out = smoke
    rows = {(r["scanner"], r["drain_order"]): r for r in summary["grid"]}
    assert set(rows) == {("spamd", "oldest"), ("rspamd", "oldest")}
    for key, r in rows.items():
        assert r["lost"] == 0, key
        assert r["accepted"] > 50 and r["analysed"] > 0, (key, r)
        assert r["periods"] and sum(p["accepted"] for p in r["periods"]) == r["accepted"], key
    rsp = json.loads((out / "rspamd-oldest" / "summary.json").read_text())
    assert rsp["ledger"]["lost"] == 0 and rsp["lost"] == 0
    assert rsp["ledger"]["recorded"] > 0
    assert summary["lost"] == 0
