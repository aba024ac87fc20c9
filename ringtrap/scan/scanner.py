"""What every scanner client gives the message work: one verdict, one error family.

A scanner is spamd (:mod:`ringtrap.scan.spamd`), rspamd, or a pool of either
spread over several hosts.  The worker and the processor see only
:class:`Scanner`: ``scan`` a message with its envelope and get a
:class:`ScanResult`, or ``ping`` to tell a slow message from a dead scanner.

Errors say whether retrying can help (``exc.retryable``): no connection, a
reset, a 0-byte or truncated reply and timeouts are retryable (the message
is given back, the worker backs off); an unparseable reply and an answer
that rejects the message are not (the message is recorded as an error).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from ringtrap.base.envelope import Envelope

__all__ = [
    "ScanConnectionError", "ScanError", "ScanProtocolError", "ScanResponseError",
    "ScanResult", "ScanTimeout", "Scanner", "Symbol",
]


class ScanError(Exception):
    """Base of every error a scanner client raises; ``retryable`` says if a retry may help."""

    retryable: bool = False
    # For a timeout: None = not judged yet (the worker PINGs to tell a slow
    # message from a dead scanner); True = it timed out on every host tried
    # while each answered PING (the message's doing); False = an outage.
    # A pool judges its own timeouts (ringtrap.scan.pool).
    alone: bool | None = None
    # True for a timeout: the connect or reply deadline, or the scanner's own
    # answer that it gave up on the message (spamd's EX_TIMEOUT)
    timeout: bool = False


class ScanConnectionError(ScanError):
    """No usable connection or no complete reply: refused, missing socket, reset, 0 bytes."""

    retryable = True


class ScanTimeout(ScanError):
    """The connect or reply deadline passed."""

    retryable = True
    timeout = True


class ScanProtocolError(ScanError):
    """The reply is not something the scanner sends."""

    retryable = False


class ScanResponseError(ScanError):
    """The scanner answered with an error status (``.code``, ``.text``)."""

    def __init__(self, code: int, text: str, *, retryable: bool = False) -> None:
        super().__init__(code, text)
        self.code = code
        self.text = text
        self.retryable = retryable

    def __str__(self) -> str:
        return f"scanner replied {self.code} {self.text}"


@dataclass(frozen=True, slots=True)
class Symbol:
    """One rule that hit, as a scanner that scores rules one by one reports it."""

    score: float
    options: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, object]:
        return {"score": self.score, "options": list(self.options)}


@dataclass(frozen=True, slots=True)
class ScanResult:
    """A scanner's verdict on one message.

    ``scanner`` is the kind ("spamd", "rspamd"), ``host`` the address that
    answered.  ``rules`` names every rule that hit; ``symbols`` adds each
    one's score and options where the scanner gives them (rspamd), and
    ``action`` is rspamd's advice ("reject", "add header", ...).
    """

    scanner: str
    host: str
    spam: bool
    score: float
    required: float
    rules: tuple[str, ...] = ()
    action: str | None = None
    symbols: Mapping[str, Symbol] = field(default_factory=dict)


class Scanner(Protocol):
    """The one face the message work sees of a scanner, or of a pool of them."""

    kind: str

    def scan(self, message: bytes | bytearray | memoryview,
             env: Envelope | None = None) -> ScanResult:
        """Score ``message`` (with its envelope, where the scanner uses it); raises ScanError."""
        ...

    def ping(self, timeout: float | None = None) -> None:
        """Raise a ScanError unless the scanner answers now."""
        ...
