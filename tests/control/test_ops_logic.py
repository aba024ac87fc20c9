"""Operating the trap, without processes: watchdog timing, restart causes, log
formats and rate limits, the metrics collector over a real ring, privilege
checks."""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakeos import FakeOS, exit_status, signal_status
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ringtrap import config as configmod
from ringtrap import ring as ringmod
from ringtrap.base import logs, privileges, systemd
from ringtrap.base.counters import SCAN_BUCKETS, C, scan_bucket
from ringtrap.base.states import ChildState, ProcState, Role
from ringtrap.control import metrics
from ringtrap.control.child import MIN_UPTIME, Child
from ringtrap.overflow import Overflow
from ringtrap.store.segment import unlink_name
from ringtrap.supervisor import Supervisor

# -- sd_notify and the watchdog ------------------------------------------------


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [("2000000", None, 1.0), ("30000000", "self", 15.0), ("", None, None), ("0", None, None),
     ("junk", None, None), ("2000000", "1", None)],
)
def test_watchdog_interval_is_half_of_watchdog_usec_and_ours_only(
    usec: str, pid: str | None, expected: float | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid is None:
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
    else:
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()) if pid == "self" else pid)
    assert systemd.watchdog_interval() == expected


def test_notify_is_silent_without_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify(ready=1) is False
    monkeypatch.setenv("NOTIFY_SOCKET", "/nonexistent/notify.sock")
    assert systemd.notify(ready=1) is False


class FakeRow:
    """Records what the supervisor counts into its process-table row."""

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}

    def add(self, counter: int, n: int = 1) -> None:
        self.counts[counter] = self.counts.get(counter, 0) + n

    def beat(self) -> None:
        pass


@pytest.fixture
def quiet_sup(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Supervisor, FakeOS, list[dict]]]:
    """A supervisor with no children and no stores; notify() calls are recorded."""
    sent: list[dict] = []
    monkeypatch.setattr(systemd, "notify", lambda **kw: sent.append(kw) or True)
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    cfg = configmod.override(configmod.defaults(), {"workers.count": 1, "spamd.address": "off"})
    fake = FakeOS()
    s = Supervisor(cfg, None, fake.as_os())
    s.next_purge_at = float("inf")
    yield s, fake, sent


def test_watchdog_is_sent_from_housekeeping_at_half_the_interval(
    quiet_sup: tuple[Supervisor, FakeOS, list[dict]],
) -> None:
    s, fake, sent = quiet_sup
    pings = []
    for step in range(9):  # housekeeping every 0.25 s for 2 s
        fake.now = 1000.0 + 0.25 * step
        s.housekeeping()
        pings += [fake.now for kw in sent if kw.get("watchdog") == 1]
        sent.clear()
    assert pings == [1000.0, 1001.0, 1002.0]
    # no turn of the loop, no ping: a loop stuck for 5 s sends nothing meanwhile,
    # and the first turn after it pings at once
    fake.now = 1007.0
    s.housekeeping()
    assert [kw for kw in sent if kw.get("watchdog") == 1] == [{"watchdog": 1}]


def test_status_line_for_systemd_has_the_headline_numbers(
    quiet_sup: tuple[Supervisor, FakeOS, list[dict]],
) -> None:
    s, fake, sent = quiet_sup
    fake.now = 1000.0
    s.housekeeping()
    statuses = [kw["status"] for kw in sent if "status" in kw]
    assert statuses == ["0 workers"]  # no ring yet: only what is known


@pytest.mark.parametrize(
    ("how", "counter"),
    [("crash", C.RESTARTS_CRASHED), ("fast", C.RESTARTS_TOO_FAST), ("hung", C.RESTARTS_HUNG)],
)
def test_restarts_are_counted_by_cause(
    how: str, counter: C, quiet_sup: tuple[Supervisor, FakeOS, list[dict]]
) -> None:
    s, fake, _ = quiet_sup
    row = FakeRow()
    s.row = row  # type: ignore[assignment]
    c = Child(Role.WORKER, 0, 2)
    s.children = [c]
    s.reconcile()
    assert c.state is ChildState.RUNNING
    fake.now += 0.5 if how == "fast" else MIN_UPTIME + 10
    c.booted = how != "fast"  # "fast": it died before its row left STARTING
    if how == "hung":
        c.abort_sent = fake.now
    status = signal_status(9) if how != "fast" else exit_status(1)
    s.on_exit(c, status)
    assert row.counts == {C.RESTARTS: 1, counter: 1}


def test_a_requested_exit_is_not_a_restart(
    quiet_sup: tuple[Supervisor, FakeOS, list[dict]],
) -> None:
    s, fake, _ = quiet_sup
    row = FakeRow()
    s.row = row  # type: ignore[assignment]
    c = Child(Role.WORKER, 0, 2)
    s.children = [c]
    s.reconcile()
    c.booted = True  # e.g. a worker recycled over its memory limit
    fake.now += MIN_UPTIME + 10
    s.on_exit(c, exit_status(0))
    assert row.counts == {}


# -- logs ---------------------------------------------------------------------


def test_rate_limit_lets_one_line_per_interval_and_counts_the_rest() -> None:
    now = [100.0]
    limit = logs.RateLimit(30.0, clock=lambda: now[0])
    assert limit.ready() == 0
    held = []
    for _ in range(5):
        now[0] += 5.0
        held.append(limit.ready())
    assert held == [None] * 5
    now[0] += 5.0
    assert limit.ready() == 5  # 30 s after the first: five held back
    limit.reset()
    assert limit.ready() == 0  # a new outage is reported at once


def test_json_formatter_writes_one_object_per_line_with_extras() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger("ringtrap.test-json")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("%s: scanned in %.1f ms", "abc-1", 12.5,
                       extra={"msgid": "abc-1", "score": 7.5, "event": "processed"})
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed\nwith a second line")
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2  # a multi-line message and a traceback stay on one line
    first, second = (json.loads(line) for line in lines)
    assert first["msg"] == "abc-1: scanned in 12.5 ms"
    assert (first["msgid"], first["score"], first["event"]) == ("abc-1", 7.5, "processed")
    assert first["level"] == "warning" and first["pid"] == os.getpid()
    assert first["logger"] == "ringtrap.test-json"
    assert "ValueError: boom" in second["exc"]


def test_log_setup_refuses_an_unknown_format() -> None:
    with pytest.raises(ValueError, match="log format"):
        logs.setup("info", None, "xml")


# -- metrics over a real ring ----------------------------------------------------


@pytest.fixture
def small_ring(tmp_path: Path) -> Iterator[tuple[ringmod.Ring, Path]]:
    name = f"rt-ops-{uuid.uuid4().hex[:8]}"
    ring = ringmod.Ring.create(name, 8, 4096)
    try:
        yield ring, tmp_path / "overflow"
    finally:
        ring.close()
        unlink_name(name)


def scrape(collector: metrics.TrapCollector) -> dict[str, float]:
    """Every sample of one exposition as {'name{label="v"}': value}."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    out = {}
    for fam in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in fam.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def test_collector_reports_shared_memory_counters(
    small_ring: tuple[ringmod.Ring, Path],
) -> None:
    ring, spill = small_ring
    Overflow(spill, 1 << 20)
    ingest = ring.table.register(Role.INGEST)
    ingest.add(C.ACCEPTED_RING, 5)
    ingest.add(C.ACCEPTED_OVERFLOW, 2)
    ingest.add(C.REFUSED_EMPTY)
    worker = ring.table.register(Role.WORKER, 3)
    worker.add(C.PROCESSED, 4)
    worker.add(C.VERDICT_SPAM, 3)
    worker.add(C.VERDICT_ERROR, 1)
    for seconds in (0.004, 0.07, 0.07, 99.0):
        worker.add(C.SCAN_US, int(seconds * 1e6))
        worker.add(scan_bucket(seconds))
    ring.table.retire_row(ingest.row)  # an exited process's counts still count
    assert ring.put("m-1", b"payload") is ringmod.PutResult.OK
    now = [0.0]
    collector = metrics.TrapCollector(ring.name, spill, 1 << 20, clock=lambda: now[0])
    try:
        m = scrape(collector)
        assert m['ringtrap_messages_accepted_total{store="ring"}'] == 5
        assert m['ringtrap_messages_accepted_total{store="overflow"}'] == 2
        assert m['ringtrap_messages_refused_total{reason="empty"}'] == 1
        assert m['ringtrap_messages_processed_total{verdict="spam"}'] == 3
        assert m['ringtrap_messages_processed_total{verdict="error"}'] == 1
        assert m["ringtrap_ring_slots"] == 8
        assert m['ringtrap_ring_slots_used{state="ready"}'] == 1
        assert m['ringtrap_processes{role="worker",state="starting"}'] == 1
        assert m['ringtrap_overflow_messages{state="ready"}'] == 0
        assert m["ringtrap_overflow_max_bytes"] == 1 << 20
        buckets = {float(b): m[f'ringtrap_scan_duration_seconds_bucket{{le="{b}"}}']
                   for b in [*(repr(x) for x in SCAN_BUCKETS), "+Inf"]}
        assert buckets[0.005] == 1 and buckets[0.05] == 1 and buckets[0.1] == 3
        assert buckets[30.0] == 3 and buckets[float("inf")] == 4
        assert m["ringtrap_scan_duration_seconds_count"] == 4
        assert m["ringtrap_scan_duration_seconds_sum"] == pytest.approx(99.144)
        # one reading serves scrapes for a second
        worker.add(C.PROCESSED, 10)
        assert scrape(collector)['ringtrap_messages_processed_total{verdict="spam"}'] == 3
        worker.add(C.VERDICT_SPAM, 10)
        now[0] += metrics.CACHE_SECONDS
        assert scrape(collector)['ringtrap_messages_processed_total{verdict="spam"}'] == 13
    finally:
        collector.close()


def test_collector_reports_the_analysed_fraction_and_the_age_of_what_is_scanned(
    small_ring: tuple[ringmod.Ring, Path],
) -> None:
    ring, spill = small_ring
    Overflow(spill, 1 << 20)
    ingest = ring.table.register(Role.INGEST)
    ingest.add(C.ACCEPTED_RING, 6)
    ingest.add(C.ACCEPTED_OVERFLOW, 2)
    worker = ring.table.register(Role.WORKER, 0)
    worker.add(C.ANALYSED, 2)
    worker.add(C.ANALYSED_AGE_US, 3_500_000)
    idle = ring.table.register(Role.WORKER, 1)
    idle.set_received(time.time() - 9999)  # not scanning: its age does not count
    worker.set_state(ProcState.SCANNING, "m-1")
    worker.set_received(time.time() - 40)
    ring.table.tick_history(time.time())
    collector = metrics.TrapCollector(ring.name, spill, 1 << 20)
    try:
        m = scrape(collector)
        assert m["ringtrap_messages_analysed_total"] == 2
        assert m["ringtrap_analysed_age_seconds_total"] == pytest.approx(3.5)
        assert 40 <= m["ringtrap_scanning_age_seconds"] < 45
        assert m['ringtrap_analysed_fraction{window="hour"}'] == pytest.approx(0.25)
        assert m['ringtrap_analysed_fraction{window="day"}'] == pytest.approx(0.25)
    finally:
        collector.close()


def test_collector_reports_nothing_while_the_ring_is_missing(tmp_path: Path) -> None:
    collector = metrics.TrapCollector(f"rt-ops-missing-{uuid.uuid4().hex[:8]}", tmp_path, 1 << 20)
    assert scrape(collector) == {}


# -- privileges -----------------------------------------------------------------


def test_no_user_means_no_drop() -> None:
    assert privileges.needed("") is None


def test_an_ordinary_user_cannot_become_another(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 4321)
    with pytest.raises(privileges.PrivilegeError, match="start it as root"):
        privileges.needed("nobody")


def test_unknown_user_and_group_are_named() -> None:
    with pytest.raises(privileges.PrivilegeError, match="no such user"):
        privileges.resolve("no-such-user-for-ringtrap")
    with pytest.raises(privileges.PrivilegeError, match="no such group"):
        privileges.resolve("nobody", "no-such-group-for-ringtrap")


def test_a_shared_sticky_directory_is_never_handed_over() -> None:
    t = privileges.resolve("nobody")
    with pytest.raises(privileges.PrivilegeError, match="shared directory"):
        privileges.own_dir(Path("/tmp"), t)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_own_dir_hands_over_a_whole_tree(tmp_path: Path) -> None:
    t = privileges.resolve("nobody")
    tree = tmp_path / "spill"
    (tree / "new").mkdir(parents=True)
    (tree / "new" / "m1").write_bytes(b"x")
    (tree / "link").symlink_to("/etc/passwd")
    assert privileges.own_dir(tree, t, tree=True) == 4
    for p in (tree, tree / "new", tree / "new" / "m1"):
        assert (p.stat().st_uid, p.stat().st_gid) == (t.uid, t.gid)
    assert Path("/etc/passwd").stat().st_uid == 0  # the link itself, never its target
    assert privileges.own_dir(tree, t, tree=True) == 0  # nothing left to change


# -- a worker's outage lines ---------------------------------------------------------


class EventRecords(logging.Handler):
    """Keeps the log records of one event (by their ``event`` field)."""

    def __init__(self, event: str) -> None:
        super().__init__()
        self.event = event
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "event", None) == self.event:
            self.records.append(record)


def test_a_spamd_outage_is_logged_once_per_backoff_period(tmp_path: Path) -> None:
    from workerkit import local_worker, make_cfg, open_overflow, put, run_until

    from ringtrap.scan.processing import Processor
    from ringtrap.scan.results import ResultSink
    from ringtrap.worker import spamd_client

    name = f"rt-ops-w-{uuid.uuid4().hex[:8]}"
    ring = ringmod.Ring.create(name, 16, 16 * 1024)
    handler = EventRecords("unavailable")
    logger = logging.getLogger("ringtrap.worker")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with tempfile.TemporaryDirectory(prefix="rt-o-") as short:
            cfg = make_cfg(tmp_path, name, f"unix:{short}/none.sock")  # nothing listens
            overflow = open_overflow(cfg)
            put(ring, overflow, b"Subject: x\r\n\r\nbody\r\n", 1, "ring")
            worker = local_worker(cfg, ring, overflow,
                                  Processor(scanner=spamd_client(cfg), scan_limit_bytes=1 << 20),
                                  ResultSink(cfg.results.dir),
                                  backoff_initial=0.01, backoff_max=0.25)
            assert worker.row is not None
            started = time.monotonic()
            run_until(worker, lambda: worker.row.get(C.SPAMD_ERRORS) >= 12)  # type: ignore[union-attr]
            elapsed = time.monotonic() - started
            failures = worker.row.get(C.SPAMD_ERRORS)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        ring.close()
        unlink_name(name)
    lines = handler.records
    # backoff 0.01, 0.02 ... 0.25 s: the quick first retries share one line, then
    # at most one line per backoff_max period
    assert 1 <= len(lines) < failures, (len(lines), failures)
    assert len(lines) <= elapsed / 0.25 + 2, (len(lines), elapsed)
    held = sum(getattr(r, "suppressed", 0) for r in lines)
    assert held > 0 and len(lines) + held <= failures
