"""Newest first through a real ``ringtrap run`` and a real spamd: under a
backlog the freshest mail is recorded first, the ring's is not starved, and
status and metrics count the analysed fraction the records show.

The backlog is made by a gate in front of spamd: the one worker takes the
first message and waits on the gate while the rest fill the ring and spill;
then the gate opens and the order of the records is the claim order.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from spamd_fixture import SpamdProcess
from trap_fixture import free_port, message, reply_id, running_trap, scrape, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.spamd]

SLOTS = 4
SPILLED = 12


class GatedSpamd:
    """A Unix socket in front of the real spamd that holds every scan until
    :meth:`open` (PING passes at once)."""

    def __init__(self, path: Path, spamd: Path) -> None:
        self.path = path
        self.spamd = spamd
        self.gate = threading.Event()
        self.waiting = 0
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            request = b""
            while chunk := conn.recv(65536):
                request += chunk
            if not request.startswith(b"PING"):
                self.waiting += 1
                self.gate.wait(120)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as up:
                up.connect(str(self.spamd))
                up.sendall(request)
                up.shutdown(socket.SHUT_WR)
                while chunk := up.recv(65536):
                    conn.sendall(chunk)

    def open(self) -> None:
        self.gate.set()

    def close(self) -> None:
        self.gate.set()
        self.sock.close()


def test_newest_first_records_the_freshest_mail_first_and_counts_what_it_analysed(
        tmp_path: Path, spamd_server: SpamdProcess) -> None:
    port = free_port()
    gate_path = Path(f"/tmp/rt-gate-{port}.sock")
    gate = GatedSpamd(gate_path, spamd_server.socket_path)
    settings: dict[str, dict[str, Any]] = {
        "ring": {"slots": SLOTS},
        "overflow": {"drain_order": "newest"},
        "workers": {"count": 1, "heartbeat_timeout": 400, "scan_limit_bytes": "2K"},
        "spamd": {"address": f"unix:{gate_path}"},
        "metrics": {"listen": f"127.0.0.1:{port}"},
    }
    try:
        with running_trap(tmp_path, settings) as trap:
            first = reply_id(trap.send(message(0)))
            wait_until(lambda: gate.waiting == 1, 30, "the worker to hold the first message")
            sent = []
            # the first holds a slot: the ring takes SLOTS - 1 more
            for n in range(1, SLOTS + SPILLED):
                # every fourth one is over workers.scan_limit_bytes: recorded, not analysed
                sent.append(reply_id(trap.send(message(n, size=3000 if n % 4 == 0 else 0))))
                time.sleep(0.002)  # ids a little apart: the order is by arrival
            in_ring, spilled = sent[:SLOTS - 1], sent[SLOTS - 1:]

            # while the gate holds it, the first message is what is being scanned
            held = wait_until(lambda: (st := trap.status()) and st["analysed"]["scanning"]
                              and st, 10, "the scan to show")
            age = held["analysed"]["scanning_age_s"]["max"]
            assert 0 < age < 60
            assert 0 < scrape(port)["ringtrap_scanning_age_seconds"] < 60
            st = trap.status()
            assert st is not None
            assert st["ring"]["ready"] == SLOTS - 1 and st["overflow"]["ready"] == SPILLED

            gate.open()
            records = trap.wait_records({first, *sent}, timeout=120)
            order = [r["id"] for r in records]
            # the one in flight, the spills newest first, then the ring in its order
            assert order == [first, *reversed(spilled), *in_ring]

            analysed = sum(1 for r in records if r["scanned_ms"] is not None)
            assert analysed == sum(1 for r in records if r["verdict"] in ("spam", "ham"))
            accepted = len(records)
            assert 0 < analysed < accepted

            def counted() -> dict[str, Any] | None:
                s = trap.status()
                return s if s and s["analysed"]["day"]["analysed"] == analysed else None

            st = wait_until(counted, 10, "the supervisor's hourly tick")
            a = st["analysed"]
            assert st["totals"]["analysed"] == analysed
            assert a["day"] == {"accepted": accepted, "analysed": analysed,
                                "fraction": round(analysed / accepted, 4)}
            assert a["scanning"] == 0 and a["scanning_age_s"] is None
            assert a["mean_age_s"] is not None and a["mean_age_s"] > 0
            # a scrape's reading serves for a second
            m = wait_until(lambda: (x := scrape(port))["ringtrap_messages_analysed_total"]
                           == analysed and x, 10, "the scrape to catch up", step=0.3)
            assert (m['ringtrap_messages_accepted_total{store="ring"}']
                    + m['ringtrap_messages_accepted_total{store="overflow"}']) == accepted
            assert m['ringtrap_analysed_fraction{window="day"}'] == pytest.approx(
                analysed / accepted)
            assert m["ringtrap_analysed_age_seconds_total"] > 0
    finally:
        gate.close()
        gate_path.unlink(missing_ok=True)
