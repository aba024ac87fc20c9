"""Messages that crash their worker, among normal mail, through a real trap.

A crash-poison here is a message whose worker is SIGKILLed whenever it is
seen scanning it: the test watches the process table as ``status`` does and
kills the worker, every time, the moment its row names a poison.  spamd is
the real one behind a socket that holds a poison's scan open, so the worker
is caught in the act.  The poisons must end quarantined after
``overflow.max_attempts`` deaths each, every normal message recorded, and the
trap up throughout: replacement workers take fresh mail before a message
that killed their predecessor.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from spamd_fixture import SpamdProcess
from trap_fixture import Trap, message, reply_id, wait_until
from workerkit import STALL_MARKER, StallingSpamd

from ringtrap.base.counters import C
from ringtrap.ring import Ring

pytestmark = [pytest.mark.slow, pytest.mark.spamd]

MAX_ATTEMPTS = 3


def test_four_crash_poisons_among_normal_mail(tmp_path: Path, spamd_server: SpamdProcess) -> None:
    rundir = Path(os.environ.get("TMPDIR", "/tmp"))
    stall_path = rundir / f"rt-stall-{os.getpid()}.sock"
    stall_path.unlink(missing_ok=True)
    stall = StallingSpamd(stall_path, spamd_server.socket_path)
    trap = Trap(
        tmp_path,
        {
            "spamd": {"address": f"unix:{stall_path}"},
            "overflow": {"max_attempts": MAX_ATTEMPTS},
        },
    )
    try:
        trap.start()
        poisons: set[str] = set()
        normal: set[str] = set()
        # a poison first, then one after every ten normal messages
        for i in range(40):
            if i % 10 == 0:
                poisons.add(reply_id(trap.send(STALL_MARKER + b"\r\n" + message(1000 + i))))
            normal.add(reply_id(trap.send(message(i))))
        killed: set[int] = set()
        deaths = 0

        def crash_poisons_and_check() -> bool:
            nonlocal deaths
            assert trap.proc is not None and trap.proc.poll() is None, trap.log_tail()
            st = trap.status()
            assert st is not None
            for p in st["processes"]:
                if (
                    p["role"] == "worker"
                    and p["alive"]
                    and p["message"] in poisons
                    and p["pid"] not in killed
                ):
                    os.kill(p["pid"], signal.SIGKILL)  # the message crashes its worker
                    killed.add(p["pid"])
                    deaths += 1
            recs = trap.records()
            done = {r["id"] for r in recs if r["verdict"] != "quarantined"}
            quarantined = {r["id"] for r in recs if r["verdict"] == "quarantined"}
            return normal <= done and poisons <= quarantined

        wait_until(
            crash_poisons_and_check, 240, "normal mail recorded and poisons quarantined", step=0.02
        )
        recs = trap.records()
        quarantined = [r for r in recs if r["verdict"] == "quarantined"]
        assert sorted(r["id"] for r in quarantined) == sorted(poisons)
        assert {r["attempts"] for r in quarantined} == {MAX_ATTEMPTS}
        assert deaths == len(poisons) * MAX_ATTEMPTS
        assert {r["id"] for r in recs} == normal | poisons
        # the trap is still up and serving, with its whole pool
        time.sleep(0.5)
        assert trap.proc is not None and trap.proc.poll() is None
        late = reply_id(trap.send(message(999)))
        trap.wait_records({late}, timeout=60)
        wait_until(lambda: len(trap.child_pids("worker")) == 2, 30, "two workers")
        with Ring.attach(trap.ring_name) as r:
            totals = r.snapshot().totals()
        assert totals[C.QUARANTINED] == len(poisons)
        trap.signal(signal.SIGTERM)
        assert trap.wait_exit(60) == 0
    finally:
        stall.close()
        stall_path.unlink(missing_ok=True)
        trap.close()
