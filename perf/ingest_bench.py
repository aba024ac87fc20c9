"""Ingest throughput, side by side: ringtrap's ingest, a bare server and a directory queue.

Every message comes on its own connection, the way an MTA pipe delivers:
connect, send 4 KiB, half-close, read the one-line reply.  The same client
processes drive every row, in this one invocation:

  ringtrap ingest, ring has room   the real ``child_main`` in a forked process,
                                   a ring big enough for the whole row (with
                                   ``--drain``: a 1,024-slot ring and a drain
                                   process claiming and acking, as workers would)
  ringtrap ingest, ring full       a 4-slot ring nobody drains: every message spills
  bare selectors server            the same loop style, reads and replies "OK x", stores nothing
  dirqueue (IPC::DirQueue style)   the same loop, each message enqueued the way
                                   IPC::DirQueue does it: data file and control
                                   file written in tmp/, hard-linked into data/
                                   and queue/, temporaries unlinked (on tmpfs)

Server CPU is the server process's user+system time over the measured run
(psutil); latency is what a client sees from connect to the reply.  A second,
quieter figure stops the server, queues a burst of messages, lets it serve
them and reads its on-CPU nanoseconds: no client is waiting then, so no
wake-up costs are charged and the store's own cost stands out.

    python3 perf/ingest_bench.py                 # table, 32 and 64 clients
    python3 perf/ingest_bench.py --json          # rows as JSON objects
    python3 perf/ingest_bench.py -n 50000 --clients 64 --only ring,bare
    python3 perf/ingest_bench.py --open-loop     # p50/p99/p99.9 at 25-90% of capacity

The closed loop keeps every client waiting, so its p50 is the number of
clients times the time per message and its p99 mostly the machine's
stalls.  ``--open-loop`` asks what an MTA sees instead: arrivals at a fixed
rate with Poisson gaps, at fractions of each server's measured capacity,
latency charged from each message's scheduled send time.
"""

from __future__ import annotations

import _socket
import argparse
import array
import contextlib
import gc
import json
import os
import pickle
import select
import selectors
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import FrameType

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import psutil

from ringtrap.base.counters import C
from ringtrap.config import Config, IngestConfig, OverflowConfig, RingConfig
from ringtrap.ingest_socket import CHUNK
from ringtrap.intake.child import child_main
from ringtrap.intake.sockets import LISTEN_BACKLOG
from ringtrap.ring import Ring
from ringtrap.store.segment import unlink_name

SHM = "/dev/shm"
INGEST_ROW = 1


def _message(size: int) -> bytes:
    head = b"Received: from trap\r\nFrom: a@example.org\r\nSubject: bench\r\n\r\n"
    return (head + b"y" * size)[:size]


# --- clients ------------------------------------------------------------------


class _Conns:
    """The client connections in flight from one epoll loop, and what their replies said.

    Each connection: connect, send the message, half-close, read the reply
    line.  One process drives many clients without threads: a thread per
    client spends more CPU handing the GIL around than on its socket calls,
    and on a two-core machine that CPU is taken from the server measured.
    """

    def __init__(self, path: str, msg: bytes) -> None:
        self.path, self.msg = path, msg
        self.lat = array.array("d")
        self.bad: list[bytes] = []
        self.nbad = self.done = 0
        self.ep = select.epoll()
        self.inflight: dict[int, tuple[_socket.socket, float, bytes]] = {}
        self._kind = (int(socket.AF_UNIX), int(socket.SOCK_STREAM | socket.SOCK_NONBLOCK))

    def open(self, t0: float | None) -> bool:
        """Connect and send; latency from ``t0`` (None: now).  False if the backlog is full."""
        s = _socket.socket(*self._kind)
        if t0 is None:
            t0 = time.perf_counter()
        try:
            s.connect(self.path)
        except BlockingIOError:  # the listen backlog is full: try again later
            s.close()
            return False
        msg = self.msg
        try:
            sent = s.send(msg)  # 4 KiB fits the socket buffer in one go
        except BlockingIOError:
            sent = 0
        if sent < len(msg):  # a large --size: wait for the server to read the rest
            s.setblocking(True)
            s.sendall(memoryview(msg)[sent:])
            s.setblocking(False)
        s.shutdown(socket.SHUT_WR)
        fd = s.fileno()
        self.inflight[fd] = (s, t0, b"")
        self.ep.register(fd, select.EPOLLIN)
        return True

    def read(self, events: list[tuple[int, int]]) -> None:
        """Take in what ``events`` say arrived; a whole reply line closes its connection."""
        inflight = self.inflight
        for fd, _ in events:
            s, t0, reply = inflight[fd]
            try:
                more = s.recv(128)
            except BlockingIOError:
                continue
            except OSError as e:
                more, reply = b"", f"client error: {e}".encode()
            reply += more
            if more and not reply.endswith(b"\n"):
                inflight[fd] = (s, t0, reply)
                continue
            self.lat.append(time.perf_counter() - t0)
            del inflight[fd]
            self.ep.unregister(fd)
            s.close()
            self.done += 1
            if not reply.startswith(b"OK "):
                self.nbad += 1
                if len(self.bad) < 5:
                    self.bad.append(reply)


def _client_loop(
    path: str, msg: bytes, count: int, conns: int, go_fd: int
) -> tuple[array.array, list[bytes], int]:
    """``conns`` connections in flight at once (a closed loop), ``count`` in all."""
    c = _Conns(path, msg)
    started = 0
    os.read(go_fd, 1)
    while c.done < count:
        while started < count and len(c.inflight) < conns:
            if not c.open(None):
                time.sleep(0.0005)
                break
            started += 1
        c.read(c.ep.poll(1.0))
    c.ep.close()
    return c.lat, c.bad, c.nbad


# At most this many connections in flight from one open-loop client process:
# past it the server is hopelessly behind and the row says so in its latency.
_OPEN_MAX_INFLIGHT = 4096


def _open_loop(
    path: str, msg: bytes, count: int, rate: float, go_fd: int, seed: int
) -> tuple[array.array, list[bytes], int, array.array]:
    """``count`` messages sent at Poisson arrivals of ``rate`` a second, whatever the replies.

    Each message has a scheduled send time; its latency runs from that time
    to its reply, so a server that stalls is charged for every arrival it
    kept waiting (a closed loop would instead stop sending while it stalls).
    Between sends the loop sleeps rather than spins, which would take a
    core from the server; ``lag`` (how late each send left) shows the
    client's own share.
    """
    import random as _random

    rng = _random.Random(seed)
    c = _Conns(path, msg)
    lag = array.array("d")
    perf = time.perf_counter
    gaps = [rng.expovariate(rate) for _ in range(count)]
    started = 0
    # a collection pass in the middle of the arrivals would stall every send behind it
    gc.collect()
    gc.disable()
    os.read(go_fd, 1)
    due = perf() + gaps[0]
    while c.done < count:
        now = perf()
        while started < count and due <= now and len(c.inflight) < _OPEN_MAX_INFLIGHT:
            if not c.open(due):  # the listen backlog is full: the wait is charged
                break
            lag.append(perf() - due)
            started += 1
            if started < count:
                due += gaps[started]
        wait = (due - perf()) if started < count else 1.0
        events = c.ep.poll(0) if c.inflight else []
        if not events and wait > 0:
            # sleep() takes fractions of a millisecond, poll() rounds up to one
            time.sleep(min(wait, 0.0002) if c.inflight else wait)
            continue
        c.read(events)
    c.ep.close()
    return c.lat, c.bad, c.nbad, lag


def _client_process(path: str, msg: bytes, count: int, conns: int, go_fd: int, out_fd: int,
                    rate: float | None = None, seed: int = 0) -> None:
    if rate is None:
        lat, bad, nbad = _client_loop(path, msg, count, conns, go_fd)
        lag = array.array("d")
    else:
        lat, bad, nbad, lag = _open_loop(path, msg, count, rate, go_fd, seed)
    data = pickle.dumps((lat.tobytes(), bad, nbad, lag.tobytes()))
    with os.fdopen(out_fd, "wb") as f:
        f.write(data)


class Clients:
    """``clients`` concurrent clients in ``procs`` forked processes, started together.

    With ``rate``, each process sends open-loop at its share of ``rate``
    messages a second (independent Poisson arrivals add up to one at the sum
    of their rates) and ``clients`` is ignored.
    """

    def __init__(self, path: Path, n: int, clients: int, procs: int, msg: bytes,
                 rate: float | None = None) -> None:
        procs = max(1, procs if rate is not None else min(procs, clients))
        self.lag: list[float] = []
        self.go_r, self.go_w = os.pipe()
        self.children: list[tuple[int, int]] = []
        for p in range(procs):
            count = n // procs + (1 if p < n % procs else 0)
            conns = clients // procs + (1 if p < clients % procs else 0)
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - client process
                code = 1
                try:
                    os.close(r)
                    os.close(self.go_w)
                    _client_process(str(path), msg, count, conns, self.go_r, w,
                                    None if rate is None else rate / procs, seed=p)
                    code = 0
                except BaseException:
                    traceback.print_exc()
                finally:
                    os._exit(code)
            os.close(w)
            self.children.append((pid, r))
        os.close(self.go_r)

    def go(self) -> None:
        os.write(self.go_w, b"g" * len(self.children))
        os.close(self.go_w)

    def kill(self) -> None:
        """Stop whatever client process is still running (after a failure)."""
        for pid, _ in self.children:
            with contextlib.suppress(ProcessLookupError, ChildProcessError):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)

    def collect(self) -> tuple[list[float], list[bytes], int]:
        lat: list[float] = []
        bad: list[bytes] = []
        nbad = 0
        for pid, r in self.children:
            with os.fdopen(r, "rb") as f:
                raw = f.read()
            _, status = os.waitpid(pid, 0)
            if status != 0 or not raw:
                raise RuntimeError(f"client process {pid} failed (status {status})")
            lat_bytes, some_bad, count_bad, lag_bytes = pickle.loads(raw)
            a = array.array("d")
            a.frombytes(lat_bytes)
            lat.extend(a)
            a = array.array("d")
            a.frombytes(lag_bytes)
            self.lag.extend(a)
            bad.extend(some_bad)
            nbad += count_bad
        return lat, bad, nbad


# --- servers --------------------------------------------------------------------


def _on_term(flag: list[bool]) -> Callable[[int, FrameType | None], None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        flag[0] = True

    return handler


class MiniServer:
    """The ingest's loop style without its store: selectors, accept until EAGAIN,
    read at once after accept, recv_into one reused buffer, non-blocking flags.

    ``on_message(data)`` gets the whole message (None: count bytes only, keep nothing).
    """

    def __init__(
        self, listener: socket.socket, on_message: Callable[[bytes], bytes] | None
    ) -> None:
        self.listener = listener
        listener.setblocking(False)
        self.on_message = on_message
        self.buf = bytearray(CHUNK)
        self.view = memoryview(self.buf)
        self.sel = selectors.DefaultSelector()
        self.sel.register(listener.fileno(), selectors.EVENT_READ, None)
        self.stop = [False]
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.sel.register(self.wake_r, selectors.EVENT_READ, "wake")
        self.count = 0

    def run(self) -> None:
        signal.signal(signal.SIGTERM, _on_term(self.stop))
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        accept = self.listener._accept  # as the ingest: (fd, address), a C-level socket
        register = self.sel.register
        unix, stream = int(socket.AF_UNIX), int(socket.SOCK_STREAM)
        while not self.stop[0]:
            for key, _ in self.sel.select(1.0):
                data = key.data
                if data is None:
                    for _ in range(1024):
                        try:
                            fd, _ = accept()
                        except BlockingIOError:
                            break
                        sock = _socket.socket(unix, stream, 0, fd)
                        conn = [sock, bytearray() if self.on_message else None]
                        if not self._read(conn):
                            register(sock.fileno(), selectors.EVENT_READ, conn)
                elif data == "wake":
                    with contextlib.suppress(BlockingIOError):
                        os.read(self.wake_r, 512)
                elif self._read(data):
                    pass

    def _read(self, conn: list) -> bool:
        sock, acc = conn
        view = self.view
        while True:
            try:
                n = sock.recv_into(view, CHUNK, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return False
            if not n:
                break
            if acc is not None:
                acc += view[:n]
        reply = self.on_message(acc) if self.on_message else b"OK x\n"
        with contextlib.suppress(OSError):
            sock.send(reply, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(sock.fileno())
        sock.close()
        self.count += 1
        return True


class DirQueue:
    """Enqueue the way IPC::DirQueue does: write in tmp/, link into data/ and queue/."""

    def __init__(self, root: Path) -> None:
        self.root = root
        for sub in ("tmp", "data", "queue"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self.tmp = str(root / "tmp")
        self.data = str(root / "data")
        self.queue = str(root / "queue")
        self.pid = os.getpid()
        self.host = socket.gethostname()
        self.seq = 0

    def enqueue(self, payload: bytes) -> bytes:
        self.seq += 1
        now = time.time()
        stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(now)) + f"{int(now % 1 * 1e6):06d}"
        name = f"{stamp}.{self.pid}.{self.seq}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        tmp_data = f"{self.tmp}/d.{name}"
        fd = os.open(tmp_data, flags, 0o600)
        os.write(fd, payload)
        os.close(fd)
        data_path = f"{self.data}/{name}"
        os.link(tmp_data, data_path)
        os.unlink(tmp_data)
        ctl = (
            f"QDFN: {data_path}\nQDSB: {len(payload)}\nQDTM: {now}\n"
            f"QDHN: {self.host}\nQDPD: {self.pid}\n"
        ).encode()
        tmp_ctl = f"{self.tmp}/c.{name}"
        fd = os.open(tmp_ctl, flags, 0o600)
        os.write(fd, ctl)
        os.close(fd)
        os.link(tmp_ctl, f"{self.queue}/50.{name}")
        os.unlink(tmp_ctl)
        return b"OK " + name.encode() + b"\n"


def _fork_server(fn: Callable[[], int]) -> int:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - server process
        code = 1
        try:
            code = fn()
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def _drain(name: str) -> int:
    """Keep the ring from filling, the way workers busy scanning do in a flood.

    Busy workers are not waiting on the ring's "ready" semaphore, so the
    ingest's puts wake nobody; this drain polls every millisecond instead of
    waiting on it, which keeps that true here (1,024 slots last tens of ms).
    """
    ring = Ring.attach(name)
    stop = [False]
    signal.signal(signal.SIGTERM, _on_term(stop))
    claim, ack = ring.claim, ring.ack
    while not stop[0]:
        c = claim(0)
        if c is None:
            time.sleep(0.001)
        else:
            ack(c)
    ring.close()
    return 0


def _wait_listening(path: Path, deadline: float = 10.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(str(path))
            s.sendall(b"warm-up\r\n")
            s.shutdown(socket.SHUT_WR)
            s.recv(128)
            return
        except OSError:
            time.sleep(0.01)
        finally:
            s.close()
    raise RuntimeError(f"server on {path} did not come up")


def _cpu(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def _oncpu_ns(pid: int) -> int | None:
    """Nanoseconds ``pid`` has run on a CPU (/proc schedstat), None if unavailable."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def queued_cpu_us(pid: int, path: Path, msg: bytes, batch: int = 500, rounds: int = 7) -> float:
    """Server CPU per message with ``batch`` messages queued while it is stopped.

    No client is waiting while the server runs, so no wake-up is charged to
    it: this isolates what storing costs, with far less noise than a live run.
    The best of ``rounds`` is returned.
    """
    best = float("inf")
    for _ in range(rounds):
        os.kill(pid, signal.SIGSTOP)
        socks = []
        try:
            for _ in range(batch):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                socks.append(s)
                s.connect(str(path))
                s.sendall(msg)
                s.shutdown(socket.SHUT_WR)
            before = _oncpu_ns(pid)
        finally:
            os.kill(pid, signal.SIGCONT)
        for s in socks:
            s.settimeout(30)
            if not s.recv(128).startswith(b"OK "):
                raise RuntimeError("a queued message was not accepted")
            s.close()
        after = _oncpu_ns(pid)
        if before is None or after is None:
            return float("nan")
        best = min(best, (after - before) / batch / 1e3)
    return round(best, 1)


def _stop(pid: int) -> int:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _listen(path: Path) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.listen(LISTEN_BACKLOG)
    return s


# the queued-burst measurement's messages, on top of the row's own
_QUEUED_MSGS = 7 * 500


def run_row(
    kind: str,
    n: int,
    clients: int,
    procs: int,
    size: int,
    work: Path,
    queued: bool = True,
    drain: bool = False,
    rate: float | None = None,
) -> dict:
    sock_path = work / "in.sock"
    msg = _message(size)
    extra: dict[str, object] = {}
    helpers: list[int] = []
    ring: Ring | None = None
    ring_name = f"rt-ingest-bench-{os.getpid()}"
    spill_dir = Path(tempfile.mkdtemp(prefix="rt-ingest-bench-", dir=SHM))
    listener = _listen(sock_path)
    server = 0
    group: Clients | None = None
    try:
        if kind in ("ring", "full"):
            unlink_name(ring_name)
            # "Room" without a consumer: on a two-core machine a drain process
            # takes its CPU from the ingest and the clients being measured.
            slots = 4 if kind == "full" else n + _QUEUED_MSGS + 64
            slot_bytes = max(8192, 2 * size)
            if kind == "ring" and slots * slot_bytes > shutil.disk_usage(SHM).free // 2:
                drain = True  # a ring for the whole row would not fit /dev/shm
            if kind == "ring" and drain:
                slots = 1024
                extra["drained"] = True
            ring = Ring.create(ring_name, slots, slot_bytes)
            cfg = replace(
                Config(),
                ingest=replace(IngestConfig(), socket=sock_path, max_connections=1024),
                ring=replace(RingConfig(), name=ring_name, slots=slots, slot_bytes=slot_bytes),
                overflow=replace(OverflowConfig(), dir=spill_dir / "overflow", max_bytes=64 << 30),
            )
            server = _fork_server(lambda: child_main(cfg, listener, INGEST_ROW))
            if kind == "ring" and drain:
                helpers.append(_fork_server(lambda: _drain(ring_name)))
        elif kind == "bare":
            server = _fork_server(lambda: MiniServer(listener, None).run() or 0)
        elif kind == "dirqueue":

            def serve_dirqueue() -> int:
                MiniServer(listener, DirQueue(spill_dir / "dirqueue").enqueue).run()
                return 0

            server = _fork_server(serve_dirqueue)
        else:
            raise ValueError(kind)
        listener.close()
        _wait_listening(sock_path)
        group = Clients(sock_path, n, clients, procs, msg, rate)
        time.sleep(0.2)  # let the client processes reach their start line
        helper_cpu0 = sum(_cpu(p) for p in helpers)
        cpu0 = _cpu(server)
        t0 = time.perf_counter()
        group.go()
        lat, bad, nbad = group.collect()
        lag = group.lag
        group = None  # reaped: their pids are no longer ours to signal
        elapsed = time.perf_counter() - t0
        cpu1 = _cpu(server)
        helper_cpu1 = sum(_cpu(p) for p in helpers)
        if ring is not None:
            rows = {r.row: r for r in ring.table.read_rows()}
            counters = rows[INGEST_ROW].counters
            extra["ring"] = counters[C.ACCEPTED_RING]
            extra["spilled"] = counters[C.ACCEPTED_OVERFLOW]
        if kind == "dirqueue":
            extra["queued"] = len(os.listdir(spill_dir / "dirqueue" / "queue"))
        if helpers:
            extra["drain_cpu_us_per_msg"] = round((helper_cpu1 - helper_cpu0) / n * 1e6, 1)
        if queued:
            extra["queued_cpu_us_per_msg"] = queued_cpu_us(server, sock_path, msg)
        code = _stop(server)
        server = 0
        for p in helpers:
            _stop(p)
        helpers.clear()
        if code != 0:
            raise RuntimeError(f"{kind} server exited with {code}")
    finally:
        # after a failure too: no server, drain or client left running
        if group is not None:
            group.kill()
        for p in ([server] if server else []) + helpers:
            with contextlib.suppress(ProcessLookupError, ChildProcessError):
                os.kill(p, signal.SIGKILL)
                os.waitpid(p, 0)
        listener.close()
        if ring is not None:
            ring.close()
            unlink_name(ring_name)
        shutil.rmtree(spill_dir, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(sock_path)
    if nbad:
        print(f"{kind}: {nbad} replies were not OK, e.g. {bad[:3]}", file=sys.stderr)
    q = statistics.quantiles(lat, n=100, method="inclusive")
    if rate is not None:
        extra["rate"] = round(rate)
        extra["p999_ms"] = round(statistics.quantiles(lat, n=1000, method="inclusive")[998]
                                 * 1e3, 2)
        extra["lag_p99_ms"] = round(statistics.quantiles(lag, n=100, method="inclusive")[98]
                                    * 1e3, 2)
    return {
        "name": NAMES[kind],
        "clients": clients,
        "messages": n,
        "msgs_per_s": round((n - nbad) / elapsed),
        "server_cpu_us_per_msg": round((cpu1 - cpu0) / n * 1e6, 1),
        "p50_ms": round(q[49] * 1e3, 2),
        "p99_ms": round(q[98] * 1e3, 2),
        "not_ok": nbad,
        **extra,
    }


NAMES = {
    "ring": "ringtrap ingest, ring has room",
    "full": "ringtrap ingest, ring full (all spill)",
    "bare": "bare selectors server",
    "dirqueue": "dirqueue (IPC::DirQueue style)",
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--messages", type=int, default=20_000, help="messages per row")
    ap.add_argument("--size", type=int, default=4096, help="message bytes (default 4096)")
    ap.add_argument("--clients", default="32,64", help="concurrent clients per row, e.g. 32,64")
    ap.add_argument(
        "--client-procs",
        type=int,
        default=1,
        help="client processes the clients are spread over (an epoll loop in each)",
    )
    ap.add_argument("--only", default=",".join(NAMES), help="comma-separated: " + ",".join(NAMES))
    ap.add_argument(
        "--runs",
        type=int,
        default=3,
        help="runs per row, interleaved across rows; the median run is shown",
    )
    ap.add_argument(
        "--no-queued", action="store_true", help="skip the queued-burst measurement of server CPU"
    )
    ap.add_argument(
        "--drain",
        action="store_true",
        help="ring has room: a 1,024-slot ring emptied by a drain process instead of one"
        " ring big enough for the row",
    )
    ap.add_argument("--json", action="store_true", help="print rows as JSON")
    ap.add_argument(
        "--open-loop",
        action="store_true",
        help="measure each server's capacity (closed loop, the first --clients), then send"
        " at Poisson arrivals at --loads of it; latency from each scheduled send",
    )
    ap.add_argument("--loads", default="25,50,75,90",
                    help="open loop: percentages of capacity (default 25,50,75,90)")
    ap.add_argument("--seconds", type=float, default=3.0,
                    help="open loop: seconds of arrivals per row (default 3)")
    args = ap.parse_args(argv)
    if args.open_loop:
        return open_loop(args)

    work = Path(tempfile.mkdtemp(prefix="rt-ib-"))
    kinds = args.only.split(",")
    counts = [int(c) for c in args.clients.split(",")]
    runs: dict[tuple[str, int], list[dict]] = {(k, c): [] for c in counts for k in kinds}
    try:
        # interleaved, so a slow moment of the machine does not land on one row
        for _ in range(args.runs):
            for clients in counts:
                for kind in kinds:
                    runs[kind, clients].append(
                        run_row(
                            kind,
                            args.messages,
                            clients,
                            args.client_procs,
                            args.size,
                            work,
                            not args.no_queued,
                            args.drain,
                        )
                    )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = []
    for results in runs.values():
        # a p99 moves with the machine's stalls: every run's is kept, in run order
        p99s = [r["p99_ms"] for r in results]
        results.sort(key=lambda r: r["msgs_per_s"])
        row = dict(results[len(results) // 2])
        row["runs"] = len(results)
        row["server_cpu_us_per_msg_min"] = min(r["server_cpu_us_per_msg"] for r in results)
        row["p99_ms_runs"] = p99s
        if not args.no_queued:
            row["queued_cpu_us_per_msg"] = min(r["queued_cpu_us_per_msg"] for r in results)
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(
        f"{args.messages} messages of {args.size} bytes per row, one connection each, "
        f"clients in {args.client_procs} processes, {os.cpu_count()} CPUs, "
        f"median of {args.runs} interleaved runs\n"
    )
    head = (
        f"{'server':40} {'clients':>7} {'msgs/s':>8} {'cpu us/msg':>10} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'ring':>6} {'spilled':>7} {'queued us':>9}"
        f" {'p99 ms, each run':>18}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['name']:40} {r['clients']:>7} {r['msgs_per_s']:>8} "
            f"{r['server_cpu_us_per_msg']:>10} {r['p50_ms']:>7} {r['p99_ms']:>7} "
            f"{r.get('ring', '-'):>6} {r.get('spilled', '-'):>7} "
            f"{r.get('queued_cpu_us_per_msg', '-'):>9} "
            f"{' '.join(f'{p:g}' for p in r['p99_ms_runs']):>18}"
        )
    print(
        "\ncpu us/msg: server CPU over the live run; queued us: server CPU per message"
        " for a burst queued while the server was stopped (no client wake-ups; best of 7);"
        "\nthe row is the run of median msgs/s, and the last column every run's p99"
    )
    bare = {r["clients"]: r["msgs_per_s"] for r in rows if r["name"] == NAMES["bare"]}
    if bare:
        print()
        for r in rows:
            if r["name"] in (NAMES["ring"], NAMES["full"]) and r["clients"] in bare:
                print(
                    f"{r['name']} at {r['clients']} clients: "
                    f"{100 * r['msgs_per_s'] / bare[r['clients']]:.0f}% of the bare server"
                )
    return 0


def open_loop(args: argparse.Namespace) -> int:
    """The open-loop table: each server at fixed fractions of its own capacity."""
    kinds = [k for k in args.only.split(",") if k != "dirqueue"] if args.only == ",".join(
        NAMES) else args.only.split(",")
    clients = int(args.clients.split(",")[0])
    loads = [int(x) for x in args.loads.split(",")]
    work = Path(tempfile.mkdtemp(prefix="rt-ib-"))
    capacity: dict[str, int] = {}
    rows: dict[tuple[str, int], list[dict]] = {(k, load): [] for k in kinds for load in loads}
    try:
        for kind in kinds:
            closed = [run_row(kind, args.messages, clients, args.client_procs, args.size, work,
                              queued=False, drain=args.drain)["msgs_per_s"]
                      for _ in range(args.runs)]
            capacity[kind] = sorted(closed)[len(closed) // 2]
        for _ in range(args.runs):
            for load in loads:
                for kind in kinds:
                    rate = capacity[kind] * load / 100
                    n = max(200, int(rate * args.seconds))
                    rows[kind, load].append(run_row(
                        kind, n, clients, args.client_procs, args.size, work,
                        queued=False, drain=args.drain, rate=rate))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = []
    for (kind, load), results in rows.items():
        results.sort(key=lambda r: r["p99_ms"])
        row = dict(results[len(results) // 2])
        row.update(kind=kind, load_pct=load, capacity=capacity[kind],
                   p99_ms_runs=[r["p99_ms"] for r in results])
        out.append(row)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(
        f"open loop: Poisson arrivals at a fraction of each server's capacity (closed loop,"
        f" {clients} clients, median of {args.runs}); {args.seconds:g} s of arrivals per row,"
        f" messages of {args.size} bytes, client in {args.client_procs} process(es),"
        f" {os.cpu_count()} CPUs; the row of median p99 of {args.runs} interleaved runs\n"
    )
    head = (f"{'server':40} {'capacity':>8} {'load':>5} {'rate/s':>7} {'p50 ms':>7}"
            f" {'p99 ms':>7} {'p99.9 ms':>8} {'send lag p99':>12} {'not ok':>6}")
    print(head)
    print("-" * len(head))
    for r in out:
        print(f"{r['name']:40} {r['capacity']:>8} {r['load_pct']:>4}% {r['rate']:>7}"
              f" {r['p50_ms']:>7} {r['p99_ms']:>7} {r['p999_ms']:>8}"
              f" {r['lag_p99_ms']:>12} {r['not_ok']:>6}")
    print("\nlatency runs from each message's scheduled send to its reply; send lag is how"
          " late the client itself sent (its share of the latency)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
