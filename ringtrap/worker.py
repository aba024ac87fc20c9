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

import dataclasses
import logging
import os
import signal
import time
from types import FrameType
from typing import Any

import psutil

from ringtrap import config as configmod
from ringtrap.base import envelope, logs, proc
from ringtrap.base.counters import C, scan_bucket
from ringtrap.base.states import ProcState, Role
from ringtrap.base.titles import set_title
from ringtrap.config import Config
from ringtrap.overflow import Overflow, OverflowFull, UntrustedFile
from ringtrap.ring import ProcRow, Ring, RingError
from ringtrap.scan import quarantine
from ringtrap.scan.processing import Processor
from ringtrap.scan.results import ResultSink
from ringtrap.scan.spamd import (
    EX_TIMEOUT,
    SpamdClient,
    SpamdError,
    SpamdResponseError,
    SpamdTimeout,
)
from ringtrap.store.claim import ClaimLost, StoreClaim

log = logging.getLogger(__name__)

# Exit codes of a worker process (what child_main returns).
EXIT_OK = 0  # stopped as asked, recycled for memory, or orphaned
EXIT_CRASH = 70  # EX_SOFTWARE: an unexpected exception; a held claim awaits recovery
EXIT_SETUP = 78  # EX_CONFIG: could not attach the ring, open the stores or reach spamd's config

# A turn of the loop waits at most this long, so heartbeats and stop checks
# never stall while idle.
IDLE_WAIT = 1.0
BACKOFF_INITIAL = 0.5
BACKOFF_MAX = 30.0
# Check resident memory after this many messages, and after any message this big.
RSS_CHECK_EVERY = 50
RSS_CHECK_SIZE = 1 << 20
# after a scan timed out: how long spamd may take to answer PING for the
# timeout to count against the message rather than as spamd down
PING_TIMEOUT = 5.0

_VERDICT_COUNTERS = {
    "spam": C.VERDICT_SPAM,
    "ham": C.VERDICT_HAM,
    "not_scanned": C.VERDICT_NOT_SCANNED,
    "bounce": C.VERDICT_BOUNCE,
    "autoreply": C.VERDICT_AUTOREPLY,
    "virus": C.VERDICT_VIRUS,
    "oversize": C.VERDICT_OVERSIZE,
    "unparseable": C.VERDICT_UNPARSEABLE,
    "duplicate": C.VERDICT_DUPLICATE,
}

class Worker:
    """The claim -> process -> record -> ack loop of one worker process.

    ``row`` (this process's process-table row) may be None, e.g. in a tool
    that drains without a supervisor.  ``backoff_initial``/``backoff_max``
    bound the pause after a dependency failure.  ``parent_pid`` is the parent
    whose disappearance ends the loop (default: the parent at construction).
    """

    def __init__(self, cfg: Config, ring: Ring, overflow: Overflow, row: ProcRow | None,
                 index: int, processor: Processor, sink: ResultSink, *,
                 backoff_initial: float = BACKOFF_INITIAL,
                 backoff_max: float = BACKOFF_MAX, parent_pid: int | None = None,
                 stage: Overflow | None = None) -> None:
        self.cfg = cfg
        # the slower stage's spill directory, None when there is no stage
        self.stage = stage
        self._stage_verdicts = frozenset(cfg.stage.verdicts)
        self.ring = ring
        self.overflow = overflow
        self.row = row
        self.index = index
        self.processor = processor
        self.sink = sink
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.done = 0
        self._role = f"worker {index}"
        self._me = proc.self_identity()
        self._ppid = os.getppid() if parent_pid is None else parent_pid
        self._ps = psutil.Process()
        self._max_rss = cfg.workers.max_rss_bytes
        self._since_rss_check = RSS_CHECK_EVERY - 1  # check after the first message
        # set from signal handlers: plain stores only
        self._stop_requested = False
        self._fast_stop = False
        # dependency outage bookkeeping (monotonic clock)
        self._delay = 0.0
        self._outage_since: float | None = None
        self._outage_failures = 0
        self._outage_log = logs.RateLimit(backoff_max)
        self._reopen_logs = False  # USR1, set by the handler, acted on by _beat

    # -- control ---------------------------------------------------------------

    def stop(self, graceful: bool = True) -> None:
        """Ask the loop to return; safe to call from a signal handler.

        Graceful: finish the current message first.  Fast: return at the next
        check; a claim not yet scanned is released (attempts unchanged), a
        scan in progress is finished and recorded (spamd cannot be cut short).
        A later graceful request never undoes a fast one.
        """
        self._stop_requested = True
        if not graceful:
            self._fast_stop = True

    def reopen_logs(self) -> None:
        """Ask the loop to reopen the log file (logrotate); safe in a signal handler."""
        self._reopen_logs = True

    def _should_exit(self) -> bool:
        if self._stop_requested:
            return True
        if os.getppid() != self._ppid:
            log.warning("worker %d: parent %d is gone, exiting", self.index, self._ppid)
            self._stop_requested = True
            return True
        return False

    def run(self) -> int:
        """Loop until stopped, orphaned or over the memory limit; returns the exit code.

        An unexpected exception propagates with any claim still held: the
        process dies, the supervisor requeues the claim with one more attempt,
        so a message that breaks the worker is quarantined in the end.
        """
        self._state(ProcState.IDLE)
        self._title_idle()
        log.info("worker %d started (pid %d)", self.index, self._me.pid)
        while not self._should_exit():
            self._beat()
            claim = self._claim()
            if claim is None:
                self._title_idle()
                continue
            self._handle(claim)
            if self._over_memory():
                break
        self._state(ProcState.STOPPED)
        log.info("worker %d stopping after %d message(s)", self.index, self.done)
        return EXIT_OK

    # -- one turn ----------------------------------------------------------------

    def _claim(self) -> StoreClaim | None:
        """The oldest message of the ring, else of the overflow; None after a wait."""
        # Waiting on the ring while the overflow holds work would idle a second.
        timeout = 0.0 if self.overflow.ready_count() > 0 else IDLE_WAIT
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
        self._state(ProcState.SCANNING, msgid)
        set_title(self._role, f"scanning {msgid} ({self.done} done)")
        started = time.monotonic()
        try:
            record = self.processor.process(msgid, payload, claim.received, claim.attempts)
        except SpamdError as exc:
            if self._timed_out_alone(exc):
                self._count(C.SPAMD_ERRORS)
                self._count_timeout(claim, exc)
                return
            self._release(claim)
            self._count(C.SPAMD_ERRORS)
            self._dependency_down("spamd", msgid, exc)
            return
        try:
            self.sink.write(record)
        except OSError as exc:
            self._release(claim)
            self._dependency_down("results", msgid, exc)
            return
        if self.stage is not None and record["verdict"] in self._stage_verdicts:
            self._hand_on(msgid, payload)
        self._ack(claim)  # only now: the record is in the file
        self._finished(claim, record, time.monotonic() - started)

    def _hand_on(self, msgid: str, payload: bytes) -> None:
        """Give the message to the slower stage; never waits for it, never fails the message.

        Before the ack: a worker that dies here processes the message again
        and hands it on twice, which TELL shrugs off (already learned).
        """
        assert self.stage is not None
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

    def _finished(self, claim: StoreClaim, record: dict[str, Any], took: float) -> None:
        self.done += 1
        self._count(C.PROCESSED)
        verdict = record["verdict"]
        scanned_ms = record["scanned_ms"]
        if scanned_ms is not None:
            self._count(C.SCANNED)
            self._count(C.SCAN_US, int(scanned_ms * 1000))
            self._count(scan_bucket(scanned_ms / 1000.0))
        self._dependency_up(claim.msgid)  # whatever was down is back: reset the backoff
        if record.get("duplicate_of"):
            self._count(C.DEDUPE_HITS)
        if record.get("archived"):
            self._count(C.ARCHIVED)
        elif record.get("archived") is False:
            self._count(C.ARCHIVE_ERRORS)
        if verdict == "error":
            self._count(C.SPAMD_ERRORS)
            self._count(C.VERDICT_ERROR)
        else:
            self._count(_VERDICT_COUNTERS[verdict])
        self._state(ProcState.IDLE)
        self._since_rss_check += 1
        if claim.size >= RSS_CHECK_SIZE:
            self._since_rss_check = RSS_CHECK_EVERY
        log.info(
            "%s: %s score=%s required=%s from %s, %d bytes, attempt %d, %.1f ms%s",
            claim.msgid, verdict, record["score"], record["required"],
            claim.store, record["size"],
            claim.attempts, took * 1000.0,
            f" ({record['reason']})" if record["reason"] else "",
            extra={"event": "processed", "msgid": claim.msgid, "verdict": verdict,
                   "score": record["score"], "ms": round(took * 1000.0, 1)},
        )

    # -- claims --------------------------------------------------------------------

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

    def _timed_out_alone(self, exc: SpamdError) -> bool:
        """True if the scan timed out while spamd still answers PING.

        A timeout is then this message's doing (it costs spamd more than the
        deadline), not an outage: it counts an attempt.  spamd refusing,
        resetting or not answering PING is an outage, which does not.
        """
        client = self.processor.spamd
        timed_out = isinstance(exc, SpamdTimeout) or (
            isinstance(exc, SpamdResponseError) and exc.code == EX_TIMEOUT)
        if not timed_out or client is None:
            return False
        try:
            client.ping(timeout=PING_TIMEOUT)
        except SpamdError:
            return False
        return True

    def _count_timeout(self, claim: StoreClaim, exc: SpamdError) -> None:
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

    # -- dependencies and backoff -----------------------------------------------

    def _dependency_down(self, what: str, msgid: str, exc: BaseException) -> None:
        """Note a failure of ``what`` (the claim was released) and pause."""
        now = time.monotonic()
        self._delay = (self.backoff_initial if self._delay == 0.0
                       else min(self.backoff_max, self._delay * 2))
        self._outage_failures += 1
        if self._outage_since is None:
            self._outage_since = now
            self._outage_log.reset()
        # one line per backoff period, however many messages come and go
        held = self._outage_log.ready()
        if held is not None and self._outage_failures == 1:
            log.warning("%s: %s unavailable (%s); released, retrying in %.1f s",
                        msgid, what, exc, self._delay,
                        extra={"event": "unavailable", "msgid": msgid, "dependency": what})
        elif held is not None:
            log.warning("%s: %s still unavailable after %d failure(s) in %.0f s (%s);"
                        " retrying in %.1f s%s", msgid, what,
                        self._outage_failures, now - self._outage_since, exc, self._delay,
                        f" ({held} similar lines suppressed)" if held else "",
                        extra={"event": "unavailable", "msgid": msgid,
                               "dependency": what, "suppressed": held})
        self._state(ProcState.BACKOFF)  # the message was given back: no id
        set_title(self._role, f"backoff: {what} down ({self.done} done)")
        self._pause(self._delay)
        self._state(ProcState.IDLE)

    def _dependency_up(self, msgid: str) -> None:
        if self._outage_since is not None:
            log.info("%s: processing again after %d failure(s) over %.0f s", msgid,
                     self._outage_failures, time.monotonic() - self._outage_since)
        self._delay = 0.0
        self._outage_since = None
        self._outage_failures = 0

    def _pause(self, seconds: float) -> None:
        """Sleep in slices of at most a second, beating and watching for a stop."""
        deadline = time.monotonic() + seconds
        while not self._should_exit():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(left, IDLE_WAIT))
            self._beat()

    # -- memory ------------------------------------------------------------------

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

    # -- process table -----------------------------------------------------------

    def _beat(self) -> None:
        # every turn of the loop and every slice of a pause passes here
        if self._reopen_logs:
            self._reopen_logs = False
            logs.reopen()
        if self.row is not None:
            self.row.beat()

    def _state(self, state: ProcState, msgid: str = "") -> None:
        if self.row is not None:
            self.row.set_state(state, msgid)

    def _count(self, counter: C, n: int = 1) -> None:
        if self.row is not None:
            self.row.add(counter, n)

    def _title_idle(self) -> None:
        set_title(self._role, f"idle ({self.done} done)")


def spamd_client(cfg: Config, spamd_address: str | None = None) -> SpamdClient | None:
    """The client for ``cfg.spamd`` (None when off); ``spamd_address`` overrides the config.

    A managed spamd's socket is the supervisor's choice, so kind "managed"
    needs ``spamd_address``; without it this raises ValueError.  "off" as an
    override also means no spamd.
    """
    address = spamd_address
    if address is None:
        kind = cfg.spamd.address.kind
        if kind == "off":
            return None
        if kind == "managed":
            raise ValueError("spamd.address is \"managed\" but the supervisor passed no socket")
        address = str(cfg.spamd.address)
    if address == "off":
        return None
    return SpamdClient(address, connect_timeout=cfg.spamd.connect_timeout,
                       timeout=cfg.spamd.timeout)


def child_main(cfg: Config, index: int, row_index: int, spamd_address: str | None = None) -> int:
    """Run worker ``index`` in a freshly forked child; return its exit code.

    Expects the parent's fork hygiene done (signals at their defaults, fds
    it does not own closed, logging set up).  Attaches the ring, registers
    process-table row ``row_index``, opens the overflow, the results and the
    spamd client (``spamd_address`` overrides ``cfg.spamd.address``, and is
    required when that is "managed"), then loops.  TERM stops gracefully,
    INT and QUIT fast.  Returns :data:`EXIT_OK`, :data:`EXIT_SETUP` or
    :data:`EXIT_CRASH`; the parent passes it to ``os._exit``.
    """
    # first of all: a parent that dies before the loop starts must still be noticed
    parent = os.getppid()
    set_title(f"worker {index}", "starting")
    # Writing to a spamd that closed early must raise EPIPE, not kill us.
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    # Reload belongs to the supervisor; a stray HUP sent to the whole group
    # must not kill a worker in the middle of a scan.  USR1 (reopen the log)
    # is ignored until the loop exists to act on it.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    try:
        client = spamd_client(cfg, spamd_address)
        ring = Ring.attach(cfg.ring.name)
    except (ValueError, RingError) as exc:
        log.error("worker %d: cannot start: %s", index, exc)
        return EXIT_SETUP
    sink: ResultSink | None = None
    try:
        try:
            overflow = Overflow(cfg.overflow.dir, cfg.overflow.max_bytes,
                                quarantine_max_bytes=cfg.overflow.quarantine_max_bytes)
            sink = ResultSink(cfg.results.dir, retention_days=cfg.results.retention_days)
            row = ring.register(Role.WORKER, index, row=row_index)
        except (OSError, RingError) as exc:
            log.error("worker %d: cannot start: %s", index, exc)
            return EXIT_SETUP
        processor = Processor.from_config(cfg, client)
        try:
            stage = (Overflow(configmod.stage_dir(cfg), cfg.stage.max_bytes)
                     if cfg.stage.workers else None)
        except OSError as exc:
            log.error("worker %d: cannot open the stage directory: %s", index, exc)
            return EXIT_SETUP
        worker = Worker(cfg, ring, overflow, row, index, processor, sink, parent_pid=parent,
                        stage=stage)

        def graceful(signum: int, frame: FrameType | None) -> None:
            worker.stop(graceful=True)

        def fast(signum: int, frame: FrameType | None) -> None:
            worker.stop(graceful=False)

        def reopen(signum: int, frame: FrameType | None) -> None:
            worker.reopen_logs()

        signal.signal(signal.SIGTERM, graceful)
        signal.signal(signal.SIGINT, fast)
        signal.signal(signal.SIGQUIT, fast)
        signal.signal(signal.SIGUSR1, reopen)
        try:
            return worker.run()
        except Exception:
            log.exception("worker %d crashed", index)
            return EXIT_CRASH
    finally:
        if sink is not None:
            sink.close()
        ring.close()
