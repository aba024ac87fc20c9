"""The result record's JSON lines stay byte for byte what tools have always read.

Representative messages go through the real :class:`~ringtrap.scan.processing.Processor`
(spamd a fake on a real socket, the clocks fixed) and the real
:class:`~ringtrap.scan.results.ResultSink`; each line written is compared with the
one the dict-built record of earlier versions wrote for the same message.
"""

from __future__ import annotations

import json
import re
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import mailbuild as mb
import pytest
from canned import report_reply

from ringtrap.base import envelope
from ringtrap.base.envelope import Envelope
from ringtrap.scan import quarantine
from ringtrap.scan.archive import MaildirArchive
from ringtrap.scan.dedupe import DedupeStore
from ringtrap.scan.processing import Processor
from ringtrap.scan.record import RECORD_KEYS
from ringtrap.scan.results import ResultSink
from ringtrap.scan.spamd import SpamdClient

RECEIVED = 1799999999.654321  # 2027-01-15 07:59:59 UTC
SCANNED = RECEIVED + 5400.25  # an hour and a half later: the message waited
ENV = Envelope(sender="bounce@example.org", recipients=("trap1@example.net",),
               client_address="192.0.2.7", client_helo="mx.example.org", queue_id="4Vabc123")
SPAM_REPLY = report_reply(True, 12.5, 5.0, [("URIBL_BLACK", 1.7), ("X_A", 10.0), ("GTUBE", 0.8)])
HAM_REPLY = report_reply(False, -0.4, 5.0, [])
BAD_REPLY = b"SPAMD/1.5 76 Bad header line: (Content-Length mismatch)\r\n"


def fixed(message: bytes) -> bytes:
    """``message`` with mailbuild's per-run Message-IDs made constant."""
    return re.sub(rb"Message-ID: <\d+@", b"Message-ID: <1@", message)


class Ticks:
    """A monotonic clock that moves 1.25 ms each time it is read."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        self.now += 0.00125
        return self.now


class FakeSpamd:
    """Answers each connection with the next of ``replies``, on a real Unix socket."""

    def __init__(self, replies: list[bytes]) -> None:
        self.dir = tempfile.TemporaryDirectory(prefix="rt-rec-")
        self.address = f"unix:{self.dir.name}/s.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(f"{self.dir.name}/s.sock")
        self.sock.listen(4)
        self.replies = list(replies)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        for reply in self.replies:
            conn, _ = self.sock.accept()
            with conn:
                while conn.recv(65536):
                    pass  # the client shuts down its write side after the body
                conn.sendall(reply)

    def close(self) -> None:
        self.thread.join(5)
        self.sock.close()
        self.dir.cleanup()


@pytest.fixture
def lines(tmp_path: Path) -> Iterator[dict[str, bytes]]:
    """Name -> the JSON line the sink wrote for that case."""
    fake = FakeSpamd([SPAM_REPLY, HAM_REPLY, HAM_REPLY, SPAM_REPLY, BAD_REPLY])
    try:
        written = _lines(tmp_path, SpamdClient(fake.address, connect_timeout=2.0, timeout=5.0))
        # the socket's path is a fresh temporary one: the expected lines name it {spamd}
        quoted = json.dumps(fake.address).encode()
        yield {name: line.replace(quoted, b'"{spamd}"') for name, line in written.items()}
    finally:
        fake.close()


def _lines(tmp_path: Path, client: SpamdClient) -> dict[str, bytes]:
    archive = MaildirArchive(tmp_path / "archive", ["spam", "bounce"], 30,
                             clock=lambda: RECEIVED)
    (tmp_path / "broken").write_text("a file where the archive's directory should be")
    broken = MaildirArchive(tmp_path / "broken", ["bounce"], 30, clock=lambda: RECEIVED)

    def processor(**kw: object) -> Processor:
        return Processor(scanner=client, scan_limit_bytes=1 << 20, monotonic=Ticks(),
                         clock=lambda: SCANNED, **kw)  # type: ignore[arg-type]

    cases: list[tuple[str, object]] = []

    def run(name: str, proc: Processor, payload: bytes, attempts: int = 0) -> None:
        cases.append((name, proc.process(f"m-{name}", payload, RECEIVED, attempts)))

    run("spam", processor(archive=archive),
        envelope.frame(fixed(mb.plain("Cheap watches at http://shop.example.com/x?id=1 now.\n",
                                      extra="Reply-To: Shop <s@shop.example.com>\n")), ENV), 2)
    run("ham", processor(archive=archive),
        envelope.frame(fixed(mb.with_attachment("notes.pdf", b"%PDF-1.4 notes")), ENV))
    run("parse_error", processor(),
        envelope.frame(b"Cheap watches, best prices in town.\r\n\r\nno header at all\r\n"))
    run("bounce", processor(archive=archive),
        envelope.frame(fixed(mb.dsn()), Envelope(sender="")))
    run("archive_failed", processor(archive=broken),
        envelope.frame(fixed(mb.dsn()), Envelope(sender="")))
    run("virus", processor(), b"\x00garbage" + mb.EICAR)
    dedupe = processor(dedupe=DedupeStore(tmp_path, 3600), skip_duplicates=True)
    run("campaign_first", dedupe, envelope.frame(fixed(mb.campaign_copy(1))))
    run("duplicate", dedupe, envelope.frame(fixed(mb.campaign_copy(2))))
    run("error", processor(), envelope.frame(fixed(mb.plain()), ENV), 1)
    run("spamd_off", Processor(scanner=None, scan_limit_bytes=1 << 20, monotonic=Ticks(),
                               clock=lambda: SCANNED),
        envelope.frame("Subject: Grüße \u2028 split\x85here\r\n\r\nbody\r\n".encode(), ENV))
    head = envelope.frame(b"Subject: x\r\n\r\nbody\r\n", ENV)[:envelope.MAX_LINE]
    cases.append(("quarantined", quarantine.record(
        "m-q1", RECEIVED, 5, "attempts 5 reached the limit 5", store="ring", kept=True,
        path=Path("/var/spool/ringtrap/failed/m-q1"), payload_size=4096, head=head,
        now=SCANNED)))
    cases.append(("quarantined_unread", quarantine.record(
        "m-q2", RECEIVED, 0, "untrusted spill file, not read: a symlink", store="overflow",
        kept=False, path=Path("/var/spool/ringtrap/failed/m-q2"), payload_size=77,
        head=None, now=SCANNED)))

    results = tmp_path / "results"
    with ResultSink(results, clock=lambda: RECEIVED) as sink:
        for _, record in cases:
            sink.write(record)  # type: ignore[arg-type]
    written = (results / "results-2027-01-15.jsonl").read_bytes().splitlines(keepends=True)
    assert len(written) == len(cases)
    return {name: line for (name, _), line in zip(cases, written, strict=True)}


# name<TAB>line, as the dict-built record (before the Record dataclass) wrote them
# with the clocks above, and the keys added since at the end
EXPECTED = dict(
    line.split(b"\t", 1) for line in
    (Path(__file__).parent / "record_lines.txt").read_bytes().splitlines(keepends=True))


@pytest.mark.parametrize("name", sorted(k.decode() for k in EXPECTED))
def test_json_line_is_byte_identical(lines: dict[str, bytes], name: str) -> None:
    assert lines[name] == EXPECTED[name.encode()]


def test_every_line_has_the_keys_in_their_order(lines: dict[str, bytes]) -> None:
    assert sorted(lines) == sorted(k.decode() for k in EXPECTED)
    for line in lines.values():
        assert list(json.loads(line)) == list(RECORD_KEYS)
