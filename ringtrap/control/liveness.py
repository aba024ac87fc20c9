"""Whether the children are alive and making progress, read from the process table.

Every child beats its row on the monotonic clock each turn of its loop.
:func:`check_heartbeats` aborts one whose beat stalled past its limit
(SIGABRT, for a core and a traceback) and kills it if it is still there
:data:`ABORT_GRACE` later; :func:`check_ring_lock` kills a live process
that holds the ring lock and is stopped or stuck, so every other process
can go on.  :func:`booted` tells a child that finished its boot from one
that died in it.  Nothing here waits: the caller's next turn looks again.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Iterable

from ringtrap.base.counters import C
from ringtrap.base.states import SCANNER_ROLES, ChildState, ProcState, Role
from ringtrap.control.child import Child
from ringtrap.control.seam import OS
from ringtrap.ring import Ring
from ringtrap.store.proctable import ProcRow, RowSnapshot

log = logging.getLogger(__name__)

# a child is given this long to register and beat before its heartbeat counts
BOOT_GRACE = 30.0
# the ingest beats every loop turn (<= 1 s); it may not stall longer than this
INGEST_HEARTBEAT_TIMEOUT = 30.0
# after SIGABRT for a stalled heartbeat, SIGKILL if still alive this much later
ABORT_GRACE = 5.0

Signal = Callable[[Child, int], None]


def check_heartbeats(children: Iterable[Child], rows: Iterable[RowSnapshot], now: float,
                     worker_timeout: float, send: Signal) -> int:
    """Abort each running child whose heartbeat stalled; returns how many were aborted.

    ``now`` is the monotonic clock in seconds, the clock the rows' beats are
    written on.  ``send`` signals a child (never a process reusing its pid).
    """
    by_row = {r.row: r for r in rows}
    aborted = 0
    for c in children:
        if c.state is not ChildState.RUNNING or c.role in SCANNER_ROLES:
            continue
        if c.abort_sent:
            if now - c.abort_sent > ABORT_GRACE:
                send(c, signal.SIGKILL)
            continue
        r = by_row.get(c.row)
        if r is None or c.ident is None or r.pid != c.pid:
            continue  # not registered yet
        limit = INGEST_HEARTBEAT_TIMEOUT if c.role is Role.INGEST else worker_timeout
        if now - c.started < BOOT_GRACE and r.heartbeat_ns == 0:
            continue
        stalled = now - r.heartbeat_ns / 1e9
        if stalled > limit:
            log.error("%s (pid %d) heartbeat stalled %.0f s (state %s, message %s): "
                      "aborting it", c.name, c.pid, stalled, r.state.name, r.msgid or "-")
            c.abort_sent = now
            send(c, signal.SIGABRT)
            aborted += 1
    return aborted


def check_ring_lock(ring: Ring, children: Iterable[Child], os_: OS, send: Signal,
                    row: ProcRow | None) -> None:
    """Break the ring lock of a dead holder; kill a live holder that is hung.

    A holder that is stopped or has held the lock far longer than any
    critical section takes makes no progress and never will by itself:
    it is killed (a child of ours is then reaped and recovered as hung),
    and a later turn breaks its lock.  Nothing here waits on the lock.
    """
    check = ring.lock.check_lock(os_.monotonic())
    if check.broken and row:
        row.add(C.LOCK_BREAKS)
    hung = check.hung
    if hung is None or hung.pid == os.getpid():
        return
    c = next((c for c in children if c.ident is not None
              and tuple(c.ident) == tuple(hung)), None)
    name = c.name if c is not None else "a process outside the trap"
    log.error("%s (pid %d) holds the ring lock and is %s: killing it", name, hung.pid,
              "stopped" if check.stopped else "stuck",
              extra={"event": "lock_holder_kill", "holder_pid": hung.pid})
    if c is not None:
        if not c.abort_sent:
            c.abort_sent = os_.monotonic()
        send(c, signal.SIGKILL)
    elif os_.is_alive(hung):  # a pid is not an identity: only that process
        try:
            os_.kill(hung.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError) as e:
            log.error("cannot kill pid %d: %s", hung.pid, e)
            return
    if row:
        row.add(C.LOCK_HOLDER_KILLS)


def booted(c: Child, ring: Ring | None) -> bool:
    """Whether ring child ``c`` finished its boot: remembered, or its row says so now.

    It has once its process-table row (its own pid and start) has left
    STARTING: it attached, registered and reached its loop.  Read before
    its row is retired.
    """
    if c.booted or ring is None or c.ident is None or c.row < 0:
        return c.booted
    for r in ring.table.read_rows():
        if r.row == c.row and (r.pid, r.start) == tuple(c.ident):
            c.booted = r.state is not ProcState.STARTING
    return c.booted
