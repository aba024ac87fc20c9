"""What a running trap writes is for its user and group only (0640 files, 0750 dirs)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from spamd_fixture import SpamdProcess
from trap_fixture import Trap, message, reply_id

from ringtrap.base import modes


def too_open(top: Path) -> list[str]:
    """Every path under ``top`` (itself included) that others, or the group's write, reach."""
    found = []
    for root, dirs, files in os.walk(top):
        for p in [Path(root)] + [Path(root) / n for n in dirs + files]:
            st = os.lstat(p)
            if stat.S_ISSOCK(st.st_mode) or stat.S_ISLNK(st.st_mode):
                continue  # sockets have their configured ingest.socket_mode
            if st.st_mode & 0o027:
                found.append(f"{p} {stat.filemode(st.st_mode)}")
    return sorted(set(found))


@pytest.mark.slow
@pytest.mark.spamd
def test_everything_a_running_trap_writes_is_0640_or_0750(
    tmp_path: Path, spamd_server: SpamdProcess
) -> None:
    old_umask = os.umask(0o022)  # what a shell usually gives: the trap must not rely on it
    try:
        trap = Trap(tmp_path)
        run = trap.rundir / "run"  # made by the trap, not by the test
        trap.settings["ingest"]["socket"] = str(run / "ingest.sock")
        trap.settings["archive"] = {"dir": str(tmp_path / "archive")}
        trap.settings["dedupe"] = {"enabled": True}  # its SQLite file is written when scanning
        trap.settings["spamd"] = {"address": spamd_server.unix_address}
        trap.settings["supervisor"].update(
            log_file=str(tmp_path / "own.log"), pidfile=str(tmp_path / "pid" / "ringtrap.pid")
        )
        trap.write_config()
        try:
            trap.start()
            ids = {
                reply_id(trap.send(message(i, size=size)))
                for i, size in enumerate([500, 100_000] * 5)
            }  # ring and overflow
            trap.wait_records(ids)
            written = [
                trap.results_dir,
                tmp_path / "archive",
                trap.overflow_dir,
                run,
                tmp_path / "own.log",
                tmp_path / "pid",
            ]
            assert (trap.results_dir / "dedupe.sqlite").exists()
            assert any((tmp_path / "archive").rglob("*.ringtrap"))
            assert [p for p in written if not p.exists()] == []
            assert [bad for p in written for bad in too_open(p)] == []
        finally:
            trap.close()
    finally:
        os.umask(old_umask)


def test_tighten_narrows_what_an_older_version_left_open(tmp_path: Path) -> None:
    f = tmp_path / "dedupe.sqlite"
    f.write_bytes(b"")
    f.chmod(0o664)
    (tmp_path / "link").symlink_to(f)
    modes.tighten(tmp_path / "link")  # never through a symlink
    assert stat.S_IMODE(f.stat().st_mode) == 0o664
    modes.tighten(f)
    assert stat.S_IMODE(f.stat().st_mode) == 0o640
    f.chmod(0o600)
    modes.tighten(f)  # never widened
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
