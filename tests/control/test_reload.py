"""HUP: every key takes effect in every process that reads it, or is declared restart-only.

The declarations are checked against where each key is read; the ingest's
share is applied to a running server; the supervisor's reload replaces the
workers and the stages and tells the ingest; and end to end, a HUP that
lowers overflow.max_bytes makes the running ingest refuse at the new cap.
"""

from __future__ import annotations

import ast
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Self

import pytest
from delivery_harness import Server, servers, temp_base
from fakeos import FakeOS, exit_status
from trap_fixture import running_trap, wait_until

from ringtrap import config as configmod
from ringtrap.base.states import ChildState, Role
from ringtrap.config import Config, MiB
from ringtrap.config.sections import each_key, each_section
from ringtrap.control.child import Child
from ringtrap.intake import child as ingest_child
from ringtrap.supervisor import Supervisor

ROOT = Path(__file__).resolve().parents[2]

# Where each reloadable key takes effect.  "worker" and "stage": read by
# those children, which a reload replaces one at a time with the new
# configuration; "ingest": applied by the running ingest on the HUP the
# supervisor forwards (ingest_child.RELOADED); "supervisor": read from the
# supervisor's current configuration when used, or re-applied by reload().
APPLIED_IN: dict[str, set[str]] = {
    "ingest.max_message_bytes": {"ingest"},
    "ingest.idle_timeout": {"ingest"},
    "ingest.message_timeout": {"ingest"},
    "ingest.max_connections": {"ingest"},
    "ingest.submit_max_connections": {"ingest"},
    "ingest.lmtp_max_connections": {"ingest"},
    "overflow.max_bytes": {"ingest", "worker", "supervisor"},
    "overflow.purge_at": {"supervisor"},
    "overflow.max_attempts": {"worker", "stage"},
    "overflow.drain_order": {"worker"},
    "overflow.quarantine_max_bytes": {"worker", "stage", "supervisor"},
    "overflow.quarantine_retention_days": {"supervisor"},
    "workers.count": {"supervisor"},
    "workers.max_rss_bytes": {"worker"},
    "workers.heartbeat_timeout": {"supervisor"},
    "workers.scan_limit_bytes": {"worker"},
    "scanner.breaker_errors": {"worker"},
    "scanner.breaker_window": {"worker"},
    "scanner.breaker_revive": {"worker"},
    "spamd.timeout": {"worker"},
    "spamd.connect_timeout": {"worker", "stage"},
    "rspamd.timeout": {"worker"},
    "rspamd.connect_timeout": {"worker"},
    "scanner.hung_after": {"worker"},
    "results.retention_days": {"worker"},
    "records.trusted_networks": {"worker"},
    "prefilter.checks": {"worker"},
    "dedupe.enabled": {"worker"},
    "dedupe.skip_scan": {"worker"},
    "dedupe.window": {"worker"},
    "dedupe.store": {"worker"},
    "dedupe.bucket": {"worker"},
    "archive.verdicts": {"worker"},
    "archive.retention_days": {"worker"},
    "archive.trace_headers": {"worker"},
    "stage.learn": {"stage"},
    "stage.report": {"stage"},
    "stage.verdicts": {"worker"},
    "stage.address": {"stage"},
    "stage.timeout": {"stage"},
    "stage.max_bytes": {"worker", "stage"},
    "supervisor.graceful_timeout": {"supervisor", "ingest"},
    # the forwarder is replaced on HUP like a stage worker
    **{f"forward.{k}": {"forwarder"} for k in (
        "servers", "subject_prefix", "host", "stream", "replicas", "duplicate_window",
        "ack_timeout", "tls_ca_file", "tls_cert_file", "tls_key_file", "creds_file",
        "nkey_seed_file")},
    "forward.raw": {"worker", "forwarder"},
    "forward.raw_max_bytes": {"worker", "forwarder"},
    "forward.spill_max_bytes": {"worker"},
    # every write forks its writer with the supervisor's configuration of the moment
    "blocklist.interval": {"supervisor"},
    "blocklist.window_days": {"supervisor"},
    "blocklist.min_hits": {"supervisor"},
    "blocklist.min_recipients": {"supervisor"},
    "blocklist.expire_days": {"supervisor"},
    "blocklist.ipv4_prefix": {"supervisor"},
    "blocklist.ipv6_prefix": {"supervisor"},
    "blocklist.allow": {"supervisor"},
    "blocklist.list_reserved": {"supervisor"},
    "blocklist.verdicts": {"supervisor"},
    "blocklist.a_value": {"supervisor"},
    "blocklist.txt": {"supervisor"},
    "blocklist.rbldnsd_ip4": {"supervisor"},
    "blocklist.rbldnsd_ip6": {"supervisor"},
    "blocklist.postfix": {"supervisor"},
    "blocklist.plain": {"supervisor"},
    "blocklist.json": {"supervisor"},
}


def all_keys() -> set[str]:
    return {f"{s}.{k}" for s, cls in each_section() for k, _ in each_key(cls)}


def test_every_key_is_reloadable_or_declared_restart_only() -> None:
    restart = configmod.restart_only()
    assert not restart & APPLIED_IN.keys(), "a key cannot be both"
    assert restart | APPLIED_IN.keys() == all_keys(), (
        "declare a new key restart=True in config/sections.py, or say here where a HUP applies it")
    ingest = {k for k, where in APPLIED_IN.items() if "ingest" in where}
    assert ingest == ingest_child.RELOADED


def keys_read(*modules: str) -> set[str]:
    """The keys ``ringtrap/<module>.py`` (or every module of a folder) reads,
    as ``x.section.key`` or through an alias."""
    sections = {s: {k for k, _ in each_key(cls)} for s, cls in each_section()}
    paths = [p for m in modules for p in
             (sorted((ROOT / "ringtrap" / m).glob("*.py")) if (ROOT / "ringtrap" / m).is_dir()
              else [ROOT / "ringtrap" / f"{m}.py"])]
    found: set[str] = set()
    for fn in (n for p in paths for n in ast.walk(ast.parse(p.read_text()))):
        if not isinstance(fn, ast.FunctionDef):
            continue
        alias = {t.id: n.value.attr for n in ast.walk(fn) if isinstance(n, ast.Assign)
                 and isinstance(n.value, ast.Attribute) and n.value.attr in sections
                 for t in n.targets if isinstance(t, ast.Name)}
        for n in ast.walk(fn):
            if not isinstance(n, ast.Attribute):
                continue
            v = n.value
            section = (v.attr if isinstance(v, ast.Attribute) else
                       alias.get(v.id) if isinstance(v, ast.Name) else None)
            if section in sections and n.attr in sections[section]:
                found.add(f"{section}.{n.attr}")
    return found


def test_every_key_the_ingest_reads_is_reloaded_or_restart_only() -> None:
    # the server and every module of its layer: the child entry, the sessions, the sink
    read = keys_read("ingest_socket", "intake")
    assert "overflow.max_bytes" in read and "ingest.idle_timeout" in read  # the scan sees them
    assert read <= ingest_child.RELOADED | configmod.restart_only()


# -- the ingest applies its share --------------------------------------------------


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Server]]:
    with temp_base() as base, servers(base, monkeypatch) as factory:
        yield factory


CHANGED = {
    "ingest.max_message_bytes": 3 * MiB,
    "ingest.idle_timeout": 7.5,
    "ingest.message_timeout": 42.0,
    "ingest.max_connections": 5,
    "ingest.submit_max_connections": 6,
    "ingest.lmtp_max_connections": 7,
    "overflow.max_bytes": 9 * MiB,
}


def test_reconfigure_applies_every_reloaded_ingest_key(serve: Callable[..., Server]) -> None:
    s = serve()
    before = s.server.settings()
    assert set(CHANGED) == ingest_child.RELOADED - {"supervisor.graceful_timeout"}
    assert all(before[k] != v for k, v in CHANGED.items())
    cfg = configmod.override(configmod.defaults(), CHANGED)
    s.server.reconfigure(cfg)
    assert s.server.settings() == CHANGED


# -- the supervisor: restart-only kept, workers and stages replaced, ingest told ------


@dataclass
class FakeRing:
    """The process table as the supervisor reads it: (row, pid) of who registered."""

    rows: list[SimpleNamespace]

    def read_rows(self) -> list[SimpleNamespace]:
        return self.rows

    @property
    def table(self) -> Self:  # the supervisor reads rows through ring.table
        return self


def write(path: Path, cfg: Config) -> None:
    path.write_text(configmod.sample_config(cfg, commented=False))


def test_reload_keeps_restart_only_keys_and_reaches_every_child(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    cfg = configmod.override(configmod.defaults(), {"workers.count": 1, "spamd.address": "off"})
    path = tmp_path / "trap.toml"
    write(path, cfg)
    fake = FakeOS()
    s = Supervisor(configmod.load(path), path, fake.as_os())
    ingest, worker, stage = Child(Role.INGEST, 0, 1), Child(Role.WORKER, 0, 2), \
        Child(Role.STAGE, 0, 63)
    forwarder = Child(Role.FORWARDER, 0, 62)
    s.children = [ingest, worker, stage, forwarder]
    s.reconcile()

    new = configmod.override(cfg, {"ring.slots": 8, "workers.max_rss_bytes": "300M",
                                   "overflow.max_bytes": "512M", "stage.learn": True})
    write(path, new)
    assert s.reload() == ["ring.slots"]
    assert s.cfg.ring.slots == cfg.ring.slots  # kept until the next start
    assert s.cfg.workers.max_rss_bytes == 300 * MiB and s.cfg.overflow.max_bytes == 512 * MiB

    ring = FakeRing([])  # the ingest is still booting: not registered yet
    s.ring = ring  # type: ignore[assignment]
    s._roll_workers()
    assert (ingest.pid, signal.SIGHUP) not in fake.killed  # its handlers may not be in place
    ring.rows.append(SimpleNamespace(row=ingest.row, pid=ingest.pid))
    old_pids = {worker.pid, stage.pid, forwarder.pid}
    for _ in range(10):
        s._roll_workers()
        for c in (worker, stage, forwarder):
            if c.state is ChildState.STOPPING:
                fake.exits.append((c.pid, exit_status(0)))
        s.reap()
        s.reconcile()
    assert fake.killed.count((ingest.pid, signal.SIGHUP)) == 1
    assert ingest.state is ChildState.RUNNING and ingest.pid == 101  # not restarted
    assert old_pids <= {pid for pid, sig in fake.killed if sig == signal.SIGTERM}
    assert all(c.generation == s.generation and c.state is ChildState.RUNNING
               for c in (worker, stage, forwarder))
    assert {worker.pid, stage.pid, forwarder.pid}.isdisjoint(old_pids)


# -- end to end --------------------------------------------------------------------------


@pytest.mark.slow
def test_hup_lowering_the_overflow_cap_reaches_the_running_ingest(tmp_path: Path) -> None:
    settings = {"ingest": {"max_message_bytes": "1M"}, "overflow": {"max_bytes": "64M"}}
    # larger than a slot, so it goes to the overflow; with its envelope line,
    # larger than a 1 MiB cap
    head = b"Subject: big\r\n\r\n"
    big = head + (b"padding words of a line\r\n" * 50_000)[: MiB - len(head)]
    with running_trap(tmp_path, settings) as trap:
        def overflow_empty() -> bool:
            o = (trap.status() or {}).get("overflow", {})
            return o.get("ready") == 0 and o.get("claimed") == 0

        assert trap.send(big).startswith(b"OK ")
        wait_until(overflow_empty, 60, "the workers to take the message")
        [ingest_pid] = trap.child_pids("ingest")
        workers = set(trap.child_pids("worker"))
        trap.settings["overflow"]["max_bytes"] = "1M"
        trap.settings["ring"]["slots"] = 32  # restart-only: waits, and says so
        trap.write_config()
        trap.signal(signal.SIGHUP)
        # the supervisor tells the ingest at once, then replaces the workers one by one
        wait_until(lambda: not set(trap.child_pids("worker")) & workers
                   and len(trap.child_pids("worker")) == 2, 60, "the workers replaced")
        # an empty overflow: only the cap can refuse it
        assert overflow_empty()
        assert trap.send(big) == b"TEMPFAIL overflow full\n"
        assert trap.child_pids("ingest") == [ingest_pid]  # the same ingest, told
        assert trap.send(b"Subject: small\r\n\r\nfits a slot\r\n").startswith(b"OK ")
        assert (trap.status() or {})["ring"]["slots"] == 64  # the running ring


def test_sample_config_round_trips_for_the_reload_test() -> None:
    cfg = configmod.override(configmod.defaults(), {"spamd.address": "off"})
    assert configmod.load_text(configmod.sample_config(cfg, commented=False)) == cfg
