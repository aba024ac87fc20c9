"""Prometheus metrics: one collector over the counters in shared memory.

Every ringtrap process counts into its own row of the ring's process table
(:mod:`ringtrap.base.counters`); the supervisor folds the rows of exited
processes into the header.  A scrape therefore needs no cooperation from
any process: :class:`TrapCollector` reads a :class:`RingSnapshot` and
:meth:`Overflow.stats` (cached for a second, so a burst of scrapes costs one
read) and turns them into metric families.  There are no per-process
registries and nothing to merge.

The supervisor serves the collector over HTTP from a thread of its own
(:func:`start`); that thread holds its own ring mapping and overflow handle
and never touches the supervisor's state.  ``prometheus_client`` is imported
only when ``metrics.listen`` is set.

Counters restart from zero when the ring is created anew (after a clean
drain); Prometheus' ``rate()`` treats that as a counter reset.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ringtrap import __version__
from ringtrap.base.counters import SCAN_BUCKETS, C
from ringtrap.base.states import ProcState, Role
from ringtrap.overflow import Overflow, OverflowStats
from ringtrap.store import history
from ringtrap.store.proctable import ProcTable
from ringtrap.store.segment import RingError
from ringtrap.store.snapshot import RingSnapshot, read_snapshot

CACHE_SECONDS = 1.0

# (metric name without _total, label, {label value: counter}, help)
_LABELLED_COUNTERS: tuple[tuple[str, str, dict[str, C], str], ...] = (
    ("ringtrap_messages_accepted", "store",
     {"ring": C.ACCEPTED_RING, "overflow": C.ACCEPTED_OVERFLOW},
     "Messages answered OK, by where they were stored (overflow = spilled)."),
    ("ringtrap_messages_refused", "reason",
     {"too_large": C.REFUSED_TOO_LARGE, "empty": C.REFUSED_EMPTY,
      "tempfail": C.REFUSED_TEMP},
     "Messages answered ERR (too_large, empty) or TEMPFAIL (could not store now)."),
    ("ringtrap_messages_claimed", "store",
     {"ring": C.CLAIMED_RING, "overflow": C.CLAIMED_OVERFLOW},
     "Messages taken by a worker, by where they were taken from."),
    ("ringtrap_recoveries", "store",
     {"ring": C.RECOVERED_RING, "overflow": C.RECOVERED_OVERFLOW},
     "Messages requeued (or half-written slots freed) after the process holding them died."),
    ("ringtrap_restarts", "cause",
     {"crashed": C.RESTARTS_CRASHED, "too_fast": C.RESTARTS_TOO_FAST,
      "hung": C.RESTARTS_HUNG},
     "Child processes restarted by the supervisor, by why they exited."),
)

# (metric name without _total, counter, help)
_PLAIN_COUNTERS: tuple[tuple[str, C, str], ...] = (
    ("ringtrap_connections", C.CONNECTIONS, "Client connections accepted by the ingest."),
    ("ringtrap_connections_refused", C.CONNECTIONS_REFUSED,
     "Connections answered TEMPFAIL for being over their socket's connection budget."),
    ("ringtrap_idle_timeouts", C.IDLE_TIMEOUTS,
     "Connections closed for silence (ingest.idle_timeout) or a message past"
     " ingest.message_timeout."),
    ("ringtrap_received_bytes", C.BYTES_IN, "Message bytes read by the ingest."),
    ("ringtrap_messages_released", C.RELEASED,
     "Claims given back unprocessed (spamd or the results directory unavailable)."),
    ("ringtrap_messages_quarantined", C.QUARANTINED,
     "Messages moved to the overflow's failed/ after killing their worker too often."),
    ("ringtrap_quarantine_dropped", C.QUARANTINE_DROPPED,
     "Quarantined messages dropped to keep failed/ under overflow.quarantine_max_bytes."),
    ("ringtrap_purged_quarantined", C.PURGED_QUARANTINED,
     "Quarantined messages dropped by the daily purge or 'ringtrap purge --quarantine'."),
    ("ringtrap_spamd_errors", C.SPAMD_ERRORS,
     "Scans that failed: spamd unreachable or answering with an error."),
    ("ringtrap_workers_recycled", C.RECYCLED,
     "Workers that exited to be replaced for exceeding workers.max_rss_bytes."),
    ("ringtrap_heartbeat_kills", C.HEARTBEAT_KILLS,
     "Children aborted by the supervisor for a stalled heartbeat."),
    ("ringtrap_lock_holder_kills", C.LOCK_HOLDER_KILLS,
     "Processes killed by the supervisor for holding the ring lock while stopped or stuck."),
    ("ringtrap_purged_messages", C.PURGED_FILES,
     "Overflow messages dropped by the daily purge or 'ringtrap purge'."),
    ("ringtrap_purged_bytes", C.PURGED_BYTES, "Bytes dropped by purges."),
    ("ringtrap_drained_to_overflow", C.DRAINED_TO_OVERFLOW,
     "Ring messages moved to the overflow by a graceful stop."),
    ("ringtrap_scanner_failovers", C.POOL_FAILOVERS,
     "Messages moved on to the next scanner host after a retryable failure."),
    ("ringtrap_scanner_pool_exhausted", C.POOL_EXHAUSTED,
     "Messages given back because no scanner host could take them (all open or failing)."),
    ("ringtrap_messages_analysed", C.ANALYSED,
     "Messages scanned, or recorded from a campaign repeat without a scan; over"
     " ringtrap_messages_accepted_total, the fraction of the mail analysed."),
    ("ringtrap_forwarded", C.FORWARDED,
     "Records published to NATS JetStream and acknowledged."),
    ("ringtrap_forward_duplicates", C.FORWARD_DUPLICATES,
     "Records sent again that the stream recognised by their Nats-Msg-Id."),
    ("ringtrap_forward_dropped", C.FORWARD_DROPPED,
     "Records and raw messages that will never be forwarded (not a record, over the"
     " server's payload limit, raw spill directory at its cap)."),
    ("ringtrap_forward_errors", C.FORWARD_ERRORS,
     "Failed connects to the broker and batches it did not acknowledge."),
)


def _verdicts() -> dict[str, C]:
    """Every VERDICT_* counter, by verdict name (new verdicts appear by themselves)."""
    return {c.name.removeprefix("VERDICT_").lower(): c for c in C
            if c.name.startswith("VERDICT_")}


@dataclass(frozen=True, slots=True)
class Reading:
    """What one scrape reports: a ring snapshot and the overflow's state."""

    snap: RingSnapshot
    overflow: OverflowStats | None
    overflow_max: int
    now_ns: int  # monotonic, to age heartbeats
    wall: float = 0.0  # wall-clock seconds, to age messages by their received time
    hours: tuple[history.Hour, ...] = ()  # the hourly history, oldest first


def families(r: Reading) -> list[Any]:
    """The metric families for one reading (prometheus_client objects)."""
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    snap = r.snap
    totals = snap.totals()
    out: list[Any] = []

    info = GaugeMetricFamily("ringtrap_info", "ringtrap version and ring identity.",
                             labels=["version", "ring"])
    info.add_metric([__version__, snap.name], 1)
    out.append(info)

    for name, label, members, help_ in _LABELLED_COUNTERS:
        fam = CounterMetricFamily(name, help_, labels=[label])
        for value, counter in members.items():
            fam.add_metric([value], totals[counter])
        out.append(fam)
    processed = CounterMetricFamily(
        "ringtrap_messages_processed",
        "Messages recorded and acknowledged by a worker, by verdict.", labels=["verdict"])
    for verdict, counter in _verdicts().items():
        processed.add_metric([verdict], totals[counter])
    out.append(processed)
    for name, counter, help_ in _PLAIN_COUNTERS:
        out.append(CounterMetricFamily(name, help_, value=totals[counter]))
    out.append(CounterMetricFamily(
        "ringtrap_analysed_age_seconds",
        "Seconds from accepted to taken up, summed over ringtrap_messages_analysed_total:"
        " divided by it, the mean age of the mail analysed.",
        value=totals[C.ANALYSED_AGE_US] / 1e6))
    out.append(CounterMetricFamily(
        "ringtrap_lock_breaks", "Ring locks broken because their holder had died.",
        value=snap.lock_breaks))

    # per-bucket counts in shared memory, cumulative in the exposition
    buckets: list[tuple[str, float]] = []
    running = 0
    for i, bound in enumerate(SCAN_BUCKETS):
        running += totals[C.SCAN_BUCKET_0 + i]
        buckets.append((repr(bound), running))
    running += totals[C.SCAN_BUCKET_12]
    buckets.append(("+Inf", running))
    out.append(HistogramMetricFamily(
        "ringtrap_scan_duration_seconds", "Time a worker waited on spamd for one message.",
        buckets=buckets, sum_value=totals[C.SCAN_US] / 1e6))

    out += _host_families(snap)

    used = GaugeMetricFamily("ringtrap_ring_slots_used",
                             "Ring slots not free, by state.", labels=["state"])
    used.add_metric(["filling"], snap.filling)
    used.add_metric(["ready"], snap.ready)
    used.add_metric(["claimed"], snap.claimed)
    out.append(used)
    out.append(GaugeMetricFamily(
        "ringtrap_forward_backlog", "Records written and not yet acknowledged by JetStream.",
        value=totals[C.FORWARD_BACKLOG]))
    out.append(GaugeMetricFamily("ringtrap_ring_slots", "Slots in the ring.", value=snap.slots))
    out.append(GaugeMetricFamily("ringtrap_ring_slot_size_bytes", "Size of one ring slot.",
                                 value=snap.slot_bytes))
    out.append(GaugeMetricFamily("ringtrap_ring_generation",
                                 "Times the ring was adopted by a new supervisor.",
                                 value=snap.generation))

    o = r.overflow
    files = GaugeMetricFamily("ringtrap_overflow_messages",
                              "Messages in the overflow directory, by state.", labels=["state"])
    nbytes = GaugeMetricFamily("ringtrap_overflow_bytes",
                               "Bytes in the overflow directory, by state.", labels=["state"])
    if o is not None:
        for state, count, size in (("ready", o.ready, o.ready_bytes),
                                   ("claimed", o.claimed, o.claimed_bytes),
                                   ("failed", o.failed, o.failed_bytes),
                                   ("writing", o.writing, o.writing_bytes)):
            files.add_metric([state], count)
            nbytes.add_metric([state], size)
    out += [files, nbytes]
    out.append(GaugeMetricFamily("ringtrap_overflow_max_bytes",
                                 "Cap on the bytes in the overflow directory.",
                                 value=r.overflow_max))
    out.append(GaugeMetricFamily(
        "ringtrap_overflow_oldest_age_seconds",
        "Age of the oldest message waiting in the overflow (0 when none).",
        value=0.0 if o is None or o.oldest_age is None else o.oldest_age))

    procs = GaugeMetricFamily("ringtrap_processes", "Live ringtrap processes by role and state.",
                              labels=["role", "state"])
    counts: dict[tuple[str, str], int] = {}
    beat = GaugeMetricFamily("ringtrap_process_heartbeat_age_seconds",
                             "Seconds since each process's loop last turned.",
                             labels=["role", "index"])
    for row in snap.rows:
        if row.role is Role.OTHER:
            continue  # a command-line tool passing by
        key = (row.role.name.lower(), row.state.name.lower())
        counts[key] = counts.get(key, 0) + 1
        if row.heartbeat_ns and row.state is not ProcState.STOPPED:
            beat.add_metric([row.role.name.lower(), str(row.index)],
                            max(0.0, (r.now_ns - row.heartbeat_ns) / 1e9))
    for (role, state), n in sorted(counts.items()):
        procs.add_metric([role, state], n)
    out += [procs, beat]

    ages = [max(0.0, r.wall - row.received) for row in snap.rows
            if row.role is Role.WORKER and row.state is ProcState.SCANNING and row.received]
    out.append(GaugeMetricFamily(
        "ringtrap_scanning_age_seconds",
        "Age (now minus received) of the oldest message a worker is scanning; 0 when none.",
        value=max(ages, default=0.0)))
    frac = GaugeMetricFamily(
        "ringtrap_analysed_fraction",
        "Messages analysed over messages accepted: this clock hour so far, or the last"
        " 24 clock hours; absent while nothing was accepted.", labels=["window"])
    for label, n in (("hour", 1), ("day", history.HOURS)):
        w = history.window(list(r.hours), n)
        if w.fraction is not None:
            frac.add_metric([label], w.fraction)
    out.append(frac)
    return out


def _host_families(snap: RingSnapshot) -> list[Any]:
    """Each scanner host's breaker and numbers, labelled ``host`` (its address)."""
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    up = GaugeMetricFamily(
        "ringtrap_scanner_up",
        "1 if the scanner host's breaker is closed in the worker that used or judged it"
        " last, 0 if open.", labels=["host"])
    scans = CounterMetricFamily("ringtrap_scanner_scans",
                                "Scans a scanner host answered.", labels=["host"])
    errors = CounterMetricFamily(
        "ringtrap_scanner_errors",
        "Failed scans and revive PINGs on a scanner host, retryable or not.", labels=["host"])
    opens = CounterMetricFamily("ringtrap_scanner_breaker_opens",
                                "Times a worker took the scanner host out of its pool.",
                                labels=["host"])
    duration = HistogramMetricFamily(
        "ringtrap_scanner_scan_duration_seconds",
        "Time a scanner host took for one scan it answered.", labels=["host"])
    for h in snap.hosts:
        up.add_metric([h.host], 1 if h.up else 0)
        scans.add_metric([h.host], h.scans)
        errors.add_metric([h.host], h.errors)
        opens.add_metric([h.host], h.opens)
        buckets: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip((*map(repr, SCAN_BUCKETS), "+Inf"), h.buckets, strict=True):
            running += n
            buckets.append((bound, running))
        duration.add_metric([h.host], buckets, h.scan_us / 1e6)
    return [up, scans, errors, opens, duration]


def blocklist_families(state: dict[str, Any] | None) -> list[Any]:
    """The blocklist's last write, from the state file its writer leaves; none before one."""
    from prometheus_client.core import GaugeMetricFamily

    if not state or not isinstance(state.get("written"), int | float):
        return []
    entries = GaugeMetricFamily("ringtrap_blocklist_entries",
                                "Entries in the blocklist files as last written.",
                                labels=["family"])
    for family in ("ipv4", "ipv6"):
        value = state.get(family)
        entries.add_metric([family], value if isinstance(value, int) else 0)
    skipped = state.get("skipped_lines")
    return [
        entries,
        GaugeMetricFamily("ringtrap_blocklist_written_timestamp_seconds",
                          "When the blocklist files were last written (Unix time).",
                          value=state["written"]),
        GaugeMetricFamily("ringtrap_blocklist_skipped_lines",
                          "Result lines the last write could not read as records.",
                          value=skipped if isinstance(skipped, int) else 0),
    ]


class TrapCollector:
    """A prometheus_client collector reading one trap's ring and overflow.

    Holds its own ring mapping (attached on first use) and overflow handle;
    a reading is reused for ``cache_seconds``.  Safe to call from one thread
    while other threads and processes change the ring.
    """

    def __init__(self, ring_name: str, overflow_dir: Path, overflow_max: int, *,
                 blocklist_state: Path | None = None,
                 cache_seconds: float = CACHE_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ring_name = ring_name
        self.overflow_dir = overflow_dir
        self.overflow_max = overflow_max
        self.blocklist_state = blocklist_state
        self.cache_seconds = cache_seconds
        self._clock = clock
        self._table: ProcTable | None = None
        self._overflow: Overflow | None = None
        self._cached: tuple[float, Reading] | None = None
        self._lock = threading.Lock()

    def read(self) -> Reading:
        """A fresh or cached reading; RingError if the ring is gone."""
        with self._lock:
            now = self._clock()
            if self._cached is not None and now - self._cached[0] < self.cache_seconds:
                return self._cached[1]
            if self._table is None:
                self._table = ProcTable.attach(self.ring_name)
            snap = read_snapshot(self._table)
            wall = time.time()
            hours = tuple(self._table.history(wall))
            stats: OverflowStats | None = None
            try:
                if self._overflow is None:
                    self._overflow = Overflow(self.overflow_dir, self.overflow_max,
                                              create=False)
                stats = self._overflow.stats()
            except (OSError, ValueError):
                stats = None
            reading = Reading(snap, stats, self.overflow_max, time.monotonic_ns(), wall, hours)
            self._cached = (now, reading)
            return reading

    def collect(self) -> Iterator[Any]:
        """prometheus_client's hook: every family, or none while the ring is missing."""
        try:
            reading = self.read()
        except RingError:
            return
        yield from families(reading)
        if self.blocklist_state is not None:
            from ringtrap.control.blockfiles import read_state

            yield from blocklist_families(read_state(self.blocklist_state))

    def close(self) -> None:
        """Let go of the ring mapping."""
        with self._lock:
            if self._table is not None:
                self._table.close()
                self._table = None


class MetricsServer:
    """The HTTP endpoint: a daemon thread serving one collector's registry."""

    def __init__(self, collector: TrapCollector, server: Any, thread: threading.Thread) -> None:
        self.collector = collector
        self._server = server
        self._thread = thread

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port); port 0 in the configuration picks a free one."""
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def stop(self) -> None:
        """Stop serving, wait for the thread, release the ring mapping."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5.0)
        self.collector.close()


def load_client() -> None:
    """Import prometheus_client's parts a scrape uses (before dropping root)."""
    import prometheus_client.core
    import prometheus_client.exposition
    import prometheus_client.openmetrics.exposition  # noqa: F401


def start(host: str, port: int, collector: TrapCollector) -> MetricsServer:
    """Serve ``collector`` on http://host:port/metrics; OSError if it cannot bind."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    server, thread = start_http_server(port, addr=host, registry=registry)
    return MetricsServer(collector, server, thread)
