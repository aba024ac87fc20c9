"""The forwarder: this host's records, and optionally its messages, to NATS JetStream.

One process (role FORWARDER), forked and watched by the supervisor like the
stage workers, on the shared :class:`~ringtrap.work.child.ChildLoop`.  It
follows the result files the scan workers write (``results.dir``), publishes
every record to ``<prefix>.<host>.record`` and moves its cursor past a record
only after JetStream acknowledged it.  The scan workers never wait for it:
they write their records as before, whether the broker is there or not.

Why it follows the result files, and the workers do not spill records to it:

- The result files are already the host's source of truth, written once per
  record, and kept for ``results.retention_days``.  A cursor on them (file
  name and byte offset, ``forward-cursor.json`` in ``results.dir``) is the whole
  backlog: it costs the workers nothing (no second write per record, no cap
  to hit, no record to drop while the broker is away), it survives every
  restart of the trap and of the machine, and it is bounded by the results'
  own retention.  A spill folder of records would duplicate each record,
  need a cap (and so drop records in a long outage) and its own recovery.
- Raw messages are another matter: they are not in the result files (the
  archive is optional, per verdict, and laid out for people).  When
  ``forward.raw`` is on, a scan worker hands each message, after writing its
  record, into the forwarder's own spill directory (:func:`hand_on`, an
  atomic rename as for the stage, capped by ``forward.spill_max_bytes``: at
  the cap the message is not handed on and counted in ``forward_dropped``).
  That directory is recovered by owner identity, purged with the overflow.

At least once, and once in the stream: every message carries
``Nats-Msg-Id = <host>:<id>`` (``<id>`` alone is unique only on its host:
it holds the ingest's pid, which another host may share).  A record whose
ack was lost, or that was published just before the forwarder died, is sent
again from the cursor, and JetStream's duplicate window stores it once.  The
cursor is written (and fsynced) after each acknowledged batch, so what can
be sent twice is at most one batch, re-sent seconds later after a restart or
as soon as a broker is reachable again.  The stream's default window
(``forward.duplicate_window``, 5 minutes) covers a crash loop, a trap
restart (``supervisor.graceful_timeout``) and a cluster leader election
with room to spare; a re-send after a longer outage may be stored twice,
and the collector, which keys on the message id, removes it (invariant 11).
The server keeps the ids of the window in memory: 5 minutes of a hundred
hosts is about a million ids.

A record published and acknowledged counts in ``forwarded`` (a re-send the
stream recognised in ``forward_duplicates``); ``forward_backlog`` is the
number of complete record lines between the cursor and the ends of the
result files, counted ahead by this process; ``forward_dropped`` counts what
will never be forwarded (a line that is not a record, a record over the
server's payload limit, a raw message not handed on).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from ringtrap import config as configmod
from ringtrap.base import ids
from ringtrap.base.counters import C
from ringtrap.base.states import ProcState, Role
from ringtrap.config import Config, ForwardConfig
from ringtrap.overflow import Overflow, OverflowClaim, OverflowFull, UntrustedFile
from ringtrap.scan.processing import split_payload
from ringtrap.scan.results import PREFIX, SUFFIX
from ringtrap.store.proctable import ProcRow, ProcTable
from ringtrap.work.child import BEAT_EVERY, ChildLoop, SetupError, main

log = logging.getLogger(__name__)

CURSOR_NAME = "forward-cursor.json"
# one batch: published concurrently, acknowledged, then one cursor write
BATCH = 256
BATCH_BYTES = 4 * 1024 * 1024
# an idle forwarder looks for new lines this often
POLL = 0.25
# a file at its end, with a later day's file beside it, is left after this
# long without growth: a worker that picked the day a moment before midnight
# may still be writing its last line into it
SETTLE = 5.0
# bytes the backlog count reads ahead per turn, so a large backlog after a
# restart is counted over a few turns without holding up the heartbeat
COUNT_BUDGET = 16 * 1024 * 1024
BACKOFF_INITIAL = 1.0
BACKOFF_MAX = 30.0
# attempts per server before the client gives up and the loop backs off
RECONNECTS = 2
# the largest line the tail reads whole; a longer one is not a record
MAX_LINE = 64 * 1024 * 1024
# raw messages published at once (each up to forward.raw_max_bytes)
RAW_BATCH = 16


def open_store(cfg: Config, *, create: bool = True) -> Overflow:
    """The forwarder's raw spill directory for ``cfg`` (created unless ``create`` is False)."""
    return Overflow(configmod.forward_dir(cfg), cfg.forward.spill_max_bytes, create=create,
                    quarantine_max_bytes=cfg.overflow.quarantine_max_bytes)


def hand_on(store: Overflow, msgid: str, payload: bytes, size: int, max_bytes: int) -> C:
    """Give one raw message to the forwarder; the counter the caller adds one to.

    Never waits and never fails the message: over ``max_bytes`` it is not
    handed on (its record says so, Ringtrap-Raw: too-large), at the spill
    directory's cap or on an I/O error it is dropped.  The caller calls this
    after the record is written and before the ack: dying in between hands it
    on twice, and the stream stores it once (same Nats-Msg-Id).
    """
    if size > max_bytes:
        return C.FORWARD_RAW_TOO_LARGE
    try:
        store.resync()  # every worker spills here: the cap is theirs together
        store.spill(msgid, payload, 0)
    except OverflowFull:
        return C.FORWARD_DROPPED  # the broker is away long enough: the backlog stays bounded
    except OSError as exc:
        log.warning("%s: cannot hand the message on to the forwarder (%s)", msgid, exc)
        return C.FORWARD_DROPPED
    return C.FORWARD_RAW_HANDED_ON


class Position(NamedTuple):
    """A place in the result files: a file's name and a byte offset in it.

    Names are ``results-YYYY-MM-DD.jsonl``, so positions sort in file order.
    """

    file: str
    offset: int


def load_cursor(directory: Path) -> Position | None:
    """The position saved by :func:`save_cursor`, or None (never forwarded, or unreadable)."""
    try:
        data = json.loads((directory / CURSOR_NAME).read_text())
        pos = Position(str(data["file"]), int(data["offset"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("forward cursor %s unreadable (%s): starting at the oldest result file",
                    directory / CURSOR_NAME, exc)
        return None
    if not (pos.file.startswith(PREFIX) and pos.file.endswith(SUFFIX) and "/" not in pos.file
            and pos.offset >= 0):
        log.warning("forward cursor %s names %r: starting at the oldest result file",
                    directory / CURSOR_NAME, pos)
        return None
    return pos


def save_cursor(directory: Path, pos: Position) -> None:
    """Write ``pos`` durably (temporary file, fsync, rename, fsync of the directory).

    Dying midway leaves the previous cursor, or the new one: never a torn one.
    Raises OSError when the disk refuses.
    """
    path = directory / CURSOR_NAME
    tmp = directory / (CURSOR_NAME + ".tmp")
    text = json.dumps({"file": pos.file, "offset": pos.offset}) + "\n"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _names(directory: Path) -> list[str]:
    try:
        return sorted(n for n in os.listdir(directory) if n.startswith(PREFIX)
                      and n.endswith(SUFFIX))
    except FileNotFoundError:
        return []


def _size(path: Path) -> int | None:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return None


def resolve(directory: Path, pos: Position | None, names: list[str]) -> Position | None:
    """Where reading from ``pos`` really starts: the oldest file when there is no
    cursor, the next later file when its file is gone (removed by retention)."""
    if pos is None:
        return Position(names[0], 0) if names else None
    if pos.file in names:
        return pos
    later = [n for n in names if n > pos.file]
    if not later:
        return pos  # nothing newer yet: wait where we are
    log.warning("forward: %s was removed before it was forwarded to its end (results"
                " retention); going on with %s", pos.file, later[0],
                extra={"event": "forward_gap", "file": pos.file})
    return Position(later[0], 0)


class Tail:
    """Complete lines of the result files from a position on; see the module docstring.

    ``clock`` (monotonic) paces :data:`SETTLE`.  :meth:`read` never returns
    a line that has no newline yet; a fragment left at the end of an old
    file (a write cut short) is skipped once a later file has settled, and
    counted in :attr:`skipped`.
    """

    def __init__(self, directory: Path, pos: Position | None, *,
                 clock: Callable[[], float] = time.monotonic, settle: float = SETTLE) -> None:
        self.directory = directory
        self.pos = pos
        self.skipped = 0
        self._clock = clock
        self._settle = settle
        self._eof_seen: tuple[Position, int, float] | None = None

    def seek(self, pos: Position | None) -> None:
        """Read from ``pos`` next (after a batch that was not acknowledged)."""
        self.pos = pos
        self._eof_seen = None

    def read(self, max_lines: int, max_bytes: int) -> list[tuple[bytes, Position]]:
        """Up to ``max_lines`` lines (about ``max_bytes``), each with the position after it."""
        names = _names(self.directory)
        pos = resolve(self.directory, self.pos, names)
        if pos is None:
            return []
        self.pos = pos
        path = self.directory / pos.file
        size = _size(path)
        if size is None:
            return []
        if size < pos.offset:
            log.warning("forward: %s is shorter than the cursor (%d < %d): read again from"
                        " its start", pos.file, size, pos.offset)
            pos = self.pos = Position(pos.file, 0)
        out: list[tuple[bytes, Position]] = []
        if size > pos.offset:
            out = self._lines(path, pos, size, max_lines, max_bytes)
        if out:
            self.pos = out[-1][1]
            self._eof_seen = None
            return out
        self._maybe_move_on(names, size)
        return []

    def _lines(self, path: Path, pos: Position, size: int, max_lines: int,
               max_bytes: int) -> list[tuple[bytes, Position]]:
        want = min(size - pos.offset, max_bytes)
        with open(path, "rb") as f:
            f.seek(pos.offset)
            chunk = f.read(want)
            # a line longer than a batch is read on until its newline
            while b"\n" not in chunk and len(chunk) < min(size - pos.offset, MAX_LINE):
                more = f.read(max(want, 1 << 20))
                if not more:
                    break
                chunk += more
        cut = chunk.rfind(b"\n")
        if cut < 0:
            if len(chunk) >= MAX_LINE:
                # not a record whatever it is: skip it to its end, or the tail stalls here
                log.warning("forward: %s:%d: a line of more than %d bytes; skipped",
                            pos.file, pos.offset, MAX_LINE)
                self.skipped += 1
                self.pos = self._skip_long(path, pos)
            return []
        out = []
        offset = pos.offset
        for line in chunk[: cut + 1].split(b"\n")[:-1]:
            offset += len(line) + 1
            out.append((line, Position(pos.file, offset)))
            if len(out) >= max_lines:
                break
        return out

    def _skip_long(self, path: Path, pos: Position) -> Position:
        with open(path, "rb") as f:
            f.seek(pos.offset)
            offset = pos.offset
            while block := f.read(1 << 20):
                cut = block.find(b"\n")
                if cut >= 0:
                    return Position(pos.file, offset + cut + 1)
                offset += len(block)
        return Position(pos.file, offset)

    def _maybe_move_on(self, names: list[str], size: int) -> None:
        """At the end of a file with a later one beside it: move on once it has settled."""
        assert self.pos is not None
        later = [n for n in names if n > self.pos.file]
        if not later:
            self._eof_seen = None
            return
        now = self._clock()
        seen = self._eof_seen
        if seen is None or seen[0] != self.pos or seen[1] != size:
            self._eof_seen = (self.pos, size, now)
            return
        if now - seen[2] < self._settle:
            return
        if size > self.pos.offset:
            log.warning("forward: %s ends in an unfinished line (%d bytes); skipped",
                        self.pos.file, size - self.pos.offset)
            self.skipped += 1
        self.pos = Position(later[0], 0)
        self._eof_seen = None


class Backlog:
    """How many complete lines lie between the cursor and the ends of the result files.

    Counted ahead from a frontier, at most ``budget`` bytes per :meth:`scan`,
    and reduced as batches are acknowledged.
    """

    def __init__(self, directory: Path, start: Position | None) -> None:
        self.directory = directory
        self.frontier = start
        self.lines = 0

    def committed(self, pos: Position, n: int) -> None:
        """``n`` lines up to ``pos`` were acknowledged."""
        if self.frontier is None or pos >= self.frontier:
            self.frontier = pos
            self.lines = 0
        else:
            self.lines = max(0, self.lines - n)

    def scan(self, budget: int = COUNT_BUDGET) -> int:
        """Count ahead by at most ``budget`` bytes; returns the lines known so far."""
        names = _names(self.directory)
        while budget > 0:
            pos = resolve_quietly(self.frontier, names)
            if pos is None:
                break
            self.frontier = pos
            size = _size(self.directory / pos.file)
            if size is None:
                break
            if size > pos.offset:
                with open(self.directory / pos.file, "rb") as f:
                    f.seek(pos.offset)
                    chunk = f.read(min(size - pos.offset, budget))
                budget -= len(chunk)
                cut = chunk.rfind(b"\n")
                if cut >= 0:
                    self.lines += chunk.count(b"\n", 0, cut + 1)
                    self.frontier = Position(pos.file, pos.offset + cut + 1)
                    continue
                if len(chunk) < size - pos.offset:
                    continue  # a very long line: on with the next budget
            later = [n for n in names if n > pos.file]
            if not later:
                break
            self.frontier = Position(later[0], 0)
        return self.lines


def resolve_quietly(pos: Position | None, names: list[str]) -> Position | None:
    """:func:`resolve` without its warning (the counter follows the tail, which warns)."""
    if pos is None:
        return Position(names[0], 0) if names else None
    if pos.file in names:
        return pos
    later = [n for n in names if n > pos.file]
    return Position(later[0], 0) if later else None


def message_id(host: str, record: dict[str, Any]) -> str:
    """``Nats-Msg-Id`` of a record: ``<host>:<id>``; ValueError if it has no valid id.

    A quarantine record of the stage shares its message's id with the scan
    record before it: it gets ``:stage`` so the stream does not take it for
    a re-send of that one.
    """
    rid = record.get("id")
    if not isinstance(rid, str) or not ids.is_valid(rid):
        raise ValueError(f"no valid id: {rid!r}")
    q = record.get("quarantine")
    suffix = ":stage" if isinstance(q, dict) and q.get("store") == "stage" else ""
    return f"{host}:{rid}{suffix}"


class BacklogGauge:
    """``forward_backlog`` in this process's row: a level, set, not added to.

    The slot is one of :data:`~ringtrap.base.counters.GAUGES`: retiring a
    dead forwarder's row clears it rather than folding it into the totals,
    so the total is the live forwarder's last count (0 while none runs).
    """

    def __init__(self, row: ProcRow | None) -> None:
        self._row = row

    def set(self, value: int) -> None:
        if self._row is None:
            return
        now = self._row.get(C.FORWARD_BACKLOG)
        if value != now:
            self._row.add(C.FORWARD_BACKLOG, value - now)  # never below 0: value >= 0


class JetStream:
    """The forwarder's connection and stream (asyncio; nats-py is imported here only)."""

    def __init__(self, f: ForwardConfig) -> None:
        self.f = f
        self.nc: Any = None
        self.js: Any = None
        self.max_payload = 1024 * 1024

    @property
    def usable(self) -> bool:
        """Connected now (not reconnecting, not closed)."""
        return self.nc is not None and self.nc.is_connected

    async def connect(self) -> None:
        """Connect to one of ``forward.servers`` and make sure the stream exists.

        Raises what the client raises (NoServersError, TimeoutError, OSError,
        a JetStream API error) when the broker cannot be used now.
        """
        import nats

        await self.close()
        opts: dict[str, Any] = {
            "servers": list(self.f.servers),
            "name": f"ringtrap-forward {self.f.host}",
            "connect_timeout": 2,
            # the client's own reconnect moves to another node of a cluster at once;
            # bounded, so a broker that stays away (and the first connect) comes back
            # to this loop, which backs off and keeps its heartbeat
            "allow_reconnect": True,
            "max_reconnect_attempts": RECONNECTS,
            "reconnect_time_wait": 0.5,
            "error_cb": self._on_error,
            "disconnected_cb": self._on_disconnected,
            "reconnected_cb": self._on_reconnected,
        }
        tls = self._tls()
        if tls is not None:
            opts["tls"] = tls
        if self.f.creds_file is not None:
            opts["user_credentials"] = str(self.f.creds_file)
        if self.f.nkey_seed_file is not None:
            opts["nkeys_seed"] = str(self.f.nkey_seed_file)
        nc = await nats.connect(**opts)
        try:
            js = nc.jetstream(timeout=self.f.ack_timeout)
            await self._ensure_stream(js)
        except BaseException:
            await nc.close()
            raise
        self.nc, self.js = nc, js
        self.max_payload = int(nc.max_payload or self.max_payload)
        log.info("forward: connected to %s, stream %s", nc.connected_url.netloc
                 if nc.connected_url else "?", self.f.stream)

    def _tls(self) -> Any:
        f = self.f
        if f.tls_ca_file is None and f.tls_cert_file is None:
            return None
        import ssl

        ctx = ssl.create_default_context(
            cafile=str(f.tls_ca_file) if f.tls_ca_file is not None else None)
        if f.tls_cert_file is not None and f.tls_key_file is not None:
            ctx.load_cert_chain(str(f.tls_cert_file), str(f.tls_key_file))
        return ctx

    async def _ensure_stream(self, js: Any) -> None:
        from nats.js import api
        from nats.js.errors import BadRequestError, NotFoundError

        try:
            await js.stream_info(self.f.stream)
            return
        except NotFoundError:
            pass
        config = api.StreamConfig(
            name=self.f.stream, subjects=[f"{self.f.subject_prefix}.>"],
            storage=api.StorageType.FILE, num_replicas=self.f.replicas,
            duplicate_window=self.f.duplicate_window)
        try:
            await js.add_stream(config)
            log.info("forward: created stream %s (subjects %s.>, %d replica(s), duplicate"
                     " window %.0f s)", self.f.stream, self.f.subject_prefix,
                     self.f.replicas, self.f.duplicate_window)
        except BadRequestError:
            # another host's forwarder made it a moment ago, maybe a little differently
            await js.stream_info(self.f.stream)

    async def publish(self, items: list[tuple[str, bytes, dict[str, str]]]) -> list[Any]:
        """Publish every item at once; each result is a PubAck or the exception it raised."""
        return await asyncio.gather(
            *(self.js.publish(subject, payload, timeout=self.f.ack_timeout, headers=headers)
              for subject, payload, headers in items),
            return_exceptions=True)

    async def close(self) -> None:
        nc, self.nc, self.js = self.nc, None, None
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()

    async def _on_error(self, exc: Exception) -> None:
        log.debug("forward: NATS client: %s", exc)

    async def _on_disconnected(self) -> None:
        log.warning("forward: disconnected from the broker; reconnecting")

    async def _on_reconnected(self) -> None:
        url = self.nc.connected_url.netloc if self.nc and self.nc.connected_url else "?"
        log.info("forward: reconnected to %s", url)


def _retryable(exc: BaseException) -> bool:
    """False for a publish no retry can help (over the server's payload limit)."""
    from nats.errors import MaxPayloadError

    return not isinstance(exc, MaxPayloadError)


class Forwarder(ChildLoop):
    """The tail -> publish -> ack -> cursor loop; see the module docstring.

    ``row`` (this process's) may be None in tools and tests.
    """

    def __init__(self, cfg: Config, row: ProcRow | None,
                 index: int = 0, *, parent_pid: int | None = None,
                 backoff_initial: float = BACKOFF_INITIAL,
                 backoff_max: float = BACKOFF_MAX) -> None:
        super().__init__(Role.FORWARDER, index, row, parent_pid=parent_pid,
                         backoff_initial=backoff_initial, backoff_max=backoff_max,
                         logger=log)
        self.cfg = cfg
        self.f = cfg.forward
        self.directory = Path(cfg.results.dir)
        self.directory.mkdir(parents=True, exist_ok=True)
        start = load_cursor(self.directory)
        self.committed = start
        self.tail = Tail(self.directory, start)
        self.backlog = Backlog(self.directory, start)
        self.gauge = BacklogGauge(row)
        self.broker = JetStream(self.f)
        self._aloop = asyncio.new_event_loop()
        self._record_subject = f"{self.f.subject_prefix}.{self.f.host}.record"
        self._raw_subject = f"{self.f.subject_prefix}.{self.f.host}.raw"
        self.raw = open_store(cfg) if self.f.raw else None

    def _run(self, coro: Any) -> Any:
        return self._aloop.run_until_complete(coro)

    def run(self) -> int:
        try:
            return super().run()
        finally:
            self._run(self.broker.close())
            self._aloop.close()

    def _started_note(self) -> str:
        at = "the oldest result file" if self.committed is None else \
            f"{self.committed.file} at byte {self.committed.offset}"
        return f": to {', '.join(self.f.servers)} as {self.f.host}, from {at}"

    def _pause(self, seconds: float) -> None:
        """Sleep as ChildLoop does, but inside the event loop: the client's pings and
        reconnects go on while the forwarder waits."""
        deadline = time.monotonic() + seconds
        while not self._should_exit():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._run(asyncio.sleep(min(left, BEAT_EVERY)))
            self._beat()

    def _turn(self) -> bool:
        if not self.broker.usable and not self._connect():
            return True
        lines = self.tail.read(BATCH, BATCH_BYTES)
        self._count_skipped()
        if lines:
            self._send_records(lines)
        # raw messages between record batches: neither waits long for the other
        sent_raw = self.raw is not None and self.broker.usable and self._send_raw()
        if lines or sent_raw:
            return True
        self.gauge.set(self.backlog.scan())
        self._state(ProcState.IDLE)
        self._title_idle()
        self._pause(POLL)
        return True

    def _connect(self) -> bool:
        self._title("connecting")
        try:
            self._run(self.broker.connect())
        except Exception as exc:
            self._count(C.FORWARD_ERRORS)
            self.gauge.set(self.backlog.scan())
            self._dependency_down("nats", "forward", exc)
            return False
        return True

    def _count_skipped(self) -> None:
        if self.tail.skipped:
            self._count(C.FORWARD_DROPPED, self.tail.skipped)
            self.tail.skipped = 0

    def _send_records(self, lines: list[tuple[bytes, Position]]) -> None:
        """Publish one batch; advance the cursor over its acknowledged prefix."""
        self._state(ProcState.BUSY)
        self._title(f"forwarding {len(lines)} records")
        items: list[tuple[str, bytes, dict[str, str]]] = []
        slots: list[int | None] = []  # per line: its item, or None for a line not sent
        dropped = 0
        for data, _ in lines:
            item = self._record_item(data)
            if item is None:
                dropped += 1
                slots.append(None)
            else:
                slots.append(len(items))
                items.append(item)
        try:
            results = self._run(self.broker.publish(items)) if items else []
        except Exception as exc:  # the connection itself failed
            results = [exc] * len(items)
        acked = dup = 0
        upto = 0  # lines in the acknowledged prefix
        failure: BaseException | None = None
        for n, slot in enumerate(slots):
            if slot is None:
                if failure is None:
                    upto = n + 1
                continue
            res = results[slot]
            if isinstance(res, BaseException):
                if not _retryable(res):
                    log.warning("forward: a record of %d bytes is over the server's payload"
                                " limit (%d); not forwarded", len(items[slot][1]),
                                self.broker.max_payload)
                    dropped += 1
                    if failure is None:
                        upto = n + 1
                    continue
                failure = failure or res
                continue
            if res.duplicate:
                dup += 1
            else:
                acked += 1
            if failure is None:
                upto = n + 1
        self._count(C.FORWARDED, acked)
        self._count(C.FORWARD_DUPLICATES, dup)
        self._count(C.FORWARD_DROPPED, dropped)
        if upto:
            pos = lines[upto - 1][1]
            try:
                save_cursor(self.directory, pos)
            except OSError as exc:
                # the acks are not lost: the stream removes the re-send
                log.warning("forward: cannot save the cursor (%s); the batch goes again", exc)
                self.tail.seek(self.committed)
                self._dependency_down("results", "forward", exc)
                return
            self.committed = pos
            self.backlog.committed(pos, upto)
            self.done += upto
        self.gauge.set(self.backlog.scan())
        if failure is not None:
            self.tail.seek(self.committed)
            self._count(C.FORWARD_ERRORS)
            self._dependency_down("nats", "forward", failure)
            return
        self._dependency_up("forward")

    def _send_raw(self) -> bool:
        """Publish up to RAW_BATCH raw messages; ack each acknowledged one.  False if none."""
        assert self.raw is not None
        claims: list[OverflowClaim] = []
        items: list[tuple[str, bytes, dict[str, str]]] = []
        while len(claims) < RAW_BATCH:
            claim = self.raw.claim(self._me)
            if claim is None:
                break
            try:
                payload = claim.read()
            except FileNotFoundError:
                continue  # recovered by the supervisor meanwhile
            except UntrustedFile as exc:
                log.warning("%s: untrusted raw spill file (%s); dropped", claim.msgid,
                            exc.reason)
                self._count(C.FORWARD_DROPPED)
                self.raw.ack(claim)
                continue
            _, message = split_payload(payload)
            claims.append(claim)
            items.append((self._raw_subject, bytes(message),
                          {"Nats-Msg-Id": f"{self.f.host}:{claim.msgid}:raw",
                           "Ringtrap-Host": self.f.host, "Ringtrap-Id": claim.msgid}))
        if not claims:
            return False
        self._state(ProcState.BUSY)
        self._title(f"forwarding {len(claims)} raw messages")
        try:
            results = self._run(self.broker.publish(items))
        except Exception as exc:
            results = [exc] * len(items)
        failure: BaseException | None = None
        for claim, res in zip(claims, results, strict=True):
            if isinstance(res, BaseException) and _retryable(res):
                failure = failure or res
                self.raw.release(claim)
                continue
            if isinstance(res, BaseException):
                log.warning("%s: raw message over the server's payload limit (%d); dropped",
                            claim.msgid, self.broker.max_payload)
                self._count(C.FORWARD_DROPPED)
            elif not res.duplicate:
                self._count(C.FORWARD_RAW_FORWARDED)
            self.raw.ack(claim)
        if failure is not None:
            self._count(C.FORWARD_ERRORS)
            self._dependency_down("nats", "forward", failure)
        return True

    def _record_item(self, data: bytes) -> tuple[str, bytes, dict[str, str]] | None:
        """The subject, payload and headers of one record line; None if it is no record."""
        try:
            record = json.loads(data)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
            mid = message_id(self.f.host, record)
        except ValueError as exc:
            log.warning("forward: skipping a result line that is no record (%s)", exc)
            return None
        headers = {"Nats-Msg-Id": mid, "Ringtrap-Host": self.f.host,
                   "Ringtrap-Id": str(record["id"])}
        size = record.get("size")
        if self.f.raw and isinstance(size, int) and size > self.f.raw_max_bytes:
            headers["Ringtrap-Raw"] = "too-large"
        return self._record_subject, data, headers


def child_main(cfg: Config, index: int, row_index: int) -> int:
    """Run the forwarder in a freshly forked child; return its exit code.

    Expects :func:`ringtrap.work.child.boot` done.  Attaches the process
    table (its row ``row_index``), reads the cursor, then loops: it connects
    to the broker in the loop, so a broker that is away is a backoff, not a
    failed start.  TERM, INT and QUIT stop it after the batch in flight
    (at most ``forward.ack_timeout``), USR1 reopens the log.
    """

    def setup(parent: int, closing: contextlib.ExitStack) -> Forwarder:
        try:
            import nats  # noqa: F401
        except ImportError:
            raise SetupError("forward.enabled needs the NATS client:"
                             " pip install 'ringtrap[fleet]'") from None
        table = closing.enter_context(ProcTable.attach(cfg.ring.name))
        row = table.register(Role.FORWARDER, index, row=row_index)
        return Forwarder(cfg, row, index, parent_pid=parent)

    return main(cfg, Role.FORWARDER, index, setup, log)
