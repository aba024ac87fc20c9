"""The worker: claim a message, process it, record the result, then ack.

One :class:`Worker` runs in each worker process.  It takes from the ring
first and from the overflow directory when the ring has nothing, hands the
payload to :class:`~ringtrap.scan.processing.Processor`, appends the record through
:class:`~ringtrap.scan.results.ResultSink` and only then acknowledges the claim,
so a worker that dies at any instant leaves its message claimed for the
supervisor to requeue (at least once, never lost).

A message whose attempts reached ``overflow.max_attempts`` (the supervisor
adds one each time a worker dies holding it, the worker one each time spamd
times out on it while answering PING) is quarantined instead of processed.
A dependency that is down (spamd refusing or silent, the results directory)
is not the message's fault: the claim is released with its attempts
unchanged and the worker backs off.

:func:`child_main` is the forked worker process's entry point.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import psutil

from ringtrap import config as configmod
from ringtrap.base import envelope, proc
from ringtrap.base.counters import VERDICT_COUNTERS, C, scan_bucket
from ringtrap.base.states import ProcState, Role, Verdict
from ringtrap.config import Config
from ringtrap.overflow import Overflow, OverflowFull, UntrustedFile
from ringtrap.ring import Ring
from ringtrap.scan import quarantine
from ringtrap.scan.pool import ScannerPool
from ringtrap.scan.processing import Processor
from ringtrap.scan.record import Archiving, Record
from ringtrap.scan.results import ResultSink
from ringtrap.scan.rspamd import RspamdClient
from ringtrap.scan.scanner import ScanError, Scanner
from ringtrap.scan.spamd import SpamdClient
from ringtrap.store.claim import ClaimLost, StoreClaim
from ringtrap.store.hosttable import HostCells
from ringtrap.store.proctable import ProcRow
from ringtrap.work import forward as forwardmod
from ringtrap.work.child import (
    BEAT_EVERY,
    EXIT_CRASH,
    EXIT_OK,
    EXIT_SETUP,
    ChildLoop,
    main,
)

log = logging.getLogger(__name__)

__all__ = ["EXIT_CRASH", "EXIT_OK", "EXIT_SETUP", "Worker", "child_main", "scanner_client",
           "spamd_client"]

# A turn of the loop waits at most this long on the ring, so heartbeats and
# stop checks never stall while idle.
IDLE_WAIT = BEAT_EVERY
BACKOFF_INITIAL = 0.5
BACKOFF_MAX = 30.0
# Check resident memory after this many messages, and after any message this big.
RSS_CHECK_EVERY = 50
RSS_CHECK_SIZE = 1 << 20
# after a scan timed out: how long spamd may take to answer PING for the
# timeout to count against the message rather than as spamd down
PING_TIMEOUT = 5.0


class Worker(ChildLoop):
    """The claim -> process -> record -> ack loop of one worker process.

    ``row`` (this process's process-table row) may be None, e.g. in a tool
    that drains without a supervisor.  ``backoff_initial``/``backoff_max``
    bound the pause after a dependency failure.  ``parent_pid`` is the parent
    whose disappearance ends the loop (default: the parent at construction).
    A fast stop releases a claim not yet scanned (attempts unchanged); a scan
    in progress is finished and recorded (spamd cannot be cut short).
    """

    def __init__(self, cfg: Config, ring: Ring, overflow: Overflow, row: ProcRow | None,
                 index: int, processor: Processor, sink: ResultSink, *,
                 backoff_initial: float = BACKOFF_INITIAL,
                 backoff_max: float = BACKOFF_MAX, parent_pid: int | None = None,
                 stage: Overflow | None = None, forward: Overflow | None = None) -> None:
        super().__init__(Role.WORKER, index, row, parent_pid=parent_pid,
                         backoff_initial=backoff_initial, backoff_max=backoff_max,
                         logger=log)
        self.cfg = cfg
        # the slower stage's spill directory, None when there is no stage
        self.stage = stage
        self._stage_verdicts = frozenset(cfg.stage.verdicts)
        # the forwarder's raw spill directory, None unless forward.raw
        self.forward = forward
        self.ring = ring
        self.overflow = overflow
        self.processor = processor
        self.sink = sink
        self._ps = psutil.Process()
        self._max_rss = cfg.workers.max_rss_bytes
        self._since_rss_check = RSS_CHECK_EVERY - 1  # check after the first message

    def _turn(self) -> bool:
        """Claim, process, record, ack; False once over the memory limit."""
        claim = self._claim()
        if claim is None:
            self._title_idle()
            return True
        try:
            self._handle(claim)
        finally:
            if self.row is not None:
                self.row.set_received(0.0)
        return not self._over_memory()

    def _claim(self) -> StoreClaim | None:
        """The next message by ``overflow.drain_order``; None after a wait.

        "oldest": the ring's oldest, else the overflow's.  "newest": the
        overflow's newest fresh message while it is newer than the ring's
        oldest (during a flood the ring stays full of the flood's first
        messages and the overflow holds everything since), else the ring's
        oldest, else whatever the overflow holds.  The ring's order never
        changes, so its messages are scanned once the overflow holds nothing
        newer: when a flood has been worked off, or purged.
        """
        waiting = self.overflow.ready_count() > 0
        if waiting and self.overflow.newest and not self._stop_requested:
            oclaim = self.overflow.claim(self._me, newer_than=self.ring.oldest_received())
            if oclaim is not None:
                self._count(C.CLAIMED_OVERFLOW)
                return oclaim
        # Waiting on the ring while the overflow holds work would idle a second.
        timeout = 0.0 if waiting else IDLE_WAIT
        claim = self.ring.claim(timeout)
        if claim is not None:
            self._count(C.CLAIMED_RING)
            return claim
        if self._stop_requested:
            return None  # woken by a stop signal: take nothing new
        oclaim = self.overflow.claim(self._me)
        if oclaim is not None:
            self._count(C.CLAIMED_OVERFLOW)
        return oclaim

    def _handle(self, claim: StoreClaim) -> None:
        msgid = claim.msgid
        if claim.attempts >= self.cfg.overflow.max_attempts:
            self._quarantine(claim)
            return
        if self._fast_stop:
            self._release(claim)
            return
        try:
            payload = claim.read()
        except FileNotFoundError:
            # recovered by the supervisor meanwhile: it is someone else's now
            log.warning("%s: claimed overflow file vanished before reading", msgid)
            return
        except UntrustedFile as exc:
            # planted by someone else: kept unread, with a record saying why
            self._quarantine_as(claim, f"untrusted spill file, not read: {exc.reason}",
                                readable=False, size=exc.size)
            return
        if self.row is not None:
            self.row.set_received(claim.received)
        self._state(ProcState.SCANNING, msgid)
        self._title(f"scanning {msgid}")
        age = max(0.0, time.time() - claim.received)
        started = time.monotonic()
        try:
            record = self.processor.process(msgid, payload, claim.received, claim.attempts)
        except ScanError as exc:
            if self._timed_out_alone(exc):
                self._count(C.SPAMD_ERRORS)
                self._count_timeout(claim, exc)
                return
            self._release(claim)
            self._count(C.SPAMD_ERRORS)
            scanner = self.processor.scanner
            self._dependency_down(scanner.kind if scanner is not None else "spamd", msgid, exc)
            return
        try:
            self.sink.write(record)
        except OSError as exc:
            self._release(claim)
            self._dependency_down("results", msgid, exc)
            return
        if self.stage is not None and record.verdict in self._stage_verdicts:
            self._hand_on(msgid, payload)
        if self.forward is not None:
            self._count(forwardmod.hand_on(self.forward, msgid, payload, record.size,
                                           self.cfg.forward.raw_max_bytes))
        self._ack(claim)  # only now: the record is in the file
        self._finished(claim, record, time.monotonic() - started, age)

    def _hand_on(self, msgid: str, payload: bytes) -> None:
        """Give the message to the slower stage; never waits for it, never fails the message.

        Before the ack: a worker that dies here processes the message again
        and hands it on twice, which TELL shrugs off (already learned).
        """
        assert self.stage is not None
        self.stage.resync()  # every worker hands on here: the cap is theirs together
        try:
            self.stage.spill(msgid, payload, 0)
        except OverflowFull:
            self._count(C.STAGE_DROPPED)  # the stage is behind: its backlog stays bounded
            return
        except OSError as exc:
            self._count(C.STAGE_DROPPED)
            log.warning("%s: cannot hand on to the stage (%s)", msgid, exc)
            return
        self._count(C.STAGE_HANDED_ON)

    def _finished(self, claim: StoreClaim, record: Record, took: float, age: float) -> None:
        self.done += 1
        self._count(C.PROCESSED)
        verdict = record.verdict
        scanned_ms = record.scanned_ms
        if scanned_ms is not None or verdict == Verdict.DUPLICATE:
            # analysed: scanned, or a campaign repeat recorded from its first scan
            self._count(C.ANALYSED)
            self._count(C.ANALYSED_AGE_US, round(age * 1e6))
        if scanned_ms is not None:
            self._count(C.SCANNED)
            self._count(C.SCAN_US, int(scanned_ms * 1000))
            self._count(scan_bucket(scanned_ms / 1000.0))
        self._dependency_up(claim.msgid)  # whatever was down is back: reset the backoff
        if record.duplicate_of:
            self._count(C.DEDUPE_HITS)
        if record.archived.outcome is Archiving.STORED:
            self._count(C.ARCHIVED)
        elif record.archived.outcome is Archiving.FAILED:
            self._count(C.ARCHIVE_ERRORS)
        if verdict == "error":
            self._count(C.SPAMD_ERRORS)
            self._count(C.VERDICT_ERROR)
        else:
            self._count(VERDICT_COUNTERS[verdict])
        self._state(ProcState.IDLE)
        self._since_rss_check += 1
        if claim.size >= RSS_CHECK_SIZE:
            self._since_rss_check = RSS_CHECK_EVERY
        log.info(
            "%s: %s score=%s required=%s from %s, %d bytes, attempt %d, %.1f ms%s",
            claim.msgid, verdict, record.score, record.required,
            claim.store, record.size,
            claim.attempts, took * 1000.0,
            f" ({record.reason})" if record.reason else "",
            extra={"event": "processed", "msgid": claim.msgid, "verdict": verdict,
                   "score": record.score, "ms": round(took * 1000.0, 1)},
        )

    def _ack(self, claim: StoreClaim) -> None:
        try:
            claim.ack()
        except ClaimLost:
            # requeued by the supervisor (it judged us dead): it will be
            # processed again, which at-least-once allows
            log.warning("%s: slot no longer ours at ack; it will be recorded twice",
                        claim.msgid)

    def _release(self, claim: StoreClaim, *, count_attempt: bool = False) -> None:
        try:
            claim.release(count_attempt=count_attempt)
        except ClaimLost:
            log.warning("%s: slot no longer ours at release", claim.msgid)
            return
        self._count(C.RELEASED)

    def _timed_out_alone(self, exc: ScanError) -> bool:
        """True if the scan timed out while spamd still answers PING.

        A timeout is then this message's doing (it costs spamd more than the
        deadline), not an outage: it counts an attempt.  spamd refusing,
        resetting or not answering PING is an outage, which does not.  A
        pool has judged already: the message timed out on every host it
        tried while each answered PING.
        """
        client = self.processor.scanner
        if not exc.timeout or client is None:
            return False
        if exc.alone is not None:
            return exc.alone  # a pool PINGed the hosts it tried (ringtrap.scan.pool)
        try:
            client.ping(timeout=PING_TIMEOUT)
        except ScanError:
            return False
        return True

    def _count_timeout(self, claim: StoreClaim, exc: ScanError) -> None:
        attempts = claim.attempts + 1
        limit = self.cfg.overflow.max_attempts
        log.warning("%s: spamd timed out on it (%s) but answers PING: attempt %d of %d",
                    claim.msgid, exc, attempts, limit,
                    extra={"event": "scan_timeout", "msgid": claim.msgid, "attempts": attempts})
        self._state(ProcState.IDLE)
        if attempts >= limit:
            self._quarantine(dataclasses.replace(claim, attempts=attempts),
                             f"spamd timed out on it {attempts} time(s) while answering PING")
            return
        self._release(claim, count_attempt=True)

    def _quarantine(self, claim: StoreClaim, reason: str | None = None) -> None:
        limit = self.cfg.overflow.max_attempts
        if reason is None:
            reason = (f"attempts {claim.attempts} reached the limit {limit}"
                      " (a worker died holding it each time)")
        self._quarantine_as(claim, reason)

    def _quarantine_as(self, claim: StoreClaim, reason: str, *, readable: bool = True,
                       size: int | None = None) -> None:
        """Record ``claim`` as quarantined, move it into failed/, then let go of it.

        The record comes first, so a worker dying before the move leaves a
        claim that is recovered and quarantined again (a second record, as
        at-least-once allows), never a quarantined message without one.
        ``readable`` False: the file is not to be opened (see open_trusted), and
        ``size`` is what lstat() says, not what its name claims.
        """
        head = claim.peek(envelope.MAX_LINE) if readable else None
        kept = self.overflow.keeps(claim.size)
        path = self.overflow.quarantine_path(claim.msgid, claim.size, claim.attempts)
        rec = quarantine.record(claim.msgid, claim.received, claim.attempts, reason,
                                store=claim.store, kept=kept, path=path,
                                payload_size=claim.size if size is None else size, head=head)
        try:
            self.sink.write(rec)
        except OSError as exc:
            self._release(claim)
            self._dependency_down("results", claim.msgid, exc)
            return
        try:
            done = claim.quarantine(reason, self.overflow)
        except ClaimLost:
            log.warning("%s: claim lost before quarantine", claim.msgid)
            return
        except OSError as exc:
            # the overflow directory is unwritable or full: keep the message
            self._release(claim)
            self._dependency_down("overflow", claim.msgid, exc)
            return
        self._count(C.QUARANTINED)
        if not done.kept:
            self._count(C.QUARANTINE_DROPPED)
        if done.dropped.count:
            self._count(C.QUARANTINE_DROPPED, done.dropped.count)
        log.warning("%s: quarantined from the %s after %d attempt(s): %s",
                    claim.msgid, claim.store, claim.attempts, reason,
                    extra={"event": "quarantine", "msgid": claim.msgid,
                           "attempts": claim.attempts, "kept": done.kept})

    def _over_memory(self) -> bool:
        if not self._max_rss or self._since_rss_check < RSS_CHECK_EVERY:
            return False
        self._since_rss_check = 0
        # the ring is mapped whole into every process: only private memory counts
        rss = proc.private_rss(os.getpid())
        if rss is None:
            rss = self._ps.memory_info().rss
        if rss <= self._max_rss:
            return False
        self._count(C.RECYCLED)
        log.info("worker %d: resident memory %d bytes over the limit %d after %d message(s);"
                 " exiting to be replaced", self.index, rss, self._max_rss, self.done)
        return True


def spamd_client(cfg: Config, spamd_address: str | Sequence[str] | None = None,
                 **pool: Any) -> Scanner | None:
    """The scanner for ``cfg.spamd`` (None when off); ``spamd_address`` overrides the config.

    One address or a list of them (``spamd.address`` as a list): a
    :class:`~ringtrap.scan.pool.ScannerPool` with scanner.breaker_*, even of
    one host, so every host has its numbers; ``pool`` are further options of
    the pool (``stats``, ``count``).  A managed spamd's socket is the
    supervisor's choice, so kind "managed" needs ``spamd_address``; without
    it this raises ValueError.  "off" as an override also means no spamd.
    """
    address = spamd_address
    if address is None:
        kind = cfg.spamd.address.kind
        if kind == "off":
            return None
        if kind == "managed":
            raise ValueError("spamd.address is \"managed\" but the supervisor passed no socket")
        address = cfg.spamd.address.hosts()
    if address == "off":
        return None
    addresses = (address,) if isinstance(address, str) else tuple(address)
    tls_ca = None if cfg.spamd.tls_ca is None else str(cfg.spamd.tls_ca)
    return ScannerPool.from_addresses(
        addresses,
        lambda a: SpamdClient(a, connect_timeout=cfg.spamd.connect_timeout,
                              timeout=cfg.spamd.timeout, tls_ca=tls_ca,
                              hung_check=cfg.scanner.hung_after if len(addresses) > 1
                              else None),
        breaker_errors=cfg.scanner.breaker_errors, breaker_window=cfg.scanner.breaker_window,
        breaker_revive=cfg.scanner.breaker_revive, **pool)


def scanner_client(cfg: Config, address: str | Sequence[str] | None = None,
                   **pool: Any) -> Scanner | None:
    """The scanner ``scanner.kind`` names (None when spamd is off); ``address`` overrides.

    spamd as :func:`spamd_client` makes it; rspamd from ``[rspamd]`` in a
    pool of its hosts (one host is a pool of one, with the same breaker and
    per-host numbers), where a managed rspamd's socket is the supervisor's to
    pass (ValueError without).
    """
    if cfg.scanner.kind != "rspamd":
        return spamd_client(cfg, address, **pool)
    if address is None:
        if cfg.rspamd.address.kind == "managed":
            raise ValueError("rspamd.address is \"managed\" but the supervisor passed no socket")
        address = cfg.rspamd.address.hosts()
    addresses = (address,) if isinstance(address, str) else tuple(address)
    return ScannerPool.from_addresses(
        addresses,
        lambda a: RspamdClient(a, connect_timeout=cfg.rspamd.connect_timeout,
                               timeout=cfg.rspamd.timeout),
        breaker_errors=cfg.scanner.breaker_errors, breaker_window=cfg.scanner.breaker_window,
        breaker_revive=cfg.scanner.breaker_revive, **pool)


def child_main(cfg: Config, index: int, row_index: int,
               spamd_address: str | Sequence[str] | None = None) -> int:
    """Run worker ``index`` in a freshly forked child; return its exit code.

    Expects :func:`ringtrap.work.child.boot` done.  Attaches the ring,
    registers process-table row ``row_index``, opens the overflow, the results
    and the scanner (``spamd_address``, the address of the scanner
    ``scanner.kind`` names, overrides the config and is required when it is
    "managed"), then loops.  TERM stops
    gracefully, INT and QUIT fast, USR1 reopens the log.  Returns
    :data:`EXIT_OK`, :data:`EXIT_SETUP` or :data:`EXIT_CRASH`; the parent
    passes it to ``os._exit``.
    """

    def setup(parent: int, closing: contextlib.ExitStack) -> Worker:
        ring = closing.enter_context(Ring.attach(cfg.ring.name))
        overflow = Overflow(cfg.overflow.dir, cfg.overflow.max_bytes,
                            quarantine_max_bytes=cfg.overflow.quarantine_max_bytes,
                            drain_order=cfg.overflow.drain_order)
        sink = closing.enter_context(
            contextlib.closing(ResultSink(cfg.results.dir,
                                          retention_days=cfg.results.retention_days)))
        row = ring.table.register(Role.WORKER, index, row=row_index)
        client = scanner_client(cfg, spamd_address, count=row.add)
        if isinstance(client, ScannerPool):
            client.stats = HostCells(ring.table.segment, row.row, client.hosts, time.monotonic_ns)
        processor = Processor.from_config(cfg, client)
        stage = (Overflow(configmod.stage_dir(cfg), cfg.stage.max_bytes)
                 if cfg.stage.workers else None)
        forward = (forwardmod.open_store(cfg)
                   if cfg.forward.enabled and cfg.forward.raw else None)
        worker = Worker(cfg, ring, overflow, row, index, processor, sink, parent_pid=parent,
                        stage=stage, forward=forward)
        if isinstance(client, ScannerPool):
            client.beat = worker._beat
        return worker

    return main(cfg, Role.WORKER, index, setup, log)
