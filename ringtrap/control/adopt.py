"""What a supervisor takes over: the ring a previous one left, and dead children's claims.

At start, :func:`open_ring` creates the ring or adopts the one a crashed or
fast-stopped supervisor left: processes of that old generation still using
it are stopped first (:func:`stop_old_generation`), and a ring whose
geometry no longer matches the configuration is emptied into the overflow
and made again.  :func:`stop_orphan_spamd` stops a managed spamd that
outlived its supervisor, found through the identity the supervisor records
in ``spamd.owner`` (:func:`record_spamd`).

While the trap runs, :class:`Recovery` requeues what a dead child held in
the ring and the spill stores.  It never waits on the ring lock: when a
live process holds it, the recovery is kept and retried on a later turn of
the loop, which meanwhile kills that holder if it is hung.

If the supervisor dies in the middle of any of this, the next start does
it again: every step works from what the stores record, not from memory.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from pathlib import Path
from typing import NamedTuple

from ringtrap.base import proc
from ringtrap.base.counters import C
from ringtrap.base.proc import Identity
from ringtrap.config import Config
from ringtrap.control.child import Child
from ringtrap.control.seam import OS
from ringtrap.control.setup import SetupError
from ringtrap.overflow import Overflow, OverflowFull
from ringtrap.ring import Ring
from ringtrap.store.lock import OWNER_PATIENCE, RingBusy
from ringtrap.store.proctable import ProcRow
from ringtrap.store.segment import RingExists, RingLayoutError, shm_paths, unlink_name

log = logging.getLogger(__name__)


def open_ring(cfg: Config, overflow: Overflow | None, os_: OS, rows: int) -> tuple[Ring, bool]:
    """Create the configured ring, or adopt the one left behind; True if it was made.

    Raises SetupError when the ring belongs to a running supervisor, has a
    layout this version cannot read, or cannot be emptied for a new geometry.
    """
    rc = cfg.ring
    try:
        return Ring.create(rc.name, rc.slots, rc.slot_bytes, mode=rc.mode, rows=rows), True
    except RingExists:
        pass
    try:
        old = Ring.attach(rc.name)
    except RingLayoutError as e:
        raise SetupError(
            f"{e}; if no ringtrap is running, drain it with the version that made it "
            f"(start it, then stop it with TERM) or remove it, and the messages in it, "
            f"with: rm -f {' '.join(shm_paths(rc.name))}"
        ) from None
    owner = old.owner
    if owner.pid != os.getpid() and os_.is_alive(owner):
        old.close()
        raise SetupError(
            f"ring {rc.name!r} belongs to a running ringtrap supervisor (pid {owner.pid})"
        )
    stop_old_generation(old, cfg.supervisor.graceful_timeout, os_)
    if (old.slots, old.slot_bytes) != (rc.slots, rc.slot_bytes):
        log.warning("ring geometry changed (%d x %d -> %d x %d): moving its messages to "
                    "the overflow and recreating it", old.slots, old.slot_bytes,
                    rc.slots, rc.slot_bytes)
        assert overflow is not None
        old.recover_dead()
        moved = evacuate(old, overflow)
        left = old.snapshot().used
        old.close()
        if left:
            raise SetupError(
                f"ring {rc.name!r} still holds {left} messages after moving {moved} to "
                f"the overflow; start with its old geometry "
                f"({old.slots} x {old.slot_bytes}) to process them"
            )
        unlink_name(rc.name)
        log.info("moved %d messages from the old ring", moved)
        return Ring.create(rc.name, rc.slots, rc.slot_bytes, mode=rc.mode, rows=rows), True
    old.close()
    ring = Ring.adopt(rc.name)
    snap = ring.snapshot()
    log.info("adopted ring %r (generation %d): %d ready, %d requeued from dead processes",
             rc.name, snap.generation, snap.ready, snap.requeued)
    return ring, False


def stop_old_generation(ring: Ring, timeout: float, os_: OS) -> None:
    """Stop processes of a crashed supervisor's generation still using ``ring``.

    TERM first, so they finish what they hold; whatever still runs after
    ``timeout`` seconds is killed.  Returns once none of them is alive.
    """
    me = os.getpid()
    alive = [Identity(r.pid, r.start) for r in ring.table.read_rows()
             if r.pid != me and os_.is_alive((r.pid, r.start))]
    if not alive:
        return
    log.warning("stopping %d processes left by the previous supervisor", len(alive))
    for ident in alive:
        with contextlib.suppress(ProcessLookupError):
            os_.kill(ident.pid, signal.SIGTERM)
    deadline = os_.monotonic() + timeout
    while os_.monotonic() < deadline and any(os_.is_alive(i) for i in alive):
        os_.sleep(0.1)
    for ident in alive:
        if os_.is_alive(ident):
            with contextlib.suppress(ProcessLookupError):
                os_.kill(ident.pid, signal.SIGKILL)
    while any(os_.is_alive(i) for i in alive):
        os_.sleep(0.05)


def close_ring(name: str, ring: Ring, overflow: Overflow, row: ProcRow | None,
               persist: bool) -> None:
    """After the last child is gone: requeue what the dead held, then keep or persist the ring.

    ``persist`` (a drain): every message moves to the overflow and the ring
    is unlinked.  Otherwise the ring is left for the next start to adopt.
    """
    # every child is gone: a held lock is a dead one's (or a foreign
    # process's), and waiting for it is all that is left to do
    ring.lock.patience = OWNER_PATIENCE
    res = ring.recover_dead()
    if res.requeued and row:
        row.add(C.RECOVERED_RING, res.requeued)
    if persist:
        moved = evacuate(ring, overflow)
        if row:
            row.add(C.DRAINED_TO_OVERFLOW, moved)
        if moved:
            log.info("persisted %d ring messages to the overflow", moved)
        if ring.snapshot().used:  # the overflow was full, or a live foreign claimer
            log.warning("ring still holds messages; keeping it for adoption")
            persist = False
    ring.close()
    if persist:
        unlink_name(name)


def evacuate(ring: Ring, overflow: Overflow) -> int:
    """Move every READY message of ``ring`` to the overflow; returns the count.

    Stops at the overflow's cap: what is left stays READY in the ring.  Each
    message is acknowledged in the ring only once it is stored in the
    overflow: dying in between leaves it in both, delivered twice at worst.
    """
    moved = 0
    recounted = False
    while True:
        c = ring.claim(timeout=0.0)
        if c is None:
            if ring.snapshot().ready == 0:
                return moved
            if recounted:  # READY but out of reach: leave the ring in place
                log.error("ring %r: %d ready messages could not be taken",
                          ring.name, ring.snapshot().ready)
                return moved
            ring.recount_strays()
            recounted = True
            continue
        recounted = False
        try:
            overflow.spill(c.msgid, c.data, c.attempts)
        except OverflowFull:
            # the rest stays in the ring, which is then kept for the next start
            # to adopt: out of the cap's reach, still to be scanned
            ring.release(c)
            log.warning("overflow full while persisting the ring: %d messages stay in it"
                        " for the next start", ring.snapshot().ready)
            return moved
        ring.ack(c)
        moved += 1


def spamd_owner_file(cfg: Config) -> Path:
    """Where the supervisor records its managed spamd's identity: beside its socket."""
    return cfg.ingest.socket.parent / "spamd.owner"


def read_spamd_owner(path: Path) -> Identity | None:
    """The identity a ``spamd.owner`` file records, None if it is missing or unreadable."""
    try:
        pid, start = (int(v) for v in path.read_text().split())
    except (OSError, ValueError):
        return None
    return Identity(pid, start)


def stop_orphan_spamd(cfg: Config) -> None:
    """Stop a managed spamd that a crashed supervisor left running.

    Run as root, spamd switches users and the kernel drops its
    parent-death signal: it outlives a SIGKILLed supervisor, keeps the
    socket, and every new spamd fails to bind.  Its identity was recorded
    at its start; what is still running of its session is stopped.
    """
    path = spamd_owner_file(cfg)
    old = read_spamd_owner(path)
    if old is None:
        return
    if proc.session_members(old):
        log.warning("stopping the managed spamd (pid %d) left by the previous supervisor",
                    old.pid)
        n = proc.stop_session(old, cfg.supervisor.graceful_timeout)
        log.info("stopped %d spamd processes of the previous supervisor", n)
    with contextlib.suppress(OSError):
        path.unlink()


def record_spamd(cfg: Config, ident: Identity | None) -> None:
    """Write the managed spamd's identity for the next supervisor (see above)."""
    if ident is None:
        return
    path = spamd_owner_file(cfg)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(f"{ident.pid} {ident.start}\n")
        os.replace(tmp, path)
    except OSError as e:
        log.warning("cannot record the managed spamd in %s: %s; a spamd left by a crash "
                    "will not be stopped by the next start", path, e)


def forget_spamd(cfg: Config) -> None:
    """Remove the record of a managed spamd that has exited."""
    path = spamd_owner_file(cfg)
    old = read_spamd_owner(path)
    if old is not None and not proc.session_members(old):
        with contextlib.suppress(OSError):
            path.unlink()


class Stores(NamedTuple):
    """Where a dead child's claims may be, and the row its recovery is counted in."""

    ring: Ring | None
    overflow: Overflow | None
    stage: Overflow | None  # the slower stage's spill directory, when configured
    row: ProcRow | None  # the supervisor's own
    forward: Overflow | None = None  # raw messages for the forwarder, with forward.raw


class Recovery:
    """Requeues what dead children held; keeps what met a busy ring lock for later."""

    def __init__(self) -> None:
        self.pending: list[tuple[Child, Identity, bool]] = []

    def recover(self, stores: Stores, c: Child, ident: Identity | None,
                count_attempt: bool = True) -> int:
        """Requeue what ``c``, now dead as ``ident``, held in every store; fold its row.

        ``count_attempt``: False when we killed it ourselves at a stop's
        deadline, so a merely slow message is not pushed towards quarantine.
        Returns how many messages were requeued; 0 when the ring lock is held
        by a live process, and the recovery is then kept for :meth:`retry`.
        """
        ring, overflow = stores.ring, stores.overflow
        if ring is None or overflow is None or ident is None:
            return 0
        try:
            res = ring.recover(ident, count_attempt=count_attempt)
        except RingBusy as e:
            # never wait for a live holder here (the next turns kill it if it
            # is hung); the dead child's claims keep
            log.warning("%s: recovery waits for the ring lock (%s)", c.name, e)
            self.pending.append((c, ident, count_attempt))
            return 0
        n = overflow.recover(ident, count_attempt=count_attempt)
        if stores.stage is not None:
            # a stage worker's claims, and a scan worker's half-written hand-off
            n += stores.stage.recover(ident, count_attempt=count_attempt)
        if stores.forward is not None:
            # the forwarder's claims, and a scan worker's half-written hand-off
            n += stores.forward.recover(ident, count_attempt=count_attempt)
        if res.requeued or res.freed or n:
            log.warning("%s died holding %d ring and %d overflow messages: requeued "
                        "(%d half-written slots freed)", c.name, res.requeued, n, res.freed,
                        extra={"event": "recovery", "child": c.name,
                               "requeued": res.requeued + n, "freed": res.freed})
        if stores.row:
            stores.row.add(C.RECOVERED_RING, res.requeued)
            stores.row.add(C.RECOVERED_OVERFLOW, n)
        r = next((r for r in ring.table.read_rows() if r.row == c.row), None)
        if r is not None and (r.pid, r.start) == tuple(ident):
            # on RingBusy the row is left to its next occupant's death, or adopt()
            with contextlib.suppress(RingBusy):
                ring.table.retire_row(c.row, ident)
        return res.requeued + n

    def retry(self, stores: Stores) -> None:
        """Try again every recovery that found the ring lock held."""
        pending, self.pending = self.pending, []
        for c, ident, count_attempt in pending:
            self.recover(stores, c, ident, count_attempt)
