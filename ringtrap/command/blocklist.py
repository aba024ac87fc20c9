"""``ringtrap blocklist``: the relays that hit the trap, written or shown now.

Without options it writes every file ``[blocklist]`` names (as the running
trap does every ``blocklist.interval`` seconds) and prints the listed
entries as a table; ``--format`` prints one format on standard output
instead and writes nothing.  The lines of the result files it could not
read are counted on standard error, never fatal.
"""

from __future__ import annotations

import argparse
import sys
import time

from ringtrap.base.exits import EX_CONFIG
from ringtrap.config import Config
from ringtrap.control import blockfiles
from ringtrap.control.blocklist import ReadCounts, Result, compute


def _table(result: Result) -> str:
    rows = [("network", "hits", "recipients", "campaigns", "first", "last")]
    rows += [(str(e.network), str(e.hits), str(len(e.recipients)), str(len(e.campaigns)),
              d["first"], d["last"]) for e in result.listed for d in (e.to_dict(),)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for r in rows:
        cells = [c.ljust(w) if i == 0 else c.rjust(w) if i < 4 else c
                 for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out) + "\n"


def _n(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def summary(result: Result, counts: ReadCounts) -> str:
    """One line on what was read and why what is not listed is not."""
    c = result.counted
    return (f"{len(result.listed)} listed ({len(result.by_version(4))} IPv4,"
            f" {len(result.by_version(6))} IPv6) of {result.candidates} relays;"
            f" {result.below_threshold} below the thresholds, {result.expired} expired,"
            f" {result.overlapping} overlapping a network never listed;"
            f" {_n(c.hits, 'hit')} from {_n(counts.lines, 'line')} in"
            f" {_n(counts.files, 'file')}, {_n(counts.skipped, 'line')} skipped (not a record),"
            f" {c.no_relay} without relay,"
            f" {c.never_listed} from ranges never listed, {c.other_verdicts} of other verdicts")


def run(cfg: Config, args: argparse.Namespace) -> int:
    """The command's body; the exit code."""
    now = time.time()
    if args.format:
        result, counts = compute(cfg, now)
        sys.stdout.write(blockfiles.render_one(cfg, args.format, result, counts, now).decode())
        print(summary(result, counts), file=sys.stderr)
        return 0
    try:
        done = blockfiles.write_all(cfg, now)
    except OSError as e:
        print(f"ringtrap: blocklist: {e.filename or ''}: {e.strerror}", file=sys.stderr)
        return EX_CONFIG
    sys.stdout.write(_table(done.result))
    print(summary(done.result, done.counts), file=sys.stderr)
    for name, path in done.paths.items():
        print(f"wrote {path} ({name})", file=sys.stderr)
    if not done.paths:
        print("no file written: [blocklist] names none (rbldnsd_ip4, rbldnsd_ip6, postfix,"
              " plain, json); --format FORMAT prints one", file=sys.stderr)
    return 0
