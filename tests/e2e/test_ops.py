"""Operating a real trap: sd_notify and the watchdog, the metrics endpoint,
log reopening and JSON lines, the live view, the privilege drop and the
systemd unit.

Each test starts its own ``ringtrap run`` (see trap_fixture.py) and checks
what an operator would see: datagrams on a notify socket, a scrape, log
files, a rendered frame, file ownership.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from faketell import FakeTell
from rich.console import Console
from spamd_fixture import SpamdProcess
from trap_fixture import (
    ROOT,
    NotifyListener,
    Trap,
    free_port,
    message,
    reply_id,
    running_trap,
    scrape,
    wait_until,
)

from ringtrap.command import top
from ringtrap.control.child import MIN_UPTIME
from ringtrap.store.segment import shm_paths

pytestmark = pytest.mark.slow


# -- systemd notification -------------------------------------------------------


def test_notify_ready_status_watchdog_reload_and_stopping(tmp_path: Path) -> None:
    trap = Trap(tmp_path)
    listener = NotifyListener(trap.rundir / "notify.sock")
    try:
        trap.start(env_extra={"NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": "2000000"})
        wait_until(lambda: listener.count("READY", "1"), 10, "READY=1")
        ready = next(m for m in listener.messages if m.get("READY") == "1")
        assert ready["MAINPID"] == str(trap.pid)
        reply_id(trap.send(message(1)))
        # WATCHDOG_USEC=2 s: a ping every second from the supervisor's loop
        wait_until(lambda: listener.count("WATCHDOG", "1") >= 3, 10, "three WATCHDOG=1")
        wait_until(lambda: any("accepted 1," in m.get("STATUS", "") for m in listener.messages),
                   10, "a STATUS= line with the totals")
        status = [m["STATUS"] for m in listener.messages if "STATUS" in m][-1]
        assert re.fullmatch(r"2 workers ring \d+% overflow 0; accepted 1, processed [01],"
                            r" spamd errors 0", status), status
        trap.signal(signal.SIGHUP)
        wait_until(lambda: listener.keys_in_order()[-2:] == ["RELOADING", "READY"], 10,
                   "RELOADING=1 then READY=1")
        reloading = next(m for m in listener.messages if m.get("RELOADING") == "1")
        assert int(reloading["MONOTONIC_USEC"]) > 0
        # SIGSTOP stands for a stuck loop: no ping while it cannot turn
        trap.signal(signal.SIGSTOP)
        before = listener.count("WATCHDOG", "1")
        try:
            with pytest.raises(AssertionError):
                wait_until(lambda: listener.count("WATCHDOG", "1") > before, 2.5, "a ping")
        finally:
            trap.signal(signal.SIGCONT)
        wait_until(lambda: listener.count("WATCHDOG", "1") > before, 5, "pings again")
        trap.signal(signal.SIGTERM)
        assert trap.wait_exit(60) == 0
        assert listener.keys_in_order()[:2] == ["READY", "RELOADING"]
        assert "STOPPING" in listener.keys_in_order()
        assert listener.keys_in_order().index("STOPPING") > 2
    finally:
        listener.close()
        trap.close()


# -- metrics ------------------------------------------------------------------------


def test_metrics_scrape_matches_what_was_sent(tmp_path: Path,
                                              spamd_server: SpamdProcess) -> None:
    port = free_port()
    settings: dict[str, dict[str, Any]] = {
        "metrics": {"listen": f"127.0.0.1:{port}"},
        "ring": {"slots": 16},
        "ingest": {"max_message_bytes": "2K"},
        "spamd": {"address": spamd_server.unix_address},
    }
    with running_trap(tmp_path, settings) as trap:
        first = scrape(port)
        assert first[f'ringtrap_info{{ring="{trap.ring_name}",version="0.1.0"}}'] == 1
        assert first["ringtrap_ring_slots"] == 16
        workers = trap.child_pids("worker")
        for pid in workers:
            os.kill(pid, signal.SIGSTOP)  # hold the workers back: 16 in the ring, 9 spill
        try:
            ids = {reply_id(trap.send(message(i))) for i in range(25)}
            assert trap.send(b"").startswith(b"ERR")
            assert trap.send(message(99, size=3000)).startswith(b"ERR")
        finally:
            for pid in workers:
                os.kill(pid, signal.SIGCONT)
        trap.wait_records(ids, timeout=120)
        victim = trap.child_pids("worker")[0]
        # past MIN_UPTIME, so its death counts as a crash, not a failure to boot
        wait_until(lambda: time.time() - psutil.Process(victim).create_time() > MIN_UPTIME + 0.5,
                   10, "the worker to be past its boot")
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: len(trap.child_pids("worker")) == 2
                   and victim not in trap.child_pids("worker"), 30, "the worker's replacement")

        def settled() -> dict[str, float] | None:
            m = scrape(port)
            done = (m['ringtrap_restarts_total{cause="crashed"}'] == 1
                    and m['ringtrap_processes{role="worker",state="idle"}'] == 2)
            return m if done else None

        m = wait_until(settled, 30, "the restart to show", step=0.5)
        assert m['ringtrap_messages_accepted_total{store="ring"}'] == 16
        assert m['ringtrap_messages_accepted_total{store="overflow"}'] == 9
        assert m['ringtrap_messages_refused_total{reason="empty"}'] == 1
        assert m['ringtrap_messages_refused_total{reason="too_large"}'] == 1
        verdicts = {k: v for k, v in m.items() if k.startswith("ringtrap_messages_processed")}
        assert sum(verdicts.values()) == 25
        assert (m['ringtrap_messages_processed_total{verdict="spam"}']
                + m['ringtrap_messages_processed_total{verdict="ham"}']) == 25
        assert m["ringtrap_scan_duration_seconds_count"] == 25
        assert m['ringtrap_scan_duration_seconds_bucket{le="+Inf"}'] == 25
        assert 0 < m["ringtrap_scan_duration_seconds_sum"] < 25 * 30
        bounds = sorted((float(k.split('"')[1]), v) for k, v in m.items()
                        if k.startswith("ringtrap_scan_duration_seconds_bucket"))
        assert [v for _, v in bounds] == sorted(v for _, v in bounds)  # cumulative
        assert m['ringtrap_messages_claimed_total{store="ring"}'] >= 16
        assert m['ringtrap_messages_claimed_total{store="overflow"}'] >= 9
        assert m["ringtrap_spamd_errors_total"] == 0
        assert m['ringtrap_restarts_total{cause="too_fast"}'] == 0
        assert m["ringtrap_connections_total"] == 27
        assert m['ringtrap_ring_slots_used{state="ready"}'] == 0
        assert m['ringtrap_overflow_messages{state="ready"}'] == 0
        assert m["ringtrap_overflow_max_bytes"] == 256 * 1024 * 1024
        assert m['ringtrap_processes{role="ingest",state="idle"}'] == 1
        assert m['ringtrap_processes{role="supervisor",state="idle"}'] == 1
        ages = [v for k, v in m.items() if k.startswith("ringtrap_process_heartbeat_age")]
        assert len(ages) == 4 and all(0 <= a < 30 for a in ages)
        trap.signal(signal.SIGTERM)
        assert trap.wait_exit(60) == 0
        with pytest.raises(OSError):
            scrape(port)  # the endpoint goes with the supervisor


# -- logs -------------------------------------------------------------------------------


def log_fd_targets(pid: int, log_dir: Path) -> set[str]:
    """Names of the files in ``log_dir`` that process ``pid`` holds open."""
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(log_dir) + "/"):
            out.add(os.path.basename(target))
    return out


def test_usr1_reopens_the_log_in_every_process_and_lines_are_json(tmp_path: Path) -> None:
    logs_dir = tmp_path / "logs"
    log_file = logs_dir / "trap.log"
    tell = FakeTell(delay=0.0)
    settings = {"supervisor": {"log_file": str(log_file), "log_format": "json",
                               "log_level": "info"},
                # a stage too: it is a child with a log of its own to reopen
                "stage": {"workers": 1, "address": tell.address, "verdicts": ["not_scanned"]}}

    def learned(n: int) -> Callable[[], bool]:
        def check() -> bool:
            st = trap.status()
            return st is not None and st["totals"].get("stage_learned", 0) >= n
        return check

    try:
        with running_trap(tmp_path, settings) as trap:
            first = reply_id(trap.send(message(1)))
            trap.wait_records({first})
            wait_until(learned(1), 30, "the stage to learn the first message")
            rotated = logs_dir / "trap.log.1"
            log_file.rename(rotated)  # what logrotate does
            trap.signal(signal.SIGUSR1)
            stages = trap.child_pids("stage")
            pids = [trap.pid, *trap.child_pids("ingest"), *trap.child_pids("worker"), *stages]
            assert len(pids) == 5 and len(stages) == 1

            def all_reopened() -> bool:
                return all(log_fd_targets(pid, logs_dir) == {"trap.log"} for pid in pids)

            wait_until(all_reopened, 10, "every process to hold the new log file only")
            second = reply_id(trap.send(message(2)))
            trap.wait_records({second})
            wait_until(learned(2), 30, "the stage to learn the second message")
    finally:
        tell.close()

    def lines(path: Path) -> list[dict[str, Any]]:
        return [json.loads(line) for line in path.read_text().splitlines()]

    def told(recs: list[dict[str, Any]]) -> list[str]:
        return [r["msgid"] for r in recs if r.get("event") == "told"
                and r["role"] == "stage-0" and r["pid"] == stages[0]]

    old, new = lines(rotated), lines(log_file)
    for rec in old + new:
        assert {"ts", "level", "pid", "role", "logger", "msg"} <= rec.keys()
    outcome = [r for r in new if r.get("event") == "processed"]
    assert [r["msgid"] for r in outcome] == [second]
    assert outcome[0]["verdict"] == "not_scanned" and outcome[0]["score"] is None
    assert outcome[0]["ms"] >= 0 and outcome[0]["role"].startswith("worker-")
    assert [r["msgid"] for r in old if r.get("event") == "processed"] == [first]
    assert any(r["role"] == "supervisor" and r["pid"] == trap.pid for r in new)
    # the stage wrote its line about each message into the file open at the time
    assert (told(old), told(new)) == ([first], [second])


# -- the live view ------------------------------------------------------------------------


def frame_text(cur: top.Reading, prev: top.Reading | None, trap: Trap) -> str:
    console = Console(record=True, width=150, file=io.StringIO(), color_system=None)
    console.print(top.render(cur, prev, trap.cfg))
    return console.export_text()


def test_live_view_renders_a_running_trap_and_status_json_stays_stable(
    tmp_path: Path,
) -> None:
    with running_trap(tmp_path, {"ring": {"slots": 64}}) as trap:
        sampler = top.Sampler(trap.cfg)
        try:
            before = sampler.sample()
            ids = {reply_id(trap.send(message(i))) for i in range(20)}
            trap.wait_records(ids)
            # the ingest adds its tally at the end of its turn: a worker can record
            # a message before the ingest has counted it
            def counted() -> bool:
                t = (sampler.sample().status or {}).get("totals", {})
                return (t.get("processed"), t.get("accepted_ring")) == (20, 20)

            wait_until(counted, 10, "the counters")
            now = sampler.sample()
            text = frame_text(now, before, trap)
        finally:
            sampler.close()
        (tmp_path / "frame.txt").write_text(text)
        lines = text.splitlines()
        ring_line = next(line for line in lines if line.startswith("ring "))
        assert re.search(r"\[[█·]{40}\]\s+\d+%\s+0/64 slots", ring_line), ring_line
        intake = next(line for line in lines if line.startswith("intake"))
        rate = float(re.search(r"([\d.]+)/s accepted", intake).group(1))  # type: ignore[union-attr]
        assert rate > 0
        totals = next(line for line in lines if line.startswith("totals"))
        assert "accepted 20 (spilled 0)" in totals and "processed 20" in totals
        assert now.status is not None
        for p in now.status["processes"]:
            row = next(line for line in lines if line.strip().startswith(str(p["pid"]) + " "))
            assert p["state"] in row
        worker_rows = [line for line in lines if " worker " in line]
        assert len(worker_rows) == 2
        assert all("done)" in line for line in worker_rows)  # the process title

        # status --json: the keys scripts rely on
        out = subprocess.run([sys.executable, "-m", "ringtrap.command.cli", "status", "--json",
                              "-c",
                              str(trap.config_path)], capture_output=True, check=True,
                             cwd=ROOT).stdout
        st = json.loads(out)
        assert {"version", "supervisor_pid", "ring", "overflow", "totals",
                "processes"} <= st.keys()
        assert {"name", "slots", "slot_bytes", "used", "ready", "claimed", "filling",
                "generation", "lock_breaks"} <= st["ring"].keys()
        assert {"dir", "ready", "ready_bytes", "claimed", "failed", "bytes", "max_bytes",
                "oldest_age_s"} <= st["overflow"].keys()
        assert {"pid", "role", "index", "state", "message", "done", "heartbeat_age_s",
                "rss_bytes", "cpu_s", "alive", "title"} <= st["processes"][0].keys()
        assert st["totals"]["processed"] == 20

        trap.signal(signal.SIGTERM)
        assert trap.wait_exit(60) == 0
        gone = top.Sampler(trap.cfg)
        try:
            reading = gone.sample()
        finally:
            gone.close()
        assert reading.status is None
        assert "not running" in frame_text(reading, now, trap)


# -- privileges ----------------------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
def test_started_as_root_it_runs_as_the_service_user(tmp_path: Path) -> None:
    import pwd

    pw = pwd.getpwnam("nobody")
    # the service user must reach the configuration and the directories:
    # a world-readable base outside pytest's private tmp tree
    base = Path(tempfile.mkdtemp(prefix="rt-priv-", dir="/tmp"))
    base.chmod(0o755)
    port = free_port()
    settings = {
        "service": {"user": "nobody"},
        "ingest": {"socket": str(base / "run" / "ingest.sock")},
        "metrics": {"listen": f"127.0.0.1:{port}"},
        "archive": {"dir": str(base / "archive")},
    }
    trap = Trap(base, settings)
    try:
        trap.config_path.chmod(0o644)
        trap.start()
        procs = [psutil.Process(trap.pid), *trap.children()]
        assert len(procs) == 4
        for p in procs:
            assert p.uids().real == p.uids().effective == p.uids().saved == pw.pw_uid, p
            assert p.gids().effective == pw.pw_gid
        for path in shm_paths(trap.ring_name):
            assert os.stat(path).st_uid == pw.pw_uid, path
        for path in (base / "run", trap.socket_path, trap.results_dir, trap.overflow_dir,
                     *trap.overflow_dir.iterdir()):
            assert os.lstat(path).st_uid == pw.pw_uid, path
        ids = {reply_id(trap.send(message(i))) for i in range(5)}
        trap.wait_records(ids)
        for f in trap.results_dir.iterdir():
            assert f.stat().st_uid == pw.pw_uid, f
        archived = [p for p in (base / "archive").rglob("*") if p.is_file()]
        assert len(archived) == 5  # written by the workers, as the service user
        assert all(p.stat().st_uid == pw.pw_uid for p in archived)
        assert scrape(port)['ringtrap_messages_processed_total{verdict="not_scanned"}'] == 5
        # a reload as the service user keeps root's defaults and replaces the workers
        old_workers = set(trap.child_pids("worker"))
        trap.signal(signal.SIGHUP)
        wait_until(lambda: len(trap.child_pids("worker")) == 2
                   and not old_workers & set(trap.child_pids("worker")), 30,
                   "the workers to be replaced")
        more = {reply_id(trap.send(message(10 + i))) for i in range(3)}
        trap.wait_records(ids | more)
        trap.signal(signal.SIGTERM)
        assert trap.wait_exit(60) == 0
        assert not any(os.path.exists(p) for p in shm_paths(trap.ring_name))
    finally:
        trap.close()
        shutil.rmtree(base, ignore_errors=True)


# -- the systemd unit ---------------------------------------------------------------------


def test_the_systemd_unit_verifies_and_says_what_the_supervisor_needs(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: dev.sh installs Debian's systemd package"
    text = (ROOT / "contrib" / "ringtrap.service").read_text()
    directives: dict[str, str] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            directives[key] = value
    assert directives["Type"] == "notify" and directives["NotifyAccess"] == "main"
    assert directives["KillMode"] == "mixed"
    assert directives["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert int(directives["TimeoutStopSec"]) > 30  # supervisor.graceful_timeout
    assert int(directives["WatchdogSec"]) >= 4
    for key in ("RuntimeDirectory", "StateDirectory"):
        assert directives[key] == "ringtrap"
    for key in ("NoNewPrivileges", "PrivateTmp"):
        assert directives[key] == "yes"
    assert directives["ProtectSystem"] == "strict"
    assert "/dev/shm" in directives["ReadWritePaths"]
    assert "PrivateDevices" not in directives  # status reads the host's /dev/shm
    argv = directives["ExecStart"].split()
    assert argv[0] == "/usr/local/bin/ringtrap" and argv[1:3] == ["run", "-c"]
    # verify against what is installed here: the real command instead of /usr/local/bin
    installed = shutil.which("ringtrap") or shutil.which("ringtrap", path=os.path.dirname(
        sys.executable))
    real = installed or f"{sys.executable} -m ringtrap.command.cli"
    unit = tmp_path / "ringtrap.service"
    unit.write_text(text.replace("ExecStart=/usr/local/bin/ringtrap", f"ExecStart={real}"))
    # verify runs man for Documentation=man:ringtrap(8): the page the install writes
    from ringtrap.command.cli import build_parser
    from ringtrap.config import manpage

    (tmp_path / "man" / "man8").mkdir(parents=True)
    (tmp_path / "man" / "man8" / "ringtrap.8").write_text(manpage.man_page(build_parser()))
    r = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                       timeout=60, env={**os.environ, "MANPATH": str(tmp_path / "man")})
    # verify exits 0 on unknown keys and bad values too: its warnings must be empty
    assert (r.returncode, r.stdout, r.stderr) == (0, "", ""), r.stderr
