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

import contextlib
import logging
import time

from ringtrap import config as configmod
from ringtrap.base import envelope
from ringtrap.base.counters import C
from ringtrap.base.states import ProcState, Role
from ringtrap.config import Config
from ringtrap.overflow import Overflow, OverflowClaim, OverflowClaimLost, UntrustedFile
from ringtrap.scan import quarantine
from ringtrap.scan.processing import split_payload
from ringtrap.scan.results import ResultSink
from ringtrap.scan.scanner import ScanError
from ringtrap.scan.spamd import SpamdClient, TellResult
from ringtrap.store.proctable import ProcRow, ProcTable
from ringtrap.work.child import EXIT_CRASH, EXIT_OK, EXIT_SETUP, ChildLoop, SetupError, main

log = logging.getLogger(__name__)

__all__ = ["EXIT_CRASH", "EXIT_OK", "EXIT_SETUP", "StageWorker", "child_main", "open_store",
           "spamd_address"]

# An idle stage worker looks for work this often: the stage is slow by
# nature, and a directory has no semaphore to wait on.
POLL = 0.25
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


class StageWorker(ChildLoop):
    """The claim -> TELL -> ack loop of one stage process.

    ``row`` (this process's process-table row) may be None in tools and tests;
    ``sink`` receives the record of each message the stage quarantines.
    Every stop finishes the call in progress (spamd cannot be cut short).
    """

    def __init__(self, cfg: Config, store: Overflow, client: SpamdClient, row: ProcRow | None,
                 index: int, *, parent_pid: int | None = None,
                 backoff_initial: float = BACKOFF_INITIAL,
                 backoff_max: float = BACKOFF_MAX, sink: ResultSink | None = None) -> None:
        super().__init__(Role.STAGE, index, row, parent_pid=parent_pid,
                         backoff_initial=backoff_initial, backoff_max=backoff_max,
                         logger=log)
        self.cfg = cfg
        self.store = store
        self.sink = sink
        self.client = client
        self.learn = cfg.stage.learn
        self.report = cfg.stage.report
        self._max_messages: int | None = None
        self._warned_not_learned = False

    def run(self, max_messages: int | None = None) -> int:
        """Loop until stopped or orphaned (or after ``max_messages``); the exit code."""
        self._max_messages = max_messages
        return super().run()

    def _turn(self) -> bool:
        """Claim and handle one message, or wait; False ends a bounded run."""
        claim = self.store.claim(self._me)
        if claim is None:
            if self._max_messages is not None:
                return False  # a bounded run (tests, tools) ends when the backlog does
            self._pause(POLL)
            return True
        self.handle(claim)
        return self._max_messages is None or self.done < self._max_messages

    def _started_note(self) -> str:
        return f": learn {self.learn}, report {self.report}"

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
        self._title(f"telling {claim.msgid}")
        started = time.monotonic()
        told = TellResult(did_set=(), did_remove=())
        try:
            if self.learn:
                told = self.client.tell(message, "spam", set_local=True, set_remote=self.report)
            elif self.report:
                told = self.client.tell(message, "spam", set_local=False, set_remote=True)
        except ScanError as exc:
            if exc.retryable:
                # spamd down or slow: not the message's fault; give it back, pause
                self.store.release(claim)
                self._dependency_down("spamd", claim.msgid, exc)
                self._title_idle()
                return
            self._count(C.STAGE_ERRORS)
            log.warning("%s: stage call refused for good (%s); dropped", claim.msgid, exc)
            self.store.ack(claim)
            self._idle()
            return
        self.store.ack(claim)
        self.done += 1
        self._dependency_up(claim.msgid)
        learned = self.learn and "local" in told.did_set
        if learned:
            self._count(C.STAGE_LEARNED)
        elif self.learn:
            self._not_learned(claim.msgid)
        if self.report:
            self._count(C.STAGE_REPORTED)
        took = (time.monotonic() - started) * 1000.0
        log.info("%s: %s in %.1f ms", claim.msgid,
                 " and ".join(w for w, on in (("learned", learned),
                                              ("not learned", self.learn and not learned),
                                              ("reported", self.report)) if on), took,
                 extra={"event": "told", "msgid": claim.msgid, "learned": learned,
                        "reported": self.report, "ms": round(took, 1)})
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
                self._pause(self.backoff_max)
                return
        try:
            done = self.store.quarantine(claim, reason)
        except OverflowClaimLost:
            return
        self._count(C.QUARANTINED)
        self._count(C.QUARANTINE_DROPPED, done.dropped.count + (not done.kept))

    def _idle(self) -> None:
        self._state(ProcState.IDLE)
        self._title_idle()


def child_main(cfg: Config, index: int, row_index: int, scanning_address: str | None) -> int:
    """Run stage worker ``index`` in a freshly forked child; return its exit code.

    Expects :func:`ringtrap.work.child.boot` done.  Attaches the process table
    (its row ``row_index``: it never claims ring slots), opens
    the stage directory and its spamd client (``stage.address``, else
    ``scanning_address``), then loops.  TERM, INT and QUIT stop it after the
    current call, USR1 reopens the log.
    """

    def setup(parent: int, closing: contextlib.ExitStack) -> StageWorker:
        table = closing.enter_context(ProcTable.attach(cfg.ring.name))
        address = spamd_address(cfg, scanning_address)
        if address is None:
            raise SetupError("no spamd to talk to")
        client = SpamdClient(address, connect_timeout=cfg.spamd.connect_timeout,
                             timeout=cfg.stage.timeout,
                             tls_ca=None if cfg.spamd.tls_ca is None else str(cfg.spamd.tls_ca))
        store = open_store(cfg)
        sink = closing.enter_context(
            contextlib.closing(ResultSink(cfg.results.dir,
                                          retention_days=cfg.results.retention_days)))
        row = table.register(Role.STAGE, index, row=row_index)
        return StageWorker(cfg, store, client, row, index, parent_pid=parent, sink=sink)

    return main(cfg, Role.STAGE, index, setup, log)
