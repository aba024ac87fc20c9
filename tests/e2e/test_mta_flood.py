"""The Postfix flood benchmark in CI: a few seconds of it, checked for what it counts.

``perf/mta_flood.py --smoke`` floods a private Postfix with smtp-source and
delivers by every route (LMTP, ringtrap-deliver, ringtrap submit, the
directory-queue script); this checks that every queue id Postfix accepted
arrived exactly once at each route's far end, that nothing bounced, and
that the table prints every row for every route.  It never asserts a speed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from postfix_fixture import missing_reason

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "perf" / "mta_flood.py"
TOOLS = {"/usr/sbin/smtp-source": "smtp-source (Debian's postfix package)",
         "/usr/bin/perl": "perl", "/usr/bin/nc": "nc (netcat-openbsd)",
         "/usr/bin/python3": "Debian's python3"}


def flood_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mta_flood", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    # its dataclasses look their module up by name
    sys.modules.setdefault("mta_flood", mod)
    spec.loader.exec_module(mod)
    return mod


def test_smoke_flood_delivers_every_message_once_by_every_route() -> None:
    reason = missing_reason() or next(
        (f"{why} is not installed" for tool, why in TOOLS.items() if not os.access(tool, os.X_OK)),
        None)
    if reason:
        pytest.skip(reason)
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--json"], cwd=ROOT,
                          capture_output=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-4000:]
    rows = json.loads(proc.stdout)
    assert [r["route"] for r in rows] == ["lmtp", "deliver", "submit", "dirqueue"]
    for r in rows:
        n = r["messages"]
        assert n == 30, r
        assert (r["accepted"], r["arrived"], r["missing"], r["duplicates"]) == (n, n, 0, 0), r
        assert r["bounced"] == 0, r
        assert r["smtp_rate"] > 0 and r["deliver_rate"] > 0, r
        assert r["depth"] and all(depth >= 0 for _at, depth in r["depth"]), r
        assert r["cpu_postfix_ms"] > 0, r
        assert r["limit"] in {"Postfix", "delivery processes", "ringtrap ingest"}, r
    by = {r["route"]: r for r in rows}
    # the delivery processes are pipe(8)'s children; LMTP has none
    assert by["lmtp"]["cpu_delivery_ms"] == 0
    assert all(by[k]["cpu_delivery_ms"] > 0 for k in ("deliver", "submit", "dirqueue"))

    mod = flood_module()
    out = io.StringIO()
    args = mod.argparse.Namespace(messages=30, size=1024, sessions=4, rounds=1)
    with contextlib.redirect_stdout(out):
        mod.report(rows, args)
    lines = out.getvalue().splitlines()
    for label, _key, _trap_only in mod.TABLE:
        [line] = [ln for ln in lines if ln.startswith(f"| {label} |")]
        cells = [c.strip() for c in line.strip("|").split("|")[1:]]
        assert len(cells) == 4 and all(cells), line
    [once] = [ln for ln in lines if ln.startswith("| arrived exactly once |")]
    assert once.count("30 of 30") == 4, once
