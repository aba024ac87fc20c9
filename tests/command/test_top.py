"""ringtrap top on a narrow terminal: pids and states whole, columns dropped whole."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from ringtrap import config as configmod
from ringtrap.base.counters import C
from ringtrap.command import top


def status(pids: list[int]) -> dict[str, object]:
    roles = ["supervisor", "ingest"] + ["worker"] * (len(pids) - 2)
    procs = []
    for n, (pid, role) in enumerate(zip(pids, roles, strict=True)):
        index = n - 2 if role == "worker" else 0
        scanning = role == "worker"
        procs.append(
            {
                "pid": pid,
                "role": role,
                "index": index,
                "state": "scanning" if scanning else "idle",
                "message": "661404ec89127-4c4b3f" if scanning else None,
                "message_age_s": 4321.0 if scanning else None,
                "done": 123456,
                "rss_bytes": 40 << 20,
                "private_bytes": 33 << 20,
                "cpu_s": 12.5,
                "alive": True,
                "title": f"ringtrap: {role} {index} scanning 661404ec89127-4c4b3f (123456 done)",
            }
        )
    totals = {c.name.lower(): 0 for c in C}
    return {
        "version": "0.1.0",
        "supervisor_pid": pids[0],
        "ring": {
            "name": "ringtrap",
            "slots": 1024,
            "slot_bytes": 65536,
            "used": 3,
            "ready": 1,
            "claimed": 2,
            "filling": 0,
            "generation": 0,
            "lock_breaks": 0,
        },
        "overflow": {
            "dir": "/dev/shm/x",
            "ready": 0,
            "ready_bytes": 0,
            "claimed": 0,
            "failed": 0,
            "bytes": 0,
            "max_bytes": 1 << 30,
            "oldest_age_s": None,
        },
        "stage": None,
        "totals": totals,
        "analysed": {
            "hour": {"accepted": 5000, "analysed": 120, "fraction": 0.024},
            "last_hour": {"accepted": 0, "analysed": 0, "fraction": None},
            "day": {"accepted": 5000, "analysed": 120, "fraction": 0.024},
            "hours": [], "scanning": 2, "scanning_age_s": {"min": 4321.0, "max": 4321.0},
            "mean_age_s": 12.0,
        },
        "processes": procs,
    }


def frame(width: int, pids: list[int]) -> list[str]:
    console = Console(record=True, width=width, file=io.StringIO(), color_system=None)
    reading = top.Reading(status(pids), 10.0)
    console.print(top.render(reading, top.Reading(status(pids), 9.0), configmod.defaults(), width))
    return console.export_text().splitlines()


@pytest.mark.parametrize("width", [60, 80, 100, 160])
def test_pids_and_states_stay_whole_at_any_width(width: int) -> None:
    pids = [4194301, 4194302, 4194303, 4194304]
    lines = frame(width, pids)
    header = next(ln for ln in lines if ln.lstrip().startswith("PID"))
    # a process row starts with its pid (seven digits here), wrapped text may not
    rows = [ln for ln in lines if re.match(r"\s*\d{7} ", ln)]
    assert [int(r.split()[0]) for r in rows] == pids
    assert all(len(ln) <= width for ln in [*rows, header])
    workers = [r for r in rows if " worker " in f" {r} "]
    assert len(workers) == 2 and all(" scanning " in f"{r} " for r in workers)
    if width >= 80:
        # at 80 columns only the title gives way: every other column stays
        for col in ("MESSAGE", "AGE", "DONE", "RSS", "CPU"):
            assert col in header, (width, header)
        assert all("661404ec89127-4c4b3f" in r and " 72m " in r for r in workers)
        assert any("this hour 120 of 5000 (2.4%)" in ln for ln in lines), lines
    if width >= 160:
        assert "TITLE" in header


def test_columns_are_dropped_least_useful_first() -> None:
    row = {
        "PID": "4194303",
        "ROLE": "worker 12",
        "TITLE": "x" * 50,
        "STATE": "scanning",
        "MESSAGE": "661404ec89127-4c4b3f",
        "AGE": "72m",
        "DONE": "123456",
        "RSS": "33.0 MiB",
        "CPU": "100%",
    }
    assert top.process_columns([row], None) == [
        "PID",
        "TITLE",
        "STATE",
        "MESSAGE",
        "AGE",
        "DONE",
        "RSS",
        "CPU",
    ]
    assert top.process_columns([row], 80) == [
        "PID",
        "ROLE",
        "STATE",
        "MESSAGE",
        "AGE",
        "DONE",
        "RSS",
        "CPU",
    ]
    assert top.process_columns([row], 60) == ["PID", "ROLE", "STATE", "MESSAGE", "DONE"]
    assert top.process_columns([row], 66) == ["PID", "ROLE", "STATE", "MESSAGE", "AGE", "DONE"]
    assert top.process_columns([row], 20) == ["PID", "ROLE", "STATE"]


def test_each_scanner_host_gets_a_line_within_80_columns() -> None:
    pids = [100, 101, 102]
    hosts = [
        {"host": "tcp:127.0.0.1:7830", "up": True, "state": "closed", "open_in": 0,
         "scans": 500, "errors": 2, "breaker_opens": 0, "mean_ms": 41.5},
        {"host": "unix:/var/lib/ringtrap/a/very/long/path/spamd.sock", "up": False,
         "state": "open", "open_in": 2, "scans": 10, "errors": 9, "breaker_opens": 3,
         "mean_ms": None},
    ]
    cur, prev = status(pids), status(pids)
    cur["scanner"] = {"kind": "spamd", "hosts": hosts}
    prev["scanner"] = {"kind": "spamd", "hosts": [dict(hosts[0], scans=400), hosts[1]]}
    console = Console(record=True, width=80, file=io.StringIO(), color_system=None)
    console.print(top.render(top.Reading(cur, 10.0), top.Reading(prev, 9.0),
                             configmod.defaults(), 80))
    lines = console.export_text().splitlines()
    assert all(len(line) <= 80 for line in lines)
    shown = [line for line in lines if line.startswith("host")]
    assert len(shown) == 2
    assert "tcp:127.0.0.1:7830" in shown[0] and "up" in shown[0] and "100.0/s" in shown[0]
    assert "OPEN" in shown[1] and "spamd.sock" in shown[1] and "9 err" in shown[1]
