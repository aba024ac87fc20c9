"""What a trap operator mines from a message: addresses, relay, URLs, attachments, hashes.

Every function takes a walked :class:`~ringtrap.scan.mime.Message` (or plain
values), returns JSON-ready data, caps what it returns and never raises on
any input.  Registered domains come from the Public Suffix List shipped in
the ``publicsuffixlist`` package: it works offline (the list is inside the
package, refreshed with each release), so a worker never reaches out to the
network for it; the list is loaded on first use (about 80 ms), once per
process.  The private section of the list counts too: for a URL at
``spammer.blogspot.com`` the party to report is ``spammer.blogspot.com``,
not Google.

Nothing here writes anything.
"""

from __future__ import annotations

import functools
import hashlib
import html
import ipaddress
import re
import urllib.parse
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from ringtrap.scan.mime import MAX_PARSE_BYTES, Message, Part, iter_full_body

# At most this many URLs, URL domains and attachments are recorded per message.
MAX_URLS = 100
MAX_DOMAINS = 50
MAX_ATTACHMENTS = 50
MAX_URL_CHARS = 512
# Only this much decoded text of each text part is searched for URLs and
# fingerprinted (SpamAssassin itself reads the first 50 KB of a text part).
TEXT_LIMIT = 256 * 1024
# An attachment is decoded (for its size and hash) up to this many bytes.
ATTACHMENT_LIMIT = MAX_PARSE_BYTES
# Zip archives: at most this many members are looked at, each read only as
# far as its first bytes, so a zip bomb costs nothing.
MAX_ZIP_MEMBERS = 200
ZIP_SNIFF_BYTES = 64
MAX_ZIP_DEPTH = 2

_URL = re.compile(r"(?i)\b(?:https?://|www\.)[^\s<>\"'`{}|\\^\[\]]{1,2048}")
_URL_TRAILER = ".,;:!?)'\""
# A tag is "<", at most this many characters other than ">", then ">".
_MAX_TAG = 4096
# A script or style element is skipped whole when it closes within this many characters.
_MAX_SKIP = 65536
# The element names are matched in ASCII only: a long s (U+017F) for "s" opens nothing.
_SKIP_OPEN = re.compile(r"(?is)<((?a:script|style))\b")
_SKIP_CLOSE = {name: re.compile(rf"(?is)</(?a:{name})\s*>") for name in ("script", "style")}
_NOT_WORD = re.compile(r"[\W\d_]+")
_DIGIT = re.compile(r"\d")
# a decimal character reference too long for int() (Python's 4300-digit limit)
_HUGE_DECIMAL_REF = re.compile(r"&#[0-9]{1000,};?")
_HOST = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,62}\.)*[a-z0-9-]{1,63}")
_ADDR_IN_ANGLES = re.compile(r"<([^<>]*)>")
_RECEIVED_IP = re.compile(r"\[(?:IPv6:)?([0-9A-Fa-f:.]{2,45})\]")
_HELO_EXIM = re.compile(r"\bhelo=([^\s)\]]{1,255})", re.IGNORECASE)
# a fingerprint word longer than this is a token, a hash or a run-together URL
_MAX_WORD = 25
# a normalized text shorter than this says too little to group messages by
MIN_FINGERPRINT_CHARS = 20

# Executable file types a trap never needs to scan (Windows and scripts).
EXECUTABLE_EXTENSIONS = frozenset({
    "exe", "scr", "pif", "com", "bat", "cmd", "vbs", "vbe", "js", "jse", "wsf", "wsh",
    "hta", "cpl", "msi", "msp", "jar", "lnk", "ps1", "reg", "dll", "sys", "ocx", "application",
    "gadget", "inf", "scf", "iso", "img", "vhd",
})
ARCHIVE_EXTENSIONS = frozenset({"zip"})
EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


@functools.cache
def _psl() -> Any:
    from publicsuffixlist import PublicSuffixList

    return PublicSuffixList()


def preload() -> None:
    """Load the Public Suffix List now (before a privilege drop and before fork)."""
    _psl()


@functools.lru_cache(maxsize=4096)
def registered_domain(host: str) -> str | None:
    """The registrable domain of ``host`` ("a.b.example.co.uk" -> "example.co.uk").

    An IP literal is returned as it is; a public suffix alone, a single label
    or something that is not a host name gives None.
    """
    host = host.strip().strip(".").lower()
    if not host or len(host) > 253:
        return None
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        pass
    try:
        host = host.encode("idna").decode("ascii") if not host.isascii() else host
    except UnicodeError:
        return None
    if "." not in host or _HOST.fullmatch(host) is None:
        return None
    try:
        return _psl().privatesuffix(host)  # type: ignore[no-any-return]
    except Exception:
        return None


def address_domain(value: str | None) -> str | None:
    """The domain of the (last) address in a From/Reply-To/Return-Path value, lower case."""
    if not value:
        return None
    angles = _ADDR_IN_ANGLES.findall(value)
    addr = angles[-1] if angles else value
    local, at, domain = addr.strip().rpartition("@")
    if not at or not local:
        return None
    domain = domain.strip().strip(".>]").lower()
    if not domain or len(domain) > 253 or any(c.isspace() or c in "<>@,;\"" for c in domain):
        return None
    return domain


def address_local(value: str | None) -> str | None:
    """The local part of the (last) address in an address field, lower case."""
    if not value:
        return None
    angles = _ADDR_IN_ANGLES.findall(value)
    addr = angles[-1] if angles else value
    local, at, _ = addr.strip().rpartition("@")
    if not at:
        return None
    return local.strip().strip('"').lower()[-64:] or None


def _in_any(ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
            networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    return any(ip.version == n.version and ip in n for n in networks)


def first_untrusted_relay(
    msg: Message, trusted: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network] = ()
) -> tuple[str | None, str | None]:
    """(IP, HELO) of the first Received hop, from the top, whose client is not trusted.

    The loopback networks are always trusted; ``trusted`` adds the trap's own
    relays.  Hops that name no client IP (local pickup) are skipped.
    """
    nets = list(trusted)
    for raw in (v for k, v in msg.headers if k == "received"):
        text = raw.decode("latin-1", "replace")[:2048]
        low = text.lower()
        if not low.startswith("from "):
            continue
        by = low.find(" by ")
        clause = text[5 : by if by > 0 else len(text)]
        m = _RECEIVED_IP.search(clause)
        if m is None:
            continue
        try:
            ip = ipaddress.ip_address(m[1])
        except ValueError:
            continue
        if ip.is_loopback or _in_any(ip, nets):
            continue
        helo_match = _HELO_EXIM.search(clause)
        if helo_match is not None:
            helo = helo_match[1]
        else:
            helo = clause.split(None, 1)[0] if clause.split() else ""
            if helo.startswith("("):
                helo = ""
        return str(ip), (helo.strip("()") or None)
    return None, None


def text_parts(msg: Message) -> list[tuple[Part, str]]:
    """(part, decoded text) of every text/plain and text/html leaf, HTML unescaped."""
    out = []
    for part in msg.parts:
        if part.is_container or part.is_attachment:
            continue
        if part.content_type not in ("text/plain", "text/html"):
            continue
        text = part.text(TEXT_LIMIT)
        if part.content_type == "text/html":
            text = unescape(text)
        out.append((part, text))
    return out


def unescape(text: str) -> str:
    """``text`` with HTML character references replaced (:func:`html.unescape`); never raises."""
    try:
        return html.unescape(text)
    except ValueError:
        # int() refuses a decimal reference of more than 4300 digits; such a
        # reference names no character anyway
        return html.unescape(_HUGE_DECIMAL_REF.sub("\ufffd", text))


def urls(texts: Iterable[str]) -> list[str]:
    """Distinct URLs in ``texts`` in order of appearance, at most :data:`MAX_URLS`."""
    seen: dict[str, None] = {}
    for text in texts:
        for m in _URL.finditer(text):
            url = m[0].rstrip(_URL_TRAILER)[:MAX_URL_CHARS]
            if url.lower().startswith("www."):
                url = "http://" + url
            if len(url) > len("http://x") and url not in seen:
                seen[url] = None
                if len(seen) >= MAX_URLS:
                    return list(seen)
    return list(seen)


def url_host(url: str) -> str | None:
    """The host of ``url``, lower case, without port or user info; None if unusable."""
    try:
        host = urllib.parse.urlsplit(url).hostname
    except ValueError:
        return None
    return host.lower() if host else None


def url_domains(found: Iterable[str]) -> list[str]:
    """Distinct registered domains of ``found`` URLs, at most :data:`MAX_DOMAINS`."""
    seen: dict[str, None] = {}
    for url in found:
        host = url_host(url)
        domain = registered_domain(host) if host else None
        if domain and domain not in seen:
            seen[domain] = None
            if len(seen) >= MAX_DOMAINS:
                break
    return list(seen)


@dataclass(frozen=True, slots=True)
class Attachment:
    """One attached file as recorded, with what the virus check needs.

    ``size`` and ``sha256`` are None when the file could not be read whole
    (``truncated``): a prefix's hash would name a file nobody sent.
    """

    name: str | None
    type: str
    size: int | None
    sha256: str | None
    executable: str | None  # why it counts as an executable, or None

    @property
    def truncated(self) -> bool:
        return self.sha256 is None

    def to_dict(self) -> dict[str, Any]:
        if self.truncated:
            return {"name": self.name, "type": self.type, "truncated": True}
        return {"name": self.name, "type": self.type, "size": self.size, "sha256": self.sha256}


def attachments(msg: Message) -> list[Attachment]:
    """Every attachment leaf (at most :data:`MAX_ATTACHMENTS`), decoded, hashed and sniffed.

    One that runs past the walked window is hashed by streaming the rest of
    the message (bounded memory); the virus check sniffs its walked start.
    """
    out = []
    for part in msg.parts:
        if not part.is_attachment:
            continue
        data = part.decoded(ATTACHMENT_LIMIT)
        size: int | None = len(data)
        digest: str | None = hashlib.sha256(data).hexdigest()
        if part.cut:
            size, digest = _stream_hash(msg, part)
        out.append(Attachment(
            name=part.filename, type=part.content_type, size=size, sha256=digest,
            executable=executable_reason(part.filename, data),
        ))
        if len(out) >= MAX_ATTACHMENTS:
            break
    return out


def _stream_hash(msg: Message, part: Part) -> tuple[int | None, str | None]:
    """(size, SHA-256) of a part's whole decoded body, (None, None) if it cannot be streamed."""
    pieces = iter_full_body(msg, part)
    if pieces is None:
        return None, None
    h = hashlib.sha256()
    size = 0
    for piece in pieces:
        h.update(piece)
        size += len(piece)
    return size, h.hexdigest()


def _extension(name: str | None) -> str:
    if not name:
        return ""
    return name.rstrip(" .").rpartition(".")[2].lower() if "." in name else ""


def is_executable_content(head: bytes) -> str | None:
    """Why the first bytes of a file make it an executable (PE "MZ", ELF), or None."""
    if head[:2] == b"MZ":
        return "Windows executable (MZ header)"
    if head[:4] == b"\x7fELF":
        return "ELF executable"
    return None


def executable_reason(name: str | None, data: bytes, depth: int = 0) -> str | None:
    """Why a file called ``name`` with contents ``data`` is an executable, or None.

    Looks at the extension, at the first bytes, and into zip archives (names
    and first bytes of members, nested up to :data:`MAX_ZIP_DEPTH`).
    """
    ext = _extension(name)
    if ext in EXECUTABLE_EXTENSIONS:
        return f"executable attachment {name!r}"
    why = is_executable_content(data[:ZIP_SNIFF_BYTES])
    if why:
        return f"{why} in {name!r}" if name else why
    if data[:4] == b"PK\x03\x04" and depth < MAX_ZIP_DEPTH:
        return _zip_executable(name, data, depth)
    return None


def _zip_executable(name: str | None, data: bytes, depth: int) -> str | None:
    # archives inside are read whole, but all of them together no further than
    # one attachment: 200 well-compressed members must not cost 200 decodes
    budget = ATTACHMENT_LIMIT
    try:
        with zipfile.ZipFile(BytesIO(data)) as zf:
            for info in zf.infolist()[:MAX_ZIP_MEMBERS]:
                inner = info.filename
                if _extension(inner) in EXECUTABLE_EXTENSIONS:
                    return f"executable {inner!r} in archive {name!r}"
                if info.is_dir() or info.flag_bits & 0x1:
                    continue  # encrypted: the name is all there is to go on
                try:
                    with zf.open(info) as f:
                        head = f.read(ZIP_SNIFF_BYTES if _extension(inner) not in
                                      ARCHIVE_EXTENSIONS else max(ZIP_SNIFF_BYTES, budget))
                    budget -= len(head)
                except Exception:
                    continue  # unsupported compression, corrupt member
                why = is_executable_content(head)
                if why:
                    return f"{why} {inner!r} in archive {name!r}"
                if head[:4] == b"PK\x03\x04":
                    why = executable_reason(inner, head, depth + 1)
                    if why:
                        return f"{why} in archive {name!r}"
    except Exception:
        return None  # not a readable zip: judged by its name alone, above
    return None


def contains_eicar(msg: Message, raw: bytes | memoryview) -> bool:
    """True if the EICAR test string is in the raw message or in any decoded leaf."""
    window = msg.window or bytes(raw[:MAX_PARSE_BYTES])
    if EICAR in window:
        return True
    for part in msg.parts:
        if not part.is_container and part.encoding in ("base64", "quoted-printable") \
                and EICAR in part.decoded(ATTACHMENT_LIMIT):
            return True
    return False


def body_sha256(msg: Message) -> str:
    """SHA-256 of the message body exactly as received (everything after the header)."""
    return hashlib.sha256(msg.body).hexdigest()


def normalize(text: str, is_html: bool = False) -> str:
    """Text reduced to what stays the same across a campaign's copies.

    Markup, links, tokens with digits (numbers, ids, "customer42"),
    punctuation and long tokens (tracking ids, hashes) go; case and spacing
    are folded.  Linear in the length of ``text``: every step is a single
    pass (no pattern here can backtrack over a long token).
    """
    if is_html:
        text = strip_tags(strip_skipped(text))
    text = _URL.sub(" ", text)  # links carry per-recipient paths
    # tokens with a digit are numbers, ids, codes and names like "customer1";
    # very long ones are tracking tokens and hashes
    kept = [t for t in text.split() if len(t) <= _MAX_WORD and _DIGIT.search(t) is None]
    return " ".join(_NOT_WORD.sub(" ", " ".join(kept).lower()).split())


def strip_skipped(text: str) -> str:
    """``text`` with each script and style element that closes within 64 KiB made a space.

    An element runs from ``<script`` (or ``<style``, any case) to the first
    ``</script>`` after it; one that does not close within :data:`_MAX_SKIP`
    characters is left as it is (its tags go with the other tags).  Linear:
    the first closing tag after a position is searched for once and reused
    by every opening before it.
    """
    out: list[str] = []
    pos = 0  # text before this is in out
    # per name: the first closing tag at or after the last search's start,
    # None when there is none left
    closing: dict[str, re.Match[str] | None] = {}
    for m in _SKIP_OPEN.finditer(text):
        if m.start() < pos:
            continue  # inside an element already skipped
        name = m[1].lower()
        close = closing.get(name, False)
        if close is False or (close is not None and close.start() < m.end()):
            close = closing[name] = _SKIP_CLOSE[name].search(text, m.end())
        if close is None or close.start() - m.end() > _MAX_SKIP:
            continue
        out += (text[pos : m.start()], " ")
        pos = close.end()
    out.append(text[pos:])
    return "".join(out)


def strip_tags(text: str) -> str:
    """``text`` with each tag (``<``, at most 4096 characters but ``>``, ``>``) made a space.

    Between two ``>`` every ``<`` would end at the second one, so only the
    first ``<`` at most :data:`_MAX_TAG` characters before it opens a tag:
    one pass over the pieces between ``>``, however many ``<`` there are.
    """
    pieces = text.split(">")
    out: list[str] = []
    for piece in pieces[:-1]:
        i = piece.find("<", max(0, len(piece) - _MAX_TAG - 1))
        out += (piece, ">") if i < 0 else (piece[:i], " ")
    out.append(pieces[-1])
    return "".join(out)


def fingerprint(texts: list[tuple[Part, str]], files: list[Attachment]) -> str | None:
    """A near-duplicate fingerprint of the message's text and attachments, or None.

    Messages of one campaign that differ only in names, numbers, links and
    tracking tokens share it.  None when there is too little to go on (an
    empty or nearly empty body without attachments).
    """
    norm = " ".join(normalize(text, part.content_type == "text/html") for part, text in texts)
    if len(norm) < MIN_FINGERPRINT_CHARS and not files:
        return None
    h = hashlib.sha256(norm.encode("utf-8", "surrogatepass"))
    for digest in sorted(f.sha256 or "truncated" for f in files):
        h.update(b"\0" + digest.encode())
    return h.hexdigest()[:32]
