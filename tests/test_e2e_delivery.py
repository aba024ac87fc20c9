"""End to end: a running trap's submit and LMTP sockets, and the README's Exim snippets.

``ringtrap run`` binds all three sockets; the clients an MTA runs deliver
through them and the records carry the envelope.  Exim itself cannot be
installed beside Postfix (both are Debian's mail-transport-agent), so its
snippets are checked the way Exim uses them: the pipe transport's settings,
and its command split and expanded as Exim does, run against the trap.
"""

from __future__ import annotations

import re
import shlex
import signal
import smtplib
import subprocess
import sys
from pathlib import Path

import pytest
from trap_fixture import message, reply_id, running_trap, wait_until

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
DELIVER = ROOT / "scripts" / "ringtrap-deliver"
SUBMIT = [sys.executable, "-m", "ringtrap.cli", "submit"]


def snippet(name: str) -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- snippet: " + re.escape(name) + r" -->\n```\n(.*?)```\n", text, re.S)
    assert m is not None, f"README has no snippet {name!r}"
    return m.group(1)


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


def exim_expand(command: str, variables: dict[str, str]) -> list[str]:
    """Split ``command`` into arguments, then expand ``$name`` in each, as Exim's pipe does."""
    return [re.sub(r"\$(\w+)", lambda m: variables[m.group(1)], arg)
            for arg in shlex.split(command)]


def test_exim_snippets_defer_and_deliver_the_envelope(tmp_path: Path) -> None:
    pipe = snippet("exim-pipe")
    options = dict(
        (k.strip(), v.strip()) for k, _, v in
        (line.partition("=") for line in pipe.splitlines()[1:]))
    assert options["driver"] == "pipe"
    assert "75" in options["temp_errors"].split(":")
    assert options["timeout_defer"] == "true"
    assert options["message_prefix"] == "" and options["message_suffix"] == ""
    lmtp = snippet("exim-lmtp")
    assert "driver = lmtp" in lmtp and "socket = /run/ringtrap/lmtp.sock" in lmtp

    with running_trap(tmp_path) as trap:
        variables = {"sender_address": "", "local_part": "spamtrap",
                     "domain": "trap.example.org", "sender_host_address": "203.0.113.9",
                     "sender_helo_name": "[203.0.113.9]", "message_exim_id": "1rXyZa-000123-AB"}
        command = options["command"].replace("/run/ringtrap/", f"{trap.rundir}/")
        argv = exim_expand(command.replace("/usr/local/bin/ringtrap-deliver", str(DELIVER)),
                           variables)
        done = subprocess.run(argv, input=message(7), capture_output=True, timeout=60)
        assert done.returncode == 0, done.stderr
        msgid = reply_id(done.stdout)
        [record] = trap.wait_records({msgid})
        assert record["envelope"] == {"sender": "", "recipients": ["spamtrap@trap.example.org"],
                                      "client_address": "203.0.113.9",
                                      "client_helo": "[203.0.113.9]",
                                      "queue_id": "1rXyZa-000123-AB"}
        trap.signal(signal.SIGTERM)
        assert trap.wait_exit() == 0
        # ringtrap down: exit 75, one of the snippet's temp_errors, so Exim defers
        done = subprocess.run(argv, input=message(8), capture_output=True, timeout=60)
        assert done.returncode == 75, done.stderr
