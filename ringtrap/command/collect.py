"""``ringtrap collect``: the fleet's hub, the traps' records from JetStream into PostgreSQL.

A durable pull consumer (``collect.durable``) on the stream the traps
forward to reads ``<prefix>.*.record`` in batches of ``collect.batch``.  Each
batch is loaded in one transaction: COPY into session-local staging tables,
then one ``INSERT ... ON CONFLICT (msg_key) DO NOTHING`` into ``messages``
whose returned keys decide which rows of the per-message tables
(recipients, rules, URLs, domains, attachments) go in.  Only after the
commit are the messages acknowledged, so:

- a collector SIGKILLed mid-batch rolls the transaction back (PostgreSQL
  does) and the broker redelivers the unacknowledged messages after
  ``ack_wait``; a collector killed after the commit and before the acks gets
  them again too, and the conflict on ``msg_key`` (the ``Nats-Msg-Id``,
  ``<host>:<id>``) makes the second load a no-op: one row per record,
  whatever is redelivered or re-sent;
- a message that is no record (not JSON, no id) is logged, acknowledged and
  never loaded: redelivering it would change nothing;
- while the broker is away the collector retries every second; when the
  database is, it exits non-zero (its unit restarts it) with nothing acked.

The schema is versioned: ``schema_version`` holds the migrations applied,
each applied once in its own transaction under an advisory lock, so two
collectors starting together do not race.

Raw messages (``<prefix>.*.raw``, with ``collect.raw_dir``) go to a Maildir
archive, ``<raw_dir>/<host>/YYYY-MM-DD/new/<id>`` (the UTC day of the id),
not to the database: they can be MiBs each, and in PostgreSQL they would
swell the tables every analysis query and backup walks, while a Maildir is
what mail tools (sa-learn, mutt, the trap's own archive) read.  A second
durable consumer (``<durable>-raw``) writes each to ``tmp/``, fsyncs it and
links it into ``new/`` under its id, so a redelivered message finds its file
there and is only acknowledged; host and id come from the message's headers
and are checked (a subject token, a ringtrap id) before they name a path.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ringtrap.base import ids
from ringtrap.config import Config
from ringtrap.config.values import subject_token_ok

log = logging.getLogger(__name__)

ADVISORY_LOCK = 0x72696E67  # "ring": serialises migrations across collectors

MIGRATIONS: tuple[tuple[int, str], ...] = (
    (1, """
CREATE TABLE messages (
    msg_key text PRIMARY KEY,            -- Nats-Msg-Id: <host>:<id>[:stage]
    host text NOT NULL,
    id text NOT NULL,
    received timestamptz,
    size integer,
    verdict text,
    reason text,
    score double precision,
    required double precision,
    scanner text,
    scanner_host text,
    action text,
    from_addr text,
    subject text,
    message_id text,
    env_sender text,
    client_address inet,
    client_helo text,
    relay_ip inet,
    relay_helo text,
    relay_source text,
    from_domain text,
    reply_to_domain text,
    return_path_domain text,
    body_sha256 text,
    fingerprint text,
    duplicate_of text,
    parse_error text,
    record jsonb NOT NULL,               -- the whole record as the trap wrote it
    stream_seq bigint,
    collected_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX messages_received ON messages (received);
CREATE INDEX messages_host_received ON messages (host, received);
CREATE INDEX messages_fingerprint ON messages (fingerprint);
CREATE INDEX messages_relay_ip ON messages (relay_ip);
CREATE TABLE recipients (msg_key text NOT NULL REFERENCES messages ON DELETE CASCADE,
                         recipient text NOT NULL);
CREATE INDEX recipients_key ON recipients (msg_key);
CREATE TABLE rules (msg_key text NOT NULL REFERENCES messages ON DELETE CASCADE,
                    rule text NOT NULL, score double precision);
CREATE INDEX rules_rule ON rules (rule);
CREATE INDEX rules_key ON rules (msg_key);
CREATE TABLE urls (msg_key text NOT NULL REFERENCES messages ON DELETE CASCADE,
                   url text NOT NULL);
CREATE INDEX urls_key ON urls (msg_key);
CREATE TABLE url_domains (msg_key text NOT NULL REFERENCES messages ON DELETE CASCADE,
                          domain text NOT NULL);
CREATE INDEX url_domains_domain ON url_domains (domain);
CREATE TABLE attachments (msg_key text NOT NULL REFERENCES messages ON DELETE CASCADE,
                          sha256 text, name text, type text, size bigint);
CREATE INDEX attachments_sha256 ON attachments (sha256);
"""),
)

_MESSAGE_COLUMNS = (
    "msg_key", "host", "id", "received", "size", "verdict", "reason", "score", "required",
    "scanner", "scanner_host", "action", "from_addr", "subject", "message_id", "env_sender",
    "client_address", "client_helo", "relay_ip", "relay_helo", "relay_source", "from_domain",
    "reply_to_domain", "return_path_domain", "body_sha256", "fingerprint", "duplicate_of",
    "parse_error", "record", "stream_seq",
)
_CHILDREN: dict[str, tuple[str, ...]] = {
    "recipients": ("msg_key", "recipient"),
    "rules": ("msg_key", "rule", "score"),
    "urls": ("msg_key", "url"),
    "url_domains": ("msg_key", "domain"),
    "attachments": ("msg_key", "sha256", "name", "type", "size"),
}


def _text(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _inet(v: Any) -> str | None:
    """An address PostgreSQL's inet takes, or None (the record keeps what it was)."""
    if not isinstance(v, str):
        return None
    try:
        return str(ipaddress.ip_address(v.strip("[]")))
    except ValueError:
        return None


def _strip_nul(v: Any) -> Any:
    # PostgreSQL text and jsonb refuse NUL; a record may carry one from a hostile message
    if isinstance(v, str):
        return v.replace("\x00", "\ufffd")
    if isinstance(v, list):
        return [_strip_nul(x) for x in v]
    if isinstance(v, dict):
        return {_strip_nul(k): _strip_nul(x) for k, x in v.items()}
    return v


@dataclass
class Rows:
    """One batch's rows for COPY, keyed by table."""

    messages: list[tuple[Any, ...]] = field(default_factory=list)
    children: dict[str, list[tuple[Any, ...]]] = field(
        default_factory=lambda: {t: [] for t in _CHILDREN})
    keys: set[str] = field(default_factory=set)

    def add(self, key: str, record: dict[str, Any], seq: int | None,
            has_nul: bool = True) -> None:
        """Add one record (a repeat of a key already in the batch is left out).

        ``has_nul`` False (its JSON holds no ``\u0000``) skips the walk that
        replaces NUL characters.
        """
        if key in self.keys:
            return
        self.keys.add(key)
        if has_nul:
            record = _strip_nul(record)
        env = record.get("envelope") if isinstance(record.get("envelope"), dict) else {}
        host = key.split(":", 1)[0]
        self.messages.append((
            key, host, str(record.get("id")), _text(record.get("received")),
            _int(record.get("size")), _text(record.get("verdict")), _text(record.get("reason")),
            _num(record.get("score")), _num(record.get("required")),
            _text(record.get("scanner")), _text(record.get("scanner_host")),
            _text(record.get("action")), _text(record.get("from")),
            _text(record.get("subject")), _text(record.get("message_id")),
            _text(env.get("sender")), _inet(env.get("client_address")),
            _text(env.get("client_helo")), _inet(record.get("relay_ip")),
            _text(record.get("relay_helo")), _text(record.get("relay_source")),
            _text(record.get("from_domain")), _text(record.get("reply_to_domain")),
            _text(record.get("return_path_domain")), _text(record.get("body_sha256")),
            _text(record.get("fingerprint")), _text(record.get("duplicate_of")),
            _text(record.get("parse_error")), json.dumps(record), seq,
        ))
        c = self.children
        for r in env.get("recipients") or ():
            if isinstance(r, str):
                c["recipients"].append((key, r))
        symbols = record.get("symbols")
        if isinstance(symbols, dict) and symbols:
            for name, sym in symbols.items():
                score = _num(sym.get("score")) if isinstance(sym, dict) else None
                c["rules"].append((key, str(name), score))
        else:
            for name in record.get("rules") or ():
                if isinstance(name, str):
                    c["rules"].append((key, name, None))
        for u in record.get("urls") or ():
            if isinstance(u, str):
                c["urls"].append((key, u))
        for d in record.get("url_domains") or ():
            if isinstance(d, str):
                c["url_domains"].append((key, d))
        for a in record.get("attachments") or ():
            if isinstance(a, dict):
                c["attachments"].append((key, _text(a.get("sha256")), _text(a.get("name")),
                                         _text(a.get("type")), _int(a.get("size"))))


async def migrate(conn: Any) -> int:
    """Apply the migrations not yet applied; returns the schema version.  Idempotent.

    Each migration commits with its row in ``schema_version``; dying in one
    leaves it unapplied (PostgreSQL's DDL is transactional).
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK,))
        await conn.execute("CREATE TABLE IF NOT EXISTS schema_version ("
                           " version integer PRIMARY KEY,"
                           " applied_at timestamptz NOT NULL DEFAULT now())")
        cur = await conn.execute("SELECT coalesce(max(version), 0) FROM schema_version")
        row = await cur.fetchone()
        have = int(row[0]) if row else 0
        for version, sql in MIGRATIONS:
            if version <= have:
                continue
            await conn.execute(sql)
            await conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
            log.info("collect: schema migrated to version %d", version)
            have = version
    return have


async def _staging(conn: Any) -> None:
    """Session-local staging tables, emptied by every commit."""
    for table in ("messages", *_CHILDREN):
        await conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS in_{table}"
                           f" (LIKE {table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
    await conn.execute("CREATE TEMP TABLE IF NOT EXISTS in_new (msg_key text)"
                       " ON COMMIT DELETE ROWS")
    await conn.commit()


async def load(conn: Any, rows: Rows) -> int:
    """Load one batch in one transaction; returns how many messages were new.

    Dying before the commit loads nothing; a batch loaded before is a no-op.
    """
    async with conn.transaction():
        cur = conn.cursor()
        cols = ", ".join(_MESSAGE_COLUMNS)
        async with cur.copy(f"COPY in_messages ({cols}) FROM STDIN") as copy:
            for r in rows.messages:
                await copy.write_row(r)
        for table, columns in _CHILDREN.items():
            if rows.children[table]:
                async with cur.copy(f"COPY in_{table} ({', '.join(columns)}) FROM STDIN") as copy:
                    for r in rows.children[table]:
                        await copy.write_row(r)
        await cur.execute(
            f"WITH ins AS (INSERT INTO messages ({cols}) SELECT {cols} FROM in_messages"
            f" ON CONFLICT (msg_key) DO NOTHING RETURNING msg_key)"
            f" INSERT INTO in_new SELECT msg_key FROM ins")
        new = cur.rowcount
        for table, columns in _CHILDREN.items():
            if rows.children[table]:
                names = ", ".join(columns)
                await cur.execute(f"INSERT INTO {table} ({names}) SELECT {names} FROM"
                                  f" in_{table} JOIN in_new USING (msg_key)")
    return int(new)


def store_raw(root: Path, host: str, msgid: str, data: bytes) -> bool:
    """Put one raw message into the Maildir archive; False if it was there already.

    Raises ValueError for a host or id that cannot name a file.  Dying midway
    leaves at most a file in ``tmp/``; the message is never half-visible in
    ``new/`` (a link of a complete, fsynced file).
    """
    if not subject_token_ok(host) or not ids.is_valid(msgid):
        raise ValueError(f"host {host!r}, id {msgid!r}")
    day = time.strftime("%Y-%m-%d", time.gmtime(ids.id_time(msgid)))
    box = root / host / day
    new = box / "new" / msgid
    if new.exists():
        return False
    for sub in ("tmp", "new", "cur"):
        (box / sub).mkdir(parents=True, exist_ok=True, mode=0o750)
    tmp = box / "tmp" / f"{msgid}.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW,
                 0o640)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, new)
    except FileExistsError:
        return False  # another collector stored it a moment ago
    finally:
        os.unlink(tmp)
    dfd = os.open(new.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return True


class Collector:
    """The consume -> COPY -> commit -> ack loop; see the module docstring."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.c = cfg.collect
        self.stopping = asyncio.Event()
        self.loaded = 0
        self.repeats = 0
        self.raw_stored = 0

    async def run(self) -> int:
        import nats
        import nats.errors
        import psycopg
        from nats.js import api

        conn = await psycopg.AsyncConnection.connect(self.c.database)
        try:
            version = await migrate(conn)
            await _staging(conn)
            opts: dict[str, Any] = {"servers": list(self.c.servers), "name": "ringtrap-collect",
                                    "max_reconnect_attempts": -1, "reconnect_time_wait": 1,
                                    "error_cb": self._on_error,
                                    "disconnected_cb": self._on_disconnected,
                                    "reconnected_cb": self._on_reconnected}
            if self.c.creds_file is not None:
                opts["user_credentials"] = str(self.c.creds_file)
            nc = await nats.connect(**opts)
            try:
                js = nc.jetstream(timeout=10)
                sub = None
                while sub is None and not self.stopping.is_set():
                    try:
                        sub = await js.pull_subscribe(
                            f"{self.c.subject_prefix}.*.record", durable=self.c.durable,
                            stream=self.c.stream,
                            config=api.ConsumerConfig(
                                ack_wait=self.c.ack_wait,
                                max_ack_pending=max(1000, 4 * self.c.batch)))
                    except nats.errors.Error as exc:
                        # no trap has made the stream yet, or the broker is electing
                        log.warning("collect: no consumer on %s yet (%s); retrying",
                                    self.c.stream, exc or type(exc).__name__)
                        await asyncio.sleep(2.0)
                if sub is None:
                    return 0
                raw_task = (asyncio.create_task(self._raw_loop(js))
                            if self.c.raw_dir is not None else None)
                log.info("collect: %s.*.record of stream %s into PostgreSQL (schema %d),"
                         " consumer %s", self.c.subject_prefix, self.c.stream, version,
                         self.c.durable)
                while not self.stopping.is_set():
                    try:
                        await self._batch(sub, conn)
                    except nats.errors.Error as exc:
                        # the broker away or electing: nothing was acked, ask again soon
                        log.warning("collect: %s; retrying", exc or type(exc).__name__)
                        await asyncio.sleep(1.0)
                if raw_task is not None:
                    await raw_task
            finally:
                with contextlib.suppress(Exception):
                    await nc.close()
        finally:
            await conn.close()
        log.info("collect: stopped after %d records loaded (%d repeats), %d raw messages"
                 " stored", self.loaded, self.repeats, self.raw_stored)
        return 0

    async def _raw_loop(self, js: Any) -> None:
        """The raw messages' consumer: Maildir, then ack; until the collector stops."""
        import nats.errors
        from nats.js import api

        assert self.c.raw_dir is not None
        sub = None
        while not self.stopping.is_set():
            try:
                if sub is None:
                    sub = await js.pull_subscribe(
                        f"{self.c.subject_prefix}.*.raw", durable=f"{self.c.durable}-raw",
                        stream=self.c.stream,
                        config=api.ConsumerConfig(ack_wait=self.c.ack_wait))
                try:
                    msgs = await sub.fetch(min(self.c.batch, 64), timeout=self.c.batch_wait)
                except (TimeoutError, nats.errors.TimeoutError):
                    continue
                for m in msgs:
                    h = m.headers or {}
                    try:
                        stored = await asyncio.to_thread(
                            store_raw, self.c.raw_dir, h.get("Ringtrap-Host", ""),
                            h.get("Ringtrap-Id", ""), m.data)
                    except ValueError as exc:
                        log.warning("collect: %s: a raw message that names no file (%s);"
                                    " not stored", m.subject, exc)
                        stored = False
                    except OSError as exc:
                        # the disk: leave the rest unacked, the broker hands them out again
                        log.error("collect: cannot store a raw message in %s (%s)",
                                  self.c.raw_dir, exc)
                        await asyncio.sleep(5.0)
                        break
                    self.raw_stored += stored
                    await m.ack()  # only now: the file is in new/
            except nats.errors.Error as exc:
                log.warning("collect: raw messages: %s; retrying", exc or type(exc).__name__)
                await asyncio.sleep(1.0)

    async def _on_error(self, exc: Exception) -> None:
        # every refused reconnect: the warnings below say it once per outage
        log.debug("collect: NATS client: %s", exc)

    async def _on_disconnected(self) -> None:
        log.warning("collect: disconnected from the broker; reconnecting")

    async def _on_reconnected(self) -> None:
        log.info("collect: reconnected to the broker")

    async def _batch(self, sub: Any, conn: Any) -> None:
        import nats.errors

        try:
            msgs = await sub.fetch(self.c.batch, timeout=self.c.batch_wait)
        except (TimeoutError, nats.errors.TimeoutError):
            return
        rows = Rows()
        for m in msgs:
            key = (m.headers or {}).get("Nats-Msg-Id")
            try:
                record = json.loads(m.data)
                if not isinstance(record, dict) or not key:
                    raise ValueError("not a record with a Nats-Msg-Id")
            except ValueError as exc:
                log.warning("collect: %s: skipping a message that is no record (%s)",
                            m.subject, exc)
                continue
            rows.add(key, record, m.metadata.sequence.stream if m.metadata else None,
                     has_nul=b"\\u0000" in m.data)
        new = await load(conn, rows) if rows.messages else 0
        # only now: the rows are committed
        for m in msgs:
            await m.ack()
        self.loaded += new
        self.repeats += len(msgs) - new


def run(cfg: Config) -> int:
    """``ringtrap collect``: run until TERM or INT; the exit code."""
    # a stop asked for before the event loop runs (the imports take a while)
    early: list[int] = []

    def note(signum: int, frame: object) -> None:
        early.append(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, note)
    try:
        import nats  # noqa: F401
        import psycopg  # noqa: F401
    except ImportError:
        log.error("ringtrap collect needs the NATS and PostgreSQL clients:"
                  " pip install 'ringtrap[hub]'")
        return 69  # EX_UNAVAILABLE

    async def main() -> int:
        collector = Collector(cfg)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, collector.stopping.set)
        if early:
            collector.stopping.set()
        return await collector.run()

    return asyncio.run(main())
