"""The producer's memory of claims that block its puts.

A slot still CLAIMED from an earlier lap blocks the put at ``head``; once it
has blocked puts for ``SKIP_CLAIMS_OLDER_NS`` (a stuck scan) the producer
steps over it rather than block every later put (see :mod:`ringtrap.ring`).
Claimers write no clock: how long a claim has blocked is what this producer
has seen.
"""

from __future__ import annotations

import time

from ringtrap.base.states import SlotState
from ringtrap.store.segment import D_ATTEMPTS, D_OWNER, D_RELEASES, D_SEQ, DESC_WORDS, Segment

# a producer steps over at most this many slots still claimed from an earlier
# lap before calling the ring full
MAX_SKIP = 8
# ... and only over claims that have blocked puts this long (as the producer
# saw it; claimers write no clock): stepping over a claim leaves its
# slot empty for a whole lap once it is acked, so a scan that is merely in
# progress is waited for (the message spills); a stuck one is stepped over
SKIP_CLAIMS_OLDER_NS = 5_000_000_000

FREE, CLAIMED = int(SlotState.FREE), int(SlotState.CLAIMED)


class StuckClaims:
    """The claims that blocked this producer's puts, and since when."""

    def __init__(self, seg: Segment) -> None:
        self._q = seg.q
        self._states = seg.states
        self._descs_w = seg.descs_w
        self._slots = seg.slots
        # claims that blocked a put (see _key) -> when first seen
        self._seen: dict[tuple[int, ...], int] = {}

    def step_over(self, head: int) -> int:
        """The slot at ``head`` is taken: the next free sequence past claims
        stuck for long, or -1 (the ring is full).

        How long a claim has been stuck is what this producer has seen: the
        first put it blocked is remembered here, so claimers write no clock
        into the ring.  After a producer restart the clock starts again.
        """
        states = self._states
        seen = self._seen
        now = time.monotonic_ns()
        # Every claim in the run ahead starts its clock now, not when the one
        # before it has been stepped over: a run of stuck claims is stepped
        # over after one timeout, not one per claim.
        ages = []
        seq = head
        for _ in range(MAX_SKIP):
            idx = seq % self._slots
            if states[idx] != CLAIMED:
                break
            ages.append(now - seen.setdefault(self._key(idx), now))
            seq += 1
        if len(seen) > 4 * MAX_SKIP:
            self._forget_finished()
        for age in ages:
            if age < SKIP_CLAIMS_OLDER_NS:
                return -1  # a claim in progress: wait for it (the put spills)
            head += 1  # a stuck claim from an earlier lap: step over it
            if states[head % self._slots] == FREE:
                return head
        return -1

    def _key(self, idx: int) -> tuple[int, ...]:
        """What tells one claim of slot ``idx`` from another: a message given
        back (released or requeued) and taken again is a new claim."""
        q = self._q
        d = self._descs_w + idx * DESC_WORDS
        return (idx, int(q[d + D_SEQ]), int(q[d + D_OWNER]), int(q[d + D_ATTEMPTS]),
                int(q[d + D_RELEASES]))

    def _forget_finished(self) -> None:
        states = self._states
        for key in list(self._seen):
            idx = key[0]
            if states[idx] != CLAIMED or self._key(idx) != key:
                del self._seen[key]
