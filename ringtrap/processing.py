"""Message work: turn one stored payload into one result record.

:class:`Processor` splits off the envelope line, reads a few headers, asks
spamd for a verdict and builds the record the worker writes to the results.
It knows nothing of queues: the caller claims, records and acknowledges.

Headers are read by a small parser of our own over the first 64 KiB only:
trap mail is hostile (binary garbage, thousands of headers, broken RFC 2047
words, charsets that do not exist), and the parser must be cheap and must
never raise.  Nothing here writes anything, so a process that dies in the
middle of :meth:`Processor.process` leaves nothing behind but the claim it
holds.
"""

from __future__ import annotations

import binascii
import datetime
import logging
import re
import time
from typing import Any

from ringtrap import envelope
from ringtrap.envelope import Envelope
from ringtrap.spamd import SpamdClient, SpamdError

log = logging.getLogger(__name__)

# Only this much of a message is searched for its header block.
HEADER_WINDOW = 64 * 1024
# A header block longer than this many fields is read no further.
MAX_HEADERS = 1000
# A decoded header value is cut to this many characters: records stay small.
MAX_VALUE_CHARS = 2048

# Record keys, in the order they are written.
RECORD_KEYS = (
    "id", "received", "size", "verdict", "reason", "score", "required", "rules",
    "from", "subject", "message_id", "scanned_ms", "attempts", "envelope",
)

VERDICTS = ("spam", "ham", "not_scanned", "error")

REASON_SPAMD_OFF = "spamd off"
REASON_OVER_LIMIT = "over scan limit"

_WANTED = {b"from": "from", b"subject": "subject", b"message-id": "message_id"}
# An RFC 2047 encoded word; a language tag (RFC 2231, "utf-8*en") is dropped.
_ENCODED_WORD = re.compile(rb"=\?([^?\s*]{1,64})(?:\*[^?\s]*)?\?([bBqQ])\?([^?\s]*)\?=")
_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/]")
_SPACE = re.compile(r"\s+")
# printable US-ASCII except the colon (RFC 5322 ftext)
_FIELD_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+")


class Processor:
    """Parses and scans messages; one instance per worker, no state between calls."""

    def __init__(self, *, spamd: SpamdClient | None, scan_limit_bytes: int) -> None:
        """``spamd`` None records every message unscanned ("spamd off")."""
        self.spamd = spamd
        self.scan_limit_bytes = scan_limit_bytes

    def process(self, msgid: str, payload: bytes, received: float, attempts: int) -> dict[str, Any]:
        """Build the result record of one stored payload.

        Raises a retryable :class:`~ringtrap.spamd.SpamdError` unchanged (the
        caller gives the message back and retries later); a non-retryable one
        is recorded as verdict "error" with the reason.  ``received`` is
        wall-clock seconds since the epoch.
        """
        env, message = split_payload(payload)
        size = message.nbytes
        headers = parse_headers(message[:HEADER_WINDOW])
        record: dict[str, Any] = {
            "id": msgid,
            "received": iso_utc(received),
            "size": size,
            "verdict": "not_scanned",
            "reason": None,
            "score": None,
            "required": None,
            "rules": [],
            "from": headers.get("from"),
            "subject": headers.get("subject"),
            "message_id": headers.get("message_id"),
            "scanned_ms": None,
            "attempts": attempts,
            "envelope": env.to_dict(),
        }
        if self.spamd is None:
            record["reason"] = REASON_SPAMD_OFF
            return record
        if size > self.scan_limit_bytes:
            record["reason"] = REASON_OVER_LIMIT
            return record
        started = time.monotonic()
        try:
            result = self.spamd.symbols(message)
        except SpamdError as exc:
            if exc.retryable:
                raise
            # spamd answered, so the time it took is still worth recording
            record["scanned_ms"] = _ms_since(started)
            record["verdict"] = "error"
            record["reason"] = f"spamd: {exc}"
            return record
        record["scanned_ms"] = _ms_since(started)
        record["verdict"] = "spam" if result.spam else "ham"
        record["score"] = result.score
        record["required"] = result.required
        record["rules"] = list(result.rules)
        return record


def split_payload(payload: bytes) -> tuple[Envelope, memoryview]:
    """The envelope and the message of a stored payload, without copying the message.

    A payload without a well-formed envelope line is taken whole as the
    message, with an empty envelope.
    """
    try:
        return envelope.unframe(payload)
    except (envelope.FrameError, RecursionError):
        # RecursionError: absurdly nested JSON after a forged "RTM1 " prefix
        return Envelope(), memoryview(payload)


def iso_utc(epoch: float) -> str:
    """``epoch`` seconds as ISO 8601 in UTC with its offset, to the microsecond."""
    when = datetime.datetime.fromtimestamp(epoch, tz=datetime.UTC)
    return when.isoformat(timespec="microseconds")


def _ms_since(started: float) -> float:
    return round((time.monotonic() - started) * 1000.0, 3)


def parse_headers(head: bytes | memoryview) -> dict[str, str]:
    """From, Subject and Message-ID (first of each) of a message's start, decoded.

    Keys are "from", "subject" and "message_id"; a header that is absent is
    absent from the dict.  Reads at most :data:`MAX_HEADERS` fields; never
    raises on any input.
    """
    data = bytes(head[:HEADER_WINDOW])
    # Cut at the blank line first so a large body is never split into lines.
    ends = [i for i in (data.find(b"\n\n"), data.find(b"\n\r\n")) if i >= 0]
    if ends:
        data = data[: min(ends) + 1]
    found: dict[str, list[bytes]] = {}
    current: list[bytes] | None = None  # the folded lines of a field we keep
    fields = 0
    for number, line in enumerate(data.split(b"\n")):
        line = line.removesuffix(b"\r")
        if not line:
            break
        if line[:1] in (b" ", b"\t"):
            if current is not None:
                current.append(line)
            continue
        name, colon, value = line.partition(b":")
        name = name.rstrip(b" \t")
        if not colon or _FIELD_NAME.fullmatch(name) is None:
            if number == 0 and line.startswith(b"From "):
                continue  # an mbox separator line
            break  # the body starts (or garbage: either way no more headers)
        fields += 1
        if fields > MAX_HEADERS:
            break
        key = _WANTED.get(name.lower())
        if key is None or key in found:
            current = None
            continue
        current = found[key] = [value]
    return {key: _clean(decode_words(b"".join(lines))) for key, lines in found.items()}


def _clean(text: str) -> str:
    return _SPACE.sub(" ", text).strip()[:MAX_VALUE_CHARS]


def decode_words(raw: bytes) -> str:
    """Decode a header value's RFC 2047 words; undecodable bytes become U+FFFD.

    Adjacent words of one charset are joined before decoding, so a character
    split across two words (common in bulk mail) survives; the whitespace
    between encoded words is dropped as RFC 2047 says.
    """
    parts: list[tuple[str | None, bytes]] = []  # (charset or None for raw text, bytes)
    pos = 0
    after_word = False
    for m in _ENCODED_WORD.finditer(raw):
        gap = raw[pos : m.start()]
        if gap and not (after_word and gap.isspace()):
            _add(parts, None, gap)
        charset = m[1].decode("ascii", "replace").lower()
        data = _unbase64(m[3]) if m[2] in b"bB" else binascii.a2b_qp(m[3], header=True)
        if data is None:
            _add(parts, None, m[0])
        else:
            _add(parts, charset, data)
        after_word = data is not None
        pos = m.end()
    if pos < len(raw):
        _add(parts, None, raw[pos:])
    return "".join(_text(charset, data) for charset, data in parts)


def _add(parts: list[tuple[str | None, bytes]], charset: str | None, data: bytes) -> None:
    if parts and parts[-1][0] == charset:
        parts[-1] = (charset, parts[-1][1] + data)
    else:
        parts.append((charset, data))


def _unbase64(text: bytes) -> bytes | None:
    text = _NOT_BASE64.sub(b"", text)
    if len(text) % 4 == 1:
        text = text[:-1]  # a lone trailing character carries no whole byte
    text += b"=" * (-len(text) % 4)
    try:
        return binascii.a2b_base64(text)
    except binascii.Error:
        return None


def _text(charset: str | None, data: bytes) -> str:
    if charset is None:
        # 8-bit header bytes are most often UTF-8 in current spam
        return data.decode("utf-8", "replace")
    try:
        return data.decode(charset, "replace")
    except (LookupError, ValueError, TypeError):
        # an unknown charset, a codec that is not a text encoding ("base64"),
        # or one that refuses errors="replace" ("idna")
        return data.decode("utf-8", "replace")
