"""Is message work linear?  Time a worker's message step at size n and 8n, per hostile shape.

Each shape is a message built to hurt one regex or loop of the message work
(MIME walk, extraction, HTML stripping, URL and domain search, the
fingerprint's normalization, prefilters).  The step timed is
``Processor.process`` without spamd: everything a worker does to a message
before and after the scan.  Times are process CPU seconds, best of
``--reps``, so other load on the machine matters less; a linear step gives a
ratio near 8, a quadratic one near 64.

    python3 perf/linearity.py                  # this worktree's code
    python3 perf/linearity.py --rev main~1     # the same shapes, code of a git revision
    python3 perf/linearity.py --compare REV    # both, side by side (old = REV)

Code of another revision is run from a ``git archive`` of its ``ringtrap``
package in a subprocess.  A step whose time at n says 8n would take longer
than ``--budget`` seconds (quadratic estimate) is not run at 8n: its ratio
shows as ">64 est.".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")

HEAD = (b"From: Sender <sender@example.com>\r\nTo: trap@example.org\r\n"
        b"Subject: Hello\r\nMessage-ID: <1@example.com>\r\n"
        b"Date: Fri, 27 Nov 2026 10:00:00 +0000\r\n")


def _text(body: bytes, ctype: bytes = b"text/plain; charset=utf-8",
          cte: bytes = b"8bit", head: bytes = HEAD) -> bytes:
    return (head + b"MIME-Version: 1.0\r\nContent-Type: " + ctype +
            b"\r\nContent-Transfer-Encoding: " + cte + b"\r\n\r\n" + body)


def _html(body: bytes) -> bytes:
    return _text(body, b"text/html; charset=utf-8")


def _run(unit: bytes, n: int) -> bytes:
    return unit * max(1, n // len(unit))


def _subject(value: bytes) -> bytes:
    return _text(b"hello\r\n", head=HEAD.replace(b"Subject: Hello", b"Subject: " + value))


def _attachment(body: bytes) -> bytes:
    return (HEAD + b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b1\r\n\r\n"
            b"--b1\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
            b"--b1\r\nContent-Type: application/octet-stream; name=a.bin\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + body + b"\r\n--b1--\r\n")


def _multipart(body: bytes, boundary: bytes = b"b1") -> bytes:
    return _text(b"--" + boundary + b"\r\nContent-Type: text/plain\r\n\r\n" + body +
                 b"\r\n--" + boundary + b"--\r\n",
                 ctype=b"multipart/mixed; boundary=" + boundary)


def _nested(depth: int, body: bytes) -> bytes:
    part = b"Content-Type: text/plain\r\n\r\n" + body
    for level in reversed(range(depth)):
        b = b"n%d" % level
        part = (b"Content-Type: multipart/mixed; boundary=" + b + b"\r\n\r\n--" + b + b"\r\n"
                + part + b"\r\n--" + b + b"--\r\n")
    return HEAD + b"MIME-Version: 1.0\r\n" + part


# name -> (message of about n bytes, the size n the test and the table use)
SHAPES: dict[str, Callable[[int], bytes]] = {
    # one token without a digit: the digit-token search backtracked over it
    "letters": lambda n: _text(b"a" * n),
    "letters (html)": lambda n: _html(b"a" * n),
    "letters, one digit at the end": lambda n: _text(b"a" * n + b"1"),
    "run of <": lambda n: _text(b"<" * n),
    "run of < (html)": lambda n: _html(b"<" * n),
    "run of =": lambda n: _text(b"=" * n),
    "run of = (quoted-printable)": lambda n: _text(b"=" * n, cte=b"quoted-printable"),
    "run of %": lambda n: _text(b"%" * n),
    "URL with a run of %": lambda n: _text(b"http://example.com/" + b"%" * n),
    "repeated tags (html)": lambda n: _html(_run(b"<b>", n)),
    "nested tags (html)": lambda n: _html(_run(b"<div>", n // 2) + _run(b"</div>", n // 2)),
    "unclosed <script (html)": lambda n: _html(_run(b"<script ", n)),
    "unclosed <style> (html)": lambda n: _html(_run(b"<style>x", n)),
    "tag opened, never closed (html)": lambda n: _html(b"<" + b"a" * n),
    "http:// repeated": lambda n: _text(_run(b"http://", n)),
    "www. repeated": lambda n: _text(_run(b"www.", n)),
    "&# and digits (html)": lambda n: _html(b"&#" + b"9" * n),
    "&#x and hex digits (html)": lambda n: _html(b"&#x" + b"f" * n),
    "short tokens with digits": lambda n: _text(_run(b"a1 ", n)),
    "=? repeated in Subject": lambda n: _subject(_run(b"=?", n)),
    "encoded words in Subject": lambda n: _subject(_run(b"=?utf-8?q?ab?= ", n)),
    "; repeated in Content-Type": lambda n: _text(b"x", ctype=b"text/plain" + _run(b"; a", n)),
    "base64 junk attachment": lambda n: _attachment(b"!" * n),
    "boundary-like lines": lambda n: _multipart(_run(b"--b1x\r\n", n)),
    "multiparts nested 16 deep": lambda n: _nested(16, _run(b"word ", n)),
    "5 MB single line": lambda n: _text(b"a" * n),
}
# the sizes n used for each shape (8n is timed too); the 5 MB line is 8n = 5 MB
SIZES = {name: 16_384 for name in SHAPES}
SIZES["5 MB single line"] = 640_000
# header shapes stay inside the 64 KiB header window at 8n: past it the rest
# is body text, a different step, and the ratio would compare two steps
for name in ("=? repeated in Subject", "encoded words in Subject",
             "; repeated in Content-Type"):
    SIZES[name] = 6_000


def step() -> Callable[[bytes], object]:
    """One worker's message step without spamd (imports the ringtrap on sys.path)."""
    from ringtrap.scan.processing import Processor

    proc = Processor(scanner=None, scan_limit_bytes=500 * 1024)
    return lambda message: proc.process("0640c3f1a2b3c-0004d2", message, 1714567890.0, 1)


def cpu_time(fn: Callable[[bytes], object], arg: bytes, reps: int, loops: int = 1) -> float:
    """Best of ``reps`` runs of ``loops`` calls of ``fn(arg)``, in process CPU seconds per call."""
    best = float("inf")
    for _ in range(reps):
        t0 = time.process_time()
        for _ in range(loops):
            fn(arg)
        best = min(best, (time.process_time() - t0) / loops)
    return best


def measure(name: str, n: int, reps: int = 3, budget: float = 60.0,
            fn: Callable[[bytes], object] | None = None,
            min_time: float = 0.02) -> dict[str, object]:
    """Times of ``name`` at n and 8n and their ratio (None when 8n was not run).

    A fast step is called in a loop until a run takes about ``min_time``, so
    timer noise does not make the ratio; the times are per call.
    """
    fn = fn or step()
    build = SHAPES[name]
    small, big = build(n), build(8 * n)

    def loops(once: float) -> int:
        return max(1, min(1000, int(min_time / max(once, 1e-6)) + 1))

    try:
        fn(small)  # warm-up: the suffix list, regex caches
        t1 = cpu_time(fn, small, reps, loops(cpu_time(fn, small, 1)))
    except Exception as exc:  # a step that raises would crash its worker
        return {"shape": name, "n": n, "t_n": None, "t_8n": None, "ratio": None,
                "error": type(exc).__name__}
    if t1 * 64 > budget:
        return {"shape": name, "n": n, "t_n": t1, "t_8n": None, "ratio": None}
    try:
        once = cpu_time(fn, big, 1)
        t8 = once if once * reps > budget else cpu_time(fn, big, reps, loops(once))
    except Exception as exc:
        return {"shape": name, "n": n, "t_n": t1, "t_8n": None, "ratio": None,
                "error": type(exc).__name__}
    return {"shape": name, "n": n, "t_n": t1, "t_8n": t8, "ratio": t8 / max(t1, 1e-9)}


def run_here(names: list[str], reps: int, budget: float, n: int | None
             ) -> Iterator[dict[str, object]]:
    fn = step()
    for name in names:
        yield measure(name, n or SIZES[name], reps, budget, fn)


def run_rev(rev: str, names: list[str], reps: int, budget: float, n: int | None
            ) -> list[dict[str, object]]:
    """The same measurement with the ``ringtrap`` package of git revision ``rev``."""
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "-C", ROOT, "archive", rev, "ringtrap"],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        cmd = [sys.executable, os.path.abspath(__file__), "--json", "--reps", str(reps),
               "--budget", str(budget), "--only", json.dumps(names)]
        if n:
            cmd += ["-n", str(n)]
        env = {**os.environ, "PYTHONPATH": tmp, "LINEARITY_NO_ROOT": "1"}
        out = subprocess.run(cmd, check=True, capture_output=True, env=env).stdout
    return [json.loads(line) for line in out.decode().splitlines() if line.strip()]


def _ratio(row: dict[str, object]) -> str:
    if row.get("error"):
        return f"raises {row['error']}"
    ratio = row["ratio"]
    return ">64 est." if ratio is None else f"{ratio:.1f}"


def _times(row: dict[str, object]) -> str:
    t1, t8 = row["t_n"], row["t_8n"]
    return ("-" if t1 is None else f"{t1:.4f}") + " / " + ("-" if t8 is None else f"{t8:.4f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rev", help="time the code of this git revision instead")
    ap.add_argument("--compare", metavar="REV", help="old (REV) and new (this tree) side by side")
    ap.add_argument("-n", type=int, help="size n for every shape (default: per shape)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--budget", type=float, default=60.0,
                    help="skip 8n when a quadratic estimate exceeds this many CPU seconds")
    ap.add_argument("--only", help="JSON list of shape names")
    ap.add_argument("--json", action="store_true", help="rows as JSON lines")
    args = ap.parse_args()
    names = json.loads(args.only) if args.only else list(SHAPES)
    if args.compare:
        old = run_rev(args.compare, names, args.reps, args.budget, args.n)
        new = list(run_here(names, args.reps, args.budget, args.n))
        print(f"{'shape':<34} {'n':>8}  {'old s (n / 8n)':>19} {'old':>9}  "
              f"{'new s (n / 8n)':>17} {'new':>5}")
        for o, w in zip(old, new, strict=True):
            print(f"{o['shape']:<34} {o['n']:>8}  {_times(o):>19} {_ratio(o):>9}  "
                  f"{_times(w):>17} {_ratio(w):>5}")
        return 0
    rows = (run_rev(args.rev, names, args.reps, args.budget, args.n) if args.rev
            else run_here(names, args.reps, args.budget, args.n))
    for row in rows:
        if args.json:
            print(json.dumps(row), flush=True)
        else:
            print(f"{row['shape']:<34} {row['n']:>8}  {_times(row):>19} {_ratio(row):>9}",
                  flush=True)
    return 0


if __name__ == "__main__":
    if not os.environ.get("LINEARITY_NO_ROOT"):
        sys.path.insert(0, ROOT)
    sys.exit(main())
