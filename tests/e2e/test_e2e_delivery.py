"""End to end: a running trap's submit and LMTP sockets.

``ringtrap run`` binds all three sockets; the clients an MTA runs deliver
through them and the records carry the envelope.  The MTAs' own snippets run
in tests/e2e/test_postfix.py and tests/e2e/test_exim.py.
"""

from __future__ import annotations

import signal
import smtplib
import subprocess
import sys
from pathlib import Path

import pytest
from trap_fixture import message, reply_id, running_trap, wait_until

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
DELIVER = ROOT / "scripts" / "ringtrap-deliver"
SUBMIT = [sys.executable, "-m", "ringtrap.command.cli", "submit"]


def test_trap_serves_submit_and_lmtp_and_removes_them_on_stop(tmp_path: Path) -> None:
    with running_trap(tmp_path, start=False) as trap:
        lmtp_path = trap.rundir / "lmtp.sock"
        trap.settings["ingest"]["lmtp_socket"] = str(lmtp_path)
        trap.write_config()
        trap.start()
        submit_path = trap.rundir / "submit.sock"
        env = ["--sender", "s@example.org", "--recipient", "t@trap.example",
               "--client-address", "192.0.2.3", "--queue-id", "Q1"]
        ids = {}
        done = subprocess.run([*SUBMIT, "--socket", str(submit_path), *env], input=message(1),
                              capture_output=True, timeout=30)
        ids[reply_id(done.stdout)] = "submit"
        done = subprocess.run([str(DELIVER), "--socket", str(submit_path), *env],
                              input=message(2), capture_output=True, timeout=30)
        ids[reply_id(done.stdout)] = "deliver"
        with smtplib.LMTP(str(lmtp_path)) as client:
            client.ehlo("mta.example")
            client.docmd("XFORWARD", "ADDR=192.0.2.3 IDENT=Q1")
            assert client.sendmail("s@example.org", ["t@trap.example"], message(3)) == {}
        # a reload keeps the sockets (they are fixed until the next start)
        trap.signal(signal.SIGHUP)
        ids[reply_id(trap.send(message(4)))] = "raw"
        records = wait_until(lambda: len(trap.records()) == 4 and trap.records(), 30, "records")
        by_way = {ids.get(r["id"], "lmtp"): r["envelope"] for r in records}
        want = {"sender": "s@example.org", "recipients": ["t@trap.example"],
                "client_address": "192.0.2.3", "queue_id": "Q1"}
        assert by_way == {"submit": want, "deliver": want, "lmtp": want, "raw": {}}
        trap.signal(signal.SIGTERM)
        assert trap.wait_exit() == 0
        assert not submit_path.exists() and not lmtp_path.exists()
        assert not trap.socket_path.exists()
