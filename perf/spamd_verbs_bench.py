"""What each spamd verb costs: CHECK, SYMBOLS, REPORT and HEADERS on the same messages.

ringtrap scans with REPORT, the one verb whose reply holds each rule's
score (SYMBOLS names the rules only; HEADERS carries ``X-Spam-Status`` with
``tests=_TESTS_``, names again, unless the spamd's own configuration adds
``_TESTSSCORES_``).  This measures what that choice costs on a real spamd
(tests/spamd_fixture.py, ``--local``, two children): spamd's CPU per message
(its process tree, reaped children included) and the reply's bytes.

The messages are the campaign benchmark's corpus (perf/dedupe_bench.py),
every one distinct, sent one at a time over the Unix socket.  The verbs take
turns message by message, over ``--rounds`` rounds, so a slower phase of a
shared machine weighs on every verb alike; the table shows the median
round.

    python3 perf/spamd_verbs_bench.py             # 48 messages, 3 rounds
    python3 perf/spamd_verbs_bench.py -n 100 --json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "perf")]

from dedupe_bench import corpus  # noqa: E402
from scanner_bench import tree_cpu  # noqa: E402
from spamd_fixture import SpamdProcess, spamd_missing_reason  # noqa: E402

from ringtrap.scan.spamd import SpamdClient, parse_report_rules  # noqa: E402

VERBS = ("CHECK", "SYMBOLS", "REPORT", "HEADERS")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("-n", "--messages", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = ap.parse_args(argv)
    reason = spamd_missing_reason()
    if reason:
        print(reason, file=sys.stderr)
        return 2
    msgs = [m for m, _ in corpus(args.messages, seed=7, singles=1.0)]
    with SpamdProcess(max_children=2) as spamd:
        client = SpamdClient(spamd.unix_address, timeout=120.0)
        for m in msgs[:4]:
            client.check(m)  # the children's first scans load what they load lazily
        cpu: dict[str, list[float]] = {v: [] for v in VERBS}
        size: dict[str, int] = dict.fromkeys(VERBS, 0)
        rules: dict[str, int] = dict.fromkeys(VERBS, 0)
        for _ in range(args.rounds):
            spent = dict.fromkeys(VERBS, 0.0)
            for m in msgs:
                for verb in VERBS:
                    head = (verb.encode() + b" SPAMC/1.5\r\nContent-length: %d\r\n\r\n"
                            % len(m))
                    before = tree_cpu(spamd.pid)
                    reply = client._call(verb, head, m)
                    spent[verb] += tree_cpu(spamd.pid) - before
                    size[verb] += len(reply)
                    if verb == "REPORT":
                        rules[verb] += len(parse_report_rules(reply.partition(b"\r\n\r\n")[2]))
                    elif verb == "SYMBOLS":
                        body = reply.partition(b"\r\n\r\n")[2]
                        rules[verb] += len([r for r in body.split(b",") if r.strip()])
            for verb in VERBS:
                cpu[verb].append(spent[verb] / len(msgs) * 1000)
    n = len(msgs) * args.rounds
    rows: list[dict[str, Any]] = [{
        "verb": verb,
        "messages": len(msgs),
        "rounds": args.rounds,
        "spamd_cpu_ms_per_msg": round(statistics.median(cpu[verb]), 1),
        "spamd_cpu_ms_rounds": [round(c, 1) for c in cpu[verb]],
        "reply_bytes_per_msg": round(size[verb] / n),
        "rules_per_msg": round(rules[verb] / n, 2) if verb in ("SYMBOLS", "REPORT") else None,
    } for verb in VERBS]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{len(msgs)} messages, one at a time, spamd with 2 children, {os.cpu_count()} CPUs,"
          f" median of {args.rounds} rounds")
    print(f"{'verb':<8} {'spamd CPU ms/msg':>17} {'rounds':>20} {'reply bytes/msg':>16}"
          f" {'rules/msg':>10}")
    for r in rows:
        rounds = "/".join(str(c) for c in r["spamd_cpu_ms_rounds"])
        print(f"{r['verb']:<8} {r['spamd_cpu_ms_per_msg']:>17} {rounds:>20}"
              f" {r['reply_bytes_per_msg']:>16} {r['rules_per_msg'] or '':>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
