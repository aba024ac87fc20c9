"""The ingest's store hook: limits, counting, and the choice of ring or overflow.

Two parts.  :class:`Store`, one per server, puts a payload into the ring or,
when the ring is full or the payload larger than a slot, into the overflow;
it holds the limits, the counters of the turn and the overflow's gate, and
answers a message that arrived whole (the raw socket's fast path) with
:meth:`Store.whole`.  :class:`Sink`, one per connection, is the
:class:`~ringtrap.intake.delivery.Sink` a protocol writes its messages to:
it buffers a message while it fits a ring slot, streams it to the overflow
once it does not, counts and drops it past ``max_message_bytes`` (so memory
stays flat and the stream stays in sync), and ends it with an
:class:`~ringtrap.intake.delivery.Outcome` that the protocol renders in its
own reply.  Every stored payload is the envelope line followed by the bytes
received.

Crash model: dying mid-message leaves a ring slot FILLING(owner) for the
supervisor to free, or a spill's tmp file that the overflow's recovery drops;
the client has had no reply, so the MTA retries.
"""

from __future__ import annotations

import logging
from enum import IntEnum

from ringtrap.base import envelope
from ringtrap.base.counters import C
from ringtrap.base.envelope import Envelope
from ringtrap.base.ids import new_id
from ringtrap.intake.delivery import REFUSAL_LINES, Outcome
from ringtrap.overflow import Overflow, OverflowFull, SpillWriter
from ringtrap.ring import PutResult, Ring

log = logging.getLogger(__name__)

# A full overflow (its cap, or its file system) stays "refusing" until spills
# have gone through for this long without a refusal: when space comes and goes
# by the page, refusals and successes alternate every few milliseconds.
RECOVER_AFTER = 10.0


class Gate(IntEnum):
    """A change :class:`OverflowGate` reports: the one thing worth a log line."""

    NONE = 0
    REFUSING = 1  # the first refusal of an episode
    ACCEPTING = 2  # the episode is over: spills have gone through for RECOVER_AFTER


class OverflowGate:
    """Whether the ingest is refusing for a full overflow, with hysteresis.

    :meth:`refused` and :meth:`spilled` report each outcome with the
    monotonic time; each returns :attr:`Gate.NONE` except at the two edges of
    an episode, so a caller logs one line when refusing starts and one when it
    is over, however the outcomes alternate in between.  Plain state in this
    process: nothing to recover if it dies.
    """

    __slots__ = ("episode_refusals", "hold", "last_refusal", "refusing", "since")

    def __init__(self, hold: float = RECOVER_AFTER) -> None:
        self.hold = hold
        self.refusing = False
        self.since = 0.0  # when the episode began
        self.last_refusal = 0.0
        self.episode_refusals = 0

    def refused(self, now: float) -> Gate:
        """A message was refused for a full overflow at ``now``."""
        self.last_refusal = now
        self.episode_refusals += 1
        if self.refusing:
            return Gate.NONE
        self.refusing = True
        self.since = now
        self.episode_refusals = 1
        return Gate.REFUSING

    def spilled(self, now: float) -> Gate:
        """A message went into the overflow at ``now``."""
        if not self.refusing or now - self.last_refusal < self.hold:
            return Gate.NONE
        self.refusing = False
        return Gate.ACCEPTING


class Stored(IntEnum):
    """Where :class:`Store` put a message."""

    RING = 0
    OVERFLOW = 1


# looked up once: an enum attribute costs about 0.1 us, paid per message
_RING, _OVERFLOW = Stored.RING, Stored.OVERFLOW
_PUT_OK = PutResult.OK
_STORED, _TOO_LARGE, _EMPTY = Outcome.STORED, Outcome.TOO_LARGE, Outcome.EMPTY
_OVERFLOW_FULL, _FAILED = Outcome.OVERFLOW_FULL, Outcome.FAILED
_HEADER = envelope.header(None)

# The ingest's counters are tallied per turn and added to the row once per turn.
_ACCEPTED_RING = int(C.ACCEPTED_RING)
_ACCEPTED_OVERFLOW = int(C.ACCEPTED_OVERFLOW)
_REFUSED_TOO_LARGE = int(C.REFUSED_TOO_LARGE)
_REFUSED_EMPTY = int(C.REFUSED_EMPTY)
_REFUSED_TEMP = int(C.REFUSED_TEMP)
_BYTES_IN = int(C.BYTES_IN)


class Store:
    """The narrow hook: ring first, the overflow when the ring is full or too small.

    Also the limits every connection's messages are held to and the counts of
    the turn (``tally``, indexed by counter, which the server adds to its row
    and clears); ``now`` is the server's monotonic time of the turn.  Holds
    no per-message state: each connection's :class:`Sink` does.
    """

    __slots__ = (
        "_put", "accepted", "debug", "gate", "max_message_bytes", "now", "overflow", "ring",
        "slot_bytes", "tally",
    )

    def __init__(
        self, ring: Ring, overflow: Overflow, max_message_bytes: int, tally: list[int]
    ) -> None:
        self.ring = ring
        self.overflow = overflow
        self.slot_bytes = ring.slot_bytes
        self._put = ring.put
        self.max_message_bytes = max_message_bytes
        self.tally = tally
        self.now = 0.0
        self.gate = OverflowGate()
        self.debug = log.isEnabledFor(logging.DEBUG)
        self.accepted = 0  # messages stored

    def put(self, msgid: str, payload: bytes | bytearray | memoryview) -> Stored:
        """Store a whole payload; raises OverflowFull (or OSError) if it cannot.

        Never waits: a full ring spills.  Dying midway leaves a FILLING slot or
        a tmp file, both recovered, and the client without a reply.
        """
        if self._put(msgid, payload) is _PUT_OK:
            return _RING
        self.overflow.spill(msgid, payload)  # type: ignore[arg-type]  # any buffer will do
        return _OVERFLOW

    def open_stream(self, msgid: str, head: bytes | bytearray | memoryview) -> SpillWriter:
        """Start a message too big for a slot in the overflow, ``head`` written first.

        Raises OverflowFull (the writer is then already aborted) or OSError.
        Dying before commit leaves a tmp file that the overflow's recovery drops.
        """
        writer = self.overflow.spill_stream(msgid)
        try:
            writer.write(head)  # type: ignore[arg-type]
        except BaseException:
            writer.abort()
            raise
        return writer

    def whole(self, msgid: str, payload: memoryview, size: int) -> Outcome:
        """Store (unless refused) and count a message of ``size`` bytes that arrived whole.

        ``payload`` is the envelope line and the message; an error other than
        a store's refusal propagates, with nothing counted but the bytes.
        """
        self.tally[_BYTES_IN] += size
        if not size:
            return self.refused(msgid, size, _EMPTY)
        if size > self.max_message_bytes:
            return self.refused(msgid, size, _TOO_LARGE)
        try:
            where = self.put(msgid, payload)
        except (OverflowFull, OSError) as e:
            return self.refused(msgid, size, self.store_error(msgid, e))
        return self.stored(msgid, size, where)

    def stored(self, msgid: str, size: int, where: Stored) -> Outcome:
        """Count a stored message."""
        self.accepted += 1
        if where is _RING:
            self.tally[_ACCEPTED_RING] += 1
        else:
            self.tally[_ACCEPTED_OVERFLOW] += 1
            gate = self.gate
            if gate.refusing and gate.spilled(self.now) is Gate.ACCEPTING:
                log.warning("overflow accepts messages again (%d refused over %.0f s)",
                            gate.episode_refusals, self.now - gate.since)
        if self.debug:
            log.debug("%s: accepted into the %s, %d bytes", msgid, where.name.lower(), size)
        return _STORED

    def refused(self, msgid: str, size: int, outcome: Outcome) -> Outcome:
        """Count and log a message refused at its end; returns ``outcome``."""
        tally = self.tally
        if outcome is _TOO_LARGE:
            tally[_REFUSED_TOO_LARGE] += 1
            log.info(
                "%s: refused: %d bytes over the limit of %d", msgid, size, self.max_message_bytes
            )
        elif outcome is _EMPTY:
            tally[_REFUSED_EMPTY] += 1
            log.info("%s: refused: empty message", msgid)
        else:
            tally[_REFUSED_TEMP] += 1
            log.info("%s: %s (%d bytes read)", msgid, REFUSAL_LINES[outcome][:-1].decode(), size)
        return outcome

    def store_error(self, msgid: str, e: OverflowFull | OSError) -> Outcome:
        """What a failure to store a message answers; logs the first of an episode."""
        if isinstance(e, OverflowFull):
            if self.gate.refused(self.now) is Gate.REFUSING:
                log.warning("refusing messages with TEMPFAIL: %s", e)
            return _OVERFLOW_FULL
        log.error("%s: cannot store: %s", msgid, e)
        return _FAILED


class Sink:
    """One connection's end of the :class:`Store`: its message in progress, if any.

    Implements :class:`ringtrap.intake.delivery.Sink` for the connection's
    protocol.  ``started`` is when the connection opened or its last message
    ended: the total deadline counts from there, so a client trickling
    commands is bounded as one trickling data.
    """

    __slots__ = ("buf", "msgid", "refusal", "size", "started", "store", "writer")

    def __init__(self, store: Store) -> None:
        self.store = store
        self.msgid = ""  # the message in progress ("": none)
        self.size = 0  # its bytes received (the envelope line not counted)
        self.buf: bytearray | None = None
        self.writer: SpillWriter | None = None
        # the outcome already decided for a message being read to its end unstored
        self.refusal: Outcome | None = None
        self.started = store.now

    def begin(self, env: Envelope | None, msgid: str = "") -> str:
        """Start a message with ``env`` (None: the raw socket's), ``msgid`` or a new id."""
        self.msgid = msgid = msgid or new_id()
        self.size = 0
        self.buf = bytearray(_HEADER if env is None else envelope.header(env))
        self.writer = None
        self.refusal = None
        return msgid

    def write(self, chunk: bytes | memoryview) -> None:
        """Buffer, stream or drop one chunk of the message."""
        size = self.size + len(chunk)
        self.size = size
        store = self.store
        if self.refusal is not None:
            if size > store.max_message_bytes:
                self.refusal = _TOO_LARGE  # permanent beats temporary
        elif size > store.max_message_bytes:
            # From here on the bytes are counted and dropped: memory stays flat.
            self._discard()
            self.refusal = _TOO_LARGE
        elif self.writer is not None:
            try:
                self.writer.write(chunk)  # type: ignore[arg-type]
            except (OverflowFull, OSError) as e:
                self._failed(e)
        else:
            buf = self.buf
            assert buf is not None
            buf += chunk
            if len(buf) > store.slot_bytes:
                self.buf = None
                try:
                    self.writer = store.open_stream(self.msgid, buf)
                except (OverflowFull, OSError) as e:
                    self._failed(e)

    def end(self) -> Outcome:
        """Store the message received whole (unless refused); count it."""
        msgid, size, store = self.msgid, self.size, self.store
        self.msgid = ""
        self.started = store.now
        store.tally[_BYTES_IN] += size
        if self.refusal is not None:
            return store.refused(msgid, size, self.refusal)
        if not size:
            self.buf = None
            return store.refused(msgid, size, _EMPTY)
        try:
            if self.writer is not None:
                self.writer.commit()
                self.writer = None
                where = _OVERFLOW
            else:
                assert self.buf is not None
                where = store.put(msgid, self.buf)
                self.buf = None
        except (OverflowFull, OSError) as e:
            self._failed(e)
            return store.refused(msgid, size, self.refusal or _FAILED)
        return store.stored(msgid, size, where)

    def abort(self) -> None:
        """Drop the message in progress, counted as refused for now (TEMPFAIL)."""
        if self.msgid:
            msgid = self.msgid
            self.drop()
            self.store.tally[_REFUSED_TEMP] += 1
            log.info("%s: dropped unfinished after %d bytes", msgid, self.size)

    def drop(self) -> None:
        """Drop the message in progress, counting only its bytes (no refusal was sent)."""
        if self.msgid:
            self.msgid = ""
            self.started = self.store.now
            self._discard()
            self.store.tally[_BYTES_IN] += self.size

    def unread(self, n: int) -> None:
        """``n`` more bytes of the message in progress were read and dropped unseen."""
        if self.msgid:
            self.size += n

    def _failed(self, e: OverflowFull | OSError) -> None:
        """Storing became impossible: read the rest unstored, answer TEMPFAIL."""
        self._discard()
        self.refusal = self.store.store_error(self.msgid, e)

    def _discard(self) -> None:
        self.buf = None
        if self.writer is not None:
            self.writer.abort()
            self.writer = None
