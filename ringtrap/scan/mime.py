"""A bounded MIME walk over trap mail: header fields, parts, decoded bodies.

Trap mail is hostile: binary garbage, thousands of header fields, broken
RFC 2047 words, charsets that do not exist, boundaries that never close,
multiparts nested hundreds deep, base64 with junk in it.  The standard
library's ``email`` package copes with most of that, but it recurses once per
nesting level, builds an object per header and can take a long time over a
pathological input.  This module instead walks the message with explicit
limits on every dimension, never recurses in Python, never copies a body
before it is asked to decode one, and never raises on any input:

* only the first :data:`MAX_PARSE_BYTES` of a message are walked;
* a header block is read up to :data:`HEADER_WINDOW` bytes and
  :data:`MAX_HEADERS` fields;
* at most :data:`MAX_PARTS` parts, nested at most :data:`MAX_DEPTH` deep;
* a part decodes to at most the ``limit`` its caller passes;
  :func:`iter_full_body` streams one that runs past the walked window, in
  bounded pieces, for its size and hash.

What a limit cut short is noted in :attr:`Message.defects`; what cannot be
read as a message at all (empty, no header fields, nested deeper than
:data:`MAX_DEPTH`) gets :attr:`Message.unparseable`, a reason.  Nothing
here writes anything: a process that dies in the middle leaves nothing behind.
"""

from __future__ import annotations

import binascii
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

# Only this much of a message is walked; the rest is counted, not read.
MAX_PARSE_BYTES = 4 * 1024 * 1024
# Only this much of a header block is read.
HEADER_WINDOW = 64 * 1024
# A header block longer than this many fields is read no further.
MAX_HEADERS = 1000
# A walk stops adding parts after this many (multipart containers included).
MAX_PARTS = 256
# Multiparts and attached messages nested deeper than this are not opened.
MAX_DEPTH = 16
# At most this many distinct defects are kept per message.
MAX_DEFECTS = 20
# A decoded header value is cut to this many characters: records stay small.
MAX_VALUE_CHARS = 2048

# RFC 2047 encoded word; a language tag (RFC 2231, "utf-8*en") is dropped.
_ENCODED_WORD = re.compile(rb"=\?([^?\s*]{1,64})(?:\*[^?\s]*)?\?([bBqQ])\?([^?\s]*)\?=")
_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/]")
_SPACE = re.compile(r"\s+")
# printable US-ASCII except the colon (RFC 5322 ftext)
_FIELD_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+")
# one parameter of a structured field: name, then a quoted string or a token
_PARAM = re.compile(
    r';\s*([^\s=;"]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"?|([^;\s]*))', re.DOTALL
)
_RFC2231_INDEX = re.compile(r"(.+?)\*(\d{1,3})(\*?)$")
_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")
# A part past the walked window is streamed in pieces of about this size.
STREAM_CHUNK = 1024 * 1024


@dataclass(slots=True)
class Part:
    """One MIME part: its type, its names and its still-encoded body.

    ``body`` is a view into the message; :meth:`decoded` turns it into bytes
    according to the transfer encoding.  ``index`` is the part's position in
    the walk (0 is the message itself).
    """

    index: int
    depth: int
    content_type: str  # "type/subtype", lower case; "text/plain" when absent
    params: dict[str, str]
    disposition: str  # "attachment", "inline" or ""
    filename: str | None
    encoding: str  # Content-Transfer-Encoding, lower case; "" when absent
    body: memoryview
    is_container: bool = False  # multipart/* or message/rfc822: its children follow it
    _decoded: tuple[int, bytes] | None = None  # (limit, result) of the last decode
    offset: int = 0  # where the body starts in the whole message
    # the body runs past the walked window: ``body`` is only its start
    cut: bool = False
    # the delimiter line ("--boundary") of the nearest multipart around it; b"" if none
    closing: bytes = b""

    @property
    def maintype(self) -> str:
        return self.content_type.partition("/")[0]

    @property
    def is_text(self) -> bool:
        return self.maintype == "text" or self.content_type in ("", "text")

    @property
    def is_attachment(self) -> bool:
        """A leaf a recipient would see as a file rather than as the message's text."""
        if self.is_container:
            return False
        if self.disposition == "attachment" or self.filename:
            return True
        return not self.is_text

    def decoded(self, limit: int) -> bytes:
        """The body decoded per its transfer encoding, at most ``limit`` bytes; never raises."""
        # the virus check and the attachment hash both need it: decode once
        if self._decoded is None or self._decoded[0] != limit:
            self._decoded = (limit, decode_body(self.body, self.encoding, limit))
        return self._decoded[1]

    def text(self, limit: int) -> str:
        """The decoded body as text in its declared charset (UTF-8 fallback); never raises."""
        return to_text(self.params.get("charset"), self.decoded(limit))


@dataclass(slots=True)
class Message:
    """A walked message: its header fields, its parts and what was wrong with it."""

    headers: list[tuple[str, bytes]]  # (lower-case name, unfolded raw value), in order
    body: memoryview  # everything after the header block
    parts: list[Part] = field(default_factory=list)  # parts[0] is the message itself
    defects: list[str] = field(default_factory=list)
    unparseable: str | None = None  # why this is not a message, or None
    window: bytes = b""  # the walked start of the message (MAX_PARSE_BYTES), one copy
    data: memoryview = field(default_factory=lambda: memoryview(b""))  # the whole message

    def raw(self, name: str) -> bytes | None:
        """The first ``name`` field's raw value (``name`` in lower case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def get(self, name: str) -> str | None:
        """The first ``name`` field decoded and cleaned, or None when absent."""
        raw = self.raw(name)
        return None if raw is None else clean(decode_words(raw))

    def get_all(self, name: str) -> list[str]:
        """Every ``name`` field, decoded and cleaned, in order."""
        return [clean(decode_words(v)) for k, v in self.headers if k == name]

    @property
    def content_type(self) -> str:
        return self.parts[0].content_type if self.parts else "text/plain"

    @property
    def params(self) -> dict[str, str]:
        return self.parts[0].params if self.parts else {}


def parse(data: bytes | memoryview) -> Message:
    """Walk ``data`` (one message, no envelope line) within the module's limits.

    Never raises: an input that has no header block at all (binary garbage,
    a bare body) comes back with ``unparseable`` set and no parts.
    """
    view = memoryview(data)
    try:
        return _parse(view)
    except Exception as exc:  # a defect in the walk must never cost a worker
        msg = Message(headers=[], body=view)
        msg.unparseable = f"parser error: {type(exc).__name__}"
        return msg


def _parse(view: memoryview) -> Message:
    if view.nbytes == 0:
        return Message(headers=[], body=view, unparseable="empty message")
    # one copy of the walked window; every part is a range of it
    buf = bytes(view[:MAX_PARSE_BYTES])
    headers, offset, defects = parse_header_block(buf, 0, len(buf))
    msg = Message(headers=headers, body=view[offset:], defects=defects, window=buf, data=view)
    if not headers:
        msg.unparseable = "no header fields"
        return msg
    if view.nbytes > MAX_PARSE_BYTES:
        msg.defects.append(f"walked only the first {MAX_PARSE_BYTES} bytes")
    _walk(msg, buf, headers, offset)
    # the same complaint about every level of a deep nest says nothing new
    msg.defects = list(dict.fromkeys(msg.defects))[:MAX_DEFECTS]
    return msg


def _walk(msg: Message, buf: bytes, top_headers: list[tuple[str, bytes]], offset: int) -> None:
    """Fill ``msg.parts`` depth first with an explicit stack (no Python recursion)."""
    whole = memoryview(buf)
    # a range that reaches the window's end goes on in the rest of the message
    cut_at = len(buf) if msg.data.nbytes > len(buf) else -1
    # (headers, body start, body end, depth, default type, closing delimiter);
    # children are pushed in reverse so they come off in document order
    stack: list[tuple[list[tuple[str, bytes]], int, int, int, str, bytes]] = [
        (top_headers, offset, len(buf), 0, "text/plain", b"")
    ]
    while stack:
        headers, start, end, depth, default, closing = stack.pop()
        if len(msg.parts) >= MAX_PARTS:
            msg.defects.append(f"more than {MAX_PARTS} parts; the rest not walked")
            return
        part = _make_part(len(msg.parts), depth, headers, whole[start:end], default)
        part.offset, part.cut, part.closing = start, end == cut_at, closing
        msg.parts.append(part)
        if part.maintype == "multipart":
            if depth >= MAX_DEPTH:
                # no mailer nests this deep: the message is built to hurt parsers
                msg.unparseable = f"MIME nested deeper than {MAX_DEPTH} levels"
                continue
            boundary = part.params.get("boundary", "")
            if not boundary or len(boundary) > 200:
                msg.defects.append(f"part {part.index}: multipart without a usable boundary")
                continue
            part.is_container = True
            children = split_multipart(buf, start, end, boundary.encode("utf-8", "replace"),
                                       msg.defects)
            child_default = ("message/rfc822" if part.content_type == "multipart/digest"
                             else "text/plain")
            delim = b"--" + boundary.encode("utf-8", "replace")
            for c_start, c_end in reversed(children):
                c_headers, c_off, defects = parse_header_block(buf, c_start, c_end,
                                                               allow_empty=True)
                msg.defects.extend(defects)
                stack.append((c_headers, c_off, c_end, depth + 1, child_default, delim))
        elif part.content_type == "message/rfc822" and part.encoding in ("", "7bit", "8bit",
                                                                         "binary"):
            if depth >= MAX_DEPTH:
                msg.unparseable = f"MIME nested deeper than {MAX_DEPTH} levels"
                continue
            i_headers, i_off, defects = parse_header_block(buf, start, end)
            msg.defects.extend(defects)
            if i_headers:
                part.is_container = True
                stack.append((i_headers, i_off, end, depth + 1, "text/plain", closing))


def _make_part(index: int, depth: int, headers: list[tuple[str, bytes]], body: memoryview,
               default: str) -> Part:
    ctype, params = default, {}
    raw = _first(headers, "content-type")
    if raw is not None:
        # raw 8-bit in a parameter is UTF-8 in nearly all current mail
        value, params = parse_params(raw.decode("utf-8", "replace"))
        value = value.strip().lower()
        # "text" or garbage without a slash: RFC 2045 says treat as text/plain
        ctype = value if "/" in value and len(value) <= 255 else "text/plain"
    disposition, dparams = "", {}
    raw = _first(headers, "content-disposition")
    if raw is not None:
        value, dparams = parse_params(raw.decode("utf-8", "replace"))
        disposition = value.strip().lower()[:32]
    filename = dparams.get("filename") or params.get("name")
    if filename is not None:
        filename = _decode_name(filename)
    raw = _first(headers, "content-transfer-encoding")
    encoding = raw.decode("latin-1").strip().lower()[:32] if raw is not None else ""
    return Part(index, depth, ctype, params, disposition, filename, encoding, body)


def _decode_name(name: str) -> str | None:
    """A file name parameter, with RFC 2047 words decoded (many mailers still send them)."""
    if "=?" in name:
        name = decode_words(name.encode("utf-8", "replace"))
    return clean(name) or None


def _first(headers: list[tuple[str, bytes]], name: str) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


def parse_header_block(buf: bytes, start: int, end: int, *, allow_empty: bool = False
                       ) -> tuple[list[tuple[str, bytes]], int, list[str]]:
    """The header fields of ``buf[start:end]`` and the offset in ``buf`` where its body starts.

    Fields are (lower-case name, value with folding removed).  Reads at most
    :data:`HEADER_WINDOW` bytes and :data:`MAX_HEADERS` fields.  A line that
    is neither a field nor a continuation ends the block there (the body
    starts at that line).  ``allow_empty``: a MIME part may begin with its
    blank line (no fields at all), which is then skipped.  Never raises.
    """
    stop = min(end, start + HEADER_WINDOW)
    defects: list[str] = []
    fields: list[tuple[str, list[bytes]]] = []
    pos = start
    first = True
    while pos < stop:
        nl = buf.find(b"\n", pos, stop)
        line_end = stop if nl < 0 else nl + 1
        line = buf[pos:line_end].rstrip(b"\r\n")
        if not line:
            if fields or allow_empty:
                pos = line_end  # the blank line belongs to the header block
            break
        if line[:1] in (b" ", b"\t"):
            if not fields:
                break  # a continuation with nothing to continue: body text
            fields[-1][1].append(line)
            pos = line_end
            continue
        name, colon, value = line.partition(b":")
        name = name.rstrip(b" \t")
        if not colon or _FIELD_NAME.fullmatch(name) is None:
            if first and line.startswith(b"From "):
                pos, first = line_end, False
                continue  # an mbox separator line
            break
        first = False
        if len(fields) >= MAX_HEADERS:
            defects.append(f"more than {MAX_HEADERS} header fields; the rest read as body")
            break
        fields.append((name.decode("ascii").lower(), [value]))
        pos = line_end
    else:
        if stop < end:
            defects.append(f"header block longer than {HEADER_WINDOW} bytes")
    return [(n, b"".join(parts).strip()) for n, parts in fields], pos, defects


def split_multipart(buf: bytes, start: int, end: int, boundary: bytes,
                    defects: list[str]) -> list[tuple[int, int]]:
    """The (start, end) ranges in ``buf`` of the parts between ``--boundary`` lines.

    A missing close delimiter ends the last part at ``end``; a body without
    any delimiter yields no parts.  At most :data:`MAX_PARTS` ranges.
    """
    delim = b"--" + boundary
    lines: list[tuple[int, int, bool]] = []  # delimiter lines: (start, end, is close)
    pos = start
    while len(lines) <= MAX_PARTS:
        i = buf.find(delim, pos, end)
        if i < 0:
            break
        pos = i + len(delim)
        if i != start and buf[i - 1 : i] != b"\n":
            continue  # not at the start of a line
        close = buf[pos : pos + 2] == b"--"
        nl = buf.find(b"\n", pos, end)
        line_end = end if nl < 0 else nl + 1
        if buf[pos + 2 * close : line_end].strip():
            continue  # "--b1" is not a delimiter of b1 inside "--b10"
        lines.append((i, line_end, close))
        if close:
            break
        pos = line_end
    if not lines:
        defects.append(f"boundary {boundary[:70]!r} never found")
        return []
    ranges: list[tuple[int, int]] = []
    for n, (_, begin, close) in enumerate(lines):
        if close:
            break
        if n + 1 < len(lines):
            stop = lines[n + 1][0]
            # the line break before a delimiter belongs to the delimiter
            if buf[stop - 1 : stop] == b"\n":
                stop -= 1
                if buf[stop - 1 : stop] == b"\r":
                    stop -= 1
        else:
            defects.append(f"multipart {boundary[:70]!r} not closed")
            stop = end
        ranges.append((begin, max(begin, stop)))
    return ranges


def parse_params(value: str) -> tuple[str, dict[str, str]]:
    """Split a structured field (``type/sub; a=1; b="x y"``) into its value and parameters.

    Parameter names are lower case; the first of a name wins.  RFC 2231
    continuations (``name*0*=utf-8''a%20b``, ``name*1=c``) are joined and
    decoded.  Never raises.
    """
    value = value[:8192]
    main, _, rest = value.partition(";")
    params: dict[str, str] = {}
    pieces: dict[str, dict[int, tuple[str, bool]]] = {}
    for m in _PARAM.finditer(";" + rest):
        name = m[1].lower()
        raw = m[2] if m[2] is not None else m[3] or ""
        if m[2] is not None:
            raw = re.sub(r"\\(.)", r"\1", raw)
        idx = _RFC2231_INDEX.match(name)
        if idx is not None:
            pieces.setdefault(idx[1], {}).setdefault(int(idx[2]), (raw, bool(idx[3])))
        elif name.endswith("*"):
            pieces.setdefault(name[:-1], {}).setdefault(0, (raw, True))
        else:
            params.setdefault(name, raw)
        if len(params) + len(pieces) > 64:
            break
    for name, chunks in pieces.items():
        charset = ""
        out: list[bytes] = []
        for n in sorted(chunks)[:64]:
            text, encoded = chunks[n]
            if encoded:
                if n == sorted(chunks)[0]:
                    cs, q1, tail = text.partition("'")
                    if q1:
                        charset = cs
                        text = tail.partition("'")[2]
                out.append(_PERCENT.sub(lambda m: chr(int(m[1], 16)), text)
                           .encode("latin-1", "replace"))
            else:
                out.append(text.encode("latin-1", "replace"))
        params[name] = to_text(charset or None, b"".join(out))
    return main, params


def decode_body(body: bytes | memoryview, encoding: str, limit: int) -> bytes:
    """``body`` decoded per Content-Transfer-Encoding ``encoding``, at most ``limit`` bytes.

    Base64 ignores characters outside its alphabet and a broken tail;
    quoted-printable keeps what it cannot decode; anything else is returned
    as it is.  Never raises.
    """
    if encoding == "base64":
        # 4 input characters make 3 bytes: read no more input than the limit needs
        raw = bytes(body[: (limit // 3 + 2) * 4 + limit // 38 * 2 + 1024])
        return (_unbase64(raw) or b"")[:limit]
    if encoding == "quoted-printable":
        try:
            return binascii.a2b_qp(bytes(body[: limit * 3]))[:limit]
        except (binascii.Error, ValueError):
            return bytes(body[:limit])
    return bytes(body[:limit])


def iter_full_body(msg: Message, part: Part) -> Iterator[bytes] | None:
    """The whole decoded body of a ``part`` cut by the walk, in pieces; None if not streamable.

    The body ends where split_multipart would have ended it had the window
    been larger: at the line break before the next ``part.closing``
    delimiter line, or at the end of the message.  The pieces are decoded
    from :data:`STREAM_CHUNK`-sized slices of the message, so memory stays
    bounded whatever the size.  None: a quoted-printable line longer than a
    slice (it cannot be cut without changing what it decodes to) or a
    message that was not kept whole.
    """
    data = msg.data
    if not data.nbytes:
        return None
    end = data.nbytes
    if part.closing:
        line = re.compile(rb"\n" + re.escape(part.closing) + rb"(?:--)?[ \t\r\x0b\x0c]*(?:\n|\Z)")
        m = line.search(data, max(0, part.offset - 1))
        if m is not None:
            end = max(part.offset, m.start() - (data[m.start() - 1 : m.start()] == b"\r"))
    body = data[part.offset : end]
    if part.encoding == "base64":
        return _iter_base64(body)
    if part.encoding == "quoted-printable":
        return _iter_qp(body)
    return (bytes(body[i : i + STREAM_CHUNK]) for i in range(0, body.nbytes, STREAM_CHUNK))


def _iter_base64(body: memoryview) -> Iterator[bytes]:
    """What :func:`_unbase64` makes of ``body``, one slice at a time."""
    carry = b""
    for i in range(0, body.nbytes, STREAM_CHUNK):
        text = carry + _NOT_BASE64.sub(b"", body[i : i + STREAM_CHUNK])
        whole = len(text) - len(text) % 4
        carry = text[whole:]
        yield binascii.a2b_base64(text[:whole])
    if len(carry) % 4 != 1:  # a lone trailing character carries no whole byte
        yield binascii.a2b_base64(carry + b"=" * (-len(carry) % 4))


def _iter_qp(body: memoryview) -> Iterator[bytes] | None:
    """What ``binascii.a2b_qp`` makes of ``body``, decoded line-aligned slice by slice.

    After every line feed a2b_qp starts afresh (a soft break or an escape
    never spans one), so slices that end after one decode to the same bytes;
    None when a line is longer than a slice.
    """
    cuts = [0]
    while body.nbytes - cuts[-1] > STREAM_CHUNK:
        start = cuts[-1]
        nl = bytes(body[start : start + STREAM_CHUNK]).rfind(b"\n")
        if nl < 0:
            return None
        cuts.append(start + nl + 1)
    cuts.append(body.nbytes)
    return (binascii.a2b_qp(bytes(body[a:b])) for a, b in itertools.pairwise(cuts))


def clean(text: str) -> str:
    """Whitespace collapsed and the value cut to :data:`MAX_VALUE_CHARS`."""
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
    return "".join(to_text(charset, data) for charset, data in parts)


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


def to_text(charset: str | None, data: bytes) -> str:
    """``data`` decoded as ``charset``; UTF-8 with U+FFFD when absent or unusable."""
    if charset is None:
        # 8-bit header bytes are most often UTF-8 in current spam
        return data.decode("utf-8", "replace")
    try:
        return data.decode(charset.strip().strip('"')[:64], "replace")
    except (LookupError, ValueError, TypeError):
        # an unknown charset, a codec that is not a text encoding ("base64"),
        # or one that refuses errors="replace" ("idna")
        return data.decode("utf-8", "replace")
