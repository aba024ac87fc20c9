"""What dedupe saves: a corpus with campaign-like repetition, scanned with and without it.

The corpus is built here, deterministically: a share of one-off messages and
campaigns whose sizes follow a heavy-tailed (Zipf-like) law, as trap mail
does — a few campaigns of hundreds of copies, many of a handful.  Every copy
of a campaign differs from the others the way real ones do: the recipient's
name, account numbers, a per-recipient tracking link, the subject's number;
a third of the campaigns send HTML with a plain-text alternative.

Two passes run over the same corpus, in arrival order, through
``Processor`` with two worker processes sharing one dedupe store and a real
spamd started for the run (two children):

* ``scan all``: dedupe recognises repeats but every message is scanned;
* ``skip repeats``: ``dedupe.skip_scan`` — a repeat is recorded from the
  first copy's scan.

The table compares spamd calls, wall time and messages per second, and
checks what skipping costs in accuracy: the share of repeats whose inherited
verdict equals the verdict their own scan gave in the first pass.

    python3 perf/dedupe_bench.py              # 800 messages
    python3 perf/dedupe_bench.py -n 2000 --json
    python3 perf/dedupe_bench.py --singles 0.8   # fewer campaigns: what the saving rests on
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))

from spamd_fixture import SpamdProcess  # noqa: E402

from ringtrap.base import envelope  # noqa: E402
from ringtrap.scan.dedupe import DedupeStore  # noqa: E402
from ringtrap.scan.processing import Processor  # noqa: E402
from ringtrap.scan.spamd import SpamdClient  # noqa: E402

CTX = mp.get_context("fork")
_TEXT = (
    "offer account prize winner claim free money cheap loan pills watch replica casino bonus"
    " deposit investment crypto bitcoin profit guaranteed urgent verify password security"
    " update invoice payment shipping parcel delivery refund tax bank secure limited time"
    " exclusive deal discount luxury brand health weight loss dating single lonely meet"
    " business proposal partner transfer million dollars inheritance lawyer confidential"
    " reply today now click below link website visit unsubscribe newsletter customer service"
)
WORDS = _TEXT.split()
NAMES = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy")


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def _message(subject: str, sender: str, text: str, html: bool, n: int) -> bytes:
    head = (f"From: {sender}\r\nTo: trap{n}@example.org\r\nSubject: {subject}\r\n"
            f"Message-ID: <{n}.{random.getrandbits(48):x}@bulk.example>\r\n"
            "Date: Fri, 27 Nov 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n")
    if not html:
        return (head + "Content-Type: text/plain; charset=utf-8\r\n\r\n" + text).encode()
    markup = "".join(f"<p>{line}</p>" for line in text.split("\n"))
    return (head + 'Content-Type: multipart/alternative; boundary="alt"\r\n\r\n'
            "--alt\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + text +
            "\r\n--alt\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<html><body>" + markup +
            "</body></html>\r\n--alt--\r\n").encode()


def corpus(n: int, seed: int = 1, singles: float = 0.35) -> list[tuple[bytes, int]]:
    """``n`` (message, campaign id or -1) in a shuffled arrival order."""
    rng = random.Random(seed)
    out: list[tuple[bytes, int]] = []
    campaign = 0
    while len(out) < n:
        if rng.random() < singles:
            text = "\n".join(_sentence(rng, rng.randint(6, 14)) for _ in range(rng.randint(3, 8)))
            out.append((_message(_sentence(rng, 4), f"x{len(out)}@one.example", text,
                                 rng.random() < 0.3, len(out)), -1))
            continue
        size = min(n - len(out), int(rng.paretovariate(1.1)) + 1)
        lines = [_sentence(rng, rng.randint(6, 14)) for _ in range(rng.randint(3, 8))]
        html = rng.random() < 0.33
        domain = f"c{campaign}.example.com"
        for copy in range(size):
            name = rng.choice(NAMES) + str(rng.randint(1, 999))
            text = (f"Dear {name},\n" + "\n".join(lines) +
                    f"\nYour code: {rng.randint(10000, 99999)}\n"
                    f"http://{domain}/t/{rng.getrandbits(64):x}?u={copy}\n")
            subject = f"{lines[0][:30]} #{rng.randint(100, 999)}"
            out.append((_message(subject, f"{name}@{domain}", text, html, len(out)), campaign))
        campaign += 1
    rng.shuffle(out)
    return out


def _worker(address: str, results_dir: str, skip: bool, items: list[tuple[int, bytes]],
            queue: Any) -> None:
    client = SpamdClient(address, connect_timeout=5.0, timeout=120.0)
    calls = [0]
    original = client.report

    def counted(message: Any) -> Any:
        calls[0] += 1
        return original(message)

    client.report = counted  # type: ignore[method-assign]
    proc = Processor(scanner=client, scan_limit_bytes=1 << 20,
                     dedupe=DedupeStore(results_dir, 86400.0), skip_duplicates=skip)
    out = []
    for i, data in items:
        r = proc.process(f"m{i:06d}", envelope.frame(data), 1.8e9 + i, 0).to_dict()
        out.append((i, r["verdict"], r["duplicate_of"], r["scanned_ms"], r["fingerprint"]))
    queue.put((calls[0], out))


def run_pass(address: str, msgs: list[tuple[bytes, int]], skip: bool,
             workers: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="dedupe-bench-") as results:
        queue = CTX.Queue()
        shares = [[(i, m) for i, (m, _) in enumerate(msgs) if i % workers == w]
                  for w in range(workers)]
        started = time.monotonic()
        procs = [CTX.Process(target=_worker, args=(address, results, skip, s, queue))
                 for s in shares]
        for p in procs:
            p.start()
        got = [queue.get() for _ in procs]
        for p in procs:
            p.join()
        wall = time.monotonic() - started
    records: dict[int, tuple[str, str | None, float | None, str | None]] = {}
    for _, rows in got:
        for i, verdict, dup, ms, fp in rows:
            records[i] = (verdict, dup, ms, fp)
    return {"calls": sum(c for c, _ in got), "wall_s": wall, "records": records,
            "scan_ms": sum(r[2] or 0.0 for r in records.values())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=800, help="messages in the corpus (default 800)")
    ap.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--singles", type=float, default=0.35,
                    help="share of one-off messages (default 0.35); the rest come in campaigns")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)
    msgs = corpus(args.n, args.seed, args.singles)
    campaigns = {c for _, c in msgs if c >= 0}
    possible = len([c for _, c in msgs if c >= 0]) - len(campaigns)  # copies after the first
    with SpamdProcess(max_children=args.workers) as spamd:
        scan_all = run_pass(spamd.unix_address, msgs, False, args.workers)
        skip = run_pass(spamd.unix_address, msgs, True, args.workers)
    fps = {r[3] for r in scan_all["records"].values() if r[3]}
    dups = [i for i, r in skip["records"].items() if r[0] == "duplicate"]
    own = sum(1 for i in dups if scan_all["records"][i][0] == _inherited(skip["records"], i))
    rows = []
    for name, p in (("scan all", scan_all), ("skip repeats", skip)):
        rows.append({"pass": name, "messages": len(msgs), "spamd_calls": p["calls"],
                     "spamd_ms": round(p["scan_ms"]), "wall_s": round(p["wall_s"], 2),
                     "msgs_per_s": round(len(msgs) / p["wall_s"], 1)})
    figures = {
        "corpus": {"messages": len(msgs), "campaigns": len(campaigns),
                   "one_off": sum(1 for _, c in msgs if c < 0),
                   "campaign_repeats": possible, "distinct_fingerprints": len(fps)},
        "passes": rows,
        "repeats_recognised": len(dups),
        "scans_saved": scan_all["calls"] - skip["calls"],
        "saved_share": round(1 - skip["calls"] / scan_all["calls"], 3),
        "inherited_verdict_agrees": round(own / len(dups), 3) if dups else None,
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    c = figures["corpus"]
    print(f"corpus: {c['messages']} messages, {c['one_off']} one-off, {c['campaigns']} campaigns"
          f" holding {c['campaign_repeats']} repeats; {c['distinct_fingerprints']} distinct"
          " fingerprints")
    print(f"{'pass':<14}{'messages':>9}{'spamd calls':>13}{'spamd ms':>10}{'wall s':>9}"
          f"{'msgs/s':>9}")
    for r in rows:
        print(f"{r['pass']:<14}{r['messages']:>9}{r['spamd_calls']:>13}{r['spamd_ms']:>10}"
              f"{r['wall_s']:>9}{r['msgs_per_s']:>9}")
    print(f"repeats recognised {figures['repeats_recognised']} of {possible};"
          f" scans saved {figures['scans_saved']} ({100 * figures['saved_share']:.1f}%);"
          f" inherited verdict equals the repeat's own scan for"
          f" {100 * (figures['inherited_verdict_agrees'] or 0):.1f}% of repeats")
    return 0


def _inherited(skip: dict[int, Any], i: int) -> str:
    """The verdict a skipped repeat inherited: its first copy's verdict in the skip pass."""
    first = int(skip[i][1][1:])
    return str(skip[first][0])


if __name__ == "__main__":
    sys.exit(main())
