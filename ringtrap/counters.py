"""Names of the per-process counters kept in the ring's process table.

Each process adds only to its own row, so counting needs no lock; totals are
the sum over rows plus the header's ``retired`` block, into which the
supervisor folds the row of a process that has exited.  Values are stored in
shared memory: never renumber, only append (up to ``NCOUNTERS``).
"""

from __future__ import annotations

from enum import IntEnum

NCOUNTERS = 64


class C(IntEnum):
    """Counter indices."""

    # ingest
    CONNECTIONS = 0
    CONNECTIONS_REFUSED = 1  # over ingest.max_connections
    ACCEPTED_RING = 2  # answered OK, stored in the ring
    ACCEPTED_OVERFLOW = 3  # answered OK, spilled to the overflow
    REFUSED_TOO_LARGE = 4  # ERR: over ingest.max_message_bytes
    REFUSED_EMPTY = 5  # ERR: no bytes
    REFUSED_TEMP = 6  # TEMPFAIL: could not store now (overflow cap, I/O error)
    IDLE_TIMEOUTS = 7
    BYTES_IN = 8
    # workers
    CLAIMED_RING = 9
    CLAIMED_OVERFLOW = 10
    PROCESSED = 11  # recorded and acknowledged
    RELEASED = 12  # given back unprocessed (spamd down)
    QUARANTINED = 13
    SPAMD_ERRORS = 14
    SCANNED = 15
    SCAN_US = 16  # total microseconds spent waiting on spamd
    VERDICT_SPAM = 17
    VERDICT_HAM = 18
    VERDICT_NOT_SCANNED = 19  # spamd off or message over the scan limit
    RECYCLED = 20  # worker left over its memory limit
    # supervisor
    RESTARTS = 21
    RECOVERED_RING = 22  # slots requeued or freed after a process died
    RECOVERED_OVERFLOW = 23
    LOCK_BREAKS = 24
    PURGED_FILES = 25
    PURGED_BYTES = 26
    HEARTBEAT_KILLS = 27
    DRAINED_TO_OVERFLOW = 28  # ring messages moved to the overflow on TERM
