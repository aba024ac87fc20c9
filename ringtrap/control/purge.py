"""The daily purge: when it runs, and what it drops from the spill stores.

At ``overflow.purge_at`` local time the supervisor drops the overflow's
backlog, the slower stage's (the stage may lag, never pile up) and the raw
messages waiting for the forwarder (their records wait in the results), and the
quarantine past ``overflow.quarantine_retention_days``.  Claimed files are
left alone; a dead holder's are requeued first so they are dropped too.
Dying in the middle leaves some files dropped and the rest for the next run.
"""

from __future__ import annotations

import datetime as dt
import logging

from ringtrap.base.counters import C
from ringtrap.overflow import Overflow
from ringtrap.store.proctable import ProcRow

log = logging.getLogger(__name__)


def next_purge(now: float, at: dt.time) -> float:
    """Epoch seconds of the next local ``at`` strictly after ``now``."""
    local = dt.datetime.fromtimestamp(now).astimezone()
    candidate = local.replace(hour=at.hour, minute=at.minute, second=0, microsecond=0)
    if candidate.timestamp() <= now:
        candidate = (local + dt.timedelta(days=1)).replace(
            hour=at.hour, minute=at.minute, second=0, microsecond=0
        )
    return candidate.timestamp()


def purge(overflow: Overflow, stage: Overflow | None, row: ProcRow | None,
          quarantine_days: int | None, now: float, *,
          forward: Overflow | None = None) -> tuple[int, int]:
    """Drop the backlogs; with ``quarantine_days`` (the daily run) the old quarantine too.

    Returns the overflow's (files, bytes) dropped.
    """
    overflow.recover_dead()
    res = overflow.purge()
    if stage is not None:
        stage.recover_dead()
        staged = stage.purge()
        log.info("dropped %d stage messages (%d bytes)", staged.count, staged.bytes)
    if forward is not None:
        # raw messages the broker did not take in a day; their records wait in the results
        forward.recover_dead()
        raw = forward.purge()
        log.info("dropped %d raw messages waiting for the forwarder (%d bytes)", raw.count,
                 raw.bytes)
        if row:
            row.add(C.FORWARD_DROPPED, raw.count)
    if quarantine_days is not None:
        gone = overflow.purge_quarantine(quarantine_days, now).count
        if stage is not None:
            gone += stage.purge_quarantine(quarantine_days, now).count
        if row:
            row.add(C.PURGED_QUARANTINED, gone)
        if gone:
            log.info("daily purge: dropped %d quarantined messages", gone)
    if row:
        row.add(C.PURGED_FILES, res.count)
        row.add(C.PURGED_BYTES, res.bytes)
    log.info("%s purge: dropped %d overflow messages (%d bytes)",
             "daily" if quarantine_days is not None else "requested", res.count, res.bytes,
             extra={"event": "purge", "dropped": res.count, "dropped_bytes": res.bytes})
    return res.count, res.bytes
