"""Names of the per-process counters kept in the ring's process table.

Each process adds only to its own row, so counting needs no lock; totals are
the sum over rows plus the header's ``retired`` block, into which the
supervisor folds the row of a process that has exited.  Values are stored in
shared memory: never renumber, only append (up to ``NCOUNTERS``).
"""

from __future__ import annotations

from enum import IntEnum

from ringtrap.base.states import Verdict

NCOUNTERS = 128


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
    VERDICT_NOT_SCANNED = 19  # spamd off (before VERDICT_OVERSIZE: also over the limit)
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
    # supervisor: restarts by cause (RESTARTS stays their sum)
    RESTARTS_CRASHED = 29  # died unasked
    RESTARTS_TOO_FAST = 30  # died before its boot finished (restarted after a backoff)
    RESTARTS_HUNG = 31  # killed for a stalled heartbeat
    # workers: scans by time waited on spamd, one counter per bucket of
    # SCAN_BUCKETS (not cumulative; the last bucket is everything slower)
    SCAN_BUCKET_0 = 32
    SCAN_BUCKET_1 = 33
    SCAN_BUCKET_2 = 34
    SCAN_BUCKET_3 = 35
    SCAN_BUCKET_4 = 36
    SCAN_BUCKET_5 = 37
    SCAN_BUCKET_6 = 38
    SCAN_BUCKET_7 = 39
    SCAN_BUCKET_8 = 40
    SCAN_BUCKET_9 = 41
    SCAN_BUCKET_10 = 42
    SCAN_BUCKET_11 = 43
    SCAN_BUCKET_12 = 44  # slower than the last bound
    VERDICT_ERROR = 45  # recorded with verdict "error" (spamd answered with an error)
    # workers: verdicts of the prefilters and the dedupe (ringtrap.base.states.Verdict)
    VERDICT_BOUNCE = 46
    VERDICT_AUTOREPLY = 47
    VERDICT_VIRUS = 48
    VERDICT_OVERSIZE = 49  # over workers.scan_limit_bytes
    VERDICT_UNPARSEABLE = 50  # no longer given: a parse failure is scanned (record parse_error)
    VERDICT_DUPLICATE = 51  # a campaign repeat recorded from its first scan, not scanned
    DEDUPE_HITS = 52  # repeats recognised (scanned again or not)
    ARCHIVED = 53  # messages written to the Maildir archive
    ARCHIVE_ERRORS = 54  # messages the archive could not take (recorded all the same)
    # the slower stage (learning, reporting) and the scan workers' hand-off to it
    STAGE_HANDED_ON = 55  # spilled to the stage's directory by a scan worker
    STAGE_DROPPED = 56  # not handed on: the stage's backlog was at stage.max_bytes
    STAGE_LEARNED = 57  # TELL Set: local answered DidSet: local (see STAGE_NOT_LEARNED)
    STAGE_REPORTED = 58  # TELL Set: remote answered
    STAGE_ERRORS = 59  # a stage call failed for good (given up, not retried)
    # quarantine (failed/) has a cap and a retention of its own
    QUARANTINE_DROPPED = 60  # oldest quarantined messages dropped to stay under the cap
    PURGED_QUARANTINED = 61  # quarantined messages dropped by a purge
    STAGE_NOT_LEARNED = 62  # TELL Set: local answered without DidSet: learned nothing
    # supervisor: live processes killed for holding the ring lock while
    # stopped or stuck (their lock is then broken and counted in LOCK_BREAKS)
    LOCK_HOLDER_KILLS = 63
    # scanner pools (ringtrap.scan.pool); per-host numbers are in the host table
    POOL_FAILOVERS = 64  # a message moved on to the next host after a retryable failure
    POOL_BREAKER_OPENS = 65  # a host's breaker opened (in one worker)
    POOL_EXHAUSTED = 66  # no host could take a message: every one open or failed
    POOL_PROBES = 67  # half-open hosts PINGed
    POOL_REVIVED = 68  # half-open hosts that answered and rejoined
    # 80-95 the analysed fraction: workers
    ANALYSED = 80  # scanned, or recorded from a campaign repeat without a scan
    ANALYSED_AGE_US = 81  # summed over ANALYSED: microseconds from accepted to taken up
    # 69-79: scanner pools; 82-95: the analysed fraction; 96-103: rspamd;
    # 104-127: the fleet.  Each block is appended to in order.
    # the fleet: the forwarder (ringtrap.work.forward) and the hand-off of raw messages to it
    FORWARDED = 104  # records published and acknowledged by JetStream
    FORWARD_DUPLICATES = 105  # re-sent records the stream recognised by Nats-Msg-Id
    FORWARD_DROPPED = 106  # never to be forwarded: no record, over max_payload, raw not handed on
    FORWARD_BACKLOG = 107  # a gauge: record lines not yet acknowledged (see BacklogGauge)
    FORWARD_ERRORS = 108  # failed connects and batches (the forwarder backed off)
    FORWARD_RAW_HANDED_ON = 109  # raw messages a scan worker put in the forwarder's spill dir
    FORWARD_RAW_FORWARDED = 110  # raw messages published and acknowledged
    FORWARD_RAW_TOO_LARGE = 111  # raw messages over forward.raw_max_bytes, not handed on


# Counters that are levels, not counts: the supervisor clears them when it
# retires a row instead of folding them into the totals, so a total is the
# sum over the live processes only.
GAUGES: frozenset[int] = frozenset({C.FORWARD_BACKLOG})

# The counter of each verdict: VERDICT_<name>, so a verdict without one fails here.
VERDICT_COUNTERS: dict[Verdict, C] = {
    v: C.QUARANTINED if v is Verdict.QUARANTINED else C[f"VERDICT_{v.name}"] for v in Verdict
}

# Upper bounds in seconds of the scan-time buckets SCAN_BUCKET_0..11; a scan
# of exactly a bound counts in that bucket.  Stored counts are per bucket, so
# these bounds may never change either: append a new counter block instead.
SCAN_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)


def scan_bucket(seconds: float) -> C:
    """The counter of the scan-time bucket that ``seconds`` falls in."""
    for i, bound in enumerate(SCAN_BUCKETS):
        if seconds <= bound:
            return C(C.SCAN_BUCKET_0 + i)
    return C.SCAN_BUCKET_12
