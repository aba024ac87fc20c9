"""Message work: turn one stored payload into one result record.

:class:`Processor` splits off the envelope line, walks the message within
fixed bounds (:mod:`ringtrap.scan.mime`), extracts what an operator mines
from it (:mod:`ringtrap.scan.extract`), runs the cheap prefilters
(:mod:`ringtrap.scan.prefilter`), looks the body's fingerprint up among
recent campaigns (:mod:`ringtrap.scan.dedupe`), asks the scanner
(:mod:`ringtrap.scan.scanner`) for a verdict, archives the message
(:mod:`ringtrap.scan.archive`) and builds the
:class:`~ringtrap.scan.record.Record` the worker writes to the results.  It
knows nothing of queues: the caller claims, records and acknowledges.

Trap mail is hostile (binary garbage, thousands of headers, broken RFC 2047
words, charsets that do not exist): nothing here raises on message content.
A process that dies in the middle of :meth:`Processor.process` leaves behind
at most an archive file that the retry replaces and a dedupe row (a cache),
besides the claim it holds.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Collection, Iterable

from ringtrap.base import envelope
from ringtrap.base.envelope import Envelope
from ringtrap.base.states import Verdict
from ringtrap.config import Config
from ringtrap.scan import extract, mime, prefilter
from ringtrap.scan.archive import MaildirArchive
from ringtrap.scan.dedupe import DedupeStore, First
from ringtrap.scan.record import ARCHIVE_FAILED, NOT_ARCHIVED, Archived, Record, iso_utc
from ringtrap.scan.scanner import ScanError, Scanner

log = logging.getLogger(__name__)

__all__ = ["Processor", "split_payload"]

REASON_SPAMD_OFF = "spamd off"


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Processor:
    """Parses, filters and scans messages; one instance per worker process.

    ``checks`` are the prefilters in force (:data:`ringtrap.scan.prefilter.CHECKS`);
    ``trusted_networks`` the trap's own relays, skipped when the relay is
    read from Received fields.  ``dedupe`` recognises campaign repeats and,
    with ``skip_duplicates``, records a repeat from the first message's scan
    instead of scanning it.  ``archive`` stores messages by verdict.
    ``monotonic`` is the clock the steps' timings are read from, ``clock``
    the wall clock ``scanned_at`` is read from.
    """

    def __init__(self, *, scanner: Scanner | None, scan_limit_bytes: int,
                 checks: Collection[str] = prefilter.CHECKS,
                 trusted_networks: Iterable[Network] = (),
                 dedupe: DedupeStore | None = None, skip_duplicates: bool = False,
                 archive: MaildirArchive | None = None,
                 monotonic: Callable[[], float] = time.monotonic,
                 clock: Callable[[], float] = time.time) -> None:
        """``scanner`` None records every message unscanned ("spamd off")."""
        self.scanner = scanner
        self.scan_limit_bytes = scan_limit_bytes
        self.checks = frozenset(checks)
        self.trusted_networks = tuple(trusted_networks)
        self.dedupe = dedupe
        self.skip_duplicates = skip_duplicates
        self.archive = archive
        self.archive_errors = 0
        self._monotonic = monotonic
        self._clock = clock

    @classmethod
    def from_config(cls, cfg: Config, scanner: Scanner | None) -> Processor:
        """The processor a worker runs with ``cfg``; opens nothing until the first message."""
        dedupe: DedupeStore | None = (DedupeStore(cfg.results.dir, cfg.dedupe.window)
                                      if cfg.dedupe.enabled else None)
        if dedupe is not None and cfg.dedupe.store == "nats":
            from ringtrap.scan.fleetdedupe import FleetDedupe

            dedupe = FleetDedupe(cfg, dedupe)  # type: ignore[assignment]
        archive = (MaildirArchive(cfg.archive.dir, cfg.archive.verdicts,
                                  cfg.archive.retention_days,
                                  trace_host=(socket.gethostname() if cfg.archive.trace_headers
                                              else None))
                   if cfg.archive.dir is not None else None)
        return cls(scanner=scanner, scan_limit_bytes=cfg.workers.scan_limit_bytes,
                   checks=cfg.prefilter.checks,
                   trusted_networks=[ipaddress.ip_network(n) for n in
                                     cfg.records.trusted_networks],
                   dedupe=dedupe, skip_duplicates=cfg.dedupe.skip_scan, archive=archive)

    def process(self, msgid: str, payload: bytes, received: float, attempts: int) -> Record:
        """Build the result record of one stored payload.

        Raises a retryable :class:`~ringtrap.scan.spamd.ScanError` unchanged (the
        caller gives the message back and retries later); a non-retryable one
        is recorded as verdict "error" with the reason.  ``received`` is
        wall-clock seconds since the epoch.
        """
        clock = _Clock(self._monotonic)
        env, message = split_payload(payload)
        size = message.nbytes
        msg = mime.parse(message)
        clock.lap("parse")
        record = self._describe(msgid, received, attempts, size, env, msg)
        files = extract.attachments(msg)
        texts = extract.text_parts(msg)
        found = extract.urls(text for _, text in texts)
        record.urls = found
        record.url_domains = extract.url_domains(found)
        record.attachments = files
        record.body_sha256 = extract.body_sha256(msg)
        record.fingerprint = extract.fingerprint(texts, files)
        clock.lap("extract")
        taken = prefilter.check(msg, message, env, size, self.scan_limit_bytes, files,
                                self.checks)
        clock.lap("prefilter")
        if taken is not None:
            record.verdict, record.reason = taken
        elif self.scanner is None:
            record.reason = REASON_SPAMD_OFF
        else:
            self._scan(record, message, env, received, clock)
        if self.archive is not None:
            record.archived = self._archive(record, message, received)
            clock.lap("archive")
        record.timings_ms = clock.laps
        if record.scanned_at is None:
            record.scanned_at = iso_utc(self._clock())
        return record

    def _describe(self, msgid: str, received: float, attempts: int, size: int,
                  env: Envelope, msg: mime.Message) -> Record:
        """The record's fields that need no scan, with the verdict still "not_scanned"."""
        sender = msg.get("from")
        if env.client_address:
            # the MTA's value stays as given in the envelope; only an address is a relay_ip
            relay_ip, relay_helo = envelope.relay_address(env.client_address), env.client_helo
            source = "mta" if relay_ip else "mta_invalid"
        else:
            relay_ip, relay_helo = extract.first_untrusted_relay(msg, self.trusted_networks)
            source = "received" if relay_ip else None
        return_path = env.sender if env.sender is not None else msg.get("return-path")
        return Record(
            id=msgid,
            received=iso_utc(received),
            size=size,
            verdict=Verdict.NOT_SCANNED,
            from_=sender,
            subject=msg.get("subject"),
            message_id=msg.get("message-id"),
            attempts=attempts,
            envelope=env,
            relay_ip=relay_ip,
            relay_helo=relay_helo,
            relay_source=source,
            from_domain=extract.address_domain(sender),
            reply_to_domain=extract.address_domain(msg.get("reply-to")),
            return_path_domain=extract.address_domain(return_path),
            date=msg.get("date"),
            defects=msg.defects,
            parse_error=msg.unparseable,
        )

    def _scan(self, record: Record, message: memoryview, env: Envelope, received: float,
              clock: _Clock) -> None:
        fingerprint = record.fingerprint
        first: First | None = None
        if self.dedupe is not None and fingerprint:
            first = self.dedupe.lookup(fingerprint, received)
            clock.lap("dedupe")
        if first is not None:
            record.duplicate_of = first.msgid
            if self.skip_duplicates:
                record.verdict, record.reason = (Verdict.DUPLICATE,
                                                 f"repeat of {first.msgid} ({first.verdict})")
                record.score, record.required = first.score, first.required
                record.rules = list(first.rules)
                record.scanner, record.action = first.scanner, first.action
                record.symbols = first.symbols
                return
        try:
            assert self.scanner is not None
            result = self.scanner.scan(message, env)
        except ScanError as exc:
            if exc.retryable:
                raise
            # spamd answered, so the time it took is still worth recording
            record.scanned_ms = clock.lap("scan")
            record.scanned_at = iso_utc(self._clock())
            record.verdict = Verdict.ERROR
            record.reason = f"{self.scanner.kind}: {exc}"
            return
        record.scanned_ms = clock.lap("scan")
        record.scanned_at = iso_utc(self._clock())
        record.verdict = Verdict.SPAM if result.spam else Verdict.HAM
        record.score = result.score
        record.required = result.required
        record.rules = list(result.rules)
        record.scanner, record.scanner_host = result.scanner, result.host
        record.action = result.action
        record.symbols = ({name: sym.to_dict() for name, sym in result.symbols.items()}
                          if result.symbols else None)
        if self.dedupe is not None and fingerprint and first is None:
            self.dedupe.remember(fingerprint, First(
                record.id, received, record.verdict, result.score, result.required,
                result.rules, result.scanner, result.action, record.symbols))
            clock.lap("dedupe")

    def _archive(self, record: Record, message: memoryview, received: float) -> Archived:
        """Where the archived copy went, or why there is none."""
        assert self.archive is not None
        try:
            path = self.archive.store(record.id, record.verdict, message, received,
                                      record.envelope)
        except OSError as exc:
            # the corpus is a copy; the record is what must not be lost
            self.archive_errors += 1
            if self.archive_errors == 1 or self.archive_errors % 100 == 0:
                log.warning("%s: cannot archive (%s); %d archive error(s) so far",
                            record.id, exc, self.archive_errors)
            return ARCHIVE_FAILED
        return NOT_ARCHIVED if path is None else Archived.at(path)


class _Clock:
    """Milliseconds spent in each step of one message, on the monotonic clock."""

    __slots__ = ("laps", "last", "monotonic")

    def __init__(self, monotonic: Callable[[], float]) -> None:
        self.monotonic = monotonic
        self.laps: dict[str, float] = {}
        self.last = monotonic()

    def lap(self, step: str) -> float:
        """Charge the time since the last lap to ``step``; returns this lap's ms."""
        now = self.monotonic()
        ms = round((now - self.last) * 1000.0, 3)
        self.laps[step] = round(self.laps.get(step, 0.0) + ms, 3)
        self.last = now
        return ms


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
