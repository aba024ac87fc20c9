"""Enumerations shared by the stores and the processes (a leaf module).

The numeric values are stored in shared memory: never renumber a member,
only append.  The verdicts' values are written in every record.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class SlotState(IntEnum):
    """Life of one ring slot: FREE -> FILLING -> READY -> CLAIMED -> FREE."""

    FREE = 0
    FILLING = 1  # the producer (owner recorded) is copying the payload in
    READY = 2  # complete and waiting for a consumer
    CLAIMED = 3  # a consumer (owner recorded) is processing it


class Role(IntEnum):
    """What a process-table row belongs to."""

    NONE = 0
    SUPERVISOR = 1
    INGEST = 2
    WORKER = 3
    SPAMD = 4
    OTHER = 5
    STAGE = 6  # a worker of the slower stage (learning, reporting)
    RSPAMD = 7  # a managed rspamd (never in the table: like SPAMD, it does not attach)
    FORWARDER = 8  # publishes the records (and raw messages) to NATS JetStream


# the managed scanners: exec'd programs that never attach to the ring
SCANNER_ROLES = frozenset({Role.SPAMD, Role.RSPAMD})


class ProcState(IntEnum):
    """What a process says it is doing, in its process-table row."""

    STARTING = 0
    IDLE = 1  # waiting for work
    BUSY = 2  # processing a message (its id is in the row)
    SCANNING = 3  # waiting on spamd
    BACKOFF = 4  # a dependency is down; retrying later
    DRAINING = 5  # finishing in-flight work before exit
    STOPPED = 6


class ChildState(IntEnum):
    """The supervisor's view of one child (only control.child.set_state moves it)."""

    WAITING = 0  # not running; started when its restart time comes
    RUNNING = 1
    STOPPING = 2  # asked to stop; its exit is expected
    EXITED = 3  # reaped and not to be restarted


class ExitCause(IntEnum):
    """How a child's exit was classified (one place: control.child.classify)."""

    REQUESTED = 0  # we asked it to stop, or it recycled itself (exit 0)
    TOO_FAST = 1  # died before its boot finished: back off, give up after a few
    CRASHED = 2  # died unasked after its boot: recover its claims, restart (slower if looping)
    HUNG = 3  # killed by us for a stalled heartbeat
    CUT = 4  # killed by us at a stop's deadline: its claims go back, no attempt counted


class HostState(IntEnum):
    """A scanner host's breaker, as one worker sees it (stored in the host table)."""

    UNUSED = 0  # no cell, or not used since it was assigned
    CLOSED = 1  # chosen in turn
    OPEN = 2  # out of the pool until its revive time
    HALF_OPEN = 3  # revive time passed: the next pick PINGs it first


class Verdict(StrEnum):
    """What a record says of its message (the record's ``verdict``, its counter, its archive).

    Records, configuration files and the dedupe store hold these values:
    never rename one.
    """

    SPAM = "spam"
    HAM = "ham"
    NOT_SCANNED = "not_scanned"  # spamd off
    ERROR = "error"  # spamd answered with an error
    # the prefilters' verdicts
    BOUNCE = "bounce"
    AUTOREPLY = "autoreply"
    VIRUS = "virus"
    OVERSIZE = "oversize"  # over workers.scan_limit_bytes
    # no longer given (a parse failure is scanned and noted as "parse_error"):
    # kept because older records and configurations name it
    UNPARSEABLE = "unparseable"
    DUPLICATE = "duplicate"  # a campaign repeat recorded from its first scan
    # given up on without parsing: it killed its worker too often, or its
    # spill file is not one the trap reads (counted in C.QUARANTINED)
    QUARANTINED = "quarantined"
