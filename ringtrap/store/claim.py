"""The one shape of a claimed message, whichever store it came from.

:meth:`ringtrap.ring.Ring.claim` and :meth:`ringtrap.overflow.Overflow.claim`
both return a :class:`StoreClaim`: the claimer reads it, then acks it (only
after its result is recorded), releases it (gives it back unprocessed) or
quarantines it, by the claim's own methods, without asking which store it
belongs to.  A claimer that dies holding one leaves it for the supervisor to
recover (the ring's recover, the overflow's recover_dead).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Protocol


class ClaimLost(Exception):
    """The claim is no longer this process's (the supervisor recovered it,
    judging the claimer dead); someone else processes the message."""


class PurgeResult(NamedTuple):
    """What a purge removed: messages and their bytes."""

    count: int
    bytes: int


class Quarantined(NamedTuple):
    """Where a quarantined message went.

    ``kept`` is False when the message alone is larger than the quarantine
    cap: it was dropped, and ``path`` is where it would have been.
    ``dropped`` is what older quarantined messages were removed to make room.
    """

    path: Path
    kept: bool
    dropped: PurgeResult


class QuarantineStore(Protocol):
    """Where a message whose own store keeps no quarantine is kept (the overflow's failed/)."""

    def quarantine_bytes(self, msgid: str, data: bytes, attempts: int,
                         reason: str) -> Quarantined: ...


class StoreClaim(Protocol):
    """A claimed message: what the claimer reads and the verbs that let go of it."""

    @property
    def msgid(self) -> str: ...

    @property
    def size(self) -> int: ...

    @property
    def attempts(self) -> int: ...

    @property
    def received(self) -> float:
        """Wall-clock seconds when the message was accepted."""
        ...

    @property
    def store(self) -> str:
        """Which store holds it, for records and logs: "ring" or "overflow"."""
        ...

    def read(self) -> bytes:
        """The whole message (FileNotFoundError if it was recovered meanwhile)."""
        ...

    def peek(self, n: int) -> bytes | None:
        """Its first ``n`` bytes, None if unreadable: enough for a record's head."""
        ...

    def ack(self) -> None:
        """Drop the processed message; only after its result is recorded.

        :class:`ClaimLost` if it is no longer this process's.
        """
        ...

    def release(self, *, count_attempt: bool = False) -> None:
        """Give it back unprocessed, attempts unchanged unless ``count_attempt``
        (the message itself failed, e.g. timed out the scanner).

        :class:`ClaimLost` if it is no longer this process's.
        """
        ...

    def quarantine(self, reason: str, into: QuarantineStore) -> Quarantined:
        """Keep it out of the flow for good, ``reason`` beside it, and let go of it.

        ``into`` keeps it if its own store has no quarantine.  :class:`ClaimLost`
        if it was lost before it could be moved.
        """
        ...
