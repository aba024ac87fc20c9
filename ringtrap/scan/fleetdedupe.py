"""Campaign repeats across the fleet: the first scan of a fingerprint shared through JetStream.

With ``dedupe.store = "nats"`` a worker's :class:`FleetDedupe` asks this
host's SQLite store (:class:`~ringtrap.scan.dedupe.DedupeStore`) first and,
on a miss, a JetStream key-value bucket (``dedupe.bucket``, entries expiring
after ``dedupe.window``) that every trap of the fleet shares: a campaign
first scanned on one trap is recognised, and with ``dedupe.skip_scan`` not
scanned again, on every other.  A first scan is written to both; the bucket
keeps the first writer's (``create`` refuses a key that exists), so two traps
meeting a new campaign at once both scan it and the fleet keeps one.

It stays a cache: the bucket is asked with a short timeout
(:data:`TIMEOUT`; the first call, which connects, :data:`CONNECT_TIMEOUT`),
and after a failure it is left alone for
:data:`RETRY_AFTER` seconds, so a broker that is away costs a worker one
timeout, then nothing: the host falls back to its own store and scans.

The worker is synchronous and the client is asyncio: the client runs in a
thread of its own with its own event loop, started on first use in the
process that uses it (a store built before a fork starts its thread after).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
from typing import Any

from ringtrap.config import Config
from ringtrap.scan.dedupe import DedupeStore, First, symbols_of

log = logging.getLogger(__name__)

TIMEOUT = 0.25
# the first call connects (and may create the bucket): given longer
CONNECT_TIMEOUT = 3.0
RETRY_AFTER = 30.0


class FleetDedupe:
    """This host's store, backed by the fleet's bucket; the interface of DedupeStore."""

    def __init__(self, cfg: Config, local: DedupeStore) -> None:
        self.local = local
        self.window = local.window
        self.f = cfg.forward
        self.bucket = cfg.dedupe.bucket
        self.errors = 0
        self.fleet_hits = 0
        self._pid = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._kv: Any = None
        self._nc: Any = None
        self._down_until = 0.0

    # -- the interface the Processor uses -------------------------------------

    def lookup(self, fingerprint: str, now: float) -> First | None:
        """This host's first result, else the fleet's within the window; None on a miss."""
        first = self.local.lookup(fingerprint, now)
        if first is not None:
            return first
        raw = self._call(self._get(fingerprint))
        if not raw:
            return None
        try:
            d = json.loads(raw)
            first = First(str(d["msgid"]), float(d["at"]), str(d["verdict"]), d.get("score"),
                          d.get("required"), tuple(str(r) for r in d.get("rules") or ()),
                          d.get("scanner"), d.get("action"), symbols_of(d.get("symbols")))
        except (ValueError, KeyError, TypeError):
            return None
        if first.at <= now - self.window:
            return None
        self.fleet_hits += 1
        # this host's next repeats are found without asking the broker
        self.local.remember(fingerprint, first)
        return first

    def remember(self, fingerprint: str, first: First) -> None:
        """Store ``first`` here and, unless another trap was first, in the fleet's bucket."""
        self.local.remember(fingerprint, first)
        value = json.dumps({"msgid": first.msgid, "at": first.at, "verdict": first.verdict,
                            "score": first.score, "required": first.required,
                            "rules": list(first.rules), "scanner": first.scanner,
                            "action": first.action, "symbols": first.symbols,
                            "host": self.f.host}).encode()
        self._call(self._create(fingerprint, value))

    def close(self) -> None:
        self.local.close()
        loop, self._loop = self._loop, None
        if loop is not None and self._pid == os.getpid():
            if self._nc is not None:
                fut = asyncio.run_coroutine_threadsafe(self._nc.close(), loop)
                with contextlib.suppress(Exception):  # closing a cache: nothing to lose
                    fut.result(1.0)
            loop.call_soon_threadsafe(loop.stop)

    # -- the client's thread ----------------------------------------------------

    def _call(self, coro: Any) -> Any:
        """Run ``coro`` on the client's loop within TIMEOUT; None on any failure."""
        if time.monotonic() < self._down_until:
            coro.close()
            return None
        loop = self._ensure_loop()
        fut = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return fut.result(TIMEOUT if self._kv is not None else CONNECT_TIMEOUT)
        except Exception as exc:
            fut.cancel()
            self._failed(exc)
            return None

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None or self._pid != os.getpid():
            # a thread does not cross a fork: start this process's own
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="fleet-dedupe", daemon=True).start()
            self._loop, self._pid, self._kv, self._nc = loop, os.getpid(), None, None
        return self._loop

    async def _bucket(self) -> Any:
        if self._kv is not None and self._nc is not None and self._nc.is_connected:
            return self._kv
        import nats
        from nats.js.api import KeyValueConfig, StorageType
        from nats.js.errors import BucketNotFoundError

        if self._nc is not None:
            await self._nc.close()
        opts: dict[str, Any] = {"servers": list(self.f.servers), "connect_timeout": 1,
                                "allow_reconnect": False,
                                "name": f"ringtrap-dedupe {self.f.host}"}
        if self.f.creds_file is not None:
            opts["user_credentials"] = str(self.f.creds_file)
        if self.f.nkey_seed_file is not None:
            opts["nkeys_seed"] = str(self.f.nkey_seed_file)
        self._nc = await nats.connect(**opts)
        js = self._nc.jetstream(timeout=TIMEOUT * 4)
        try:
            self._kv = await js.key_value(self.bucket)
        except BucketNotFoundError:
            self._kv = await js.create_key_value(KeyValueConfig(
                bucket=self.bucket, ttl=self.window, storage=StorageType.FILE,
                replicas=self.f.replicas, history=1))
            log.info("dedupe: created bucket %s (entries kept %.0f s)", self.bucket,
                     self.window)
        return self._kv

    async def _get(self, key: str) -> bytes | None:
        from nats.js.errors import KeyNotFoundError

        kv = await self._bucket()
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:
            return None
        return bytes(entry.value) if entry.value else None

    async def _create(self, key: str, value: bytes) -> None:
        from nats.js.errors import KeyWrongLastSequenceError

        kv = await self._bucket()
        with contextlib.suppress(KeyWrongLastSequenceError):  # another trap was first
            await kv.create(key, value)

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        self._down_until = time.monotonic() + RETRY_AFTER
        self._kv = None
        if self.errors == 1 or self.errors % 100 == 0:
            log.warning("dedupe: the fleet's bucket %s is unavailable (%s); this host's own"
                        " store only for %.0f s (%d failure(s))", self.bucket,
                        exc or type(exc).__name__, RETRY_AFTER, self.errors)
