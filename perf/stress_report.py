"""The stress harness's report: tables from the samples, the Markdown report, the charts.

Everything here is a pure function of the samples (one dict per second, see
``stress_sample``) and the run's summary, so a report can be redrawn from a
run's ``samples.jsonl`` and ``summary.json`` without running anything.
Charts need matplotlib (``pip install .[stress]``); it is imported only by
:func:`write_charts`.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ringtrap.base.counters import SCAN_BUCKETS

MIB = 1024 * 1024
TARGET_RSS = 40 * MIB  # every ringtrap process under this, excluding the ring's shared memory
TARGET_RATIO = 0.95  # ringtrap's scan throughput against spamc-direct at equal concurrency
GROWTH_SLACK = 2 * MIB  # more than this (and 5 %) between a process's first and last minute
WARMUP_S = 20.0  # a new process's first seconds (imports, first messages) are not its baseline
WINDOW_S = 60.0


def _mib(n: float | None) -> float | None:
    return None if n is None else round(n / MIB, 1)


def _fmt(v: Any, unit: str = "", nd: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{nd}f}{unit}"
    if isinstance(v, int):
        return f"{v:,}{unit}"
    return f"{v}{unit}"


def _quantile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(q * len(s) + 0.5) - 1))]


# --- tables from the samples -------------------------------------------------------


def flood_samples(samples: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The samples of the flood (and its drain), not of the side by side."""
    return [s for s in samples if s.get("phase") in ("flood", "drain")]


def memory_table(samples: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per ringtrap process role: peak and growth of its own resident memory.

    "own" is RSS minus shared memory (the ring's segment, fixed by
    configuration and shown separately).  Growth compares the median of a
    process's first minute (after its first 20 s) with the median of its last
    minute, for the longest-lived process of the role; a role whose process
    was restarted by chaos lists every pid it had.
    """
    series: dict[str, dict[int, list[tuple[float, dict[str, Any]]]]] = {}
    for s in flood_samples(samples):
        for label, r in (s.get("procs") or {}).items():
            series.setdefault(label, {}).setdefault(r["pid"], []).append((s["t"], r))
    rows = []
    for label in sorted(series, key=_role_order):
        pids = series[label]
        allr = [r for pts in pids.values() for _, r in pts]
        longest = max(pids.values(), key=lambda pts: pts[-1][0] - pts[0][0])
        born, died = longest[0][0], longest[-1][0]
        life = died - born
        first = [r["own"] for t, r in longest if born + WARMUP_S <= t <= born + WARMUP_S + WINDOW_S]
        last = [r["own"] for t, r in longest if t >= died - WINDOW_S]
        growth = None
        if life >= WARMUP_S + 2 * WINDOW_S and first and last:
            growth = statistics.median(last) - statistics.median(first)
        peak = max(r["own"] for r in allr)
        private = [r["private"] for r in allr if r.get("private") is not None]
        growing = growth is not None and growth > max(GROWTH_SLACK,
                                                       0.05 * statistics.median(first))
        cpu = [r["cpu_pct"] for r in allr if r.get("cpu_pct") is not None]
        rows.append({
            "process": label, "pids": len(pids), "lifetime_s": round(life),
            "cpu_mean_pct": round(statistics.mean(cpu), 1) if cpu else None,
            "peak_own_mib": _mib(peak),
            "peak_rss_mib": _mib(max(r["rss"] for r in allr)),
            "shmem_mib": _mib(max(r["shmem"] for r in allr)),
            "peak_private_mib": _mib(max(private)) if private else None,
            "first_min_mib": _mib(statistics.median(first)) if first else None,
            "last_min_mib": _mib(statistics.median(last)) if last else None,
            "growth_mib": None if growth is None else round(growth / MIB, 2),
            "under_target": peak < TARGET_RSS,
            "growing": growing,
        })
    return rows


def _role_order(label: str) -> tuple[int, int]:
    role, _, idx = label.partition(" ")
    rank = {"supervisor": 0, "ingest": 1, "worker": 2, "stage": 3}.get(role, 4)
    return rank, int(idx) if idx.isdigit() else 0


def spamd_memory(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """spamd's parent and children: RSS and private memory, for comparison with ringtrap's."""
    parent_rss, kid_rss, kid_priv, kid_count = [], [], [], []
    for s in flood_samples(samples):
        sp = s.get("spamd") or {}
        if sp.get("parent"):
            parent_rss.append(sp["parent"]["rss"])
        kids = sp.get("children") or []
        kid_count.append(len(kids))
        for k in kids:
            kid_rss.append(k["rss"])
            if k.get("private") is not None:
                kid_priv.append(k["private"])
    if not kid_rss:
        return {}
    return {
        "parent_rss_mib": _mib(statistics.median(parent_rss)) if parent_rss else None,
        "child_rss_median_mib": _mib(statistics.median(kid_rss)),
        "child_rss_peak_mib": _mib(max(kid_rss)),
        "child_private_median_mib": _mib(statistics.median(kid_priv)) if kid_priv else None,
        "children": max(kid_count),
    }


def flood_totals(samples: Sequence[dict[str, Any]], latencies: Sequence[float]
                 ) -> dict[str, Any]:
    """Totals and overall quantiles of the flood phase."""
    fs = [s for s in samples if s.get("phase") == "flood"]
    out: dict[str, Any] = {}
    for k in ("ok", "err", "tempfail", "down", "noreply"):
        out[k] = sum(s.get(k, 0) for s in fs)
    lat_ms = [x * 1000 for x in latencies]
    out["ingest_p50_ms"] = _round(_quantile(lat_ms, 0.5), 2)
    out["ingest_p99_ms"] = _round(_quantile(lat_ms, 0.99), 2)
    out["ingest_max_ms"] = _round(max(lat_ms) if lat_ms else None, 1)
    buckets = [0] * (len(SCAN_BUCKETS) + 1)
    for s in fs:
        for i, c in enumerate(s.get("scan_buckets") or []):
            buckets[i] += c
    from stress_sample import bucket_quantile

    out["scan_p50_ms"] = bucket_quantile(buckets, 0.5)
    out["scan_p99_ms"] = bucket_quantile(buckets, 0.99)
    proc = [s["processed_s"] for s in fs if s.get("processed_s") is not None]
    acc = [s["accepted_s"] for s in fs if s.get("accepted_s") is not None]
    out["processed_per_s"] = _round(statistics.mean(proc) if proc else None, 1)
    out["accepted_per_s"] = _round(statistics.mean(acc) if acc else None, 1)
    out["peak_overflow_files"] = max((s.get("ov_ready") or 0 for s in fs), default=0)
    out["peak_overflow_mib"] = _mib(max((s.get("ov_bytes") or 0 for s in fs), default=0))
    out["peak_oldest_s"] = max((s.get("ov_oldest_s") or 0 for s in fs), default=0)
    out["ring_shm_mib"] = _mib(max((s.get("ring_shm_bytes") or 0 for s in fs), default=0))
    e2e = [s["e2e_p50_s"] for s in fs if s.get("e2e_p50_s") is not None]
    out["queue_wait_median_of_p50_s"] = _round(statistics.median(e2e) if e2e else None, 1)
    return out


def _round(v: float | None, nd: int) -> float | None:
    return None if v is None else round(v, nd)


def compare_table(compare: dict[str, Any]) -> dict[str, Any]:
    """The side by side: msgs/s per system, ringtrap's and dirqueue's ratio to spamc-direct."""
    systems = compare.get("systems", {})
    rows = {name: systems[name] for name in ("ringtrap", "dirqueue", "spamc") if name in systems}
    base = rows.get("spamc", {}).get("msgs_per_s")

    def ratio(name: str) -> float | None:
        if name not in rows or not base:
            return None
        return round(rows[name]["msgs_per_s"] / base, 3)

    r = ratio("ringtrap")
    return {"rows": rows, "ringtrap_vs_spamc": r, "dirqueue_vs_spamc": ratio("dirqueue"),
            "target_met": None if r is None else r >= TARGET_RATIO,
            "dirqueue_pickup": rows.get("dirqueue", {}).get("pickup", [])}


# --- Markdown ---------------------------------------------------------------------------


def analysed_row(order: str, accepted: dict[str, float], analysed: set[str], start: float,
                 duration: float, mean_age_s: float | None) -> dict[str, Any]:
    """What one flood's drain order analysed: of everything accepted, and of
    what arrived in its first and last quarter (``accepted``: id -> arrival,
    wall-clock seconds; ``start``: when the flood began)."""
    quarter = duration / 4

    def share(lo: float, hi: float) -> tuple[int, int]:
        part = [m for m, t in accepted.items() if lo <= t - start < hi]
        return len(part), sum(1 for m in part if m in analysed)

    first = share(0.0, quarter)
    last = share(duration - quarter, float("inf"))
    done = sum(1 for m in accepted if m in analysed)
    return {
        "drain_order": order, "accepted": len(accepted), "analysed": done,
        "fraction": _round(done / len(accepted), 4) if accepted else None,
        "mean_age_s": mean_age_s,
        "first_quarter": {"accepted": first[0], "analysed": first[1]},
        "last_quarter": {"accepted": last[0], "analysed": last[1]},
    }


def period_rows(accepted: dict[str, float], analysed: set[str], start: float, duration: float,
                day: float, ages: Sequence[tuple[float, float]],
                purges: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The flood cut at its purges: one row per purge period.

    A period runs from one accelerated-day purge to the next (the whole
    flood when there is none; the last one ends with the flood and the
    purge that closes its ledger).  Each row has: what arrived in it
    (``accepted``: id -> arrival, wall-clock seconds; ``start``: when the
    flood began) and how much of that was ever analysed; the age of the
    analysed mail recorded in it (``ages``: (seconds into the flood when
    recorded, seconds since accepted)), mean and max; and what the purge at
    its end dropped (``purges``: the run's purges, ``t`` seconds into the
    flood, ``why`` "day" or "flood").
    """
    n = max(1, int(-(-duration // day))) if day > 0 else 1
    length = day if day > 0 else max(duration, 1e-9)
    rows = []
    for k in range(n):
        rows.append({"period": k + 1, "from_s": round(k * length, 1),
                     "to_s": round(min((k + 1) * length, duration), 1),
                     "accepted": 0, "analysed": 0, "fraction": None,
                     "age_mean_s": None, "age_max_s": None, "recorded": 0, "dropped": 0})

    def index(t: float) -> int:
        return min(n - 1, max(0, int(t // length)))

    for m, at in accepted.items():
        r = rows[index(at - start)]
        r["accepted"] += 1
        r["analysed"] += m in analysed
    by_period: list[list[float]] = [[] for _ in range(n)]
    for t, age in ages:
        by_period[index(t)].append(age)
    for p in purges:
        if p["why"] == "day":
            # a day purge runs just after its period's end (on the first tick past it)
            rows[min(n - 1, max(0, round(p["t"] / length) - 1))]["dropped"] += p["dropped"]
        elif p["why"] == "flood":
            rows[-1]["dropped"] += p["dropped"]
    for r, got in zip(rows, by_period, strict=True):
        if r["accepted"]:
            r["fraction"] = round(r["analysed"] / r["accepted"], 4)
        r["recorded"] = len(got)
        if got:
            r["age_mean_s"] = round(statistics.mean(got), 1)
            r["age_max_s"] = round(max(got), 1)
    return rows


def _pct(done: int, of: int) -> str:
    return f"{done:,} of {of:,} ({100 * done / of:.1f}%)" if of else "-"


def analysed_md(rows: Sequence[dict[str, Any]]) -> str:
    """The grid (scanner x drain order) side by side, one row each, as a Markdown table."""
    out = ["| scanner | drain order | analysed of accepted | age when taken up (mean) |"
           " age when recorded (mean / max) | dropped by purges | first quarter"
           " of the flood | last quarter | lost |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        purged = r.get("purged")
        out.append(f"| {r.get('scanner', 'spamd')} | {r['drain_order']} | "
                   f"{_pct(r['analysed'], r['accepted'])} | {_fmt(r['mean_age_s'], ' s')} | "
                   f"{_fmt(r.get('age_mean_s'), ' s')} / {_fmt(r.get('age_max_s'), ' s')} | "
                   f"{_fmt(purged)} | "
                   f"{_pct(r['first_quarter']['analysed'], r['first_quarter']['accepted'])} | "
                   f"{_pct(r['last_quarter']['analysed'], r['last_quarter']['accepted'])} | "
                   f"{_fmt(r.get('lost'))} |")
    return "\n".join(out) + "\n"


def periods_md(rows: Sequence[dict[str, Any]]) -> str:
    """Each grid row's purge periods, one line per period, as a Markdown table."""
    out = ["| scanner | drain order | period (s into the flood) | accepted | analysed |"
           " age when recorded (mean / max) | dropped by the purge |",
           "|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        for p in r.get("periods") or []:
            out.append(f"| {r.get('scanner', 'spamd')} | {r['drain_order']} | "
                       f"{p['period']}: {p['from_s']:g}-{p['to_s']:g} | {p['accepted']:,} | "
                       f"{_pct(p['analysed'], p['accepted'])} | "
                       f"{_fmt(p['age_mean_s'], ' s')} / {_fmt(p['age_max_s'], ' s')} | "
                       f"{p['dropped']:,} |")
    return "\n".join(out) + "\n"


def headline(summary: dict[str, Any]) -> str:
    """The ledger's verdict (with the lost ids, if any) and the side-by-side ratio."""
    led = summary["ledger"]
    text = (f"lost = {led['lost']} (accepted {led['accepted']:,}: recorded {led['recorded']:,}, "
            f"purged {led['purged']:,}, quarantined {led['quarantined']:,})")
    cmp_ = summary.get("compare") or {}
    if cmp_.get("ringtrap_vs_spamc") is not None:
        text += f"; ringtrap / spamc-direct = {cmp_['ringtrap_vs_spamc']:.1%}"
    if led["lost_ids"]:
        text += "\nlost ids: " + " ".join(led["lost_ids"])
    return text


def markdown(summary: dict[str, Any]) -> str:
    """The whole report as Markdown."""
    s = summary
    out: list[str] = []
    w = out.append
    kind = "smoke run" if s["smoke"] else "run"
    w(f"# ringtrap stress {kind}, {s['started']}\n")
    w(f"`{s['command']}`\n")
    h = s["host"]
    w(f"ringtrap {s['version']}; host: {h['cpus']} CPUs, "
      f"{h['mem_total'] / 2**30:.0f} GiB RAM, load average {h['load_at_start'][0]} at the "
      f"start and {h['load_at_end'][0]} at the end. The machine is shared with other work "
      f"(other engineers' test runs): rates and latencies carry that noise; the side by side "
      f"reports the CPU others used during each measured window.\n")
    w("## Verdict\n")
    led = s["ledger"]
    w(f"* **Ledger: lost = {led['lost']}.** {led['accepted']:,} messages got `OK`: "
      f"{led['recorded']:,} recorded, {led['purged']:,} dropped by a purge (by id), "
      f"{led['quarantined']:,} quarantined.")
    if led["lost"]:
        shown = ", ".join(led["lost_ids"][:50])
        w(f"  Lost ids ({led['lost']}): {shown}{' ...' if led['lost'] > 50 else ''}")
    mem = s["memory"]
    if mem:
        worst = max(mem, key=lambda r: r["peak_own_mib"])
        over = [r["process"] for r in mem if not r["under_target"]]
        grow = [r["process"] for r in mem if r["growing"]]
        w(f"* **Memory target (every ringtrap process under 40 MiB, none growing): "
          f"{'met' if not over and not grow else 'NOT met'}.** Highest: {worst['process']} at "
          f"{worst['peak_own_mib']} MiB"
          + (f"; over 40 MiB: {', '.join(over)}" if over else "")
          + (f"; growing: {', '.join(grow)}" if grow else "") + ".")
    cmp_ = s.get("compare")
    if cmp_ and cmp_.get("ringtrap_vs_spamc") is not None:
        w(f"* **Throughput target (ringtrap >= 95% of spamc-direct at equal concurrency): "
          f"{'met' if cmp_['target_met'] else 'NOT met'}** — "
          f"{cmp_['ringtrap_vs_spamc']:.1%}.")
    w("")
    w("## The flood\n")
    f = s["flood"]
    c = s["config"]
    w(f"* profile: {f['profile']}; {f['clients']} concurrent clients; about "
      f"{f['expected']:,} messages offered, {f['shed']:,} shed because every client was busy")
    w(f"* messages: {f['messages']}; sizes p50 {f['sizes']['p50']:,} B, p90 "
      f"{f['sizes']['p90']:,} B, p99 {f['sizes']['p99']:,} B, max {f['sizes']['max']:,} B")
    w(f"* trap: {c['workers']} workers, ring {c['ring_slots']} slots of "
      f"{c['slot_bytes'] // 1024} KiB, overflow cap {c['overflow_max'] / MIB:.0f} MiB, "
      f"max message {c['max_message'] / MIB:g} MiB, scan limit {c['scan_limit'] // 1024} KiB; "
      f"scanner: {c['spamd']}")
    w(f"* chaos: {', '.join(f['chaos']) or 'off'}"
      + (f", one action every {f['chaos_every_s']:g} s after the last recovered"
         if f["chaos"] else ""))
    w("* accelerated day: "
      + (f"the overflow purged every {f['day_s']:g} s" if f["day_s"] else "off"))
    w("")
    t = s["totals"]
    w("| intake | count |\n|---|---:|")
    for k, label in (("ok", "OK (accepted)"), ("err", "ERR (refused: too large)"),
                     ("tempfail", "TEMPFAIL (overflow full, busy, shutting down)"),
                     ("down", "socket unavailable (trap restarting)"),
                     ("noreply", "no reply (ingest killed mid-message)")):
        w(f"| {label} | {t[k]:,} |")
    w("")
    w("| measure | value |\n|---|---:|")
    w(f"| accepted per second (mean) | {_fmt(t['accepted_per_s'])} |")
    w(f"| processed per second (mean) | {_fmt(t['processed_per_s'])} |")
    w(f"| ingest latency p50 / p99 / max | {_fmt(t['ingest_p50_ms'], ' ms', 2)} / "
      f"{_fmt(t['ingest_p99_ms'], ' ms', 2)} / {_fmt(t['ingest_max_ms'], ' ms')} |")
    w(f"| spamd scan time p50 / p99 (bucket bounds) | {_fmt(t['scan_p50_ms'], ' ms', 0)} / "
      f"{_fmt(t['scan_p99_ms'], ' ms', 0)} |")
    w(f"| peak overflow backlog | {t['peak_overflow_files']:,} files, "
      f"{_fmt(t['peak_overflow_mib'], ' MiB')}, oldest {_fmt(t['peak_oldest_s'], ' s', 0)} |")
    w(f"| ring shared memory (fixed) | {_fmt(t['ring_shm_mib'], ' MiB')} |")
    w("")
    ev = s["chaos_events"]
    if ev:
        w("### Chaos\n")
        w("| t (s) | action | pid | what | recovered in |\n|---:|---|---:|---|---:|")
        for e in ev:
            what = e.get("error") or e.get("detail", "")
            w(f"| {e['t']:.0f} | {e['action']} | {e.get('pid', '-')} | {what} | "
              f"{_fmt(e.get('recovered_s'), ' s', 2)} |")
        w("")
    if s["purges"]:
        w("### Purges\n")
        w("| t (s) | why | dropped | bytes | took |\n|---:|---|---:|---:|---:|")
        for p in s["purges"]:
            w(f"| {p['t']:.0f} | {p['why']} | {p['dropped']:,} | {p['bytes']:,} | "
              f"{p['took_s'] * 1000:.0f} ms |")
        w("")
    w("## Memory\n")
    w("Own memory is the process's resident set minus shared memory: the ring's segment "
      "(fixed by `ring.slots` x `ring.slot_bytes`) is mapped by every ringtrap process and "
      "counted once, below. Private is from smaps_rollup (pages no other process shares). "
      "Growth compares the median of the first minute (after 20 s) with the last minute of "
      "the longest-lived process of each role; '-' when it lived under 140 s.\n")
    w("| process | pids | mean CPU | peak own | peak RSS (incl. ring) | ring shm | "
      "peak private | first min | last min | growth | < 40 MiB | growing |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for r in mem:
        w(f"| {r['process']} | {r['pids']} | {_fmt(r.get('cpu_mean_pct'), ' %')} | "
          f"{_fmt(r['peak_own_mib'], ' MiB')} | "
          f"{_fmt(r['peak_rss_mib'], ' MiB')} | {_fmt(r['shmem_mib'], ' MiB')} | "
          f"{_fmt(r['peak_private_mib'], ' MiB')} | {_fmt(r['first_min_mib'], ' MiB')} | "
          f"{_fmt(r['last_min_mib'], ' MiB')} | {_fmt(r['growth_mib'], ' MiB', 2)} | "
          f"{'yes' if r['under_target'] else 'NO'} | {'YES' if r['growing'] else 'no'} |")
    sm = s.get("spamd_memory") or {}
    if sm:
        w(f"\nFor comparison, spamd: parent {_fmt(sm['parent_rss_mib'], ' MiB')} RSS; "
          f"{sm['children']} children of {_fmt(sm['child_rss_median_mib'], ' MiB')} RSS each "
          f"(median; peak {_fmt(sm['child_rss_peak_mib'], ' MiB')}), "
          f"{_fmt(sm['child_private_median_mib'], ' MiB')} private.")
    w(f"\nThe overflow is tmpfs capped at {c['overflow_max'] / MIB:.0f} MiB "
      f"(peak use {_fmt(t['peak_overflow_mib'], ' MiB')}).\n")
    grid = s.get("grid") or ([s["analysed"]] if s.get("analysed", {}).get("periods")
                             else [])
    if grid:
        w("## Analysed, by scanner and drain order\n")
        w("Messages scanned (or recorded from a campaign repeat) over messages accepted,"
          " and by when they arrived in the flood; each row had a flood of its own,"
          " the same profile and message set, one after the other, and a scanner of its"
          " own. The age when taken up is the trap's (accepted until a worker claimed it);"
          " the age when recorded is the harness's (accepted until its record appeared,"
          " to the second).\n")
        w(analysed_md(grid))
        if any(r.get("periods") for r in grid):
            w("### By purge period\n")
            w("Each period ends with a purge (the accelerated day's, or the one that closes"
              " the ledger): what arrived in it and how much of that was ever analysed, the"
              " age of the analysed mail recorded in it, and what the purge at its end"
              " dropped (the overflow-full chaos action's messages included).\n")
            w(periods_md(grid))
    if cmp_:
        _compare_md(w, s, cmp_)
    if s.get("pickup_cost"):
        _pickup_md(w, s["pickup_cost"])
    if s.get("charts"):
        w("## Charts\n")
        for name in s["charts"]:
            w(f"![{name}]({name})\n")
    w("## Ledger details\n")
    w("| phase | accepted | lost |\n|---|---:|---:|")
    for ph, v in led["by_phase"].items():
        w(f"| {ph} | {v['accepted']:,} | {v['lost']:,} |")
    w(f"\nRecords with no `OK` seen by a client (stored the instant before an ingest was "
      f"killed; the MTA retries those): {led['unacknowledged_records']:,}. "
      f"Ids answered twice: {led['duplicate_oks']}.\n")
    if led["top_reasons"]:
        w("Refusals and failures by reason:\n")
        for reason, n in led["top_reasons"].items():
            w(f"* {reason}: {n:,}")
        w("")
    w("## Timings\n")
    w(", ".join(f"{k} {v:g} s" for k, v in s["phase_times"].items()) + "\n")
    if s["notes"]:
        w("## Notes\n")
        for n in s["notes"]:
            w(f"* {n}")
        w("")
    return "\n".join(out) + "\n"


def _compare_md(w: Any, s: dict[str, Any], cmp_: dict[str, Any]) -> None:
    raw = s.get("compare_raw") or {}
    w("## Side by side\n")
    n = raw.get("workers")
    w(f"The same {raw.get('depth', 0):,}-message backlog ({raw.get('distinct', 0)} distinct "
      f"bodies of the flood's set, each under the scan limit, "
      f"{raw.get('set_bytes', 0) / MIB:.0f} MiB), the same spamd with {n} children and {n} "
      f"consumers each: ringtrap's workers draining its ring and overflow (preloaded through "
      f"the ingest); a directory queue with IPC::DirQueue's ordered pickup (list and sort the "
      f"queue, link a lock, read, unlink) and ringtrap's spamd client; `spamc -y` loops with "
      f"no queue at all. The three were measured in {raw.get('rounds')} rounds of "
      f"{raw.get('slice_s', 0):g} s slices in rotating order, the other two paused "
      f"(SIGSTOP) meanwhile, after {raw.get('warmup_s', 0):g} s of unmeasured warm-up each, "
      f"so the drift of the machine's other load falls evenly on all three.\n")
    w("| system | msgs/s scanned end to end | vs spamc-direct | slices min-max | queue CPU "
      "per msg | spamd CPU per msg | others' load (cores) | backlog left |")
    w("|---|---:|---:|---|---:|---:|---:|---:|")
    rows = cmp_["rows"]
    base = rows.get("spamc", {}).get("msgs_per_s")
    labels = {"ringtrap": "**ringtrap**", "dirqueue": "dirqueue (IPC::DirQueue, ordered)",
              "spamc": "spamc-direct"}
    for name, r in rows.items():
        ratio = f"{r['msgs_per_s'] / base:.1%}" if base else "-"
        pr = r.get("per_round") or [0.0]
        w(f"| {labels[name]} | {r['msgs_per_s']:.2f} ({r['done']:,} in {r['seconds']:g} s) | "
          f"{ratio} | {min(pr):.1f}-{max(pr):.1f} | "
          f"{_fmt(r['queue_cpu_ms_per_msg'], ' ms', 2)} | "
          f"{_fmt(r['spamd_cpu_ms_per_msg'], ' ms')} | {_fmt(r['other_load_cores'], '', 2)} | "
          f"{r['backlog_left']:,} |")
    w("\nQueue CPU: for ringtrap every ringtrap process (supervisor, ingest, workers: parse, "
      "prefilters, records, dedupe, spamd client); for the directory queue its workers "
      "(pickup, spamd client, record); for spamc-direct the shells and the `spamc` "
      "processes.\n")
    if cmp_.get("dirqueue_pickup"):
        w("Directory-queue pickups as its workers timed them (CPU time) during the side by "
          "side:\n")
        w("| queue depth | pickups | mean pickup CPU |\n|---|---:|---:|")
        for b in cmp_["dirqueue_pickup"]:
            w(f"| {b['depth']} | {b['pickups']:,} | {b['mean_ms']:.2f} ms |")
        w("")


def _pickup_md(w: Any, rows: list[dict[str, Any]]) -> None:
    w("## Pickup cost by queue depth\n")
    w("One consumer taking the next message, reading it and removing it, at a constant "
      "depth (4 KiB messages on tmpfs, no spamd): pickups per second.\n")
    w("| depth | dirqueue ordered | dirqueue unordered | ringtrap overflow | ringtrap ring "
      "(full, depth = slots) |")
    w("|---:|---:|---:|---:|---:|")
    for r in rows:
        w(f"| {r['depth']:,} | {r['dirqueue_ordered']:,.0f} | {r['dirqueue_unordered']:,.0f} | "
          f"{r['overflow']:,.0f} | {r['ring']:,.0f} ({r['ring_depth']:,}) |")
    w("")


# --- charts ------------------------------------------------------------------------------


def write_charts(samples: Sequence[dict[str, Any]], summary: dict[str, Any], out: Path
                 ) -> list[Path]:
    """Draw the PNG charts into ``out`` and return their paths.

    Raises ImportError when matplotlib is not installed.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fs = flood_samples(samples)
    if not fs:
        return []
    written = []
    panels = (("backlog", _backlog), ("rates", _rates), ("latency", _latency),
              ("memory", _memory))
    for name, draw in panels:
        fig, ax = plt.subplots(figsize=(11, 3.6), dpi=90)
        draw(ax, fs, summary)
        _events(ax, summary)
        ax.set_xlabel("seconds into the flood")
        fig.tight_layout()
        path = out / f"{name}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    fig, axes = plt.subplots(4, 1, figsize=(11, 11), dpi=72, sharex=True)
    for ax, (_, draw) in zip(axes, panels, strict=True):
        draw(ax, fs, summary)
        _events(ax, summary)
    axes[-1].set_xlabel("seconds into the flood")
    fig.suptitle(_title(summary), fontsize=10)
    fig.tight_layout()
    path = out / "overview.png"
    fig.savefig(path)
    plt.close(fig)
    written.append(path)
    if summary.get("compare") or summary.get("pickup_cost"):
        written.append(_compare_chart(plt, summary, out))
    grid = [r for r in summary.get("grid") or [summary.get("analysed") or {}]
            if r.get("periods")]
    if grid:
        written.append(_analysed_chart(plt, grid, out))
    return written


def _title(summary: dict[str, Any]) -> str:
    f = summary["flood"]
    led = summary["ledger"]
    chaos = ", ".join(f["chaos"]) or "none"
    day = f"purge every {f['day_s']:g} s" if f["day_s"] else "no purge"
    return (f"ringtrap flood: {f['profile']}; {day}\nchaos: {chaos}; "
            f"accepted {led['accepted']:,}, lost = {led['lost']}")


def _xs(fs: Sequence[dict[str, Any]]) -> list[float]:
    return [s["t"] for s in fs]


def _ys(fs: Sequence[dict[str, Any]], key: str, scale: float = 1.0) -> list[float]:
    return [float("nan") if s.get(key) is None else s[key] * scale for s in fs]


def _events(ax: Any, summary: dict[str, Any]) -> None:
    """Purges as dotted lines, chaos actions as short dashes along the top."""
    for p in summary.get("purges", []):
        if p["why"] == "day":
            ax.axvline(p["t"], color="0.55", linestyle=":", linewidth=1)
    for e in summary.get("chaos_events", []):
        ax.plot([e["t"]], [1.0], marker=CHAOS_MARKS.get(e["action"], "o"), color="crimson",
                transform=ax.get_xaxis_transform(), clip_on=False, markersize=6,
                linestyle="none")


# legends sit right of the plot, clear of the data
LEGEND: dict[str, Any] = {"loc": "upper left", "bbox_to_anchor": (1.07, 1.0), "fontsize": 7,
                          "borderaxespad": 0.0}

CHAOS_MARKS = {"worker": "v", "ingest": "s", "supervisor": "*", "spamd-child": "x",
               "spamd": "X", "overflow-full": "D"}


def _chaos_legend(ax: Any, summary: dict[str, Any]) -> list[Any]:
    """Legend handles for the chaos marks that occur in this run."""
    from matplotlib.lines import Line2D

    seen = list(dict.fromkeys(e["action"] for e in summary.get("chaos_events", [])))
    return [Line2D([], [], marker=CHAOS_MARKS.get(a, "o"), color="crimson", linestyle="none",
                   label=f"kill {a}" if a != "overflow-full" else "overflow filled")
            for a in seen]


def _backlog(ax: Any, fs: Sequence[dict[str, Any]], summary: dict[str, Any]) -> None:
    x = _xs(fs)
    ax.plot(x, _ys(fs, "ov_ready"), label="overflow: files waiting", color="tab:blue")
    ax.plot(x, _ys(fs, "ring_used"), label="ring: slots used", color="tab:green")
    ax.set_ylabel("messages")
    ax2 = ax.twinx()
    ax2.plot(x, _ys(fs, "ov_bytes", 1 / MIB), label="overflow MiB", color="tab:orange",
             linewidth=1)
    ax2.plot(x, _ys(fs, "ov_oldest_s"), label="oldest waiting (s)", color="tab:purple",
             linewidth=1, linestyle="--")
    ax2.set_ylabel("MiB  /  seconds")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    marks = _chaos_legend(ax, summary)
    ax.legend(h1 + h2 + marks, l1 + l2 + [m.get_label() for m in marks], **LEGEND)
    ax.set_title("backlog: ring, overflow (dotted lines: purges; marks on top: chaos)",
                 fontsize=9)


def _rates(ax: Any, fs: Sequence[dict[str, Any]], summary: dict[str, Any]) -> None:
    x = _xs(fs)
    ax.plot(x, _ys(fs, "offered"), label="offered", color="0.6", linestyle="--")
    ax.plot(x, [s.get("ok", 0) for s in fs], label="accepted (OK)", color="tab:blue")
    ax.plot(x, _ys(fs, "processed_s"), label="processed", color="tab:green")
    ax.plot(x, [s.get("tempfail", 0) + s.get("down", 0) + s.get("noreply", 0) for s in fs],
            label="TEMPFAIL / down / no reply", color="tab:red", linewidth=1)
    ax.set_ylabel("messages / s")
    ax.legend(**LEGEND)
    ax.set_title("rates: intake never waits for scanning; scanning runs at spamd's pace",
                 fontsize=9)


def _latency(ax: Any, fs: Sequence[dict[str, Any]], summary: dict[str, Any]) -> None:
    x = _xs(fs)
    ax.plot(x, _ys(fs, "lat_p50_ms"), label="ingest p50", color="tab:blue", linewidth=1)
    ax.plot(x, _ys(fs, "lat_p99_ms"), label="ingest p99", color="tab:blue", linestyle="--",
            linewidth=1)
    ax.plot(x, _ys(fs, "scan_p50_ms"), label="spamd scan p50", color="tab:green", linewidth=1)
    ax.plot(x, _ys(fs, "scan_p99_ms"), label="spamd scan p99", color="tab:green",
            linestyle="--", linewidth=1)
    ax.plot(x, _ys(fs, "e2e_p50_s", 1000), label="accepted -> recorded p50", color="tab:purple",
            linewidth=1)
    ax.set_yscale("log")
    ax.set_ylabel("ms")
    ax.legend(**LEGEND)
    ax.set_title("latency: the client's wait stays flat whatever the backlog", fontsize=9)


def _memory(ax: Any, fs: Sequence[dict[str, Any]], summary: dict[str, Any]) -> None:
    x = _xs(fs)
    labels = sorted({k for s in fs for k in (s.get("procs") or {})}, key=_role_order)
    for label in labels:
        ys = [float("nan") if label not in (s.get("procs") or {})
              else s["procs"][label]["own"] / MIB for s in fs]
        ax.plot(x, ys, label=label, linewidth=1)
    kids = [[k["rss"] / MIB for k in (s.get("spamd") or {}).get("children") or []] for s in fs]
    med = [statistics.median(k) if k else float("nan") for k in kids]
    ax.plot(x, med, label="spamd child (median RSS)", color="0.4", linestyle="--",
            linewidth=1)
    ax.axhline(TARGET_RSS / MIB, color="crimson", linewidth=1, linestyle="-.",
               label="target 40 MiB")
    ax.set_ylabel("MiB resident (excl. ring)")
    ax.set_ylim(bottom=0)
    ax.legend(**LEGEND)
    ax.set_title("memory: each ringtrap process flat and far below one spamd child", fontsize=9)


def _compare_chart(plt: Any, summary: dict[str, Any], out: Path) -> Path:
    cmp_ = summary.get("compare") or {}
    picks = summary.get("pickup_cost") or []
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=90)
    rows = cmp_.get("rows", {})
    names = list(rows)
    labels = {"ringtrap": "ringtrap", "dirqueue": "dirqueue (ordered)", "spamc": "spamc-direct"}
    colors = {"ringtrap": "tab:green", "dirqueue": "tab:blue", "spamc": "tab:gray"}
    a1.bar([labels[n] for n in names], [rows[n]["msgs_per_s"] for n in names],
           color=[colors[n] for n in names])
    a1.set_ylabel("messages / s scanned")
    a1.set_title("same spamd, same concurrency, same backlog", fontsize=9)
    if picks:
        d = [p["depth"] for p in picks]
        for key, label in (("dirqueue_ordered", "dirqueue ordered"),
                           ("dirqueue_unordered", "dirqueue unordered"),
                           ("overflow", "ringtrap overflow"), ("ring", "ringtrap ring")):
            a2.plot(d, [p[key] for p in picks], marker="o", label=label)
        a2.set_xscale("log")
        a2.set_yscale("log")
        a2.set_xlabel("queue depth")
        a2.set_ylabel("pickups / s, one consumer")
        a2.legend(fontsize=7)
        a2.set_title("pickup cost by backlog", fontsize=9)
    fig.tight_layout()
    path = out / "compare.png"
    fig.savefig(path)
    plt.close(fig)
    return path


ORDER_STYLE = {"oldest": "-", "newest": "--"}
SCANNER_COLOR = {"spamd": "tab:blue", "rspamd": "tab:orange"}


def _analysed_chart(plt: Any, grid: Sequence[dict[str, Any]], out: Path) -> Path:
    """analysed.png: per purge period and per (scanner, drain order), the analysed
    fraction of what arrived in it (top) and the age of what was recorded (bottom)."""
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(11, 6.4), dpi=90, sharex=True)
    for r in grid:
        ps = r["periods"]
        x = [(p["from_s"] + p["to_s"]) / 2 for p in ps]
        scanner = r.get("scanner", "spamd")
        color = SCANNER_COLOR.get(scanner, "tab:gray")
        style = ORDER_STYLE.get(r["drain_order"], ":")
        label = f"{scanner}, {r['drain_order']} first"
        a1.plot(x, [float("nan") if p["fraction"] is None else 100 * p["fraction"] for p in ps],
                marker="o", color=color, linestyle=style, label=label)
        a2.plot(x, [float("nan") if p["age_mean_s"] is None else p["age_mean_s"] for p in ps],
                marker="o", color=color, linestyle=style, label=f"{label}: mean")
        a2.plot(x, [float("nan") if p["age_max_s"] is None else p["age_max_s"] for p in ps],
                marker="^", color=color, linestyle=style, linewidth=0.8, alpha=0.6,
                label=f"{label}: max")
    edges = sorted({p["to_s"] for r in grid for p in r["periods"]})
    for ax in (a1, a2):
        for e in edges[:-1]:
            ax.axvline(e, color="0.55", linestyle=":", linewidth=1)
    a1.set_ylabel("% of the period's mail analysed")
    a1.set_ylim(0, 105)
    a1.legend(**LEGEND)
    a1.set_title("analysed fraction per purge period (dotted lines: the purges)", fontsize=9)
    a2.set_yscale("log")
    from matplotlib.ticker import FuncFormatter

    a2.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    a2.set_ylabel("seconds since accepted")
    a2.set_xlabel("seconds into the flood (each point: one purge period)")
    a2.legend(**LEGEND)
    a2.set_title("age of the mail analysed in the period, when its record appeared",
                 fontsize=9)
    fig.tight_layout()
    path = out / "analysed.png"
    fig.savefig(path)
    plt.close(fig)
    return path


__all__ = [
    "TARGET_RATIO", "TARGET_RSS", "analysed_md", "analysed_row", "compare_table",
    "flood_totals", "headline", "markdown", "memory_table", "period_rows", "periods_md",
    "spamd_memory", "write_charts",
]
