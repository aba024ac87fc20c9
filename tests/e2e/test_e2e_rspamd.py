"""``ringtrap run`` scanning with a managed rspamd, offline, and surviving its SIGKILL.

The whole trap runs in a private network namespace with a DNS that answers
NXDOMAIN (:mod:`tests.netns_dns`): the supervisor, its workers and the rspamd
it starts.  Messages go in over the ingest socket; every accepted one must
come out recorded with rspamd's verdict, action and symbols, including those
sent while rspamd was killed and restarted.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from pathlib import Path

import psutil
import pytest
from rspamd_fixture import HS_CACHE, NETNS_DNS, RSPAMD, ping, rspamd_missing_reason
from trap_fixture import Trap, reply_id, wait_until

pytestmark = pytest.mark.skipif(rspamd_missing_reason() is not None,
                                reason=rspamd_missing_reason() or "")

GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


def mail(n: int) -> bytes:
    body = GTUBE if n % 2 == 0 else b"A short note about nothing in particular."
    return (f"From: Sender <s{n}@example.com>\r\nTo: trap@example.org\r\n"
            f"Subject: number {n}\r\nMessage-ID: <{n}.rspamd@example.com>\r\n"
            "Date: Thu, 03 Dec 2026 10:00:00 +0000\r\n\r\n").encode() + body + b"\r\n"


def managed_rspamd(trap: Trap) -> psutil.Process | None:
    """The supervisor's rspamd child (its main process), once it answers on its socket."""
    for p in trap.children():
        with contextlib.suppress(psutil.Error):
            if p.exe() == os.path.realpath(str(RSPAMD)) and ping(trap.rundir / "rspamd.sock"):
                return p
    return None


def test_a_managed_rspamd_scans_everything_and_comes_back_from_sigkill(tmp_path: Path) -> None:
    settings = {
        "scanner": {"kind": "rspamd"},
        # kept across runs: only the first run on a machine compiles Hyperscan
        "rspamd": {"nameservers": ["127.0.0.1:53"], "db_dir": str(HS_CACHE / "managed")},
        "workers": {"count": 2, "heartbeat_timeout": 400},
    }
    trap = Trap(tmp_path, settings)
    trap.command = ["unshare", "-n", sys.executable, str(NETNS_DNS), *trap.command]
    try:
        trap.start()
        first = wait_until(lambda: managed_rspamd(trap), 240, "the managed rspamd to answer",
                           step=0.5)
        ids = {reply_id(trap.send(mail(n))): n for n in range(20)}
        trap.wait_records(set(ids))

        # more mail while rspamd is SIGKILLed mid-flow
        def deliver() -> None:
            for n in range(20, 60):
                ids[reply_id(trap.send(mail(n)))] = n

        sender = threading.Thread(target=deliver)
        sender.start()
        wait_until(lambda: len(ids) >= 30, 60, "the second batch to start")
        os.kill(first.pid, signal.SIGKILL)
        sender.join(60)
        assert len(ids) == 60
        again = wait_until(lambda: (p := managed_rspamd(trap)) and p.pid != first.pid and p,
                           120, "a new managed rspamd", step=0.5)
        records = trap.wait_records(set(ids), timeout=180)
        st = trap.status()
        assert st is not None and st["totals"]["restarts"] >= 1

        # a HUP that grows the pool gives rspamd a normal worker per ringtrap worker
        trap.settings["workers"]["count"] = 3
        trap.write_config()
        trap.signal(signal.SIGHUP)
        grown = wait_until(lambda: (p := managed_rspamd(trap)) and p.pid != again.pid
                           and len([c for c in p.children() if "normal" in " ".join(
                               c.cmdline())]) == 3 and p, 120, "rspamd with 3 normal workers",
                           step=0.5)
        late = reply_id(trap.send(mail(60)))
        [last] = [r for r in trap.wait_records({late}) if r["id"] == late]
        assert (last["scanner"], last["action"]) == ("rspamd", "reject")
        assert grown.pid != first.pid
    finally:
        trap.close()
    by_id = {r["id"]: r for r in records}
    assert set(by_id) == set(ids)
    for msgid, n in ids.items():
        r = by_id[msgid]
        assert r["scanner"] == "rspamd", r
        assert r["scanner_host"] == f"unix:{trap.rundir / 'rspamd.sock'}"
        assert r["symbols"] and set(r["rules"]) == set(r["symbols"])
        if n % 2 == 0:
            assert (r["verdict"], r["action"]) == ("spam", "reject"), r
            assert "GTUBE" in r["symbols"]
        else:
            assert r["verdict"] == "ham" and r["action"] in ("no action", "greylist"), r
