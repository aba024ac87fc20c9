"""The ingest: a Unix socket server that queues each message into the ring or the overflow.

Wire protocol, one message per connection::

    client  connect, send the message, then shutdown(SHUT_WR) or close
    server  exactly one line, then close:
              OK <id>             stored (ring or overflow); never sent before
              ERR <reason>        permanent refusal: too large, empty
              TEMPFAIL <reason>   cannot store now: overflow full, idle,
                                  too many connections, shutting down

A refused message is still read to its end, so the stream stays in sync and
the reply reaches a client that writes everything before reading.  The reply
prefixes and reasons are the module constants below.

Two parts, in the manner of a protocol class and a narrow store hook: the
connection (:class:`_Conn`, driven by :class:`IngestServer`) owns framing,
limits, the idle timeout and the reply; :class:`Store` decides ring or
overflow.  Every stored payload is ``envelope.header(None)`` followed by the
bytes received.  A payload is buffered while it fits a ring slot and streamed
to the overflow once it does not, so a large message is never held whole (one
that arrives whole within the single receive buffer, at most ``CHUNK`` bytes,
is stored from that buffer).

The server is one process with one ``selectors`` loop.  It is the ring's only
producer and never waits on the workers: a full ring means a spill.

The same loop serves two optional session sockets, each connection driven by
a protocol class through the same store hook (:mod:`ringtrap.intake.delivery`): the
submit socket (:mod:`ringtrap.intake.submit_session`: an envelope block written by
the MTA's client, the message, a length trailer) and an LMTP socket
(:mod:`ringtrap.intake.lmtp`).  Their messages get the same ids, limits, counters
and stored form as the raw socket's; only the envelope line differs.

Crash model: if the process dies mid-message, its client has not had ``OK``
(the reply follows the store), a ring slot it was filling is left
FILLING(owner) for the supervisor to free and a spill in progress is a tmp file
the overflow's recovery drops; the MTA retries the message.
"""

from __future__ import annotations

import _socket
import contextlib
import errno
import grp
import logging
import os
import selectors
import signal
import socket
import stat
import struct
import time
from collections.abc import Iterator
from enum import IntEnum
from pathlib import Path
from types import FrameType

from ringtrap import config as configmod
from ringtrap.base import envelope, logs, titles
from ringtrap.base.counters import C
from ringtrap.base.envelope import Envelope
from ringtrap.base.ids import new_id
from ringtrap.base.states import ProcState, Role
from ringtrap.config import Config
from ringtrap.intake.delivery import (
    ERR,
    OK,
    REASON_BUSY,
    REASON_EMPTY,
    REASON_IDLE,
    REASON_OVERFLOW_FULL,
    REASON_SHUTTING_DOWN,
    REASON_STORE_FAILED,
    REASON_TIMEOUT,
    REASON_TOO_LARGE,
    TEMPFAIL,
    Outcome,
    Session,
    reply_line,
)
from ringtrap.intake.lmtp import R_BUSY as _LMTP_BUSY
from ringtrap.intake.lmtp import LmtpSession
from ringtrap.intake.submit_session import SubmitSession
from ringtrap.overflow import Overflow, OverflowFull, SpillWriter
from ringtrap.ring import ProcRow, PutResult, Ring

log = logging.getLogger(__name__)

# The reply prefixes and reasons (OK, ERR, TEMPFAIL, REASON_*) and reply_line
# live in ringtrap.intake.delivery, shared with the session protocols.

LISTEN_BACKLOG = 1024
# bytes asked of one recv; the one receive buffer is reused by every connection
CHUNK = 64 * 1024
# accepts per readiness event: enough to empty any backlog the loop can serve,
# few enough that heartbeats and idle checks still run under a connection flood
_ACCEPT_BATCH = 1024
# receives for one connection per turn: a client that writes faster than the
# loop reads must not starve the others, the heartbeat or the idle checks
_READS_PER_TURN = 16
# after EMFILE/ENFILE the listener is left alone this long instead of spinning
_ACCEPT_PAUSE = 0.1
_TITLE_EVERY = 1.0
# a session whose client does not read its replies stops being read past this
_MAX_PENDING_OUT = 256 * 1024

# The sockets stay in blocking mode; per-call flags make each call non-blocking,
# which saves two fcntl calls per connection.  MSG_NOSIGNAL: a client that left
# without reading its reply must cost an EPIPE, not a SIGPIPE.  (The bare
# descriptor writes below cannot pass it: _ChildSignals ignores SIGPIPE, as
# Python itself does by default.)
_DONTWAIT = socket.MSG_DONTWAIT
_SEND_FLAGS = socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL
# how long the probe below lets a read that ignores RWF_NOWAIT wait
_PROBE_WAIT = 0.2


def _nowait_io() -> bool:
    """True if preadv2 and pwritev2 honour RWF_NOWAIT on a blocking socket.

    Linux does from 5.x on; a kernel that rejects the flag says so, and one
    that accepted it but waited anyway would be caught by the receive
    timeout, so the probe never hangs and never answers yes wrongly.
    """
    flag = getattr(os, "RWF_NOWAIT", None)
    if flag is None:
        return False
    a, b = socket.socketpair()
    try:
        # blocking whatever socket.setdefaulttimeout() says: an EAGAIN must
        # come from the flag, not from an O_NONBLOCK descriptor
        a.setblocking(True)
        b.setblocking(True)
        b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                     struct.pack("ll", 0, int(_PROBE_WAIT * 1e6)))
        t0 = time.monotonic()
        try:
            os.preadv(b.fileno(), [bytearray(1)], -1, flag)
        except BlockingIOError:
            if time.monotonic() - t0 >= _PROBE_WAIT / 2:
                return False  # it waited: the timeout answered, not the flag
        else:
            return False  # nothing was sent: a read cannot have succeeded
        return os.pwritev(a.fileno(), [b"x"], -1, flag) == 1
    except (OSError, NotImplementedError):
        return False
    finally:
        a.close()
        b.close()


# A message that arrives whole is read, answered and closed on the bare
# descriptor: a socket object would cost a getsockname() per connection (the
# check CPython makes of a descriptor it wraps) and its own construction.
# preadv2/pwritev2 with RWF_NOWAIT do not wait on the blocking descriptor, as
# the per-call flags do for socket calls; without them, the descriptor is made
# non-blocking instead.
_NOWAIT_IO = _nowait_io()
_RWF_NOWAIT = getattr(os, "RWF_NOWAIT", 0)
_preadv, _pwritev, _readv, _write = os.preadv, os.pwritev, os.readv, os.write


_LINE_TOO_LARGE = reply_line(ERR, REASON_TOO_LARGE)
_LINE_EMPTY = reply_line(ERR, REASON_EMPTY)
_LINE_OVERFLOW_FULL = reply_line(TEMPFAIL, REASON_OVERFLOW_FULL)
_LINE_STORE_FAILED = reply_line(TEMPFAIL, REASON_STORE_FAILED)
_LINE_IDLE = reply_line(TEMPFAIL, REASON_IDLE)
_LINE_EXPIRED = reply_line(TEMPFAIL, REASON_TIMEOUT)
_LINE_BUSY = reply_line(TEMPFAIL, REASON_BUSY)
_LINE_SHUTTING_DOWN = reply_line(TEMPFAIL, REASON_SHUTTING_DOWN)


# A full overflow (its cap, or its file system) stays "refusing" until spills
# have gone through for this long without a refusal: when space comes and goes
# by the page, refusals and successes alternate every few milliseconds.
RECOVER_AFTER = 10.0


class Gate(IntEnum):
    """A change :class:`OverflowGate` reports: the one thing worth a log line."""

    NONE = 0
    REFUSING = 1  # the first refusal of an episode
    ACCEPTING = 2  # the episode is over: spills have gone through for RECOVER_AFTER


class OverflowGate:
    """Whether the ingest is refusing for a full overflow, with hysteresis.

    :meth:`refused` and :meth:`spilled` report each outcome with the
    monotonic time; each returns :attr:`Gate.NONE` except at the two edges of
    an episode, so a caller logs one line when refusing starts and one when it
    is over, however the outcomes alternate in between.  Plain state in this
    process: nothing to recover if it dies.
    """

    __slots__ = ("episode_refusals", "hold", "last_refusal", "refusing", "since")

    def __init__(self, hold: float = RECOVER_AFTER) -> None:
        self.hold = hold
        self.refusing = False
        self.since = 0.0  # when the episode began
        self.last_refusal = 0.0
        self.episode_refusals = 0

    def refused(self, now: float) -> Gate:
        """A message was refused for a full overflow at ``now``."""
        self.last_refusal = now
        self.episode_refusals += 1
        if self.refusing:
            return Gate.NONE
        self.refusing = True
        self.since = now
        self.episode_refusals = 1
        return Gate.REFUSING

    def spilled(self, now: float) -> Gate:
        """A message went into the overflow at ``now``."""
        if not self.refusing or now - self.last_refusal < self.hold:
            return Gate.NONE
        self.refusing = False
        return Gate.ACCEPTING


class Stored(IntEnum):
    """Where :class:`Store` put a message."""

    RING = 0
    OVERFLOW = 1


# looked up once: an enum attribute costs about 0.1 us, paid per message
_RING, _OVERFLOW = Stored.RING, Stored.OVERFLOW
_PUT_OK = PutResult.OK


class Store:
    """The narrow hook: ring first, the overflow when the ring is full or too small.

    Holds no per-message state; the connection keeps the buffer or the writer.
    """

    __slots__ = ("_put", "overflow", "ring", "slot_bytes")

    def __init__(self, ring: Ring, overflow: Overflow) -> None:
        self.ring = ring
        self.overflow = overflow
        self.slot_bytes = ring.slot_bytes
        self._put = ring.put

    def put(self, msgid: str, payload: bytes | bytearray | memoryview) -> Stored:
        """Store a whole payload; raises OverflowFull (or OSError) if it cannot.

        Never waits: a full ring spills.  Dying midway leaves a FILLING slot or
        a tmp file, both recovered, and the client without a reply.
        """
        if self._put(msgid, payload) is _PUT_OK:
            return _RING
        self.overflow.spill(msgid, payload)  # type: ignore[arg-type]  # any buffer will do
        return _OVERFLOW

    def open_stream(self, msgid: str, head: bytes | bytearray | memoryview) -> SpillWriter:
        """Start a message too big for a slot in the overflow, ``head`` written first.

        Raises OverflowFull (the writer is then already aborted) or OSError.
        Dying before commit leaves a tmp file that the overflow's recovery drops.
        """
        writer = self.overflow.spill_stream(msgid)
        try:
            writer.write(head)  # type: ignore[arg-type]
        except BaseException:
            writer.abort()
            raise
        return writer


class _Msg:
    """One message being received: what has arrived, what will be answered."""

    __slots__ = ("buf", "msgid", "refusal", "size", "writer")

    def __init__(self, msgid: str, head: bytes) -> None:
        self.msgid = msgid
        self.size = 0  # message bytes received (the envelope line not counted)
        self.buf: bytearray | None = bytearray(head)
        self.writer: SpillWriter | None = None
        # the reply already decided for a message being read to its end unstored
        self.refusal: bytes | None = None


class _Conn(_Msg):
    """One raw-socket connection still sending; it carries its one message itself."""

    __slots__ = ("fd", "last", "registered", "sock", "started")

    def __init__(self, sock: _socket.socket, msgid: str, now: float) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.msgid = msgid
        self.last = now  # monotonic time of the last bytes received
        self.started = now  # the message's total deadline counts from here
        self.size = 0  # message bytes received (the envelope line not counted)
        self.buf: bytearray | None = bytearray(_HEADER)
        self.writer: SpillWriter | None = None
        # the reply already decided for a message being read to its end unstored
        self.refusal: bytes | None = None
        self.registered = False


class _Listener:
    """A session socket's listener, the protocol its connections speak, their budget."""

    __slots__ = ("active", "kind", "limit", "sock")

    def __init__(self, kind: str, sock: socket.socket, limit: int) -> None:
        self.kind = kind  # "submit" or "lmtp"
        self.sock = sock
        self.limit = limit  # connections this socket serves at once
        self.active = 0


class _Session:
    """A connection on a session socket: its protocol, its message, its pending output.

    It is also the protocol's :class:`~ringtrap.intake.delivery.Sink`: each call goes to
    the server's store, limits and counters, the raw socket's own.
    """

    __slots__ = (
        "eof", "events", "fd", "last", "lst", "msg", "out", "proto", "server", "sock", "started",
    )

    def __init__(
        self, server: IngestServer, sock: _socket.socket, now: float, lst: _Listener
    ) -> None:
        self.server = server
        self.sock = sock
        self.fd = sock.fileno()
        self.lst = lst
        self.last = now
        # the total deadline counts from the connection or the end of its last
        # message, so a client trickling commands is bounded as one trickling data
        self.started = now
        self.msg: _Msg | None = None
        self.out = bytearray()
        self.eof = False  # the client has half-closed
        self.events = 0  # what the selector watches for it (0: not registered)
        self.proto: Session

    def begin(self, env: Envelope) -> str:
        return self.server._session_begin(self, env)

    def write(self, data: bytes) -> None:
        assert self.msg is not None
        self.server._take(self.msg, data)

    def end(self) -> tuple[Outcome, bytes]:
        return self.server._session_end(self)

    def abort(self) -> None:
        self.server._session_abort(self)


_WAKE = object()  # selector data of the signal wake-up pipe
_HEADER = envelope.header(None)
_HLEN = len(_HEADER)
# Accepted connections become bare C-level sockets: the socket.socket wrapper
# costs a Python __init__ and two enum conversions per accept, a tenth of the
# server's time per message.  They have every method the loop uses.
_Socket = _socket.socket
_AF_UNIX, _SOCK_STREAM = int(socket.AF_UNIX), int(socket.SOCK_STREAM)

# The ingest's counters are tallied per turn and added to the row once per turn.
_CONNECTIONS = int(C.CONNECTIONS)
_CONNECTIONS_REFUSED = int(C.CONNECTIONS_REFUSED)
_ACCEPTED_RING = int(C.ACCEPTED_RING)
_ACCEPTED_OVERFLOW = int(C.ACCEPTED_OVERFLOW)
_REFUSED_TOO_LARGE = int(C.REFUSED_TOO_LARGE)
_REFUSED_EMPTY = int(C.REFUSED_EMPTY)
_REFUSED_TEMP = int(C.REFUSED_TEMP)
_IDLE_TIMEOUTS = int(C.IDLE_TIMEOUTS)
_BYTES_IN = int(C.BYTES_IN)
_TALLY_SIZE = 1 + max(
    _CONNECTIONS,
    _CONNECTIONS_REFUSED,
    _ACCEPTED_RING,
    _ACCEPTED_OVERFLOW,
    _REFUSED_TOO_LARGE,
    _REFUSED_EMPTY,
    _REFUSED_TEMP,
    _IDLE_TIMEOUTS,
    _BYTES_IN,
)


class IngestServer:
    """Serves the ingest protocol on ``listener`` until stopped.

    Drive it with :meth:`run`, or call :meth:`serve_once` in a loop.
    ``row`` is this process's process-table row: a heartbeat every turn and
    the ingest counters (CONNECTIONS counts every accepted connection, those
    refused for a socket's connection budget included; IDLE_TIMEOUTS counts
    both the idle timeout and ``message_timeout``), added at the end of each
    turn.  None in tests.

    ``max_connections`` is the raw socket's budget; the session sockets get
    ``submit_max_connections`` and ``lmtp_max_connections`` (default: the
    same number), so one socket's slow clients never hold another's slots.
    """

    def __init__(
        self,
        listener: socket.socket,
        ring: Ring,
        overflow: Overflow,
        *,
        max_message_bytes: int,
        idle_timeout: float,
        max_connections: int,
        message_timeout: float = 300.0,
        submit_max_connections: int | None = None,
        lmtp_max_connections: int | None = None,
        row: ProcRow | None = None,
        submit_listener: socket.socket | None = None,
        lmtp_listener: socket.socket | None = None,
        hostname: str | None = None,
    ) -> None:
        self.store = Store(ring, overflow)
        self.row = row
        self.max_message_bytes = max_message_bytes
        self.idle_timeout = idle_timeout
        self.message_timeout = message_timeout
        self.max_connections = max_connections
        self._slot_bytes = ring.slot_bytes
        self._listener: socket.socket | None = listener
        listener.setblocking(False)
        # One receive buffer for every connection, the envelope line in front:
        # a message that arrives whole goes to the ring straight from here.
        self._buf = bytearray(_HEADER + bytes(CHUNK))
        self._whole = memoryview(self._buf)
        self._body = self._whole[_HLEN:]
        self._sel = selectors.DefaultSelector()
        self._sel.register(listener.fileno(), selectors.EVENT_READ, None)
        self._listening = True
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._sel.register(self._wake_r, selectors.EVENT_READ, _WAKE)
        self._conns: dict[int, _Conn] = {}
        # the session sockets (submit, LMTP) and their connections
        self._side: list[_Listener] = []
        budgets = {
            "submit": submit_max_connections or max_connections,
            "lmtp": lmtp_max_connections or max_connections,
        }
        for kind, side in (("submit", submit_listener), ("lmtp", lmtp_listener)):
            if side is not None:
                side.setblocking(False)
                lst = _Listener(kind, side, budgets[kind])
                self._sel.register(side.fileno(), selectors.EVENT_READ, lst)
                self._side.append(lst)
        self._sessions: dict[int, _Session] = {}
        self.hostname = hostname or socket.gethostname()
        self._tally = [0] * _TALLY_SIZE
        self._now = time.monotonic()
        self._idle_due = float("inf")  # no connection can be idle before this
        self._accept_resume = 0.0
        self._title_due = 0.0
        self._busy_refused = 0  # refused for max_connections since the last warning
        self._busy_warned = float("-inf")
        self._gate = OverflowGate()
        self._debug = log.isEnabledFor(logging.DEBUG)
        self.accepted = 0  # messages answered OK by this server
        # stop requests (set from signal handlers: plain stores only)
        self._stop_asked = False
        self._stop_now = False
        self._drain_timeout = 10.0
        # shutdown phase
        self._stopping = False
        self._deadline = float("inf")
        self.finished = False
        if row is not None:
            row.set_state(ProcState.IDLE)

    # -- control ---------------------------------------------------------------

    def reconfigure(self, cfg: Config) -> None:
        """Take the reloadable settings of ``cfg`` (a HUP); see :data:`RELOADED`.

        Connections in progress keep their messages; the new limits apply
        from the next byte, the budgets from the next accept.
        """
        ing = cfg.ingest
        self.max_message_bytes = ing.max_message_bytes
        self.idle_timeout = ing.idle_timeout
        self.message_timeout = ing.message_timeout
        self.max_connections = ing.max_connections
        for lst in self._side:
            lst.limit = ing.submit_max_connections if lst.kind == "submit" else (
                ing.lmtp_max_connections)
        self.store.overflow.max_bytes = cfg.overflow.max_bytes
        self._idle_due = float("-inf")  # the timers are looked at again next turn

    def settings(self) -> dict[str, object]:
        """The values of the :data:`RELOADED` keys this server now works with."""
        budgets = {lst.kind: lst.limit for lst in self._side}
        return {
            "ingest.max_message_bytes": self.max_message_bytes,
            "ingest.idle_timeout": self.idle_timeout,
            "ingest.message_timeout": self.message_timeout,
            "ingest.max_connections": self.max_connections,
            "ingest.submit_max_connections": budgets.get("submit"),
            "ingest.lmtp_max_connections": budgets.get("lmtp"),
            "overflow.max_bytes": self.store.overflow.max_bytes,
        }

    @property
    def wakeup_fd(self) -> int:
        """Write end of a pipe the loop watches; give it to ``signal.set_wakeup_fd``."""
        return self._wake_w

    @property
    def connections(self) -> int:
        """Connections in progress (accepted, not yet answered or closed)."""
        return len(self._conns) + len(self._sessions)

    def stop(self, graceful: bool = True, drain_timeout: float = 10.0) -> None:
        """Ask the loop to stop accepting and finish; only sets flags (signal-safe).

        Graceful: connections in progress may finish until ``drain_timeout``
        has passed, then the rest get ``TEMPFAIL shutting down``.  Not
        graceful: they get it at once.  A second, harsher request wins.
        """
        if not graceful:
            self._stop_now = True
        elif not self._stop_asked:
            self._drain_timeout = drain_timeout
        self._stop_asked = True

    def close(self) -> None:
        """Release everything: stop at once if still serving, then close the wake-up pipe.

        Call after ``signal.set_wakeup_fd`` no longer points at :attr:`wakeup_fd`.
        """
        if not self.finished:
            self.stop(graceful=False)
            self._check_stop()
            self._flush_tally()
        if self._wake_w >= 0:
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_r = self._wake_w = -1

    def run(self) -> None:
        """Serve until :meth:`stop` has been called and every connection is answered."""
        while not self.finished:
            self.serve_once(1.0)

    def serve_once(self, timeout: float) -> None:
        """One turn of the loop: wait up to ``timeout`` seconds, serve what is ready.

        Dying in the middle of a turn loses only replies not yet sent and the
        turn's counts; see the module's crash model for the messages involved.
        """
        if self.finished:
            return
        try:
            self._turn(timeout)
        finally:
            self._flush_tally()

    def _turn(self, timeout: float) -> None:
        if self._stop_asked and self._check_stop():
            return
        wait = timeout
        if self._idle_due - self._now < wait:
            wait = max(0.0, self._idle_due - self._now)
        if self._accept_resume and not self._stopping:
            wait = min(wait, max(0.0, self._accept_resume - self._now))
        if self._stopping and self._deadline - self._now < wait:
            wait = max(0.0, self._deadline - self._now)
        events = self._sel.select(wait)
        self._now = now = time.monotonic()
        if self._stop_asked and self._check_stop():
            return
        for key, mask in events:
            conn = key.data
            if conn is None:
                if self._listening:
                    self._accept()
            elif conn is _WAKE:
                self._drain_wake()
            elif conn.__class__ is _Session:
                self._session_event(conn, mask)
            elif conn.__class__ is _Listener:
                if self._listening:
                    self._accept_sessions(conn)
            elif self._read(conn):
                self._close(conn)
        if self.row is not None:
            self.row.beat()
        if now >= self._idle_due:
            self._expire_idle(now)
        if self._accept_resume and now >= self._accept_resume and not self._stopping:
            self._resume_accepting()
        if now >= self._title_due:
            self._housekeeping(now)
        if self._stop_asked:
            self._check_stop()

    def _flush_tally(self) -> None:
        tally = self._tally
        row = self.row
        for i, n in enumerate(tally):
            if n:
                if row is not None:
                    row.add(i, n)
                tally[i] = 0

    # -- accepting -------------------------------------------------------------

    def _accepted(self, listener: socket.socket) -> Iterator[int]:
        """The connections waiting on ``listener`` (descriptors), at most a batch
        per turn."""
        accept = listener._accept  # (fd, address): see _Socket
        for _ in range(_ACCEPT_BATCH):
            try:
                fd, _ = accept()
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._pause_accepting(e)
                    return
                continue  # ECONNABORTED and the like concern one client only
            yield fd

    def _accept(self) -> None:
        listener = self._listener
        assert listener is not None
        on_accept = self._on_accept
        for fd in self._accepted(listener):
            on_accept(fd)

    def _on_accept(self, fd: int) -> None:
        tally = self._tally
        tally[_CONNECTIONS] += 1
        if len(self._conns) >= self.max_connections:
            self._refuse_busy(_Socket(_AF_UNIX, _SOCK_STREAM, 0, fd), "raw", self.max_connections)
            return
        msgid = new_id()
        nowait = _NOWAIT_IO
        if not nowait:
            os.set_blocking(fd, False)
        # Most clients have sent everything by the time they are accepted: two
        # reads (the data, then EOF) answer them without touching the selector.
        # Results of a read: bytes (0: EOF), -1 nothing yet, -2 a receive error.
        body = self._body
        try:
            n = _preadv(fd, (body,), -1, _RWF_NOWAIT) if nowait else _readv(fd, (body,))
        except BlockingIOError:
            n = -1
        except OSError:
            n = -2
        more = -1
        if 0 < n < CHUNK:
            rest = (body[n:],)
            try:
                more = _preadv(fd, rest, -1, _RWF_NOWAIT) if nowait else _readv(fd, rest)
            except BlockingIOError:
                pass
            except OSError:
                more = -2
        if n == 0 or (n > 0 and more == 0):
            self._answer_whole(fd, msgid, n)
            return
        conn = _Conn(_Socket(_AF_UNIX, _SOCK_STREAM, 0, fd), msgid, self._now)
        got = max(n, 0) + max(more, 0)
        if got:
            self._take(conn, body[:got])
        if n == -2 or more == -2:
            self._lost(conn, None)
            self._close(conn)
            return
        if self._read(conn):
            self._close(conn)
            return
        self._sel.register(conn.fd, selectors.EVENT_READ, conn)
        conn.registered = True
        self._conns[conn.fd] = conn
        due = self._now + min(self.idle_timeout, self.message_timeout)
        if due < self._idle_due:
            self._idle_due = due

    def _answer_whole(self, fd: int, msgid: str, n: int) -> None:
        """Store and answer a message that arrived whole in the receive buffer.

        The descriptor is closed whatever happens: no socket object would.
        """
        try:
            self._tally[_BYTES_IN] += n
            if not n:
                line = self._refused(msgid, n, _LINE_EMPTY)
            elif n > self.max_message_bytes:
                line = self._refused(msgid, n, _LINE_TOO_LARGE)
            else:
                try:
                    where = self.store.put(msgid, self._whole[: _HLEN + n])
                except (OverflowFull, OSError) as e:
                    line = self._refused(msgid, n, self._store_error(msgid, e))
                else:
                    line = self._stored(msgid, n, where)
            try:
                if _NOWAIT_IO:
                    _pwritev(fd, (line,), -1, _RWF_NOWAIT)
                else:
                    _write(fd, line)
            except OSError as e:
                self._reply_lost(msgid, e)
        finally:
            os.close(fd)

    def _refuse_busy(self, sock: _socket.socket, kind: str, limit: int) -> None:
        self._tally[_CONNECTIONS_REFUSED] += 1
        self._busy_refused += 1
        if self._now - self._busy_warned >= 1.0:
            log.warning(
                "too many connections: refused %d (%s socket limit %d)",
                self._busy_refused,
                kind,
                limit,
            )
            self._busy_refused = 0
            self._busy_warned = self._now
        self._drain_unread(sock, 1)
        with contextlib.suppress(OSError):
            sock.send(_LINE_BUSY, _SEND_FLAGS)
        sock.close()

    def _drain_unread(self, sock: _socket.socket, chunks: int) -> int:
        """Read and drop up to ``chunks`` receives of what has already arrived.

        Closing with unread data makes the client's read after the reply fail
        with ECONNRESET instead of ending cleanly.  Returns the bytes dropped.
        """
        dropped = 0
        for _ in range(chunks):
            try:
                n = sock.recv_into(self._body, CHUNK, _DONTWAIT)
            except OSError:
                break
            if not n:
                break
            dropped += n
        return dropped

    def _pause_accepting(self, e: OSError) -> None:
        log.error("cannot accept: %s; pausing accepts for %.1f s", e.strerror, _ACCEPT_PAUSE)
        if self._listening and self._listener is not None:
            self._sel.unregister(self._listener.fileno())
            for lst in self._side:
                self._sel.unregister(lst.sock.fileno())
            self._listening = False
        self._accept_resume = self._now + _ACCEPT_PAUSE

    def _resume_accepting(self) -> None:
        self._accept_resume = 0.0
        if self._listener is not None and not self._listening:
            self._sel.register(self._listener.fileno(), selectors.EVENT_READ, None)
            for lst in self._side:
                self._sel.register(lst.sock.fileno(), selectors.EVENT_READ, lst)
            self._listening = True

    # -- reading ---------------------------------------------------------------

    def _read(self, conn: _Conn) -> bool:
        """Take what the client has sent; True once it has been answered."""
        body = self._body
        recv_into = conn.sock.recv_into
        for _ in range(_READS_PER_TURN):
            try:
                n = recv_into(body, CHUNK, _DONTWAIT)
            except BlockingIOError:
                return False
            except OSError as e:
                self._lost(conn, e)
                return True
            if not n:
                self._end(conn)
                return True
            conn.last = self._now
            self._take(conn, body[:n])
        return False  # still readable: the selector reports it again next turn

    def _take(self, conn: _Msg, chunk: memoryview | bytes) -> None:
        """Buffer, stream or drop one chunk of the message."""
        size = conn.size + len(chunk)
        conn.size = size
        if conn.refusal is not None:
            if size > self.max_message_bytes and conn.refusal is not _LINE_TOO_LARGE:
                conn.refusal = _LINE_TOO_LARGE  # permanent beats temporary
        elif size > self.max_message_bytes:
            # From here on the bytes are counted and dropped: memory stays flat.
            self._discard(conn)
            conn.refusal = _LINE_TOO_LARGE
        elif conn.writer is not None:
            try:
                conn.writer.write(chunk)  # type: ignore[arg-type]
            except (OverflowFull, OSError) as e:
                self._store_failed(conn, e)
        else:
            buf = conn.buf
            assert buf is not None
            buf += chunk
            if len(buf) > self._slot_bytes:
                conn.buf = None
                try:
                    conn.writer = self.store.open_stream(conn.msgid, buf)
                except (OverflowFull, OSError) as e:
                    self._store_failed(conn, e)

    def _store_failed(self, conn: _Msg, e: OverflowFull | OSError) -> None:
        """Storing became impossible: read the rest unstored, answer TEMPFAIL."""
        self._discard(conn)
        conn.refusal = self._store_error(conn.msgid, e)

    def _store_error(self, msgid: str, e: OverflowFull | OSError) -> bytes:
        if isinstance(e, OverflowFull):
            if self._gate.refused(self._now) is Gate.REFUSING:
                log.warning("refusing messages with TEMPFAIL: %s", e)
            return _LINE_OVERFLOW_FULL
        log.error("%s: cannot store: %s", msgid, e)
        return _LINE_STORE_FAILED

    def _discard(self, conn: _Msg) -> None:
        conn.buf = None
        if conn.writer is not None:
            conn.writer.abort()
            conn.writer = None

    # -- answering -------------------------------------------------------------

    def _end(self, conn: _Conn) -> None:
        """The client has sent everything: store it (unless refused), then answer."""
        self._send(conn, self._complete(conn))

    def _complete(self, conn: _Msg) -> bytes:
        """Store a message received whole (unless refused); count it, return its reply line."""
        msgid = conn.msgid
        size = conn.size
        self._tally[_BYTES_IN] += size
        line = conn.refusal
        if line is not None:
            line = self._refused(msgid, size, line)
        elif not size:
            line = self._refused(msgid, size, _LINE_EMPTY)
        else:
            try:
                if conn.writer is not None:
                    conn.writer.commit()
                    conn.writer = None
                    where = _OVERFLOW
                else:
                    assert conn.buf is not None
                    where = self.store.put(msgid, conn.buf)
                    conn.buf = None
            except (OverflowFull, OSError) as e:
                self._store_failed(conn, e)
                line = self._refused(msgid, size, conn.refusal or _LINE_STORE_FAILED)
            else:
                line = self._stored(msgid, size, where)
        return line

    def _stored(self, msgid: str, size: int, where: Stored) -> bytes:
        """Count a stored message; return its OK line."""
        self.accepted += 1
        if where is _RING:
            self._tally[_ACCEPTED_RING] += 1
        else:
            self._tally[_ACCEPTED_OVERFLOW] += 1
            gate = self._gate
            if gate.refusing and gate.spilled(self._now) is Gate.ACCEPTING:
                log.warning("overflow accepts messages again (%d refused over %.0f s)",
                            gate.episode_refusals, self._now - gate.since)
        if self._debug:
            log.debug("%s: accepted into the %s, %d bytes", msgid, where.name.lower(), size)
        return b"OK " + msgid.encode() + b"\n"

    def _refused(self, msgid: str, size: int, line: bytes) -> bytes:
        """Count and log a message answered ERR or TEMPFAIL at its end; return ``line``."""
        tally = self._tally
        if line is _LINE_TOO_LARGE:
            tally[_REFUSED_TOO_LARGE] += 1
            log.info(
                "%s: refused: %d bytes over the limit of %d", msgid, size, self.max_message_bytes
            )
        elif line is _LINE_EMPTY:
            tally[_REFUSED_EMPTY] += 1
            log.info("%s: refused: empty message", msgid)
        else:
            tally[_REFUSED_TEMP] += 1
            log.info("%s: %s (%d bytes read)", msgid, line[:-1].decode(), size)
        return line

    def _send(self, conn: _Conn, line: bytes) -> None:
        try:
            conn.sock.send(line, _SEND_FLAGS)
        except OSError as e:
            self._reply_lost(conn.msgid, e)

    def _reply_lost(self, msgid: str, e: OSError) -> None:
        # A client that does not wait for the reply (socat -u) is normal; what
        # was stored stays stored.
        if self._debug:
            log.debug("%s: reply not delivered: %s", msgid, e.strerror)

    def _lost(self, conn: _Conn, e: OSError | None) -> None:
        """The client failed mid-message: nothing stored, nobody to answer."""
        self._discard(conn)
        self._tally[_BYTES_IN] += conn.size
        log.info(
            "%s: connection failed after %d bytes: %s",
            conn.msgid,
            conn.size,
            e.strerror if e is not None else "receive error",
        )

    def _abandon(self, conn: _Conn, line: bytes) -> None:
        """Answer a connection still in progress with ``line`` and drop its message."""
        self._discard(conn)
        conn.size += self._drain_unread(conn.sock, 16)
        self._tally[_BYTES_IN] += conn.size
        self._send(conn, line)
        self._close(conn)

    def _close(self, conn: _Conn) -> None:
        if conn.registered:
            self._sel.unregister(conn.fd)
            del self._conns[conn.fd]
            conn.registered = False
        conn.sock.close()

    # -- session sockets (submit, LMTP) -------------------------------------------

    def _accept_sessions(self, lst: _Listener) -> None:
        for fd in self._accepted(lst.sock):
            sock = _Socket(_AF_UNIX, _SOCK_STREAM, 0, fd)
            self._tally[_CONNECTIONS] += 1
            if lst.active >= lst.limit:
                self._refuse_session(lst, sock)
                continue
            sess = _Session(self, sock, self._now, lst)
            lst.active += 1
            if lst.kind == "lmtp":
                sess.proto = LmtpSession(sess, self.hostname, self.max_message_bytes)
            else:
                sess.proto = SubmitSession(sess)
            self._sessions[sess.fd] = sess
            sess.out += sess.proto.start()
            due = self._now + min(self.idle_timeout, self.message_timeout)
            if due < self._idle_due:
                self._idle_due = due
            self._flush(sess)

    def _refuse_session(self, lst: _Listener, sock: _socket.socket) -> None:
        if lst.kind == "lmtp":
            self._tally[_CONNECTIONS_REFUSED] += 1
            with contextlib.suppress(OSError):
                sock.send(_LMTP_BUSY, _SEND_FLAGS)
            sock.close()
        else:
            self._refuse_busy(sock, lst.kind, lst.limit)

    def _session_event(self, sess: _Session, mask: int) -> None:
        if mask & selectors.EVENT_WRITE and not self._flush(sess):
            return
        if mask & selectors.EVENT_READ:
            self._session_read(sess)

    def _session_read(self, sess: _Session) -> None:
        """Feed what the client sent to its protocol, then send the replies."""
        body = self._body
        proto = sess.proto
        recv_into = sess.sock.recv_into
        for _ in range(_READS_PER_TURN):
            if proto.closing or sess.eof or len(sess.out) > _MAX_PENDING_OUT:
                break
            try:
                n = recv_into(body, CHUNK, _DONTWAIT)
            except BlockingIOError:
                break
            except OSError as e:
                self._session_lost(sess, e)
                return
            if not n:
                sess.eof = True
                sess.out += proto.eof()
                break
            sess.last = self._now
            sess.out += proto.feed(bytes(body[:n]))
        self._flush(sess)

    def _flush(self, sess: _Session) -> bool:
        """Send what is pending; close a finished session.  False once it is closed."""
        out = sess.out
        if out:
            try:
                sent = sess.sock.send(out, _SEND_FLAGS)
            except BlockingIOError:
                sent = 0
            except OSError as e:
                self._session_lost(sess, e)
                return False
            del out[:sent]
        if not out and (sess.proto.closing or sess.eof):
            self._close_session(sess)
            return False
        # stop reading once the protocol is done, or while the client leaves
        # its replies unread; watch for room to write while output waits
        events = selectors.EVENT_WRITE if out else 0
        if not (sess.proto.closing or sess.eof or len(out) > _MAX_PENDING_OUT):
            events |= selectors.EVENT_READ
        if events != sess.events:
            if not sess.events:
                self._sel.register(sess.fd, events, sess)
            elif events:
                self._sel.modify(sess.fd, events, sess)
            else:  # pragma: no cover - a finished session is closed above
                self._sel.unregister(sess.fd)
            sess.events = events
        return True

    def _session_lost(self, sess: _Session, e: OSError | None) -> None:
        """The client failed: drop any message in progress, close without a reply."""
        if sess.msg is not None:
            log.info("%s: connection failed after %d bytes: %s", sess.msg.msgid,
                     sess.msg.size, e.strerror if e is not None else "receive error")
            self._session_abort(sess)
        self._close_session(sess)

    def _close_session(self, sess: _Session) -> None:
        if sess.msg is not None:  # pragma: no cover - every protocol ends its message first
            self._session_abort(sess)
        if sess.events:
            self._sel.unregister(sess.fd)
            sess.events = 0
        if self._sessions.pop(sess.fd, None) is not None:
            sess.lst.active -= 1
        sess.sock.close()

    def _end_session(self, sess: _Session, last: bytes) -> None:
        """Send ``last`` if the client takes it at once, and close."""
        if last:
            with contextlib.suppress(OSError):
                sess.sock.send(bytes(sess.out) + last, _SEND_FLAGS)
        self._close_session(sess)

    def _session_begin(self, sess: _Session, env: Envelope) -> str:
        msgid = new_id()
        sess.msg = _Msg(msgid, envelope.header(env))
        return msgid

    def _session_end(self, sess: _Session) -> tuple[Outcome, bytes]:
        msg = sess.msg
        assert msg is not None
        sess.msg = None
        sess.started = self._now
        line = self._complete(msg)
        if line is _LINE_TOO_LARGE:
            return Outcome.TOO_LARGE, line
        if line is _LINE_EMPTY:
            return Outcome.EMPTY, line
        if line is _LINE_OVERFLOW_FULL:
            return Outcome.OVERFLOW_FULL, line
        if line.startswith(OK):
            return Outcome.STORED, line
        return Outcome.FAILED, line

    def _session_abort(self, sess: _Session) -> None:
        msg = sess.msg
        if msg is None:
            return
        sess.msg = None
        sess.started = self._now
        self._discard(msg)
        self._tally[_BYTES_IN] += msg.size
        self._tally[_REFUSED_TEMP] += 1
        log.info("%s: dropped unfinished after %d bytes", msg.msgid, msg.size)

    # -- timers and shutdown ---------------------------------------------------

    def _expire_idle(self, now: float) -> None:
        """Close what has been silent for the idle timeout or busy past the total deadline.

        Each byte resets the first, nothing resets the second, so a client
        trickling a byte at a time holds its slot for ``message_timeout`` at most.
        """
        limit = self.idle_timeout
        total = self.message_timeout
        due = float("inf")
        for conn in list(self._conns.values()):
            idle = conn.last + limit
            late = conn.started + total
            if late <= now:
                log.info("%s: not finished after %.1f s (%d bytes): closing it",
                         conn.msgid, total, conn.size)
                self._tally[_IDLE_TIMEOUTS] += 1
                self._abandon(conn, _LINE_EXPIRED)
            elif idle <= now:
                log.info("%s: idle for %.1f s after %d bytes", conn.msgid, limit, conn.size)
                self._tally[_IDLE_TIMEOUTS] += 1
                self._abandon(conn, _LINE_IDLE)
            else:
                due = min(due, idle, late)
        for sess in list(self._sessions.values()):
            idle = sess.last + limit
            late = sess.started + total
            if late <= now or idle <= now:
                if late <= now:
                    log.info("%s session busy for %.1f s without finishing a message: closing it",
                             sess.lst.kind, total)
                else:
                    log.info("%s session idle for %.1f s: closing it", sess.lst.kind, limit)
                self._tally[_IDLE_TIMEOUTS] += 1
                # one that has answered and only waits for its client to read gets nothing more
                if sess.proto.closing:
                    last = b""
                elif late <= now:
                    last = sess.proto.expired()
                else:
                    last = sess.proto.timeout()
                self._end_session(sess, last)
            else:
                due = min(due, idle, late)
        self._idle_due = due

    def _housekeeping(self, now: float) -> None:
        self._title_due = now + _TITLE_EVERY
        self._debug = log.isEnabledFor(logging.DEBUG)
        if self._stopping:
            titles.set_title("ingest", f"draining {self.connections} conns {self.accepted} in")
        else:
            titles.set_title("ingest", f"{self.connections} conns {self.accepted} in")

    def _drain_wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 512):
                pass

    def _check_stop(self) -> bool:
        """Advance the shutdown phase; True once the server has finished."""
        now = self._now = time.monotonic()
        if not self._stopping:
            self._stopping = True
            self._close_listener()
            self._deadline = now if self._stop_now else now + self._drain_timeout
            if self.row is not None:
                self.row.set_state(ProcState.DRAINING)
            log.info(
                "ingest stopping (%s), %d connection(s) in progress",
                "immediate" if self._stop_now else "graceful",
                self.connections,
            )
            self._housekeeping(now)
        if self._conns and (self._stop_now or now >= self._deadline):
            log.info("answering %d connection(s) in progress: shutting down", len(self._conns))
            for conn in list(self._conns.values()):
                self._tally[_REFUSED_TEMP] += 1
                self._abandon(conn, _LINE_SHUTTING_DOWN)
        late = self._stop_now or now >= self._deadline
        for sess in list(self._sessions.values()):
            if late:
                self._end_session(sess, b"" if sess.proto.closing else sess.proto.shutdown())
            elif not sess.proto.closing and not sess.proto.busy():
                # between messages (an LMTP client keeping its connection): nothing to wait for
                self._end_session(sess, sess.proto.shutdown())
        if self._conns or self._sessions:
            return False
        self._finish()
        return True

    def _close_listener(self) -> None:
        listener = self._listener
        if listener is None:
            return
        if self._listening:
            self._sel.unregister(listener.fileno())
            for lst in self._side:
                self._sel.unregister(lst.sock.fileno())
            self._listening = False
        listener.close()
        for lst in self._side:
            lst.sock.close()
        self._side = []
        self._listener = None

    def _finish(self) -> None:
        # The wake-up pipe stays open until close(): a signal handler may still
        # write to it, and a closed number could by then belong to another file.
        self._sel.close()
        self.finished = True
        self._flush_tally()
        if self.row is not None:
            self.row.set_state(ProcState.STOPPED)
        titles.set_title("ingest", f"stopped {self.accepted} in")
        log.info("ingest stopped after accepting %d message(s)", self.accepted)


def bind_socket(path: Path, mode: int = 0o660, group: str = "") -> socket.socket:
    """Create the listening ingest socket at ``path`` (a stale socket file is replaced).

    Raises RuntimeError if a process answers on ``path``, or if ``path`` is
    something other than a socket.  The socket gets its mode and group before
    ``listen``, so no client can connect through wider permissions.  Dying
    midway leaves at most a socket file nobody answers on, which the next
    call replaces.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise RuntimeError(f"ingest socket {path} exists and is not a socket")
        if _answers(path):
            raise RuntimeError(f"ingest socket {path} is in use by another process")
        log.info("removing stale ingest socket %s", path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        try:
            os.chmod(path, mode)
            if group:
                os.chown(path, -1, grp.getgrnam(group).gr_gid)
            sock.listen(LISTEN_BACKLOG)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            raise
    except BaseException:
        sock.close()
        raise
    return sock


def _answers(path: Path) -> bool:
    """True if something accepts connections on the socket file ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # a listener with a full backlog keeps connect waiting: that is an answer too
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except TimeoutError:
        return True
    finally:
        probe.close()
    return True


class _ChildSignals:
    """The ingest child's signal dispositions; the handlers only record.

    Installed before anything else in the child, so a TERM or HUP that comes
    while the ring is being attached meets these handlers, not the default
    action; a stop asked before the server exists is applied once it does.
    """

    __slots__ = ("drain", "reload", "reopen", "server", "stop_graceful", "stop_now")

    def __init__(self, drain: float) -> None:
        self.drain = drain
        self.server: IngestServer | None = None
        self.stop_graceful = False
        self.stop_now = False
        self.reopen = False
        self.reload = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._term)
        signal.signal(signal.SIGINT, self._quit)
        signal.signal(signal.SIGQUIT, self._quit)
        signal.signal(signal.SIGUSR1, self._usr1)
        # the supervisor forwards a reload it has accepted
        signal.signal(signal.SIGHUP, self._hup)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)

    def attach(self, server: IngestServer) -> None:
        self.server = server
        if self.stop_now:
            server.stop(graceful=False)
        elif self.stop_graceful:
            server.stop(graceful=True, drain_timeout=self.drain)

    def _term(self, signum: int, frame: FrameType | None) -> None:
        self.stop_graceful = True
        if self.server is not None:
            self.server.stop(graceful=True, drain_timeout=self.drain)

    def _quit(self, signum: int, frame: FrameType | None) -> None:
        self.stop_now = True
        if self.server is not None:
            self.server.stop(graceful=False)

    def _usr1(self, signum: int, frame: FrameType | None) -> None:
        self.reopen = True  # the loop reopens the log file (logrotate)

    def _hup(self, signum: int, frame: FrameType | None) -> None:
        self.reload = True  # the loop loads the configuration again


def child_main(
    cfg: Config,
    listener: socket.socket,
    row_index: int,
    *,
    submit: socket.socket | None = None,
    lmtp: socket.socket | None = None,
    config_path: Path | None = None,
) -> int:
    """Run the ingest in a forked child; return its exit code (0: clean stop).

    ``listener`` is the raw socket; ``submit`` and ``lmtp`` the optional
    session sockets, all bound by the supervisor.

    Expects the parent's fork hygiene to have run (signals reset, foreign fds
    closed, title set).  TERM stops gracefully, INT and QUIT at once, USR1
    reopens the log file, HUP loads ``config_path`` again and applies its
    reloadable keys (the supervisor sends it once it has accepted the file;
    without a file HUP does nothing); the loop also stops gracefully when
    the parent is gone.  If this process dies at any point, nothing it
    answered OK is lost and the rest is recovered as the module docstring
    says; a failure to start is logged and returns 1.
    """
    ppid = os.getppid()
    signals = _ChildSignals(_drain_timeout(cfg))
    signals.install()
    try:
        ring = Ring.attach(cfg.ring.name)
    except Exception:
        log.exception("ingest cannot attach the ring %r", cfg.ring.name)
        return 1
    try:
        return _serve_child(cfg, (listener, submit, lmtp), ring, row_index, signals, ppid,
                            config_path)
    except Exception:
        log.exception("ingest failed")
        return 1
    finally:
        ring.close()


def _serve_child(
    cfg: Config,
    listeners: tuple[socket.socket, socket.socket | None, socket.socket | None],
    ring: Ring,
    row_index: int,
    signals: _ChildSignals,
    ppid: int,
    config_path: Path | None = None,
) -> int:
    ing = cfg.ingest
    overflow = Overflow(cfg.overflow.dir, cfg.overflow.max_bytes)
    row = ring.register(Role.INGEST, 0, row=row_index)
    listener, submit, lmtp = listeners
    server = IngestServer(
        listener,
        ring,
        overflow,
        max_message_bytes=ing.max_message_bytes,
        idle_timeout=ing.idle_timeout,
        max_connections=ing.max_connections,
        message_timeout=ing.message_timeout,
        submit_max_connections=ing.submit_max_connections,
        lmtp_max_connections=ing.lmtp_max_connections,
        row=row,
        submit_listener=submit,
        lmtp_listener=lmtp,
    )
    # the wake-up byte cuts the select short after a handler has run
    signal.set_wakeup_fd(server.wakeup_fd, warn_on_full_buffer=False)
    signals.attach(server)
    log.info("ingest serving (ring %s, overflow %s)", ring.name, overflow.path)
    try:
        orphaned = False
        while not server.finished:
            server.serve_once(1.0)
            if signals.reopen:
                signals.reopen = False
                logs.reopen()
            if signals.reload:
                signals.reload = False
                cfg = _reload(cfg, config_path, server, signals)
            if not orphaned and os.getppid() != ppid:
                orphaned = True
                log.warning("supervisor (pid %d) is gone: finishing and exiting", ppid)
                server.stop(graceful=True, drain_timeout=signals.drain)
    finally:
        signal.set_wakeup_fd(-1)
        server.close()
    return 0


# The keys the running ingest takes on HUP; every other key it reads is
# restart-only (config.restart_only()), which a test checks.
RELOADED = frozenset({
    "ingest.max_message_bytes",
    "ingest.idle_timeout",
    "ingest.message_timeout",
    "ingest.max_connections",
    "ingest.submit_max_connections",
    "ingest.lmtp_max_connections",
    "overflow.max_bytes",
    "supervisor.graceful_timeout",
})


def _drain_timeout(cfg: Config) -> float:
    # well inside the supervisor's own deadline, so clients still get an answer
    return min(10.0, cfg.supervisor.graceful_timeout / 2)


def _reload(
    cfg: Config, path: Path | None, server: IngestServer, signals: _ChildSignals
) -> Config:
    """Load ``path`` again and apply it; the configuration now in force.

    The file is the one the supervisor has just accepted; a file that fails
    to load now (edited again in between) leaves everything as it was.
    """
    if path is None:
        return cfg
    try:
        new = configmod.keep_restart_only(configmod.load(path), cfg)
    except (configmod.ConfigError, OSError) as e:
        log.error("HUP: configuration refused, keeping the running one:\n%s", e)
        return cfg
    server.reconfigure(new)
    signals.drain = _drain_timeout(new)
    changed = [key for key in configmod.changed_keys(cfg, new) if key in RELOADED]
    log.info("HUP: ingest applied %s", ", ".join(changed) or "no changes")
    return new


__all__ = [
    "ERR",
    "OK",
    "REASON_BUSY",
    "REASON_EMPTY",
    "REASON_IDLE",
    "REASON_OVERFLOW_FULL",
    "REASON_SHUTTING_DOWN",
    "REASON_STORE_FAILED",
    "REASON_TIMEOUT",
    "REASON_TOO_LARGE",
    "RELOADED",
    "TEMPFAIL",
    "Gate",
    "IngestServer",
    "OverflowGate",
    "Store",
    "Stored",
    "bind_socket",
    "child_main",
    "reply_line",
]
