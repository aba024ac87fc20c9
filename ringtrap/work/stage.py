"""The slower stage: learn from and report the mail the scan workers handed on.

Learning (spamd TELL, ``Set: local``) and reporting to remote networks
(TELL, ``Set: remote``: Razor, Pyzor, DCC, SpamCop) can lag badly, so they
never run in the scan workers.  A scan worker hands a message on by spilling
it into the stage's own directory (:func:`hand_on`, an atomic rename, capped
in bytes: a full stage drops the hand-off and counts it, it never waits)
and moves on.  A small pool of :class:`StageWorker` processes, forked and
watched by the supervisor like the scan workers, drains that directory with
their own spamd client and timeouts.

Why a directory and not a second ring: the ring has one producer (the
ingest), and its lock-free space check relies on that; several scan workers
producing into one ring would break it.  The spill directory is
multi-producer by design (every file appears by one rename), bounded by its
byte cap, recovered by owner identity when a stage worker dies, and purged
daily with the first stage's overflow.  The stage workers' heartbeats,
states and counters live in the ring's process table like everyone else's,
so ``ringtrap status`` shows them and the stage's backlog.

At least once: a stage worker acknowledges a message only after spamd
answered; a worker that dies leaves the claim for the supervisor to requeue
(one more attempt), and a message at ``overflow.max_attempts`` is
quarantined.  TELL is idempotent (an already learned message changes
nothing), so a repeat costs a call, never a double count in Bayes.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from types import FrameType

from ringtrap import config as configmod
from ringtrap.base import envelope, proc
from ringtrap.base.counters import C
from ringtrap.base.states import ProcState, Role
from ringtrap.base.titles import set_title
from ringtrap.config import Config
from ringtrap.overflow import Overflow, OverflowClaim, OverflowClaimLost, UntrustedFile
from ringtrap.ring import ProcRow, Ring, RingError
from ringtrap.scan import quarantine
from ringtrap.scan.processing import split_payload
from ringtrap.scan.results import ResultSink
from ringtrap.scan.spamd import SpamdClient, SpamdError, TellResult

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_CRASH = 70
EXIT_SETUP = 78

# An idle stage worker looks for work this often: the stage is slow by
# nature, and a directory has no semaphore to wait on.
POLL = 0.25
# heartbeats while idle or backing off come at least this often
BEAT_EVERY = 1.0
BACKOFF_INITIAL = 1.0
BACKOFF_MAX = 60.0


def open_store(cfg: Config, *, create: bool = True) -> Overflow:
    """The stage's spill directory for ``cfg`` (created unless ``create`` is False)."""
    return Overflow(configmod.stage_dir(cfg), cfg.stage.max_bytes, create=create,
                    quarantine_max_bytes=cfg.overflow.quarantine_max_bytes)


def spamd_address(cfg: Config, scanning: str | None) -> str | None:
    """The address the stage talks to: ``stage.address`` or the scanning spamd's."""
    if cfg.stage.address is not None:
        return str(cfg.stage.address)
    return scanning


class StageWorker:
    """The claim -> TELL -> ack loop of one stage process.

    ``row`` (this process's process-table row) may be None in tools and tests;
    ``sink`` receives the record of each message the stage quarantines.
    """

    def __init__(self, cfg: Config, store: Overflow, client: SpamdClient, row: ProcRow | None,
                 index: int, *, parent_pid: int | None = None,
                 backoff_initial: float = BACKOFF_INITIAL,
                 backoff_max: float = BACKOFF_MAX, sink: ResultSink | None = None) -> None:
        self.cfg = cfg
        self.store = store
        self.sink = sink
        self.client = client
        self.row = row
        self.index = index
        self.learn = cfg.stage.learn
        self.report = cfg.stage.report
        self.done = 0
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self._delay = 0.0
        self._me = proc.self_identity()
        self._ppid = os.getppid() if parent_pid is None else parent_pid
        self._role = f"stage {index}"
        self._stop = False  # set from signal handlers: a plain store only
        self._warned_not_learned = False

    def stop(self) -> None:
        """Ask the loop to return after the current call; safe in a signal handler."""
        self._stop = True

    def _should_exit(self) -> bool:
        if not self._stop and os.getppid() != self._ppid:
            log.warning("stage %d: parent %d is gone, exiting", self.index, self._ppid)
            self._stop = True
        return self._stop

    def run(self, max_messages: int | None = None) -> int:
        """Loop until stopped or orphaned (or after ``max_messages``); the exit code."""
        self._state(ProcState.IDLE)
        set_title(self._role, "idle (0 done)")
        log.info("stage %d started (pid %d): learn %s, report %s", self.index, self._me.pid,
                 self.learn, self.report)
        while not self._should_exit():
            self._beat()
            claim = self.store.claim(self._me)
            if claim is None:
                if max_messages is not None:
                    break  # a bounded run (tests, tools) ends when the backlog does
                self._sleep(POLL)
                continue
            self.handle(claim)
            if max_messages is not None and self.done >= max_messages:
                break
        self._state(ProcState.STOPPED)
        return EXIT_OK

    def handle(self, claim: OverflowClaim) -> None:
        """Learn from and/or report one claimed message, then ack, release or quarantine it."""
        limit = self.cfg.overflow.max_attempts
        if claim.attempts >= limit:
            self._quarantine(claim, f"attempts {claim.attempts} reached the limit {limit}"
                                    " (a stage worker died holding it each time)")
            return
        try:
            payload = claim.read()
        except FileNotFoundError:
            return  # recovered by the supervisor meanwhile: someone else's now
        except UntrustedFile as exc:
            self._quarantine(claim, f"untrusted spill file, not read: {exc.reason}",
                             readable=False, size=exc.size)
            return
        _, message = split_payload(payload)
        self._state(ProcState.BUSY, claim.msgid)
        set_title(self._role, f"telling {claim.msgid} ({self.done} done)")
        started = time.monotonic()
        told = TellResult(did_set=(), did_remove=())
        try:
            if self.learn:
                told = self.client.tell(message, "spam", set_local=True, set_remote=self.report)
            elif self.report:
                told = self.client.tell(message, "spam", set_local=False, set_remote=True)
        except SpamdError as exc:
            if exc.retryable:
                # spamd down or slow: not the message's fault; give it back, pause
                self.store.release(claim)
                self._backoff(claim.msgid, exc)
                return
            self._count(C.STAGE_ERRORS)
            log.warning("%s: stage call refused for good (%s); dropped", claim.msgid, exc)
            self.store.ack(claim)
            self._idle()
            return
        self.store.ack(claim)
        self.done += 1
        self._delay = 0.0
        learned = self.learn and "local" in told.did_set
        if learned:
            self._count(C.STAGE_LEARNED)
        elif self.learn:
            self._not_learned(claim.msgid)
        if self.report:
            self._count(C.STAGE_REPORTED)
        log.info("%s: %s in %.1f ms", claim.msgid,
                 " and ".join(w for w, on in (("learned", learned),
                                              ("not learned", self.learn and not learned),
                                              ("reported", self.report)) if on),
                 (time.monotonic() - started) * 1000.0)
        self._idle()

    def _not_learned(self, msgid: str) -> None:
        """Count a TELL that answered without ``DidSet: local``; warn the first time."""
        self._count(C.STAGE_NOT_LEARNED)
        if self._warned_not_learned:
            return
        self._warned_not_learned = True
        log.warning(
            "%s: spamd learned nothing (TELL answered without DidSet: local); counted as"
            " stage_not_learned. Unless the message was learned before, spamd has no writable"
            " Bayes database (a managed spamd uses spamd.bayes_dir; another needs bayes_path"
            " writable by its user) or runs without --allow-tell. Warned once per stage"
            " worker.", msgid, extra={"event": "not_learned", "msgid": msgid})

    def _quarantine(self, claim: OverflowClaim, reason: str, *, readable: bool = True,
                    size: int | None = None) -> None:
        """Record ``claim`` as quarantined (store "stage"), then move it into failed/.

        As in the scan worker, the record comes first: dying before the move
        means a second quarantine and a second record, never none.
        """
        head = None
        if readable:
            try:
                with claim.open() as f:
                    head = f.read(envelope.MAX_LINE)
            except (OSError, UntrustedFile):
                head = None
        if self.sink is not None:
            rec = quarantine.record(
                claim.msgid, claim.received, claim.attempts, reason, store="stage",
                kept=self.store.keeps(claim.size),
                path=self.store.quarantine_path(claim.msgid, claim.size, claim.attempts),
                payload_size=claim.size if size is None else size, head=head)
            try:
                self.sink.write(rec)
            except OSError as exc:
                log.warning("%s: cannot record the quarantine (%s); released", claim.msgid, exc)
                self.store.release(claim)
                self._sleep(self.backoff_max)
                return
        try:
            done = self.store.quarantine(claim, reason)
        except OverflowClaimLost:
            return
        self._count(C.QUARANTINED)
        self._count(C.QUARANTINE_DROPPED, done.dropped.count + (not done.kept))

    def _backoff(self, msgid: str, exc: SpamdError) -> None:
        self._delay = (self.backoff_initial if self._delay == 0.0
                       else min(self.backoff_max, self._delay * 2))
        log.warning("%s: stage spamd unavailable (%s); released, retrying in %.1f s",
                    msgid, exc, self._delay)
        self._state(ProcState.BACKOFF)
        set_title(self._role, f"backoff: spamd down ({self.done} done)")
        self._sleep(self._delay)
        self._idle()

    def _idle(self) -> None:
        self._state(ProcState.IDLE)
        set_title(self._role, f"idle ({self.done} done)")

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._should_exit():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, BEAT_EVERY))
            self._beat()

    def _beat(self) -> None:
        if self.row is not None:
            self.row.beat()

    def _state(self, state: ProcState, msgid: str = "") -> None:
        if self.row is not None:
            self.row.set_state(state, msgid)

    def _count(self, counter: C, n: int = 1) -> None:
        if self.row is not None:
            self.row.add(counter, n)


def child_main(cfg: Config, index: int, row_index: int, scanning_address: str | None) -> int:
    """Run stage worker ``index`` in a freshly forked child; return its exit code.

    Expects the parent's fork hygiene done.  Attaches the ring (for its
    process-table row ``row_index`` only: it never claims ring slots), opens
    the stage directory and its spamd client (``stage.address``, else
    ``scanning_address``), then loops.  TERM, INT and QUIT stop it after the
    current call.
    """
    parent = os.getppid()
    set_title(f"stage {index}", "starting")
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    address = spamd_address(cfg, scanning_address)
    if address is None:
        log.error("stage %d: cannot start: no spamd to talk to", index)
        return EXIT_SETUP
    try:
        client = SpamdClient(address, connect_timeout=cfg.spamd.connect_timeout,
                             timeout=cfg.stage.timeout)
        ring = Ring.attach(cfg.ring.name)
    except (ValueError, RingError) as exc:
        log.error("stage %d: cannot start: %s", index, exc)
        return EXIT_SETUP
    try:
        try:
            store = open_store(cfg)
            sink = ResultSink(cfg.results.dir, retention_days=cfg.results.retention_days)
            row = ring.register(Role.STAGE, index, row=row_index)
        except (OSError, RingError) as exc:
            log.error("stage %d: cannot start: %s", index, exc)
            return EXIT_SETUP
        worker = StageWorker(cfg, store, client, row, index, parent_pid=parent, sink=sink)

        def stop(signum: int, frame: FrameType | None) -> None:
            worker.stop()

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            signal.signal(sig, stop)
        try:
            return worker.run()
        except Exception:
            log.exception("stage %d crashed", index)
            return EXIT_CRASH
    finally:
        ring.close()
