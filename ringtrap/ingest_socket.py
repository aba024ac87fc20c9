"""The ingest: a Unix socket server that queues each message into the ring or the overflow.

One process, one ``selectors`` loop, up to three listening sockets: the raw
socket (:mod:`ringtrap.intake.raw`: the message, then end of stream; one
reply line), the submit socket (:mod:`ringtrap.intake.submit_session`: an
envelope block written by the MTA's client, the message, a length trailer)
and an LMTP socket (:mod:`ringtrap.intake.lmtp`).  Every connection takes
one path through the loop: accepted (or refused over its socket's budget),
read and fed to its protocol session, written back, ended by its client, a
receive error, a deadline or a shutdown, and closed.  The session owns
framing, state and replies; the connection's sink (:mod:`ringtrap.intake.sink`)
owns limits, ids, counters and the choice of ring or overflow, so a message
is stored the same way whichever socket it came by.  The server is the
ring's only producer and never waits on the workers: a full ring means a
spill.

The raw socket has one shortcut: a message that has arrived whole by the
time its connection is accepted is read, stored and answered on the bare
descriptor, without a socket object, a session or the selector.

Crash model: if the process dies mid-message, its client has not had ``OK``
(the reply follows the store), a ring slot it was filling is left
FILLING(owner) for the supervisor to free and a spill in progress is a tmp file
the overflow's recovery drops; the MTA retries the message.
"""

from __future__ import annotations

import _socket
import contextlib
import errno
import logging
import os
import selectors
import socket
import time
from collections.abc import Iterator

from ringtrap.base import envelope, titles
from ringtrap.base.counters import C
from ringtrap.base.ids import new_id
from ringtrap.base.states import ProcState
from ringtrap.config import Config
from ringtrap.intake import lmtp
from ringtrap.intake.delivery import REFUSAL_LINES, Outcome, Session
from ringtrap.intake.lmtp import LmtpSession
from ringtrap.intake.raw import LINE_BUSY, RawSession
from ringtrap.intake.sink import Sink, Store
from ringtrap.intake.sockets import nowait_io
from ringtrap.intake.submit_session import SubmitSession
from ringtrap.overflow import Overflow
from ringtrap.ring import Ring
from ringtrap.store.proctable import ProcRow

log = logging.getLogger(__name__)

# bytes asked of one recv; the one receive buffer is reused by every connection
CHUNK = 64 * 1024
# accepts per readiness event: enough to empty any backlog the loop can serve,
# few enough that heartbeats and idle checks still run under a connection flood
_ACCEPT_BATCH = 1024
# receives for one connection per turn: a client that writes faster than the
# loop reads must not starve the others, the heartbeat or the idle checks
_READS_PER_TURN = 16
# after EMFILE/ENFILE the listeners are left alone this long instead of spinning
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

# A message that arrives whole is read, answered and closed on the bare
# descriptor: a socket object would cost a getsockname() per connection (the
# check CPython makes of a descriptor it wraps) and its own construction.
# preadv2/pwritev2 with RWF_NOWAIT do not wait on the blocking descriptor, as
# the per-call flags do for socket calls; without them, the descriptor is made
# non-blocking instead.
_NOWAIT_IO = nowait_io()
_RWF_NOWAIT = getattr(os, "RWF_NOWAIT", 0)
_preadv, _pwritev, _readv, _write = os.preadv, os.pwritev, os.readv, os.write

_WAKE = object()  # selector data of the signal wake-up pipe
_HEADER = envelope.header(None)
_HLEN = len(_HEADER)
# Accepted connections become bare C-level sockets: the socket.socket wrapper
# costs a Python __init__ and two enum conversions per accept, a tenth of the
# server's time per message.  They have every method the loop uses.
_Socket = _socket.socket
_AF_UNIX, _SOCK_STREAM = int(socket.AF_UNIX), int(socket.SOCK_STREAM)
_STORED = Outcome.STORED
_OK = b"OK "

# The ingest's counters are tallied per turn and added to the row once per turn.
_CONNECTIONS = int(C.CONNECTIONS)
_CONNECTIONS_REFUSED = int(C.CONNECTIONS_REFUSED)
_IDLE_TIMEOUTS = int(C.IDLE_TIMEOUTS)
_TALLY_SIZE = 1 + max(int(c) for c in (
    C.CONNECTIONS, C.CONNECTIONS_REFUSED, C.ACCEPTED_RING, C.ACCEPTED_OVERFLOW,
    C.REFUSED_TOO_LARGE, C.REFUSED_EMPTY, C.REFUSED_TEMP, C.IDLE_TIMEOUTS, C.BYTES_IN,
))


class _Listener:
    """A listening socket, the protocol its connections speak, their budget."""

    __slots__ = ("active", "busy", "kind", "limit", "sock")

    def __init__(self, kind: str, sock: socket.socket, limit: int, busy: bytes) -> None:
        self.kind = kind  # "raw", "submit" or "lmtp"
        self.sock = sock
        self.limit = limit  # connections this socket serves at once
        self.busy = busy  # the reply to one over the limit
        self.active = 0


class _Conn:
    """A connection in progress: its socket, its protocol and sink, its pending output."""

    __slots__ = ("eof", "events", "fd", "last", "lst", "out", "proto", "sink", "sock")

    def __init__(self, sock: _socket.socket, lst: _Listener, sink: Sink, now: float) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.lst = lst
        self.sink = sink
        self.last = now  # monotonic time of the last bytes received
        self.out = bytearray()
        self.eof = False  # the client has half-closed
        self.events = 0  # what the selector watches for it (0: not registered)
        self.proto: Session


class IngestServer:
    """Serves the ingest protocols on ``listener`` (raw) and the session sockets until stopped.

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
        self._tally = [0] * _TALLY_SIZE
        self.store = Store(ring, overflow, max_message_bytes, self._tally)
        self.row = row
        self.idle_timeout = idle_timeout
        self.message_timeout = message_timeout
        # One receive buffer for every connection, the envelope line in front:
        # a message that arrives whole goes to the ring straight from here.
        self._buf = bytearray(_HEADER + bytes(CHUNK))
        self._whole = memoryview(self._buf)
        self._body = self._whole[_HLEN:]
        self._sel = selectors.DefaultSelector()
        self._raw = _Listener("raw", listener, max_connections, LINE_BUSY)
        self._listeners = [self._raw]
        for kind, side, limit, busy in (
            ("submit", submit_listener, submit_max_connections, LINE_BUSY),
            ("lmtp", lmtp_listener, lmtp_max_connections, lmtp.R_BUSY),
        ):
            if side is not None:
                self._listeners.append(_Listener(kind, side, limit or max_connections, busy))
        for lst in self._listeners:
            lst.sock.setblocking(False)
            self._sel.register(lst.sock.fileno(), selectors.EVENT_READ, lst)
        self._listening = True
        self._closed = False  # the listeners are closed: the server is stopping
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._sel.register(self._wake_r, selectors.EVENT_READ, _WAKE)
        self._conns: dict[int, _Conn] = {}
        self.hostname = hostname or socket.gethostname()
        self._now = self.store.now = time.monotonic()
        self._idle_due = float("inf")  # no connection can be idle before this
        self._accept_resume = 0.0
        self._title_due = 0.0
        self._busy_refused = 0  # refused for a budget since the last warning
        self._busy_warned = float("-inf")
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

    # control

    def reconfigure(self, cfg: Config) -> None:
        """Take the reloadable settings of ``cfg`` (a HUP); see :data:`RELOADED`.

        Connections in progress keep their messages; the new limits apply
        from the next byte, the budgets from the next accept.
        """
        ing = cfg.ingest
        self.store.max_message_bytes = ing.max_message_bytes
        self.idle_timeout = ing.idle_timeout
        self.message_timeout = ing.message_timeout
        budgets = {
            "raw": ing.max_connections,
            "submit": ing.submit_max_connections,
            "lmtp": ing.lmtp_max_connections,
        }
        for lst in self._listeners:
            lst.limit = budgets[lst.kind]
        self.store.overflow.max_bytes = cfg.overflow.max_bytes
        self._idle_due = float("-inf")  # the timers are looked at again next turn

    def settings(self) -> dict[str, object]:
        """The values of the :data:`RELOADED` keys this server now works with."""
        budgets = {lst.kind: lst.limit for lst in self._listeners}
        return {
            "ingest.max_message_bytes": self.store.max_message_bytes,
            "ingest.idle_timeout": self.idle_timeout,
            "ingest.message_timeout": self.message_timeout,
            "ingest.max_connections": self._raw.limit,
            "ingest.submit_max_connections": budgets.get("submit"),
            "ingest.lmtp_max_connections": budgets.get("lmtp"),
            "overflow.max_bytes": self.store.overflow.max_bytes,
        }

    @property
    def accepted(self) -> int:
        """Messages answered OK by this server."""
        return self.store.accepted

    @property
    def wakeup_fd(self) -> int:
        """Write end of a pipe the loop watches; give it to ``signal.set_wakeup_fd``."""
        return self._wake_w

    @property
    def connections(self) -> int:
        """Connections in progress (accepted, not yet answered or closed)."""
        return len(self._conns)

    def stop(self, graceful: bool = True, drain_timeout: float = 10.0) -> None:
        """Ask the loop to stop accepting and finish; only sets flags (signal-safe).

        Graceful: connections in progress may finish until ``drain_timeout``
        has passed, then the rest get their protocol's shutdown reply; a
        session between messages gets it at once.  Not graceful: every
        connection gets it at once.  A second, harsher request wins.
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
        self._now = self.store.now = now = time.monotonic()
        if self._stop_asked and self._check_stop():
            return
        for key, mask in events:
            obj = key.data
            cls = obj.__class__
            if cls is _Conn:
                if mask & selectors.EVENT_WRITE and not self._flush(obj):
                    continue
                if mask & selectors.EVENT_READ:
                    self._read(obj)
            elif cls is _Listener:
                if self._listening:
                    self._accept(obj)
            else:
                self._drain_wake()
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

    # the one connection path: accept, refuse, read, write, lose, end, close

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

    def _accept(self, lst: _Listener) -> None:
        on_accept = self._on_raw if lst is self._raw else self._on_session
        for fd in self._accepted(lst.sock):
            on_accept(lst, fd)

    def _on_raw(self, lst: _Listener, fd: int) -> None:
        """A raw connection: answered on the bare descriptor if its message is all there."""
        self._tally[_CONNECTIONS] += 1
        if lst.active >= lst.limit:
            self._refuse(lst, _Socket(_AF_UNIX, _SOCK_STREAM, 0, fd))
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
        conn = self._open(lst, _Socket(_AF_UNIX, _SOCK_STREAM, 0, fd))
        conn.proto = proto = RawSession(conn.sink, msgid)
        got = max(n, 0) + max(more, 0)
        if got:
            proto.feed(body[:got])
        if n == -2 or more == -2:
            self._lost(conn, None)
        else:
            self._read(conn)

    def _answer_whole(self, fd: int, msgid: str, n: int) -> None:
        """Store and answer a message that arrived whole in the receive buffer.

        The descriptor is closed whatever happens: no socket object would.
        """
        try:
            outcome = self.store.whole(msgid, self._whole[: _HLEN + n], n)
            line = _OK + msgid.encode() + b"\n" if outcome is _STORED else REFUSAL_LINES[outcome]
            try:
                if _NOWAIT_IO:
                    _pwritev(fd, (line,), -1, _RWF_NOWAIT)
                else:
                    _write(fd, line)
            except OSError as e:
                # A client that does not wait for the reply (socat -u) is
                # normal; what was stored stays stored.
                if self.store.debug:
                    log.debug("%s: reply not delivered: %s", msgid, e.strerror)
        finally:
            os.close(fd)

    def _on_session(self, lst: _Listener, fd: int) -> None:
        """A submit or LMTP connection: its session starts (LMTP greets)."""
        sock = _Socket(_AF_UNIX, _SOCK_STREAM, 0, fd)
        self._tally[_CONNECTIONS] += 1
        if lst.active >= lst.limit:
            self._refuse(lst, sock)
            return
        conn = self._open(lst, sock)
        if lst.kind == "lmtp":
            conn.proto = LmtpSession(conn.sink, self.hostname, self.store.max_message_bytes)
        else:
            conn.proto = SubmitSession(conn.sink)
        conn.out += conn.proto.start()
        self._flush(conn)

    def _open(self, lst: _Listener, sock: _socket.socket) -> _Conn:
        """Enter an accepted connection in the table; its caller gives it its protocol."""
        conn = _Conn(sock, lst, Sink(self.store), self._now)
        self._conns[conn.fd] = conn
        lst.active += 1
        due = self._now + min(self.idle_timeout, self.message_timeout)
        if due < self._idle_due:
            self._idle_due = due
        return conn

    def _refuse(self, lst: _Listener, sock: _socket.socket) -> None:
        """Answer a connection over its socket's budget and close it."""
        self._tally[_CONNECTIONS_REFUSED] += 1
        self._busy_refused += 1
        if self._now - self._busy_warned >= 1.0:
            log.warning(
                "too many connections: refused %d (%s socket limit %d)",
                self._busy_refused,
                lst.kind,
                lst.limit,
            )
            self._busy_refused = 0
            self._busy_warned = self._now
        self._drain_unread(sock, 1)
        with contextlib.suppress(OSError):
            sock.send(lst.busy, _SEND_FLAGS)
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

    def _read(self, conn: _Conn) -> None:
        """Feed what the client sent to its protocol, then send the replies."""
        body = self._body
        proto = conn.proto
        out = conn.out
        recv_into = conn.sock.recv_into
        for _ in range(_READS_PER_TURN):
            if proto.closing or conn.eof or len(out) > _MAX_PENDING_OUT:
                break
            try:
                n = recv_into(body, CHUNK, _DONTWAIT)
            except BlockingIOError:
                break
            except OSError as e:
                self._lost(conn, e)
                return
            if not n:
                conn.eof = True
                out += proto.eof()
                break
            conn.last = self._now
            out += proto.feed(body[:n])
        self._flush(conn)

    def _flush(self, conn: _Conn) -> bool:
        """Send what is pending; close a finished connection.  False once it is closed."""
        out = conn.out
        if out:
            try:
                sent = conn.sock.send(out, _SEND_FLAGS)
            except BlockingIOError:
                sent = 0
            except OSError as e:
                self._lost(conn, e)
                return False
            del out[:sent]
        closing = conn.proto.closing or conn.eof
        if not out and closing:
            self._close(conn)
            return False
        # stop reading once the protocol is done, or while the client leaves
        # its replies unread; watch for room to write while output waits
        events = selectors.EVENT_WRITE if out else 0
        if not (closing or len(out) > _MAX_PENDING_OUT):
            events |= selectors.EVENT_READ
        if events != conn.events:
            if not conn.events:
                self._sel.register(conn.fd, events, conn)
            elif events:
                self._sel.modify(conn.fd, events, conn)
            else:  # pragma: no cover - a finished connection is closed above
                self._sel.unregister(conn.fd)
            conn.events = events
        return True

    def _lost(self, conn: _Conn, e: OSError | None) -> None:
        """The client failed: drop any message in progress, close without a reply."""
        sink = conn.sink
        if sink.msgid:
            log.info("%s: connection failed after %d bytes: %s", sink.msgid, sink.size,
                     e.strerror if e is not None else "receive error")
            sink.drop()
        self._close(conn)

    def _end(self, conn: _Conn, reason: str) -> None:
        """End a connection in progress: its protocol's last reply for ``reason``
        ("timeout", "expired" or "shutdown"), sent if the client takes it at
        once, unless it has answered already; then close."""
        proto = conn.proto
        conn.sink.unread(self._drain_unread(conn.sock, 16))
        last = b"" if proto.closing else getattr(proto, reason)()
        if conn.out or last:
            with contextlib.suppress(OSError):
                conn.sock.send(bytes(conn.out) + last, _SEND_FLAGS)
        self._close(conn)

    def _close(self, conn: _Conn) -> None:
        if conn.sink.msgid:  # pragma: no cover - every protocol ends its message first
            conn.sink.abort()
        if conn.events:
            self._sel.unregister(conn.fd)
            conn.events = 0
        if self._conns.pop(conn.fd, None) is not None:
            conn.lst.active -= 1
        conn.sock.close()

    def _pause_accepting(self, e: OSError) -> None:
        log.error("cannot accept: %s; pausing accepts for %.1f s", e.strerror, _ACCEPT_PAUSE)
        if self._listening:
            for lst in self._listeners:
                self._sel.unregister(lst.sock.fileno())
            self._listening = False
        self._accept_resume = self._now + _ACCEPT_PAUSE

    def _resume_accepting(self) -> None:
        self._accept_resume = 0.0
        if not (self._closed or self._listening):
            for lst in self._listeners:
                self._sel.register(lst.sock.fileno(), selectors.EVENT_READ, lst)
            self._listening = True

    # timers and shutdown

    def _expire_idle(self, now: float) -> None:
        """End what has been silent for the idle timeout or busy past the total deadline.

        Each byte resets the first, nothing but the end of a message resets
        the second, so a client trickling a byte at a time holds its slot for
        ``message_timeout`` at most.
        """
        limit = self.idle_timeout
        total = self.message_timeout
        due = float("inf")
        for conn in list(self._conns.values()):
            idle = conn.last + limit
            late = conn.sink.started + total
            if late <= now:
                log.info("%s connection busy for %.1f s without finishing a message"
                         " (%d bytes of one): closing it", conn.lst.kind, total, conn.sink.size)
                self._tally[_IDLE_TIMEOUTS] += 1
                self._end(conn, "expired")
            elif idle <= now:
                log.info("%s connection idle for %.1f s: closing it", conn.lst.kind, limit)
                self._tally[_IDLE_TIMEOUTS] += 1
                self._end(conn, "timeout")
            else:
                due = min(due, idle, late)
        self._idle_due = due

    def _housekeeping(self, now: float) -> None:
        self._title_due = now + _TITLE_EVERY
        self.store.debug = log.isEnabledFor(logging.DEBUG)
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
        now = self._now = self.store.now = time.monotonic()
        if not self._stopping:
            self._stopping = True
            self._close_listeners()
            self._deadline = now if self._stop_now else now + self._drain_timeout
            if self.row is not None:
                self.row.set_state(ProcState.DRAINING)
            log.info(
                "ingest stopping (%s), %d connection(s) in progress",
                "immediate" if self._stop_now else "graceful",
                self.connections,
            )
            self._housekeeping(now)
        late = self._stop_now or now >= self._deadline
        if late and self._conns:
            log.info("answering %d connection(s) in progress: shutting down", len(self._conns))
        for conn in list(self._conns.values()):
            # between messages (an LMTP client keeping its connection): nothing to wait for
            if late or not (conn.proto.closing or conn.proto.busy()):
                self._end(conn, "shutdown")
        if self._conns:
            return False
        self._finish()
        return True

    def _close_listeners(self) -> None:
        if self._listening:
            for lst in self._listeners:
                self._sel.unregister(lst.sock.fileno())
            self._listening = False
        for lst in self._listeners:
            lst.sock.close()
        self._closed = True

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


__all__ = [
    "CHUNK",
    "IngestServer",
]
