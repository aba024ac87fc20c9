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
import re
from dataclasses import asdict, dataclass, field
from typing import Any

MAGIC = b"RTM1 "
# an envelope line longer than this is not one the ingest wrote
MAX_LINE = 64 * 1024
EMPTY_HEADER = MAGIC + b"{}\n"
# C0 controls and DEL: no envelope value the trap keeps may hold one raw
_CONTROL = re.compile("[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class Envelope:
    """The MTA's view of a message; every field optional."""

    sender: str | None = None
    recipients: tuple[str, ...] = field(default_factory=tuple)
    client_address: str | None = None
    client_helo: str | None = None
    queue_id: str | None = None
    # recipients the MTA named that did not fit the envelope and were left out
    recipients_dropped: int = 0

    def is_empty(self) -> bool:
        return self == Envelope()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict without the fields that are unset."""
        d = asdict(self)
        d["recipients"] = list(self.recipients)
        if not self.recipients_dropped:
            del d["recipients_dropped"]
        return {k: v for k, v in d.items() if v is not None and v != []}


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
        recipients_dropped=_count(raw.get("recipients_dropped")),
    )
    return env, memoryview(payload)[end + 1 :]


def escape_controls(value: str) -> str:
    """``value`` with each C0 control and DEL written as ``\\xNN``."""
    if _CONTROL.search(value) is None:
        return value
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", value)


def has_controls(value: str) -> bool:
    """True if ``value`` holds a C0 control or DEL."""
    return _CONTROL.search(value) is not None


def relay_address(raw: str | None) -> str | None:
    """The IP address ``raw`` names, in canonical form; None if it names none.

    Takes what MTAs write (``192.0.2.7``, ``2001:db8::7``, ``IPv6:2001:db8::7``,
    ``[192.0.2.7]``); anything else (``unknown``, a host name, garbage) is None.
    """
    if not raw:
        return None
    import ipaddress  # only the worker needs it, not the ingest's hot path

    text = raw.strip()
    if text[:5].upper() == "IPV6:":
        text = text[5:]
    if text[:1] == "[" and text[-1:] == "]":
        text = text[1:-1]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _str_or_none(v: object) -> str | None:
    return None if v is None else str(v)


def _count(v: object) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else 0
