#!/usr/bin/env python3
"""Run one benchmark on an older revision and on this tree, interleaved.

    python3 perf/compare_trees.py REV ring_bench.py --rounds 6 -- --only ring -n 100000 --runs 1
    python3 perf/compare_trees.py REV ingest_bench.py -- --only ring,full --clients 32 --runs 1

REV is exported with ``git archive`` into a temporary directory; each round
runs the benchmark script of the old tree, then that of this one (each
script puts its own tree first on ``sys.path``), with the arguments after
``--`` and ``--json``.  The machines are shared and noisy, so the rounds
alternate and the table shows, per row and measure, the median of each side
and the median of the per-round ratios new/old.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# the measures worth comparing, and whether more is better
MEASURES = {"msgs_per_s": True, "server_cpu_us_per_msg": False, "queued_cpu_us_per_msg": False}


def export(rev: str, into: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True,
                             capture_output=True).stdout
    tar = into / "tree.tar"
    tar.write_bytes(archive)
    with tarfile.open(tar) as t:
        t.extractall(into / "old", filter="data")
    return into / "old"


def run(tree: Path, script: str, args: list[str]) -> dict[str, dict[str, float]]:
    out = subprocess.run([sys.executable, str(tree / "perf" / script), *args, "--json"],
                         check=True, capture_output=True, text=True, cwd=tree).stdout
    rows = {}
    for row in json.loads(out):
        key = " ".join(str(row[k]) for k in ("name", "topology", "clients") if k in row)
        rows[key] = {m: float(row[m]) for m in MEASURES if row.get(m) is not None}
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("rev", help="the older revision, e.g. a commit or tag")
    p.add_argument("script", help="a benchmark in perf/, e.g. ring_bench.py")
    p.add_argument("--rounds", type=int, default=6, help="old/new pairs (default 6)")
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    a = p.parse_args(argv[:cut])
    args = argv[cut + 1:]  # the benchmark's own arguments, after --
    with tempfile.TemporaryDirectory() as tmp:
        old_tree = export(a.rev, Path(tmp))
        pairs = []
        for i in range(a.rounds):
            old = run(old_tree, a.script, args)
            new = run(ROOT, a.script, args)
            pairs.append((old, new))
            print(f"round {i + 1}/{a.rounds} done", file=sys.stderr)
    print(f"| row | measure | {a.rev[:10]} | this tree | new/old (median of rounds) |")
    print("|---|---|---|---|---|")
    for key in pairs[0][1]:
        for m in MEASURES:
            both = [(o[key][m], n[key][m]) for o, n in pairs
                    if key in o and m in o[key] and m in n.get(key, {})]
            if not both:
                continue
            ratio = statistics.median(n / o for o, n in both if o)
            print(f"| {key} | {m} | {statistics.median(o for o, _ in both):,.1f} | "
                  f"{statistics.median(n for _, n in both):,.1f} | {ratio:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
