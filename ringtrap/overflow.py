"""The overflow store: a maildir-like spill directory on tmpfs.

The ingest spills here when the ring is full or a message is larger than a
slot; workers take from here when the ring is empty; the supervisor requeues
what a dead process held, and drops the backlog daily.

Tree under ``path`` (every file reaches its directory by one ``os.rename``, so
a reader never sees a partial message)::

    tmp/     <msgid>,P=<pid>.<start>                     being written
    new/     <msgid>,S=<size>,A=<attempts>                ready
    cur/     <msgid>,S=<size>,A=<attempts>,P=<pid>.<start> claimed by that process
    failed/  <msgid>,S=<size>,A=<attempts>                quarantined
             <msgid>,S=<size>,A=<attempts>.reason         why (written first)

failed/ has its own cap (``quarantine_max_bytes``, oldest dropped first) and
never counts toward ``max_bytes``: a pile of poison must not refuse spills.

Message ids sort by arrival, so names sort oldest first. Sizes live in the
names so counting bytes needs no ``stat()`` per file. Owners are
``(pid, start)`` identities: a pid alone is reused.

Crash model: any process may die at any instant. A dead writer leaves a tmp
file (garbage: its client never got OK); a dead claimer leaves a cur file
(requeued with attempts+1 by :meth:`Overflow.recover_dead`). Nothing else can
be left half-done because every state change is a single rename or unlink.

Each process (and the supervisor's metrics thread) makes its own
:class:`Overflow`; an instance is not shared between threads.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

from ringtrap.base import ids, proc
from ringtrap.base.proc import Identity
from ringtrap.store.claim import PurgeResult, Quarantined, QuarantineStore
from ringtrap.store.spill import SpillWriter
from ringtrap.store.spillcount import OverflowStats, TreeCounts
from ringtrap.store.spilltree import (
    REASON_SUFFIX,
    SUBDIRS,
    OverflowClaimLost,
    OverflowFull,
    OverflowStoreError,
    UntrustedFile,
    check_id,
    drop,
    fs_type,
    open_trusted,
    owner_tag,
    parse_owner,
    parse_ready,
    ready_name,
    unlink_quietly,
    write_all,
)

log = logging.getLogger(__name__)

DEFAULT_QUARANTINE_MAX = 64 << 20

# How many of the oldest ready names one listing keeps for claim(). A window
# bounds each worker's memory at any depth; the listing it costs is amortised
# over this many claims.
CLAIM_WINDOW = 8192
# Newest first: mail keeps arriving behind a window, so it is listed again once
# it is this many times as old as its listing took (listings then cost a
# worker at most about 2% of its time at any depth), and never more often
# than every RELIST_MIN seconds.
RELIST_FACTOR = 50
RELIST_MIN = 1.0
DRAIN_ORDERS = ("oldest", "newest")


@dataclass(frozen=True, slots=True)
class OverflowClaim:
    """A ready message moved into cur/ under ``owner`` (a :class:`StoreClaim`);
    ack, release or quarantine it."""

    msgid: str
    size: int
    attempts: int
    path: Path
    received: float
    owner: Identity
    overflow: Overflow = field(repr=False, compare=False)

    store: ClassVar[str] = "overflow"

    def read(self) -> bytes:
        """Return the whole message; UntrustedFile if it is not one the trap wrote."""
        with self.open() as f:
            return f.read()

    def open(self) -> BinaryIO:
        """Open the message for reading (the caller closes it); see :func:`open_trusted`."""
        return open_trusted(self.path, self.size)

    def peek(self, n: int) -> bytes | None:
        """The file's first ``n`` bytes; None if it is unreadable or untrusted."""
        try:
            with self.open() as f:
                return f.read(n)
        except (OSError, UntrustedFile):
            return None

    def ack(self) -> None:
        """See :meth:`Overflow.ack`."""
        self.overflow.ack(self)

    def release(self, *, count_attempt: bool = False) -> None:
        """See :meth:`Overflow.release`; the name carries the attempts, so a
        counted one is given back under the new count."""
        self.overflow.release(
            dataclasses.replace(self, attempts=self.attempts + 1) if count_attempt else self)

    def quarantine(self, reason: str, into: QuarantineStore) -> Quarantined:
        """See :meth:`Overflow.quarantine`: into its own store's failed/."""
        return self.overflow.quarantine(self, reason)



_instances: weakref.WeakSet[Overflow] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for store in list(_instances):
        store._forked()


os.register_at_fork(after_in_child=_after_fork_in_child)


class Overflow:
    """The spill directory at ``path``, capped at ``max_bytes`` of messages.

    ``drain_order`` is the claim order (``overflow.drain_order``): "oldest"
    or "newest" first; attempted messages come after the fresh ones either way.
    ``is_alive`` and ``clock`` are seams for tests: owner liveness (default
    :func:`ringtrap.base.proc.is_alive`) and the monotonic clock that paces refreshes
    of the byte-cap estimate and of a newest-first claim window.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        max_bytes: int,
        *,
        mode: int = 0o700,
        create: bool = True,
        quarantine_max_bytes: int = DEFAULT_QUARANTINE_MAX,
        refresh_interval: float = 1.0,
        drain_order: str = "oldest",
        is_alive: Callable[[Identity], bool] = proc.is_alive,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Open (and by default create) the tree; dying midway leaves only empty dirs."""
        if max_bytes <= 0:
            raise ValueError(f"overflow max_bytes must be positive, got {max_bytes}")
        if drain_order not in DRAIN_ORDERS:
            raise ValueError(f"overflow drain_order must be one of {DRAIN_ORDERS}, got"
                             f" {drain_order!r}")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.quarantine_max_bytes = quarantine_max_bytes
        self.refresh_interval = refresh_interval
        self._is_alive = is_alive
        self._clock = clock
        self._file_mode = mode & 0o666
        self._dirs = {sub: self.path / sub for sub in SUBDIRS}
        # plain strings on the spill path: pathlib joins cost a third of a spill
        self._tmp_prefix = f"{self._dirs['tmp']}/"
        self._new_prefix = f"{self._dirs['new']}/"
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            for d in (self.path, *self._dirs.values()):
                try:
                    os.mkdir(d, mode)
                except FileExistsError:
                    continue  # an existing tree keeps the mode it was given
                os.chmod(d, mode)  # mkdir's mode is filtered by the umask
        for sub, d in self._dirs.items():
            if not d.is_dir():
                raise FileNotFoundError(f"overflow {self.path}: missing {sub}/ (create=False)")
        self._fstype = fs_type(self.path)
        if self._fstype != "tmpfs":
            log.warning(
                "overflow %s is on %s, not tmpfs: spills will cost disk I/O",
                self.path,
                self._fstype,
            )
        self._counts = TreeCounts(self.path, self._dirs, tmpfs=self._fstype == "tmpfs")
        # in reverse claim order: pop() gives the next name to claim
        self._claim_cache: list[str] = []
        self.newest = drain_order == "newest"
        self._listed_at = float("-inf")  # when the window was listed (monotonic)
        self._relist_every = RELIST_MIN
        self._own_tmp: set[str] = set()  # tmp names of this instance's open writers
        self._inflight = 0  # bytes reserved by open writers
        self._used = 0
        self._tag = ""  # see owner_tag()
        self._refreshed_at = float("-inf")
        self._refresh_usage()
        _instances.add(self)

    def _forked(self) -> None:
        # The child owns none of the parent's writers.
        self._own_tmp = set()
        self._inflight = 0
        self._tag = ""

    def _owner_tag(self) -> str:
        """This process's owner tag for tmp/ names ("P=<pid>.<start>"), made once."""
        if not self._tag:
            self._tag = owner_tag(proc.self_identity())
        return self._tag

    @property
    def is_tmpfs(self) -> bool:
        """True if the tree lives on tmpfs (as it should: spills stay in RAM)."""
        return self._fstype == "tmpfs"

    def __repr__(self) -> str:
        return f"Overflow({str(self.path)!r}, max_bytes={self.max_bytes})"

    def _refresh_usage(self) -> None:
        total = (
            self._counts.summary("new").nbytes
            + self._counts.summary("cur").nbytes
            + self._counts.tmp_bytes(exclude=self._own_tmp)
        )
        self._used = total
        self._refreshed_at = self._clock()

    def reserve(self, n: int) -> None:
        """Count ``n`` more bytes toward the cap or raise OverflowFull.

        The estimate only grows between refreshes (removals by other processes
        are not seen), so it errs toward refusing early; a refused spill
        refreshes it from a listing at most once per ``refresh_interval``.
        """
        if self._used + self._inflight + n > self.max_bytes:
            if self._clock() - self._refreshed_at >= self.refresh_interval:
                self._refresh_usage()
            if self._used + self._inflight + n > self.max_bytes:
                raise OverflowFull(self.path, self.max_bytes, self._used + self._inflight, n)
        self._inflight += n

    def resync(self) -> None:
        """Re-read the bytes held, for a directory with several producers.

        A producer's estimate sees only its own spills between refusals, so
        with several (the scan workers handing on to the forwarder) each could
        fill the cap alone.  Called before each spill, this re-reads the
        listing once a second, and every time once the estimate is past half
        the cap: then only spills racing each other pass it, by a few messages.
        """
        stale = self._clock() - self._refreshed_at >= self.refresh_interval
        if stale or 2 * (self._used + self._inflight) > self.max_bytes:
            self._refresh_usage()

    def _unreserve(self, n: int, *, stored: bool) -> None:
        self._inflight -= n
        if stored:
            self._used += n

    def spill(self, msgid: str, data: bytes, attempts: int = 0) -> str:
        """Store ``data`` as a ready message and return its new/ name.

        Raises OverflowFull before anything is written if the cap would be
        exceeded. Dying midway leaves at most a tmp file of this process,
        removed by :meth:`recover_dead`; the message is never half-visible.
        """
        check_id(msgid, attempts)
        size = len(data)
        # Reserved as in flight, not yet counted as used: a refresh of the
        # usage from a listing (another thread) must not lose the reservation.
        self.reserve(size)  # refuse before touching the filesystem
        stored = False
        try:
            tmp = self._write_tmp(msgid, data)
            name = f"{msgid},S={size},A={attempts}"  # ready_name(), inline on the hot path
            try:
                os.rename(tmp, self._new_prefix + name)
            except BaseException:
                unlink_quietly(tmp)
                raise
            stored = True
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise self.filesystem_full(size) from e
            raise
        finally:
            self._unreserve(size, stored=stored)
        return name

    def spill_stream(self, msgid: str, attempts: int = 0) -> SpillWriter:
        """Open a writer for one message, to be fed in chunks and committed.

        Use it as a context manager: leaving the block without ``commit()``
        aborts. Dying midway leaves a tmp file that :meth:`recover_dead` removes.
        """
        return SpillWriter(self, msgid, attempts)

    def open_tmp(self, msgid: str) -> tuple[Path, int]:
        """Create this process's tmp/ file for a streamed spill of ``msgid``: (path, fd).

        It counts as this instance's own until :meth:`settle`, so a usage
        refresh meanwhile does not count its bytes twice.
        """
        tmp = self._dirs["tmp"] / f"{msgid},{self._owner_tag()}"
        fd = self._create(tmp)
        self._own_tmp.add(tmp.name)
        return tmp, fd

    def publish(self, tmp: Path, name: str) -> None:
        """Make a finished tmp/ file ready as ``name`` in new/ (one rename)."""
        os.rename(tmp, self._dirs["new"] / name)

    def settle(self, tmp: Path, reserved: int, stored: int) -> None:
        """A streamed spill is over: give back its reservation and count the
        ``stored`` bytes (0 if aborted) as used."""
        self._own_tmp.discard(tmp.name)
        self._inflight -= reserved
        self._used += stored

    def filesystem_full(self, requested: int) -> OverflowFull:
        """The error for a spill of ``requested`` bytes the filesystem refused."""
        return OverflowFull(self.path, self.max_bytes, self._used, requested, "filesystem full")

    def _write_tmp(self, stem: str, data: bytes) -> str:
        tmp = f"{self._tmp_prefix}{stem},{self._owner_tag()}"
        fd = self._create(tmp)
        try:
            # one write takes a whole message on tmpfs; the loop is for the rest
            n = os.write(fd, data)
            if n < len(data):
                write_all(fd, memoryview(data)[n:])
        except BaseException:
            os.close(fd)
            unlink_quietly(tmp)
            raise
        os.close(fd)
        return tmp

    def _create(self, tmp: str | Path) -> int:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, self._file_mode)
        if self._file_mode & 0o077:
            # Group access was asked for; the umask may have stripped it.
            try:
                os.fchmod(fd, self._file_mode)
            except BaseException:
                os.close(fd)
                unlink_quietly(tmp)
                raise
        return fd

    def _fill_claim_cache(self) -> bool:
        """List new/ into the window; True if the window holds the whole listing."""
        started = self._clock()
        names = os.listdir(self._dirs["new"])
        # Listings come back nearly ordered, which timsort handles in linear time.
        # The window is the oldest names, or the newest, ending where pop() takes.
        names.sort(reverse=not self.newest)
        window = names[-CLAIM_WINDOW:]
        # A message attempted before (a worker died on it) may kill the next
        # one too: within the window it comes after the fresh ones, so a
        # replacement worker does not take it first, and before the next
        # listing, so it is not put off for ever.
        self._claim_cache = ([n for n in window if not n.endswith(",A=0")]
                             + [n for n in window if n.endswith(",A=0")])
        if self.newest:
            self._listed_at = now = self._clock()
            self._relist_every = max(RELIST_MIN, RELIST_FACTOR * (now - started))
        return len(names) <= CLAIM_WINDOW

    def _requeue_into_cache(self, name: str) -> None:
        # A name given back joins this claimer's window in order, unless it is
        # newer than the whole window: then the next listing will find it, and
        # names left out of a truncated window are not overtaken.
        cache = self._claim_cache
        key = _newest_key if self.newest else _claim_key
        if cache and key(name) < key(cache[0]):
            _insort_desc(cache, name, key)

    def claim(self, owner: Identity, newer_than: float | None = None) -> OverflowClaim | None:
        """Move the next ready message into cur/ under ``owner``; None if none.

        The next is the oldest, or with ``drain_order`` "newest" the newest,
        fresh message, then the attempted ones. ``newer_than`` (wall-clock
        seconds) takes only a fresh message that arrived after it (the ring's
        oldest, which is otherwise scanned first); None takes any.
        Exactly one of several racing claimers wins each file (one rename).
        If the owner dies after the rename, the file waits in cur/ for
        :meth:`recover_dead`. Names come from a cached window of one listing;
        new/ is listed again when the window is used up, and newest first
        also once the window has aged (see ``RELIST_FACTOR``).
        """
        tag = owner_tag(owner)
        complete = False  # has this call listed all of new/ and used it up?
        if self.newest and self._clock() - self._listed_at >= self._relist_every:
            self._claim_cache = []
        cutoff = None if newer_than is None else f"{max(0, round(newer_than * 1e6)):013x}"
        while True:
            if not self._claim_cache:
                if complete:
                    return None
                complete = self._fill_claim_cache()
                continue
            if cutoff is not None:
                nxt = self._claim_cache[-1]
                # names start with the id's hex time: a string compare orders them
                if nxt[:13] <= cutoff or not nxt.endswith(",A=0"):
                    return None
            name = self._claim_cache.pop()
            parsed = parse_ready(name)
            if parsed is None:
                continue  # not ours to touch
            msgid, size, attempts = parsed
            dst = self._dirs["cur"] / f"{name},{tag}"
            try:
                os.rename(self._dirs["new"] / name, dst)
            except FileNotFoundError:
                continue  # another claimer (or a purge) got there first
            return OverflowClaim(msgid, size, attempts, dst, ids.id_time(msgid), owner, self)

    def ack(self, claim: OverflowClaim) -> None:
        """Drop a processed message. Dying before the unlink means it is processed again."""
        try:
            os.unlink(claim.path)
        except FileNotFoundError:
            log.warning("%s: ack of a claim no longer in cur/ (requeued meanwhile?)", claim.msgid)

    def release(self, claim: OverflowClaim) -> None:
        """Give back an unprocessed message with its attempts unchanged.

        One rename: dying before it leaves the claim in cur/ for recovery
        (which then counts an attempt).
        """
        name = ready_name(claim.msgid, claim.size, claim.attempts)
        try:
            os.rename(claim.path, self._dirs["new"] / name)
        except FileNotFoundError:
            log.warning("%s: release of a claim no longer in cur/", claim.msgid)
            return
        self._requeue_into_cache(name)

    def recover(self, owner: Identity, count_attempt: bool = True) -> int:
        """Requeue what ``owner`` held (attempts+1) and drop its tmp files.

        Only for an owner known to be dead or stopped. Each file moves by one
        rename, so a recovery cut short is simply finished by the next one.
        ``count_attempt=False`` for an owner the supervisor itself killed (a
        stop that ran out of time): the message did nothing wrong.
        Returns how many messages were requeued.
        """
        tag = "," + owner_tag(owner)
        count = 0
        for name in os.listdir(self._dirs["cur"]):
            if not name.endswith(tag):
                continue
            parsed = parse_ready(name[: -len(tag)])
            if parsed is None:
                continue
            msgid, size, attempts = parsed
            attempts += int(count_attempt)
            dst = ready_name(msgid, size, attempts)
            try:
                os.rename(self._dirs["cur"] / name, self._dirs["new"] / dst)
            except FileNotFoundError:
                continue  # a concurrent recovery moved it
            log.info("%s: requeued from dead owner %s (attempt %d)", msgid, owner, attempts)
            self._requeue_into_cache(dst)
            count += 1
        dropped = 0
        for name in os.listdir(self._dirs["tmp"]):
            if name.endswith(tag):
                dropped += unlink_quietly(self._dirs["tmp"] / name)
        if dropped:
            log.info("dropped %d unfinished tmp file(s) of dead writer %s", dropped, owner)
        return count

    def recover_dead(self) -> int:
        """Run :meth:`recover` for every owner in cur/ and tmp/ that is not alive.

        Safe to run at any time from any process and to repeat after a crash.
        Returns how many messages were requeued.
        """
        owners: set[Identity] = set()
        for sub in ("cur", "tmp"):
            for name in os.listdir(self._dirs[sub]):
                parsed = parse_owner(name)
                if parsed is not None:
                    owners.add(parsed[1])
        return sum(self.recover(o) for o in sorted(owners) if not self._is_alive(o))

    def _write_reason(self, name: str, reason: str) -> Path:
        text = f"{reason}\n".encode("utf-8", errors="replace")
        tmp = self._write_tmp(name + REASON_SUFFIX, text)
        dst = self._dirs["failed"] / (name + REASON_SUFFIX)
        os.rename(tmp, dst)
        return dst

    def quarantine_path(self, msgid: str, size: int, attempts: int) -> Path:
        """Where a quarantined message of ``size`` payload bytes lives in failed/."""
        return self._dirs["failed"] / ready_name(msgid, size, attempts)

    def keeps(self, size: int) -> bool:
        """True if a quarantined message of ``size`` bytes is kept (fits the quarantine cap)."""
        return size <= self.quarantine_max_bytes

    def _make_room(self, size: int) -> PurgeResult:
        """Drop the oldest quarantined messages until ``size`` more bytes fit the cap.

        Quarantines are rare, so failed/ is listed each time. Processes that
        race here may both drop a message: the cap errs toward less.
        """
        d = self._dirs["failed"]
        held = [(name, p[1]) for name in sorted(os.listdir(d))
                if (p := parse_ready(name)) is not None]
        used = sum(n for _, n in held)
        count = nbytes = 0
        for name, n in held:  # oldest first: names sort by arrival
            if used + size <= self.quarantine_max_bytes:
                break
            used -= n
            drop(d / (name + REASON_SUFFIX))
            if drop(d / name):
                count += 1
                nbytes += n
        if count:
            log.warning("overflow %s: dropped the %d oldest quarantined message(s), %d bytes,"
                        " to stay under the quarantine cap %d", self.path, count, nbytes,
                        self.quarantine_max_bytes)
        return PurgeResult(count, nbytes)

    def quarantine(self, claim: OverflowClaim, reason: str) -> Quarantined:
        """Move a claimed message into failed/ beside a ``.reason`` file.

        The oldest quarantined messages make room under the quarantine cap; a
        message larger than the whole cap is dropped instead (``kept`` False).
        The reason is renamed in first, then the message; dying between the
        two leaves a reason without a message (removed by purge_failed) and the
        claim in cur/ for recovery. Raises OverflowClaimLost if the claim is gone.
        """
        dst = self.quarantine_path(claim.msgid, claim.size, claim.attempts)
        if not self.keeps(claim.size):
            try:
                os.unlink(claim.path)
            except FileNotFoundError:
                raise OverflowClaimLost(f"{claim.msgid}: claim no longer in cur/") from None
            except OSError:
                pass  # not unlinkable (a planted directory): moved into failed/ below
            else:
                log.warning("%s: quarantined and dropped, %d bytes over the quarantine cap %d:"
                            " %s", claim.msgid, claim.size, self.quarantine_max_bytes, reason)
                return Quarantined(dst, False, PurgeResult(0, 0))
        dropped = self._make_room(claim.size)
        reason_path = self._write_reason(dst.name, reason)
        try:
            os.rename(claim.path, dst)
        except FileNotFoundError:
            unlink_quietly(reason_path)
            raise OverflowClaimLost(f"{claim.msgid}: claim no longer in cur/") from None
        log.warning("%s: quarantined after %d attempt(s): %s", claim.msgid, claim.attempts, reason)
        return Quarantined(dst, True, dropped)

    def quarantine_bytes(self, msgid: str, data: bytes, attempts: int,
                         reason: str) -> Quarantined:
        """Store ``data`` straight into failed/ (a ring message at its attempt limit).

        Not refused by ``max_bytes``: the bytes leave the ring for tmpfs, so
        RAM use does not grow, and only the quarantine cap applies (as in
        :meth:`quarantine`). Dying midway leaves a tmp file or a lone reason,
        never a partial message.
        """
        check_id(msgid, attempts)
        dst = self.quarantine_path(msgid, len(data), attempts)
        if not self.keeps(len(data)):
            log.warning("%s: quarantined and dropped, %d bytes over the quarantine cap %d: %s",
                        msgid, len(data), self.quarantine_max_bytes, reason)
            return Quarantined(dst, False, PurgeResult(0, 0))
        dropped = self._make_room(len(data))
        tmp = self._write_tmp(msgid, data)
        try:
            self._write_reason(dst.name, reason)
        except BaseException:
            unlink_quietly(tmp)
            raise
        os.rename(tmp, dst)
        log.warning("%s: quarantined after %d attempt(s): %s", msgid, attempts, reason)
        return Quarantined(dst, True, dropped)

    def purge(self, older_than: float | None = None,
              dropped: list[str] | None = None) -> PurgeResult:
        """Drop ready messages: all, or those whose id time is before ``older_than``.

        ``older_than`` is wall-clock seconds since the epoch. Only new/ is
        touched, never a claim. ``dropped``, if given, receives the id of every
        message this call removed (a name a claimer took first is not
        counted), so a caller can account for each accepted message. Dying
        midway leaves the rest for the next purge.
        """
        result = self._purge_dir("new", older_than, reasons=False, dropped=dropped)
        self._claim_cache = []
        self._refreshed_at = float("-inf")  # let the next spill see the space
        if result.count:
            log.info("purged %d ready message(s), %d bytes", result.count, result.bytes)
        return result

    def purge_failed(self, older_than: float | None = None) -> PurgeResult:
        """Drop quarantined messages and their reasons: all, or older than ``older_than``.

        Also removes reasons left without a message by an interrupted
        quarantine. Dying midway leaves the rest for the next purge.
        """
        result = self._purge_dir("failed", older_than, reasons=True)
        if result.count:
            log.info("purged %d quarantined message(s), %d bytes", result.count, result.bytes)
        return result

    def purge_quarantine(self, retention_days: int, now: float) -> PurgeResult:
        """The daily purge's share of failed/ under ``overflow.quarantine_retention_days``.

        Drops what arrived more than ``retention_days - 1`` days before ``now``
        (wall-clock seconds): 1 drops every quarantined message, 0 none.
        """
        if retention_days <= 0:
            return PurgeResult(0, 0)
        return self.purge_failed(older_than=now - (retention_days - 1) * 86400.0)

    def _purge_dir(self, sub: str, older_than: float | None, *, reasons: bool,
                   dropped: list[str] | None = None) -> PurgeResult:
        d = self._dirs[sub]
        # Names start with the id's fixed-width hex time, so a string compare
        # with the cutoff's hex form selects by arrival time.
        # round(), not int(): a cutoff taken from id_time() must map back to
        # the same microsecond despite float noise.
        cutoff = None if older_than is None else f"{max(0, round(older_than * 1e6)):013x}"
        count = nbytes = 0
        for name in os.listdir(d):
            if cutoff is not None and name[:13] >= cutoff:
                continue
            if reasons and name.endswith(REASON_SUFFIX):
                drop(d / name)
                continue
            parsed = parse_ready(name)
            if parsed is None:
                continue
            if drop(d / name):
                count += 1
                nbytes += parsed[1]
                if dropped is not None:
                    dropped.append(parsed[0])
        return PurgeResult(count, nbytes)

    def stats(self) -> OverflowStats:
        """Counts and bytes per state; see :meth:`TreeCounts.stats`."""
        return self._counts.stats()

    def ready_count(self) -> int:
        """Number of ready messages; see :meth:`TreeCounts.ready_count`."""
        return self._counts.ready_count()


def _claim_key(name: str) -> tuple[bool, str]:
    """The claim order: fresh names first, each part oldest first."""
    return (not name.endswith(",A=0"), name)


class _Newer:
    """A name that sorts before every older one (newest first)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __lt__(self, other: _Newer) -> bool:
        return self.name > other.name

    def __gt__(self, other: _Newer) -> bool:
        return self.name < other.name

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Newer) and self.name == other.name

    def __hash__(self) -> int:
        return hash(self.name)


def _newest_key(name: str) -> tuple[bool, _Newer]:
    """The claim order newest first: fresh names first, each part newest first."""
    return (not name.endswith(",A=0"), _Newer(name))


def _insort_desc(names: list[str], name: str,
                 claim_key: Callable[[str], tuple[bool, object]] = _claim_key) -> None:
    # The cache is in reverse claim order (popped from the end); bisect on it.
    key: Any = claim_key(name)
    lo, hi = 0, len(names)
    while lo < hi:
        mid = (lo + hi) // 2
        if claim_key(names[mid]) > key:
            lo = mid + 1
        else:
            hi = mid
    names.insert(lo, name)


__all__ = [
    "Overflow",
    "OverflowClaim",
    "OverflowClaimLost",
    "OverflowFull",
    "OverflowStats",
    "OverflowStoreError",
    "PurgeResult",
    "Quarantined",
    "SpillWriter",
    "UntrustedFile",
    "fs_type",
    "open_trusted",
    "parse_owner",
    "parse_ready",
    "ready_name",
]
