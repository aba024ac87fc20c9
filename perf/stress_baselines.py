"""The alternatives the stress harness puts beside ringtrap, on the same spamd.

* **dirqueue**: a directory queue built the way IPC::DirQueue works with
  ordered pickup.  A writer enqueues each message as a temporary file renamed
  into ``queue/``; each of N worker processes picks up a job by listing and
  sorting the whole queue directory, linking a lock file into ``active/`` under
  the job's name (the first link wins), reading the job, then scans it with
  ringtrap's spamd client (SYMBOLS, as ringtrap's workers do), appends a JSON
  line and unlinks the job and its lock.  Every pickup lists the whole queue,
  so its cost grows with the backlog.
* **spamc-direct**: N shell loops running the ``spamc`` binary (``-y``,
  symbols) on one message after another, straight at spamd: no queue at all,
  the floor any queue is measured against.

:func:`pickup_cost` measures, without spamd, what one pickup costs at a given
queue depth for the directory queue (ordered and unordered), ringtrap's
overflow directory and ringtrap's ring.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from stress_trap import group_cpu_seconds  # noqa: E402

from ringtrap import ring as ringmod  # noqa: E402
from ringtrap.base import ids  # noqa: E402
from ringtrap.base.proc import self_identity  # noqa: E402
from ringtrap.overflow import CLAIM_WINDOW, Overflow  # noqa: E402
from ringtrap.scan.spamd import ScanError, SpamdClient  # noqa: E402
from ringtrap.store.segment import unlink_name  # noqa: E402

CTX = mp.get_context("fork")
# spamc skips messages over 500 KB unscanned (-s 512000), ringtrap over
# workers.scan_limit_bytes (500 KiB by default): the dirqueue workers do the same.
SCAN_LIMIT = 512_000


# --- the directory queue -------------------------------------------------------------


class DirQueue:
    """A queue directory laid out as IPC::DirQueue's: tmp/, queue/, active/ on tmpfs."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.tmp = base / "tmp"
        self.queue = base / "queue"
        self.active = base / "active"
        for d in (self.tmp, self.queue, self.active):
            d.mkdir(parents=True, exist_ok=True)
        self._seq = 0

    def enqueue(self, data: bytes) -> str:
        """Write a job and make it visible with one rename; names sort by enqueue time."""
        self._seq += 1
        # priority.time.pid.seq, like IPC::DirQueue's priority-then-time names
        name = f"50.{time.time_ns():020d}.{os.getpid():07d}.{self._seq:09d}"
        tmp = self.tmp / name
        with open(tmp, "wb") as f:
            f.write(data)
        os.rename(tmp, self.queue / name)
        return name

    def lock_file(self) -> Path:
        """This process's lock file, hard-linked under a job's name to take it."""
        p = self.tmp / f"lock.{socket.gethostname()}.{os.getpid()}"
        if not p.exists():
            p.write_text(f"{socket.gethostname()}.{os.getpid()}\n")
        return p

    def pickup(self, lock: Path, ordered: bool = True) -> tuple[str, bytes, int] | None:
        """Take the oldest job (ordered) or the first one found; (name, data, depth seen).

        Ordered pickup lists and sorts the whole directory every time; the
        unordered one stops at the first job it can lock.  A job whose file
        vanished under a stale listing is skipped.
        """
        if ordered:
            names: Any = sorted(os.listdir(self.queue))
            depth = len(names)
        else:
            names = (e.name for e in os.scandir(self.queue))
            depth = -1
        for name in names:
            try:
                os.link(lock, self.active / name)
            except FileExistsError:
                continue  # another worker holds it
            try:
                with open(self.queue / name, "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                os.unlink(self.active / name)  # finished by its holder after our listing
                continue
            return name, data, depth
        return None

    def finish(self, name: str) -> None:
        """Remove a done job: the job first, then its lock (so nobody retakes it)."""
        os.unlink(self.queue / name)
        os.unlink(self.active / name)

    def depth(self) -> int:
        """Jobs waiting or being worked on."""
        return len(os.listdir(self.queue))


def _dirqueue_worker(base: Path, address: str, done: Any, stop: Any, stats: Any) -> None:
    """One dirqueue consumer: ordered pickup, scan, JSON line, unlink."""
    q = DirQueue(base)
    lock = q.lock_file()
    client = SpamdClient(address, connect_timeout=10.0, timeout=330.0)
    fd = os.open(base / "results.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    pickups: list[tuple[int, float]] = []
    while not stop.is_set():
        # CPU time, not wall time: a pickup is listing and sorting, and the
        # side by side pauses workers (SIGSTOP) at any instant, which would
        # stretch a wall-clock reading
        t0 = time.process_time()
        got = q.pickup(lock)
        took = time.process_time() - t0
        if got is None:
            time.sleep(0.05)  # IPC::DirQueue polls an empty queue
            continue
        name, data, depth = got
        pickups.append((depth, took))
        rec: dict[str, Any] = {"job": name, "size": len(data)}
        if len(data) > SCAN_LIMIT:
            rec["verdict"] = "not_scanned"
        else:
            try:
                r = client.symbols(data)
                rec.update(verdict="spam" if r.spam else "ham", score=r.score,
                           rules=list(r.rules))
            except ScanError as e:
                rec.update(verdict="error", reason=str(e))
        os.write(fd, (json.dumps(rec) + "\n").encode())
        q.finish(name)
        with done.get_lock():
            done.value += 1
    os.close(fd)
    stats.send(pickups)
    stats.close()


class DirQueueRun:
    """N dirqueue workers draining ``base`` while the harness watches their count."""

    def __init__(self, base: Path, address: str, workers: int) -> None:
        self.base = base
        self.address = address
        self.queue = DirQueue(base)
        self.done: Any = CTX.Value("q", 0)
        self.stop_event = CTX.Event()
        self.procs: list[Any] = []
        self.pipes: list[Any] = []
        self.n = workers

    def start(self) -> None:
        """Fork the workers."""
        for _ in range(self.n):
            r, w = CTX.Pipe(duplex=False)
            p = CTX.Process(target=_dirqueue_worker, daemon=True,
                            args=(self.base, self.address, self.done, self.stop_event, w))
            p.start()
            w.close()
            self.procs.append(p)
            self.pipes.append(r)

    def count(self) -> int:
        """Jobs finished so far."""
        return int(self.done.value)

    def pids(self) -> list[int]:
        """The workers' pids."""
        return [p.pid for p in self.procs if p.pid is not None]

    def stop(self, timeout: float = 400.0) -> list[tuple[int, float]]:
        """Stop after the current job; returns every (depth, pickup CPU seconds) measured."""
        self.stop_event.set()
        pickups: list[tuple[int, float]] = []
        deadline = time.monotonic() + timeout
        for p, r in zip(self.procs, self.pipes, strict=True):
            if r.poll(max(0.1, deadline - time.monotonic())):
                with contextlib.suppress(EOFError):
                    pickups.extend(r.recv())
            p.join(max(0.1, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join()
        return pickups


# --- spamc straight at spamd ----------------------------------------------------------------

_SPAMC_LOOP = (
    'while read -r f; do '
    'if spamc -x -y -U "$1" < "$f" > /dev/null 2>&1; then echo o; else echo x; fi; '
    'done < "$2"'
)


class SpamcRun:
    """N shell loops of ``spamc -y`` over lists of message files; each line out is one call."""

    def __init__(self, socket_path: Path, paths: Sequence[Path], loops: int, workdir: Path,
                 repeat: int = 1) -> None:
        self.socket_path = socket_path
        self.loops = loops
        self.done: list[tuple[float, bool]] = []
        self._lock = threading.Lock()
        self.shells: list[subprocess.Popen[bytes]] = []
        self.lists = []
        workdir.mkdir(parents=True, exist_ok=True)
        for i in range(loops):
            # loop i takes messages i, i+N, i+2N...: together they go through the set in order
            mine = [str(p) for p in paths[i::loops]] * repeat
            lst = workdir / f"spamc-list-{i}.txt"
            lst.write_text("\n".join(mine) + "\n")
            self.lists.append(lst)
        self._readers: list[threading.Thread] = []

    def start(self) -> None:
        """Start the loops, each in its own session so stop() gets every spamc too."""
        for lst in self.lists:
            sh = subprocess.Popen(["sh", "-c", _SPAMC_LOOP, "sh", str(self.socket_path),
                                   str(lst)], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                  start_new_session=True)
            self.shells.append(sh)
            t = threading.Thread(target=self._read, args=(sh,), daemon=True)
            t.start()
            self._readers.append(t)

    def _read(self, sh: subprocess.Popen[bytes]) -> None:
        assert sh.stdout is not None
        for line in sh.stdout:
            with self._lock:
                self.done.append((time.monotonic(), line.startswith(b"o")))

    def count(self) -> tuple[int, int]:
        """(calls answered, calls failed) so far."""
        with self._lock:
            ok = sum(1 for _, good in self.done if good)
            return ok, len(self.done) - ok

    def cpu_seconds(self) -> float:
        """CPU of the loops: the shells and every spamc they have run (reaped or running)."""
        total = 0.0
        for sh in self.shells:
            total += group_cpu_seconds(sh.pid, recursive=True)
        return total

    def stop(self) -> None:
        """Kill the loops and whatever spamc they are running; drain their pipes."""
        for sh in self.shells:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(sh.pid, signal.SIGKILL)
        for sh in self.shells:
            sh.wait()
            if sh.stdout is not None:
                sh.stdout.close()
        for t in self._readers:
            t.join(5)


# --- pickup cost by queue depth, without spamd ------------------------------------------------


def _timed(samples: int, take: Callable[[], float]) -> float:
    """Mean seconds per pickup over ``samples`` calls of ``take`` (each returns its own time).

    One call first, untimed, so a cold cache does not count.
    """
    take()
    return sum(take() for _ in range(samples)) / samples


def pickup_cost(depth: int, samples: int, base: Path, size: int = 4096) -> dict[str, Any]:
    """Pickups per second of one consumer at ``depth`` queued messages, for each store.

    Each pickup takes the next message, reads it and removes it; a new message
    is put back after it (not timed) so the depth stays put.  The overflow
    lists new/ once per window of claims (``CLAIM_WINDOW``); that listing is
    timed on its own and its share per claim added.  The ring holds at most
    its slots (1024 here), so it is measured full.
    """
    data = (b"Subject: pickup\r\n\r\n" + b"x" * size)[:size]
    out: dict[str, Any] = {"depth": depth}
    shutil.rmtree(base, ignore_errors=True)
    # directory queue, ordered and unordered
    q = DirQueue(base / "dq")
    for _ in range(depth):
        q.enqueue(data)
    lock = q.lock_file()
    for ordered, key in ((True, "dirqueue_ordered"), (False, "dirqueue_unordered")):
        def take(ordered: bool = ordered) -> float:
            t0 = time.perf_counter()
            got = q.pickup(lock, ordered)
            assert got is not None
            q.finish(got[0])
            took = time.perf_counter() - t0
            q.enqueue(data)
            return took
        out[key] = 1.0 / _timed(samples, take)
    shutil.rmtree(base / "dq", ignore_errors=True)
    # ringtrap's overflow directory
    o = Overflow(base / "ov", 1 << 40)
    for _ in range(depth):
        o.spill(ids.new_id(), data)
    me = self_identity()

    def take_overflow() -> float:
        t0 = time.perf_counter()
        c = o.claim(me)
        assert c is not None
        c.read()
        o.ack(c)
        took = time.perf_counter() - t0
        o.spill(ids.new_id(), data)
        return took
    per = _timed(samples, take_overflow)
    t0 = time.perf_counter()
    sorted(os.listdir(base / "ov" / "new"))
    per += (time.perf_counter() - t0) / min(depth, CLAIM_WINDOW)
    out["overflow"] = 1.0 / per
    shutil.rmtree(base / "ov", ignore_errors=True)
    # ringtrap's ring
    name = f"rt-stress-pick-{os.getpid()}"
    unlink_name(name)
    slots = min(depth, 1024)
    r = ringmod.Ring.create(name, slots, 64 * 1024)
    try:
        for _ in range(slots):
            r.put(ids.new_id(), data)

        def take_ring() -> float:
            t0 = time.perf_counter()
            c = r.claim(0.0)
            assert c is not None
            r.ack(c)
            took = time.perf_counter() - t0
            r.put(ids.new_id(), data)
            return took
        out["ring"] = 1.0 / _timed(samples, take_ring)
        out["ring_depth"] = slots
    finally:
        r.close()
        unlink_name(name)
    shutil.rmtree(base, ignore_errors=True)
    return out


__all__ = ["SCAN_LIMIT", "DirQueue", "DirQueueRun", "SpamcRun", "pickup_cost"]
