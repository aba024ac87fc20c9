"""When the supervisor starts a blocklist writer, and what it does with one that overruns."""

from __future__ import annotations

import dataclasses
import signal
from pathlib import Path

from fakeos import FakeOS, exit_status, signal_status

from ringtrap import config as configmod
from ringtrap.config import Config
from ringtrap.control.blockwriter import MIN_RUN_BOUND, BlocklistWriter


def cfg_with(tmp_path: Path, interval: int, plain: bool = True) -> Config:
    cfg = configmod.defaults()
    return dataclasses.replace(cfg, blocklist=dataclasses.replace(
        cfg.blocklist, interval=interval, plain=tmp_path / "list.txt" if plain else None))


def test_a_writer_is_started_at_once_then_every_interval(tmp_path: Path) -> None:
    fake = FakeOS()
    os_ = fake.as_os()
    w = BlocklistWriter()
    cfg = cfg_with(tmp_path, 300)
    w.tick(cfg, os_, ())
    first = w.pid
    assert first == fake.next_pid
    fake.now += 400
    w.tick(cfg, os_, ())
    assert w.pid == first  # one at a time: the next is due, the last still runs
    assert w.reaped(first, exit_status(0)) and w.pid == 0 and w.writes == 1
    w.tick(cfg, os_, ())
    assert w.pid == first + 1  # overdue: at once
    assert w.reaped(w.pid, exit_status(0))
    fake.now += 299
    w.tick(cfg, os_, ())
    assert w.pid == 0
    fake.now += 1
    w.tick(cfg, os_, ())
    assert w.pid == first + 2


def test_off_without_an_interval_or_a_file(tmp_path: Path) -> None:
    fake = FakeOS()
    w = BlocklistWriter()
    for cfg in (cfg_with(tmp_path, 0), cfg_with(tmp_path, 60, plain=False)):
        w.tick(cfg, fake.as_os(), ())
        assert w.pid == 0 and fake.next_pid == 100


def test_a_writer_that_overruns_is_killed_and_its_temporary_file_removed(
        tmp_path: Path) -> None:
    fake = FakeOS()
    os_ = fake.as_os()
    w = BlocklistWriter()
    cfg = cfg_with(tmp_path, 10)
    w.tick(cfg, os_, ())
    pid = w.pid
    left = tmp_path / f".list.txt.{pid}.tmp"
    left.write_text("half a list")
    fake.now += MIN_RUN_BOUND  # the bound is never below a minute, whatever the interval
    w.tick(cfg, os_, ())
    assert fake.killed == []
    fake.now += 1
    w.tick(cfg, os_, ())
    assert fake.killed == [(pid, signal.SIGKILL)]
    assert w.reaped(pid, signal_status(signal.SIGKILL))
    assert (w.failures, w.pid, left.exists()) == (1, 0, False)


def test_a_reused_pid_is_never_signalled_and_other_exits_are_not_the_writers(
        tmp_path: Path) -> None:
    fake = FakeOS()
    os_ = fake.as_os()
    w = BlocklistWriter()
    w.tick(cfg_with(tmp_path, 10), os_, ())
    assert not w.reaped(w.pid + 1, exit_status(0))
    fake.alive.pop(w.pid)  # gone, and its pid handed on
    w.stop(os_)
    assert fake.killed == []
