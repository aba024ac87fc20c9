"""How a message and what the MTA told us about it share one stored payload.

Every payload the ingest stores, in the ring or the overflow, starts with one
line the ingest writes itself: ``RTM1 <json>\\n``, followed by the message
exactly as received.  The JSON object holds the envelope (sender, recipients,
client address and HELO, queue id) when the delivering side supplied one, and
is ``{}`` otherwise.  Because the ingest always writes this line, a line of
the same shape inside a message is never mistaken for it: the envelope cannot
be forged by the message.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

MAGIC = b"RTM1 "
# an envelope line longer than this is not one the ingest wrote
MAX_LINE = 64 * 1024
EMPTY_HEADER = MAGIC + b"{}\n"


@dataclass(frozen=True, slots=True)
class Envelope:
    """The MTA's view of a message; every field optional."""

    sender: str | None = None
    recipients: tuple[str, ...] = field(default_factory=tuple)
    client_address: str | None = None
    client_helo: str | None = None
    queue_id: str | None = None

    def is_empty(self) -> bool:
        return self == Envelope()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict without the fields that are unset."""
        d = asdict(self)
        d["recipients"] = list(self.recipients)
        return {k: v for k, v in d.items() if v not in (None, [])}


class FrameError(ValueError):
    """A stored payload does not start with an envelope line."""


def header(env: Envelope | None = None) -> bytes:
    """The first line of a stored payload for ``env`` (``None``: no envelope)."""
    if env is None or env.is_empty():
        return EMPTY_HEADER
    return MAGIC + json.dumps(env.to_dict(), separators=(",", ":")).encode() + b"\n"


def frame(message: bytes, env: Envelope | None = None) -> bytes:
    """Payload for ``message``: the envelope line, then the message."""
    return header(env) + message


def unframe(payload: bytes) -> tuple[Envelope, memoryview]:
    """Split a stored payload into its envelope and the message (a view, no copy)."""
    if not payload.startswith(MAGIC):
        raise FrameError("payload has no envelope line")
    end = payload.find(b"\n", 0, MAX_LINE)
    if end < 0:
        raise FrameError("envelope line not terminated")
    try:
        raw = json.loads(payload[len(MAGIC) : end])
    except ValueError as e:
        raise FrameError(f"envelope line is not JSON: {e}") from None
    if not isinstance(raw, dict):
        raise FrameError("envelope line is not a JSON object")
    rcpts = raw.get("recipients") or ()
    env = Envelope(
        sender=_str_or_none(raw.get("sender")),
        recipients=tuple(str(r) for r in rcpts) if isinstance(rcpts, list) else (),
        client_address=_str_or_none(raw.get("client_address")),
        client_helo=_str_or_none(raw.get("client_helo")),
        queue_id=_str_or_none(raw.get("queue_id")),
    )
    return env, memoryview(payload)[end + 1 :]


def _str_or_none(v: object) -> str | None:
    return None if v is None else str(v)
