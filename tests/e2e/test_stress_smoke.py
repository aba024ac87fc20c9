"""The stress harness in CI: ``perf/stress.py --smoke`` end to end, checked for correctness.

One run of under a minute against a real spamd, with chaos (a worker, the
ingest, the supervisor and a spamd child killed, the overflow filled to its
cap) and the accelerated day: every message that got ``OK`` must be recorded
or purged by id (lost = 0), and the report, the side-by-side rows and the
charts must be there.  It never asserts a speed: the CI machine is shared.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from spamd_fixture import spamc_missing_reason, spamd_missing_reason

pytestmark = [pytest.mark.slow, pytest.mark.spamd]

ROOT = Path(__file__).resolve().parents[2]


def test_smoke_run_loses_nothing_and_reports(tmp_path: Path) -> None:
    reason = spamd_missing_reason() or spamc_missing_reason()
    if reason:
        pytest.skip(reason)
    out = tmp_path / "stress"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "perf" / "stress.py"), "--smoke", "--json", "--out", str(out)],
        cwd=ROOT, capture_output=True, timeout=240, stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-4000:]
    summary = json.loads(proc.stdout)

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
        for name in ("backlog", "rates", "latency", "memory", "overview", "compare"):
            assert (out / f"{name}.png").stat().st_size > 1000
