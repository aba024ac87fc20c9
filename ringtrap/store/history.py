"""Hourly history of accepted and analysed messages, in the segment header.

The counters (:mod:`ringtrap.base.counters`) are running totals; the
fraction of the mail a trap analyses (scanned, or recorded from a campaign
repeat without a scan) over what it accepted is wanted per hour and per day,
which totals alone cannot give a separate process such as ``ringtrap
status``.  So the supervisor, at each housekeeping turn, adds what the totals
grew by since its last turn to the bucket of the current wall-clock hour
(:func:`tick`), and any process reads the buckets back (:func:`read`).

Header words (see :mod:`ringtrap.store.segment`)::

    32 accepted total at the last tick   33 analysed total at the last tick
    34 hour of the last tick (hours since the epoch; 0 = never ticked)
    35..82 HOURS buckets of (accepted, analysed), bucket = hour % HOURS

Only the supervisor writes them, with plain stores and without the lock; a
reader may see one bucket a tick out of date.  A supervisor that dies
mid-tick leaves at most one tick's growth uncounted in a bucket, and the
next supervisor (adopting the segment) carries on from the last totals.
A ring created anew starts an empty history, as its counters start at zero.
"""

from __future__ import annotations

from collections.abc import MutableSequence
from typing import NamedTuple

H_HISTORY = 32
HOURS = 24
_LAST_ACCEPTED, _LAST_ANALYSED, _HOUR = H_HISTORY, H_HISTORY + 1, H_HISTORY + 2
_BUCKETS = H_HISTORY + 3
H_HISTORY_END = _BUCKETS + 2 * HOURS
assert H_HISTORY_END <= 96  # words 96.. are the ring's cursors


class Hour(NamedTuple):
    """One wall-clock hour: its start (seconds since the epoch) and its counts."""

    start: float
    accepted: int
    analysed: int


class Window(NamedTuple):
    """Counts over some hours, and their ratio (None while nothing was accepted)."""

    accepted: int
    analysed: int

    @property
    def fraction(self) -> float | None:
        return self.analysed / self.accepted if self.accepted else None


def tick(q: MutableSequence[int], accepted: int, analysed: int, now: float) -> None:
    """Add the growth of the totals ``accepted`` and ``analysed`` since the
    last tick to the bucket of the hour of ``now`` (wall-clock seconds).

    Buckets of hours that passed without a tick are emptied first.  Totals
    that went down (never, short of a new segment) count as no growth.
    """
    hour = int(now // 3600)
    last = q[_HOUR]
    if hour != last:
        # the hours since the last tick had no tick: empty their buckets,
        # and this hour's, which holds the same hour a day earlier
        skipped = HOURS if last == 0 or hour < last else min(HOURS, hour - last)
        for h in range(hour - skipped + 1, hour + 1):
            b = _BUCKETS + 2 * (h % HOURS)
            q[b] = q[b + 1] = 0
        q[_HOUR] = hour
    b = _BUCKETS + 2 * (hour % HOURS)
    grew_accepted = accepted - q[_LAST_ACCEPTED]
    grew_analysed = analysed - q[_LAST_ANALYSED]
    if last and grew_accepted >= 0 and grew_analysed >= 0:
        q[b] += grew_accepted
        q[b + 1] += grew_analysed
    elif not last:
        # the first tick of this segment: what was counted before it is the
        # current hour's (the counters started with the segment)
        q[b] += max(0, accepted)
        q[b + 1] += max(0, analysed)
    q[_LAST_ACCEPTED] = accepted
    q[_LAST_ANALYSED] = analysed


def read(q: MutableSequence[int], now: float) -> list[Hour]:
    """The last HOURS wall-clock hours up to the one of ``now``, oldest first.

    Hours after the last tick (no supervisor ticking) read as empty.
    """
    hour = int(now // 3600)
    last = q[_HOUR]
    out = []
    for h in range(hour - HOURS + 1, hour + 1):
        if last == 0 or h > last or h <= last - HOURS:
            accepted = analysed = 0
        else:
            b = _BUCKETS + 2 * (h % HOURS)
            accepted, analysed = q[b], q[b + 1]
        out.append(Hour(h * 3600.0, int(accepted), int(analysed)))
    return out


def window(hours: list[Hour], n: int) -> Window:
    """The sum of the last ``n`` of ``hours`` (as :func:`read` returns them)."""
    part = hours[-n:]
    return Window(sum(h.accepted for h in part), sum(h.analysed for h in part))
