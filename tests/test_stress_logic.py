"""The stress harness's own logic, without a trap: ledger, profile, sizes, pickup, tables.

The smoke test (e2e/test_stress_smoke.py) runs the harness end to end; these
check the pieces whose mistakes it could not see — a ledger that calls a
lost message purged, a profile that offers the wrong count, a growth test
that misses a leak.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "perf"))

import stress_flood as fl  # noqa: E402
import stress_report as rep  # noqa: E402
from stress_baselines import DirQueue  # noqa: E402
from stress_ledger import Ledger  # noqa: E402
from stress_sample import bucket_quantile  # noqa: E402

MIB = 1024 * 1024


# -- the ledger ----------------------------------------------------------------------


def test_ledger_lost_means_accepted_and_nowhere_else() -> None:
    led = Ledger()
    for m in ("a", "b", "c", "d", "e"):
        led.outcome("ok", m, m, "flood")
    led.outcome("tempfail", "overflow full", None, "flood")
    led.records(["a", "x"])  # x: recorded without an OK the client saw
    led.purge(["b", "a"])  # a was recorded and then purged again: counted once, as recorded
    led.quarantine(["c"])
    s = led.summary()
    assert s["lost_ids"] == ["d", "e"] and s["lost"] == 2
    assert (s["accepted"], s["recorded"], s["purged"], s["quarantined"]) == (5, 1, 1, 1)
    assert s["recorded"] + s["purged"] + s["quarantined"] + s["lost"] == s["accepted"]
    assert s["unacknowledged_records"] == 1
    assert s["by_phase"] == {"flood": {"accepted": 5, "lost": 2}}
    assert s["top_reasons"] == {"tempfail overflow full": 1}
    assert led.count("ok") == 5 and led.count("tempfail", "flood") == 1


def test_ledger_notices_an_id_answered_twice() -> None:
    led = Ledger()
    led.accept("a", "flood")
    led.accept("a", "compare")
    assert led.summary()["duplicate_oks"] == 1


# -- the flood ------------------------------------------------------------------------


def test_profile_rate_ramp_and_bursts() -> None:
    p = fl.Profile(10, 100, ramp_to=30, burst_rate=100, burst_every=40, burst_len=5)
    assert p.rate_at(0) == 10
    assert p.rate_at(50) == pytest.approx(20)
    assert p.rate_at(41) == pytest.approx(10 + 20 * 41 / 100 + 100)  # in the first burst
    assert not p.in_burst(5)  # no burst before the first period has passed
    assert p.rate_at(100) == 0 and p.rate_at(-1) == 0
    # the ramp's integral (2,000) plus two bursts of 500
    assert p.expected(0, 100) == pytest.approx(3000, rel=0.01)


def test_size_model_has_a_body_a_tail_and_some_over_the_limit() -> None:
    model = fl.SizeModel(max_message=4 * MIB)
    rng = random.Random(7)
    sizes = [model.sample(rng) for _ in range(20000)]
    small = sum(1 for s in sizes if s <= 16 * 1024) / len(sizes)
    over = sum(1 for s in sizes if s > model.max_message) / len(sizes)
    tail = sum(1 for s in sizes if MIB < s <= model.max_message)
    assert small > 0.8
    assert 0.002 < over < 0.01
    assert tail > 0
    assert max(sizes) <= model.max_message * 3 // 2


def test_generated_messages_are_what_they_claim() -> None:
    rng = random.Random(3)
    for size in (700, 5000, 200_000):
        m = fl.make_message(rng, size, 1)
        assert abs(len(m) - size) < max(600, size // 20)
        head, sep, _ = m.partition(b"\r\n\r\n")
        assert sep and b"\nSubject: " in head and b"\nMessage-ID: <" in head
        assert not m.startswith(b"From ")  # raw RFC 5322, no mbox line


def test_percentile_is_nearest_rank() -> None:
    assert fl.percentile([], 0.5) is None
    assert fl.percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert fl.percentile([float(i) for i in range(1, 101)], 0.99) == 99.0


# -- the directory queue ------------------------------------------------------------------


def test_dirqueue_ordered_pickup_takes_oldest_and_skips_locked(tmp_path: Path) -> None:
    q = DirQueue(tmp_path / "q")
    names = [q.enqueue(f"job {i}".encode()) for i in range(3)]
    lock = q.lock_file()
    other = tmp_path / "q" / "tmp" / "lock.other"
    other.write_text("other\n")
    (tmp_path / "q" / "active" / names[0]).hardlink_to(other)  # held by another worker
    got = q.pickup(lock)
    assert got is not None and got[:2] == (names[1], b"job 1") and got[2] == 3
    q.finish(got[0])
    assert q.depth() == 2
    # a stale listing: the job vanished after its holder finished; skipped, lock undone
    (tmp_path / "q" / "queue" / names[2]).unlink()
    assert q.pickup(lock) is None
    assert sorted(p.name for p in (tmp_path / "q" / "active").iterdir()) == [names[0]]


# -- tables ----------------------------------------------------------------------------------


def _sample(t: float, own: dict[str, tuple[int, float]]) -> dict[str, Any]:
    procs = {label: {"pid": pid, "own": mib * MIB, "rss": mib * MIB + 64 * MIB,
                     "shmem": 64 * MIB} for label, (pid, mib) in own.items()}
    return {"t": t, "phase": "flood", "procs": procs}


def test_memory_table_flags_growth_of_a_long_lived_process() -> None:
    samples = [_sample(t, {"supervisor": (1, 20.0), "worker 0": (2, 25.0 + t / 30)})
               for t in range(0, 600, 5)]
    rows = {r["process"]: r for r in rep.memory_table(samples)}
    assert not rows["supervisor"]["growing"] and rows["supervisor"]["growth_mib"] == 0
    assert rows["worker 0"]["growing"] and rows["worker 0"]["growth_mib"] > 10
    assert not rows["worker 0"]["under_target"]  # it passed 40 MiB
    assert rows["supervisor"]["shmem_mib"] == 64


def test_memory_table_counts_restarted_processes() -> None:
    samples = [_sample(t, {"ingest": (10 if t < 100 else 11, 18.0)}) for t in range(0, 300, 5)]
    (row,) = rep.memory_table(samples)
    assert row["pids"] == 2 and row["under_target"] and not row["growing"]


def test_bucket_quantile_reads_upper_bounds() -> None:
    counts = [0] * 13
    counts[4] = 99  # <= 100 ms
    counts[9] = 1  # <= 5 s
    assert bucket_quantile(counts, 0.5) == pytest.approx(100.0)
    assert bucket_quantile(counts, 1.0) == pytest.approx(5000.0)
    assert bucket_quantile([0] * 13, 0.5) is None


def test_compare_table_ratio_and_target() -> None:
    systems = {"ringtrap": {"msgs_per_s": 29.0}, "spamc": {"msgs_per_s": 30.0},
               "dirqueue": {"msgs_per_s": 21.0, "pickup": [{"depth": "0-1,000"}]}}
    t = rep.compare_table({"systems": systems})
    assert t["ringtrap_vs_spamc"] == pytest.approx(29 / 30, abs=1e-3)
    assert t["target_met"] is True
    assert t["dirqueue_vs_spamc"] == pytest.approx(0.7, abs=1e-3)
    assert t["dirqueue_pickup"] == [{"depth": "0-1,000"}]
    systems["ringtrap"]["msgs_per_s"] = 28.0
    assert rep.compare_table({"systems": systems})["target_met"] is False


def test_analysed_row_splits_by_arrival_and_tables_side_by_side() -> None:
    start, duration = 1000.0, 40.0
    # one message a second; every other one analysed in the first quarter, all in the last
    accepted = {f"m{t}": start + t for t in range(40)}
    analysed = {f"m{t}" for t in range(0, 10, 2)} | {f"m{t}" for t in range(30, 40)}
    analysed.add("not-accepted")
    row = rep.analysed_row("newest", accepted, analysed, start, duration, 1.25)
    assert row["accepted"] == 40 and row["analysed"] == 15
    assert row["fraction"] == pytest.approx(15 / 40)
    assert row["first_quarter"] == {"accepted": 10, "analysed": 5}
    assert row["last_quarter"] == {"accepted": 10, "analysed": 10}
    empty = rep.analysed_row("oldest", {}, set(), start, duration, None)
    assert empty["fraction"] is None
    row.update(scanner="rspamd", age_mean_s=0.5, age_max_s=2.0, purged=25, lost=0)
    table = rep.analysed_md([row, empty]).splitlines()
    assert table[2] == ("| rspamd | newest | 15 of 40 (37.5%) | 1.2 s | 0.5 s / 2.0 s | 25 |"
                        " 5 of 10 (50.0%) | 10 of 10 (100.0%) | 0 |")
    assert table[3] == "| spamd | oldest | - | - | - / - | - | - | - | - |"


def test_period_rows_cut_the_flood_at_its_purges() -> None:
    start = 1000.0
    # 30 s of flood, a purge every 10 s: one message a second
    accepted = {f"m{t}": start + t for t in range(30)}
    analysed = {f"m{t}" for t in range(0, 10)} | {"m25"}
    ages = [(3.0, 1.0), (9.5, 4.0), (12.0, 10.0), (29.0, 2.0)]
    purges = [{"t": 10.1, "why": "day", "dropped": 7}, {"t": 21.0, "why": "day", "dropped": 9},
              {"t": 30.4, "why": "flood", "dropped": 4}]
    rows = rep.period_rows(accepted, analysed, start, 30.0, 10.0, ages, purges)
    assert [(r["from_s"], r["to_s"]) for r in rows] == [(0, 10), (10, 20), (20, 30)]
    assert [(r["accepted"], r["analysed"]) for r in rows] == [(10, 10), (10, 0), (10, 1)]
    assert [r["fraction"] for r in rows] == [1.0, 0.0, 0.1]
    assert [r["dropped"] for r in rows] == [7, 9, 4]
    assert [(r["age_mean_s"], r["age_max_s"]) for r in rows] == [(2.5, 4.0), (10.0, 10.0),
                                                                 (2.0, 2.0)]
    # a last, shorter period; no purge at all: one period, the whole flood
    assert [r["to_s"] for r in rep.period_rows(accepted, analysed, start, 25.0, 10.0, [],
                                               [])] == [10, 20, 25]
    (whole,) = rep.period_rows(accepted, analysed, start, 30.0, 0.0, ages, purges[2:])
    assert (whole["accepted"], whole["analysed"], whole["dropped"]) == (30, 11, 4)
    text = rep.periods_md([{"scanner": "spamd", "drain_order": "oldest", "periods": rows}])
    assert text.splitlines()[3] == ("| spamd | oldest | 2: 10-20 | 10 | 0 of 10 (0.0%) |"
                                    " 10.0 s / 10.0 s | 9 |")
