"""The flood of the stress harness: a message set, a rate profile and the clients.

A flood is open-loop, the way an MTA hands over a queue run: messages are due
at the rate the profile says whatever the trap answers, carried by a fixed
number of concurrent clients.  Each delivery is what a Postfix pipe does:
connect to the ingest socket, send one message, half-close, read the one
reply line (``OK <id>``, ``ERR ...``, ``TEMPFAIL ...``).  When every client
is busy, due messages wait up to a second's worth and beyond that are shed
(counted): an MTA at its concurrency limit would keep them queued.

The clients run in a few forked processes (threads inside), so the harness's
own sampling never slows them; every delivery's outcome, latency and id flow
back to the harness in batches through a multiprocessing queue.
"""

from __future__ import annotations

import base64
import contextlib
import math
import multiprocessing as mp
import queue
import random
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CTX = mp.get_context("fork")

# Outcomes of one delivery, as the clients report them.
OK = "ok"  # OK <id>: accepted
ERR = "err"  # ERR <reason>: refused for good (too large, empty)
TEMPFAIL = "tempfail"  # TEMPFAIL <reason>: cannot store now
DOWN = "down"  # could not connect (the trap is restarting): an MTA defers
NOREPLY = "noreply"  # connected, but the connection closed or timed out without a reply
OUTCOMES = (OK, ERR, TEMPFAIL, DOWN, NOREPLY)

KIB = 1024
MIB = 1024 * 1024

_TEXT = (
    "offer account prize winner claim free money cheap loan pills watch replica casino "
    "bonus deposit investment crypto profit guaranteed urgent verify password security "
    "update invoice payment shipping parcel refund bank secure limited exclusive deal "
    "discount luxury brand weight dating meet business partner transfer million dollars "
    "inheritance lawyer confidential reply today click below link website visit customer"
)
_WORDS = tuple(_TEXT.split())


# --- the message set -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SizeModel:
    """Where message sizes come from: trap mail is mostly small with a long tail.

    A log-normal body of a few KiB (``median`` bytes, spread ``sigma``), a
    Pareto tail from ``tail_from`` up to ``max_message`` for ``tail_share``
    of the messages (attachments), and ``over_share`` of messages just over
    ``max_message`` (the ingest refuses them with ``ERR``).
    """

    max_message: int = 4 * MIB
    median: int = 4 * KIB
    sigma: float = 0.8
    tail_share: float = 0.025
    tail_from: int = 64 * KIB
    tail_alpha: float = 1.1
    over_share: float = 0.005

    def sample(self, rng: random.Random) -> int:
        """One message size in bytes."""
        u = rng.random()
        if u < self.over_share:
            return rng.randint(self.max_message + 1, self.max_message + self.max_message // 2)
        if u < self.over_share + self.tail_share:
            return min(self.max_message, int(self.tail_from * rng.paretovariate(self.tail_alpha)))
        size = int(rng.lognormvariate(math.log(self.median), self.sigma))
        return max(600, min(self.tail_from, size))


def make_message(rng: random.Random, size: int, n: int) -> bytes:
    """A spam-like RFC 5322 message of about ``size`` bytes.

    Small ones are one text part; larger ones carry a base64 attachment of
    random bytes, as big trap mail does.  Nothing in it trips a prefilter
    (no bounce, auto-reply or executable), so each one goes to spamd unless
    it is over the scan limit.
    """
    subject = " ".join(rng.choice(_WORDS) for _ in range(5)).capitalize()
    head = (
        f"Received: from mx{n % 97}.bulk.example (mx{n % 97}.bulk.example [192.0.2.{n % 250 + 1}])"
        f"\r\n\tby trap.example.org with ESMTP id {n:08X}\r\n"
        f"From: \"{rng.choice(_WORDS).title()} Deals\" <offers{n % 131}@bulk.example>\r\n"
        f"To: trap{n % 17}@example.org\r\n"
        f"Subject: {subject}\r\n"
        "Date: Fri, 27 Nov 2026 10:00:00 +0000\r\n"
        f"Message-ID: <{n}.{rng.getrandbits(48):012x}@bulk.example>\r\n"
        "MIME-Version: 1.0\r\n"
    ).encode()

    def text(nbytes: int) -> bytes:
        out: list[str] = []
        length = 0
        while length < nbytes:
            line = " ".join(rng.choice(_WORDS) for _ in range(11)).capitalize() + ".\r\n"
            out.append(line)
            length += len(line)
        out.append(f"Visit http://deal{n % 23}.bulk.example/o?id={n} today.\r\n")
        return "".join(out).encode()

    if size <= 48 * KIB:
        msg = head + b"Content-Type: text/plain; charset=us-ascii\r\n\r\n"
        return msg + text(max(0, size - len(msg)))
    body = text(2 * KIB)
    raw = rng.randbytes(max(0, (size - len(head) - len(body) - 400) * 3 // 4))
    b64 = base64.encodebytes(raw).replace(b"\n", b"\r\n")
    return (head + b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
            b"--b1\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n" + body +
            b"--b1\r\nContent-Type: application/pdf; name=\"invoice.pdf\"\r\n"
            b"Content-Transfer-Encoding: base64\r\n"
            b"Content-Disposition: attachment; filename=\"invoice.pdf\"\r\n\r\n" + b64 +
            b"--b1--\r\n")


def build_message_set(count: int, model: SizeModel, seed: int = 1) -> list[bytes]:
    """``count`` distinct messages with sizes drawn from ``model`` (deterministic per seed)."""
    rng = random.Random(seed)
    return [make_message(rng, model.sample(rng), n) for n in range(count)]


def load_message_dir(directory: Path, limit: int = 0) -> list[bytes]:
    """Every regular file under ``directory`` (a Maildir, an export of a trap), name order.

    ``limit`` > 0 keeps the first ``limit`` files.  Empty files are skipped: the
    ingest refuses them, and they say nothing about a flood.
    """
    paths = sorted(p for p in directory.rglob("*") if p.is_file())
    out = []
    for p in paths:
        data = p.read_bytes()
        if data:
            out.append(data)
        if limit and len(out) >= limit:
            break
    if not out:
        raise ValueError(f"{directory}: no non-empty files to send")
    return out


def size_summary(msgs: Sequence[bytes], max_message: int) -> dict[str, Any]:
    """Counts and quantiles of a message set's sizes, for the report."""
    sizes = sorted(len(m) for m in msgs)

    def q(p: float) -> int:
        return sizes[min(len(sizes) - 1, int(p * len(sizes)))]

    return {
        "messages": len(sizes), "p50": q(0.5), "p90": q(0.9), "p99": q(0.99),
        "max": sizes[-1], "mean": round(sum(sizes) / len(sizes)),
        "over_limit": sum(1 for s in sizes if s > max_message),
        "over_64k": sum(1 for s in sizes if s > 64 * KIB),
        "over_1m": sum(1 for s in sizes if s > MIB),
    }


# --- the rate profile --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Profile:
    """Messages per second over the flood: a steady rate, a ramp and periodic bursts.

    The base rate goes linearly from ``rate`` to ``ramp_to`` (``rate`` when
    None) over ``duration`` seconds; every ``burst_every`` seconds (from
    ``burst_every`` on) ``burst_rate`` more per second arrive for
    ``burst_len`` seconds.
    """

    rate: float
    duration: float
    ramp_to: float | None = None
    burst_rate: float = 0.0
    burst_every: float = 0.0
    burst_len: float = 0.0

    def base_at(self, t: float) -> float:
        """The ramp's rate at ``t`` seconds into the flood."""
        end = self.rate if self.ramp_to is None else self.ramp_to
        frac = min(1.0, max(0.0, t / self.duration)) if self.duration > 0 else 0.0
        return self.rate + (end - self.rate) * frac

    def in_burst(self, t: float) -> bool:
        """True while a burst is on at ``t``."""
        if self.burst_every <= 0 or self.burst_len <= 0 or self.burst_rate <= 0:
            return False
        if t < self.burst_every:
            return False
        return (t % self.burst_every) < self.burst_len

    def rate_at(self, t: float) -> float:
        """Offered messages per second at ``t`` (0 outside the flood)."""
        if t < 0 or t >= self.duration:
            return 0.0
        return self.base_at(t) + (self.burst_rate if self.in_burst(t) else 0.0)

    def expected(self, t0: float, t1: float, step: float = 0.01) -> float:
        """Messages the profile offers between ``t0`` and ``t1`` (numeric integral)."""
        n = max(1, int((t1 - t0) / step))
        h = (t1 - t0) / n
        return sum(self.rate_at(t0 + (i + 0.5) * h) for i in range(n)) * h

    def describe(self) -> str:
        """One line for the report."""
        parts = [f"{self.rate:g}/s"]
        if self.ramp_to is not None and self.ramp_to != self.rate:
            parts = [f"ramp {self.rate:g}/s -> {self.ramp_to:g}/s"]
        if self.burst_rate > 0 and self.burst_every > 0 and self.burst_len > 0:
            parts.append(f"bursts of +{self.burst_rate:g}/s for {self.burst_len:g} s "
                         f"every {self.burst_every:g} s")
        return ", ".join(parts) + f", {self.duration:g} s"


# --- one delivery ----------------------------------------------------------------------


def deliver(path: str, prefix: bytes, body: bytes, timeout: float = 60.0
            ) -> tuple[str, str]:
    """Send one message the way an MTA pipe does; returns (outcome, id or reason).

    The connection is the client's only state: dying midway leaves the
    ingest a half-sent message it discards (the client never got OK).
    """
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        try:
            s.connect(path)
        except OSError as e:
            return DOWN, e.strerror or str(e)
        try:
            s.sendall(prefix)
            s.sendall(body)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the ingest may answer (TEMPFAIL busy, ERR) before reading it all
        reply = b""
        try:
            while not reply.endswith(b"\n"):
                chunk = s.recv(256)
                if not chunk:
                    break
                reply += chunk
        except OSError as e:
            return NOREPLY, e.strerror or str(e)
    finally:
        s.close()
    line = reply.decode("ascii", "replace").strip()
    word, _, rest = line.partition(" ")
    if word == "OK" and rest:
        return OK, rest
    if word == "ERR":
        return ERR, rest
    if word == "TEMPFAIL":
        return TEMPFAIL, rest
    return NOREPLY, line or "connection closed"


# --- the clients -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delivery:
    """One delivery's outcome as the harness receives it."""

    at: float  # monotonic time the reply came
    latency: float  # seconds from connect to reply
    outcome: str
    detail: str  # the id for OK, else the reason
    size: int


class _Pacer:
    """Hands out send permits at the profile's rate, split over the client processes."""

    def __init__(self, profile: Profile, share: float, t0: float, cap_floor: int) -> None:
        self.profile = profile
        self.share = share
        self.t0 = t0
        self.cap_floor = cap_floor
        self.cond = threading.Condition()
        self.pending = 0
        self.shed = 0
        self.stopped = False
        self._credit = 0.0

    def run(self, stop: Any) -> None:
        last = time.monotonic()
        while not stop.is_set():
            time.sleep(0.005)
            now = time.monotonic()
            t = now - self.t0
            if t >= self.profile.duration:
                break
            rate = self.profile.rate_at(t) * self.share
            self._credit += rate * (now - last)
            last = now
            due = int(self._credit)
            if due:
                self._credit -= due
                with self.cond:
                    cap = max(self.cap_floor, int(rate))  # about a second's worth
                    room = max(0, cap - self.pending)
                    self.shed += max(0, due - room)
                    self.pending += min(due, room)
                    self.cond.notify(min(due, room))
        with self.cond:
            self.stopped = True
            self.cond.notify_all()

    def take(self) -> bool:
        """Wait for a permit; False once the flood is over."""
        with self.cond:
            while self.pending == 0 and not self.stopped:
                self.cond.wait(0.5)
            if self.pending == 0:
                return False
            self.pending -= 1
            return True


def _client_process(index: int, path: str, msgs: Sequence[bytes], profile: Profile, t0: float,
                    share: float, threads: int, out: Any, stop: Any, seed: int) -> None:
    """A client process: ``threads`` delivery loops fed by one pacer."""
    pacer = _Pacer(profile, share, t0, threads)
    batch: list[Delivery] = []
    lock = threading.Lock()
    seq = [0]

    def loop(k: int) -> None:
        rng = random.Random(seed * 1000 + index * 100 + k)
        while pacer.take():
            with lock:
                seq[0] += 1
                n = seq[0]
            body = msgs[rng.randrange(len(msgs))]
            # a unique first line: every delivery is a distinct message to the trap
            prefix = f"X-Stress-Seq: {index}-{n}\r\n".encode()
            start = time.monotonic()
            outcome, detail = deliver(path, prefix, body)
            end = time.monotonic()
            with lock:
                batch.append(Delivery(end, end - start, outcome, detail,
                                      len(prefix) + len(body)))

    workers = [threading.Thread(target=loop, args=(k,), daemon=True) for k in range(threads)]
    for w in workers:
        w.start()
    pacing = threading.Thread(target=pacer.run, args=(stop,), daemon=True)
    pacing.start()

    def flush() -> None:
        with lock:
            items = batch[:]
            batch.clear()
        if items:
            out.put(("d", items))

    while pacing.is_alive() or any(w.is_alive() for w in workers):
        time.sleep(0.2)
        flush()
    flush()
    out.put(("end", index, pacer.shed))


class Flood:
    """The clients of one flood; ``poll()`` collects what they delivered so far."""

    def __init__(self, socket_path: Path, msgs: Sequence[bytes], profile: Profile,
                 clients: int, seed: int = 1) -> None:
        self.socket_path = socket_path
        self.msgs = msgs
        self.profile = profile
        self.clients = clients
        self.seed = seed
        # a few processes carry the threads: enough to keep sockets busy on
        # two cores without adding many more competitors for them
        self.nproc = max(1, min(4, clients // 4))
        self.out: Any = CTX.Queue()
        self.stop_event = CTX.Event()
        self.procs: list[Any] = []
        self.shed = 0
        self._ended = 0
        self.t0 = 0.0

    def start(self) -> float:
        """Fork the client processes; returns the monotonic start time of the profile."""
        self.t0 = time.monotonic() + 0.2
        per = [self.clients // self.nproc + (1 if i < self.clients % self.nproc else 0)
               for i in range(self.nproc)]
        for i, threads in enumerate(per):
            p = CTX.Process(target=_client_process, name=f"stress-client-{i}", daemon=True,
                            args=(i, str(self.socket_path), self.msgs, self.profile, self.t0,
                                  threads / self.clients, threads, self.out, self.stop_event,
                                  self.seed))
            p.start()
            self.procs.append(p)
        return self.t0

    def poll(self, timeout: float = 0.0) -> list[Delivery]:
        """Deliveries reported since the last call (waits up to ``timeout`` for the first)."""
        got: list[Delivery] = []
        block = timeout > 0
        while True:
            try:
                item = self.out.get(block, timeout) if block else self.out.get_nowait()
            except queue.Empty:
                return got
            block = False
            if item[0] == "d":
                got.extend(item[1])
            else:
                self._ended += 1
                self.shed += item[2]

    @property
    def done(self) -> bool:
        """True once every client process has reported its end."""
        return self._ended >= len(self.procs)

    def stop(self) -> None:
        """Ask the clients to stop pacing; in-flight deliveries still complete."""
        self.stop_event.set()

    def join(self, timeout: float = 120.0) -> list[Delivery]:
        """Wait for the clients to finish; returns the last deliveries."""
        got: list[Delivery] = []
        deadline = time.monotonic() + timeout
        while not self.done and time.monotonic() < deadline:
            got.extend(self.poll(0.2))
        for p in self.procs:
            p.join(max(0.1, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join()
        got.extend(self.poll())
        return got


def deliver_all(path: Path, files: Sequence[Path], threads: int = 8
                ) -> list[tuple[str, str]]:
    """Deliver every file as fast as ``threads`` clients can, in order of start.

    Used to preload a backlog; returns each delivery's (outcome, id or reason)
    in the order of ``files``.  Files are read one at a time, so a large set
    never sits in memory.
    """
    work = list(files)
    results: list[tuple[str, str]] = [("", "")] * len(work)
    nxt = [0]
    lock = threading.Lock()

    def loop() -> None:
        while True:
            with lock:
                i = nxt[0]
                nxt[0] += 1
            if i >= len(work):
                return
            results[i] = deliver(str(path), b"", work[i].read_bytes())

    ts = [threading.Thread(target=loop, daemon=True) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return results


def percentile(values: Sequence[float], p: float) -> float | None:
    """The ``p`` quantile (0..1) of ``values`` by nearest rank; None when empty."""
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(p * len(s)) - 1))]


def write_set(msgs: Sequence[bytes], directory: Path) -> list[Path]:
    """Write the messages as numbered files (the spamc loops read them); returns the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, m in enumerate(msgs):
        p = directory / f"{i:06d}.eml"
        p.write_bytes(m)
        paths.append(p)
    return paths


def close_quietly(q: Any) -> None:
    """Close a multiprocessing queue without waiting on its feeder thread."""
    with contextlib.suppress(Exception):
        q.cancel_join_thread()
        q.close()


__all__ = [
    "DOWN", "ERR", "NOREPLY", "OK", "OUTCOMES", "TEMPFAIL",
    "Delivery", "Flood", "Profile", "SizeModel",
    "build_message_set", "deliver", "deliver_all", "load_message_dir", "make_message",
    "percentile", "size_summary", "write_set",
]
