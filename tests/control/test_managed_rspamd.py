"""The managed rspamd: its configuration, command line, boot probe, log lines, and the child."""

from __future__ import annotations

import logging
import os
import socket
import threading
from pathlib import Path

import pytest

from ringtrap import config as configmod
from ringtrap.base.states import ChildState, Role
from ringtrap.control import managed_rspamd as mr
from ringtrap.control import spamd_log
from ringtrap.control.child import Child, set_state, stop_next
from ringtrap.worker import scanner_client


def cfg_for(tmp_path: Path, **rspamd: object) -> configmod.Config:
    return configmod.from_dict({
        "ingest": {"socket": str(tmp_path / "run" / "ingest.sock")},
        "workers": {"count": 3},
        "scanner": {"kind": "rspamd"},
        "rspamd": {"db_dir": str(tmp_path / "db"), **rspamd},
    })


def test_the_configuration_is_ringtraps_own_and_offline_by_default(tmp_path: Path) -> None:
    cfg = cfg_for(tmp_path, nameservers=["127.0.0.1:53"])
    files = mr.rspamd_files(cfg)
    main = files["rspamd.conf"]
    sock = tmp_path / "run" / "rspamd.sock"
    assert f'bind_socket = "{sock} mode=0600";' in main and "count = 3;" in main
    # one worker only: no proxy, controller or fuzzy storage; no Redis-backed Bayes
    assert main.count("worker ") == 1 and "statistic.conf" not in main.replace(
        "without statistic.conf", "")
    assert 'nameserver = ["127.0.0.1:53"];' in files["local.d/options.inc"]
    off = {name for name, text in files.items() if text == "enabled = false;\n"}
    assert off == {f"local.d/{m}.conf" for m in mr.NETWORK_MODULES}
    assert {"local.d/rbl.conf", "local.d/spf.conf", "local.d/fuzzy_check.conf"} <= off

    net = mr.rspamd_files(cfg_for(tmp_path, network=True, workers=1))
    assert set(net) == {"rspamd.conf"} and "count = 1;" in net["rspamd.conf"]


def test_writing_replaces_what_a_former_configuration_left(tmp_path: Path) -> None:
    d = mr.write_rspamd_config(cfg_for(tmp_path))
    assert (d / "local.d" / "rbl.conf").exists()
    mr.write_rspamd_config(cfg_for(tmp_path, network=True))
    assert list((d / "local.d").iterdir()) == []
    assert (d / "rspamd.conf").read_text() == mr.rspamd_files(
        cfg_for(tmp_path, network=True))["rspamd.conf"]


def test_the_command_line_keeps_its_files_private(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = cfg_for(tmp_path)
    d = mr.rspamd_conf_dir(cfg)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    argv = mr.rspamd_argv(cfg)
    assert argv[1:4] == ["-f", "-c", str(d / "rspamd.conf")]
    assert {f"--var=LOCAL_CONFDIR={d}", f"--var=RUNDIR={d}", f"--var=LOGDIR={d}",
            f"--var=DBDIR={tmp_path / 'db'}"} <= set(argv)
    assert "-u" not in argv
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(mr, "rspamd_root_user", lambda: "nobody")
    assert "-u" in mr.rspamd_argv(cfg) and "nobody" in mr.rspamd_argv(cfg)
    monkeypatch.setattr(mr, "rspamd_root_user", lambda: None)
    assert mr.rspamd_argv(cfg)[-1] == "--insecure"


def test_rspamd_boots_when_its_process_answers_pong(tmp_path: Path) -> None:
    path = tmp_path / "rspamd.sock"
    with socket.socket(socket.AF_UNIX) as srv:
        srv.bind(str(path))
        srv.listen()

        def answer() -> None:
            conn, _ = srv.accept()
            with conn:
                conn.recv(100)
                conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n"
                             b"Content-Length: 6\r\n\r\npong\r\n")

        t = threading.Thread(target=answer)
        t.start()
        assert mr.rspamd_answers_as(path, os.getpid())
        t.join()
        # the listener is rspamd's main process or a worker of it: the parent counts
        assert mr._parent_of(os.getpid()) == os.getppid()
        assert not mr.rspamd_answers_as(path, os.getpid() + 100000)
    assert not mr.rspamd_answers_as(tmp_path / "missing.sock", os.getpid())


def test_rspamd_lines_are_relayed_by_their_severity() -> None:
    c = spamd_log.classify_rspamd
    assert c("2026-12-03 11:48:41 [error] #24864(main) <x>; map; cannot resolve maps") == (
        logging.ERROR, "<x>; map; cannot resolve maps", 24864)
    assert c("2026-12-03 11:48:41 [warning] #7(normal) cfg; odd")[0] == logging.WARNING
    assert c("2026-12-03 11:48:41 #7(main) <a>; main; main: rspamd 3.4 is loading")[0] == (
        logging.INFO)
    # per message, and what the managed configuration causes on purpose: DEBUG
    assert c("2026-12-03 11:48:41 [info] #9(normal) <1c5fe9>; task; rspamd_task_write_log:"
             " id: <m>")[0] == logging.DEBUG
    assert c("2026-12-03 11:48:41 [error] #9(main) <m>; symcache; process_deps: cannot find"
             " dependency on symbol DKIM_CHECK for symbol DKIM_SIGNED")[0] == logging.DEBUG
    assert c("a crash, in no format of rspamd's")[0] == logging.WARNING


def test_the_managed_rspamd_stops_last() -> None:
    kids = [Child(Role.RSPAMD, 0, -1), Child(Role.WORKER, 0, 2)]
    for k in kids:
        k.started_as(100 + k.row, None, 0.0, 0)
    assert stop_next(kids, draining=False) == []  # a worker may still scan with it
    set_state(kids[1], ChildState.EXITED)
    assert [c.role for c in stop_next(kids, draining=False)] == [Role.RSPAMD]
    assert kids[0].name == "rspamd"


def test_workers_scan_with_rspamd_when_the_kind_says_so(tmp_path: Path) -> None:
    cfg = cfg_for(tmp_path)
    with pytest.raises(ValueError, match="managed"):
        scanner_client(cfg)
    pool = scanner_client(cfg, (mr.rspamd_address(cfg),))
    assert pool is not None and pool.kind == "rspamd"
    tcp = configmod.override(cfg, {"rspamd.address": "tcp:127.0.0.1:11333"})
    assert scanner_client(tcp).kind == "rspamd"  # type: ignore[union-attr]
    spamd = configmod.override(cfg, {"scanner.kind": "spamd", "spamd.address": "off"})
    assert scanner_client(spamd) is None
    assert configmod.runs_managed_rspamd(cfg) and not configmod.runs_managed_spamd(cfg)
