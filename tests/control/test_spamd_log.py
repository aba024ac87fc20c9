"""A managed spamd's lines go where the trap's go, and its per-message lines at DEBUG."""

from __future__ import annotations

import json
import logging
import shutil
import signal
from pathlib import Path

import psutil
import pytest
from trap_fixture import message, reply_id, running_trap, wait_until

from ringtrap.control import spamd_log


def test_spamd_lines_are_classified_by_their_level_and_kind() -> None:
    line = "Thu Dec  3 08:49:37 2026 [1234] info: spamd: connection from ::1 [::1]:40000 to port"
    assert spamd_log.classify(line) == (logging.DEBUG, "spamd: connection from ::1 [::1]:40000"
                                        " to port", 1234)
    start = "Thu Dec  3 08:49:37 2026 [77] info: spamd: server started on UNIX domain socket x"
    assert spamd_log.classify(start)[0] == logging.INFO
    assert spamd_log.classify("Thu Dec  3 2026 [5] warn: config: bad rule")[0] == logging.WARNING
    assert spamd_log.classify("Thu Dec  3 2026 [5] error: oops")[0] == logging.ERROR
    # not spamd's format (a Perl warning, a crash): worth seeing
    assert spamd_log.classify("Use of uninitialized value at line 3.")[0] == logging.WARNING


def records(path: Path) -> list[dict[str, object]]:
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


@pytest.mark.slow
@pytest.mark.spamd
def test_managed_spamd_logs_through_the_trap_into_its_log_file(tmp_path: Path) -> None:
    if shutil.which("spamd") is None and not Path("/usr/sbin/spamd").exists():
        pytest.skip("spamd is not installed")
    log_file = tmp_path / "trap.log"
    settings = {"spamd": {"address": "managed", "extra_args": ["--local"]},
                "supervisor": {"log_file": str(log_file), "log_format": "json",
                               "log_level": "info"}}
    with running_trap(tmp_path, settings) as trap:
        ids = {reply_id(trap.send(message(i))) for i in range(20)}
        trap.wait_records(ids)
        trap.signal(signal.SIGTERM)
        assert trap.wait_exit() == 0
        stderr = trap.log_path.read_text(errors="replace")
    spamd = [r for r in records(log_file) if r["logger"] == "ringtrap.spamd"]
    # spamd's start is there, in the trap's format, from the supervisor's logging
    assert any("server started" in str(r["msg"]) for r in spamd), spamd
    assert all(r["event"] == "spamd" and r["role"] == "supervisor" for r in spamd)
    # four of spamd's lines per message before; now none of them at the default level
    assert len([r for r in spamd if r["level"] == "info"]) < len(ids), spamd
    # nothing of spamd's went past the log file to the trap's standard error
    assert "spamd:" not in stderr and "prefork:" not in stderr, stderr[-2000:]


@pytest.mark.slow
@pytest.mark.spamd
def test_a_reload_that_resizes_the_pool_resizes_the_managed_spamd(tmp_path: Path) -> None:
    if shutil.which("spamd") is None and not Path("/usr/sbin/spamd").exists():
        pytest.skip("spamd is not installed")
    settings = {"spamd": {"address": "managed", "extra_args": ["--local"]},
                "workers": {"count": 2}}
    with running_trap(tmp_path, settings) as trap:

        def spamd_with(children: int) -> bool:
            want = f"--max-children={children}"
            for p in trap.children():
                try:
                    if want in p.cmdline():
                        return True
                except psutil.Error:
                    pass  # a spamd on its way out
            return False

        wait_until(lambda: spamd_with(2), 60, "spamd with 2 children")
        trap.settings["workers"]["count"] = 3
        trap.write_config()
        trap.signal(signal.SIGHUP)
        wait_until(lambda: spamd_with(3), 60, "spamd restarted with 3 children")
        # and it scans: the pool and spamd are back in step
        ids = {reply_id(trap.send(message(i))) for i in range(3)}
        recs = trap.wait_records(ids)
        assert all(isinstance(r["score"], float) for r in recs)
