"""MTA delivery, side by side: what each way of handing a message to ringtrap costs.

The same messages are delivered, in this one invocation, by:

  socat per message            ``socat - UNIX-CONNECT:ingest.sock`` (raw, no envelope)
  nc per message               ``nc -U -N ingest.sock`` (raw, no envelope)
  ringtrap-deliver (nc)        the sh wrapper: sh + dd + nc, envelope, exit 0/75
  ringtrap-deliver (socat)     the same over socat
  ringtrap submit              the Python client as the MTA runs it (the installed
                               ``ringtrap`` console script when there is one)
  LMTP, one connection         one persistent LMTP session (RFC 2033), as Postfix's
                               lmtp client with connection caching or Exim's lmtp
                               transport deliver

Per-message clients run ``--concurrency`` at a time, each as a fresh process,
the way Postfix's pipe(8) starts one per delivery.  The server is the real
ingest (``IngestServer`` with its three sockets) in a forked process, with a
thread draining the ring; what spills goes to a tmpfs overflow removed at the
end.

Columns: msgs/s over the whole run; client CPU per message (the delivery
processes' user+system time, or the LMTP client's own); the ingest's CPU per
message; the latency of one delivery (process start to exit, or MAIL to the
last reply) at the median and the 99th percentile.

    python3 perf/delivery_bench.py                    # 2,000 messages of 4 KiB each way
    python3 perf/delivery_bench.py -n 500 --json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import psutil

from ringtrap.ingest_socket import IngestServer
from ringtrap.intake.sockets import bind_socket
from ringtrap.overflow import Overflow
from ringtrap.ring import Ring
from ringtrap.store.segment import unlink_name

ROOT = Path(__file__).resolve().parent.parent
DELIVER = ROOT / "scripts" / "ringtrap-deliver"


def make_message(i: int, size: int) -> bytes:
    head = (f"From: Sender {i} <s{i}@example.com>\r\nTo: trap@example.org\r\n"
            f"Subject: bench {i}\r\nMessage-ID: <{i}.{uuid.uuid4().hex}@example.com>\r\n\r\n")
    line = b"lorem ipsum dolor sit amet consectetur adipiscing elit sed do\r\n"
    body = line * (max(0, size - len(head)) // len(line) + 1)
    return head.encode() + body[: max(0, size - len(head))]


def serve(base: Path, ring_name: str, overflow_dir: Path, ready: int) -> None:  # pragma: no cover
    """The server process: the ingest on three sockets, a thread draining the ring."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    ring = Ring.attach(ring_name)
    drain = Ring.attach(ring_name)
    server = IngestServer(
        bind_socket(base / "ingest.sock"), ring, Overflow(overflow_dir, 1 << 34),
        max_message_bytes=50 << 20, idle_timeout=60.0, max_connections=1024,
        submit_listener=bind_socket(base / "submit.sock", 0o666),
        lmtp_listener=bind_socket(base / "lmtp.sock", 0o666), hostname="bench")

    def drainer() -> None:
        while True:
            c = drain.claim(timeout=0.5)
            if c is not None:
                drain.ack(c)

    threading.Thread(target=drainer, daemon=True).start()
    os.write(ready, b"x")
    os.close(ready)
    server.run()


def per_process(argv: list[str], msgs: list[bytes], concurrency: int) -> dict[str, float]:
    """Deliver each message with a fresh ``argv`` process, ``concurrency`` at a time."""
    lat: list[float] = []
    lock = threading.Lock()
    failures = 0

    def one(m: bytes) -> None:
        nonlocal failures
        t0 = time.perf_counter()
        done = subprocess.run(argv, input=m, capture_output=True, check=False)
        dt = time.perf_counter() - t0
        with lock:
            lat.append(dt)
            if done.returncode != 0 or not done.stdout.startswith(b"OK "):
                failures += 1

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, msgs))
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if failures:
        raise RuntimeError(f"{argv[0]}: {failures} deliveries not answered OK")
    return {"wall": wall, "client_cpu": cpu, "lat": lat}


class LmtpSession:
    """One LMTP connection kept open across the rounds, as a caching MTA keeps it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock: socket.socket | None = None
        self.file: BinaryIO | None = None

    def reply(self) -> bytes:
        assert self.file is not None
        while True:
            line = self.file.readline()
            if not line:
                raise RuntimeError("LMTP connection closed")
            if line[3:4] != b"-":
                return line

    def deliver(self, msgs: list[bytes]) -> dict[str, float]:
        """Deliver ``msgs`` on the connection; client CPU is this thread's."""
        if self.sock is None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.connect(str(self.path))
            self.file = self.sock.makefile("rb")
            self.reply()
            self.sock.sendall(b"LHLO bench.example\r\n")
            self.reply()
        s, reply = self.sock, self.reply
        lat: list[float] = []
        cpu0 = time.thread_time()
        t0 = time.perf_counter()
        for m in msgs:
            t = time.perf_counter()
            body = m.replace(b"\r\n.", b"\r\n..")
            s.sendall(b"XFORWARD ADDR=192.0.2.1 HELO=mx.example\r\n"
                      b"MAIL FROM:<s@example.com>\r\nRCPT TO:<trap@example.org>\r\nDATA\r\n")
            for _ in range(4):
                code = reply()[:3]
                if code not in (b"250", b"354"):
                    raise RuntimeError(f"LMTP answered {code!r}")
            s.sendall(body + (b"" if body.endswith(b"\r\n") else b"\r\n") + b".\r\n")
            if not reply().startswith(b"250"):
                raise RuntimeError("LMTP did not store a message")
            lat.append(time.perf_counter() - t)
        wall = time.perf_counter() - t0
        cpu = time.thread_time() - cpu0
        return {"wall": wall, "client_cpu": cpu, "lat": lat}

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError, RuntimeError):
                self.sock.sendall(b"QUIT\r\n")
                self.reply()
            assert self.file is not None
            self.file.close()
            self.sock.close()
            self.sock = None


def submit_argv() -> tuple[list[str], str]:
    """How the MTA would run ``ringtrap submit`` here, and a note saying which."""
    script = Path(sys.executable).parent / "ringtrap"
    if script.exists():
        return [str(script), "submit"], "installed console script"
    found = shutil.which("ringtrap")
    if found:
        return [found, "submit"], "ringtrap on PATH"
    return ([sys.executable, "-m", "ringtrap.command.cli", "submit"],
            "python -m ringtrap.command.cli (no install)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=2000, help="messages per way (default 2000)")
    ap.add_argument("--size", type=int, default=4096, help="message size (default 4096)")
    ap.add_argument("--concurrency", type=int, default=4,
                    help="delivery processes at a time for the per-message ways (default 4)")
    ap.add_argument("--rounds", type=int, default=5,
                    help="the ways take turns this many times, n/rounds messages each"
                         " (default 5)")
    ap.add_argument("--json", action="store_true", help="rows as JSON objects")
    args = ap.parse_args()

    base = Path(tempfile.mkdtemp(prefix="rt-dbench-", dir="/tmp"))
    ring_name = f"rt-dbench-{os.getpid()}"
    overflow_dir = Path(f"/dev/shm/{ring_name}.overflow")
    Ring.create(ring_name, 4096, 64 * 1024).close()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the server
        os.close(r)
        try:
            serve(base, ring_name, overflow_dir, w)
        finally:
            os._exit(0)
    os.close(w)
    os.read(r, 1)
    os.close(r)
    server = psutil.Process(pid)
    msgs = [make_message(i, args.size) for i in range(args.n)]
    raw, sub = base / "ingest.sock", base / "submit.sock"
    envelope = ["--sender", "s@example.com", "--recipient", "trap@example.org",
                "--client-address", "192.0.2.1", "--client-helo", "mx.example", "--queue-id",
                "4ABCDEF"]
    submit_cmd, submit_note = submit_argv()
    ways: list[tuple[str, str, Callable[[list[bytes]], dict[str, float]]]] = []
    if shutil.which("socat"):
        ways.append(("socat per message", "no",
                     lambda ms: per_process(["socat", "-t", "30", "-", f"UNIX-CONNECT:{raw}"],
                                            ms, args.concurrency)))
    if shutil.which("nc"):
        ways.append(("nc per message", "no",
                     lambda ms: per_process(["nc", "-U", "-N", str(raw)], ms, args.concurrency)))
        ways.append(("ringtrap-deliver (nc)", "yes",
                     lambda ms: per_process([str(DELIVER), "--client", "nc", "--socket", str(sub),
                                             *envelope], ms, args.concurrency)))
    if shutil.which("socat"):
        ways.append(("ringtrap-deliver (socat)", "yes",
                     lambda ms: per_process([str(DELIVER), "--client", "socat", "--socket",
                                             str(sub), *envelope], ms, args.concurrency)))
    ways.append(("ringtrap submit", "yes",
                 lambda ms: per_process([*submit_cmd, "--socket", str(sub), *envelope], ms,
                                        args.concurrency)))
    lmtp = LmtpSession(base / "lmtp.sock")
    ways.append(("LMTP, one connection", "yes", lmtp.deliver))
    # The ways take turns, a slice of the messages each per round, so that a
    # machine getting busier or quieter during the run favours none of them.
    rounds = max(1, min(args.rounds, args.n))
    totals = {name: {"wall": 0.0, "client_cpu": 0.0, "server_cpu": 0.0, "lat": []}
              for name, _, _ in ways}
    rows = []
    try:
        for k in range(rounds):
            part = msgs[k * args.n // rounds : (k + 1) * args.n // rounds]
            for name, _, run in ways:
                t = server.cpu_times()
                res = run(part)
                t2 = server.cpu_times()
                tot = totals[name]
                tot["server_cpu"] += (t2.user - t.user) + (t2.system - t.system)
                tot["wall"] += res["wall"]
                tot["client_cpu"] += res["client_cpu"]
                tot["lat"] += res["lat"]  # type: ignore[operator]
        for name, env, _ in ways:
            tot = totals[name]
            lat = sorted(tot["lat"])  # type: ignore[arg-type]
            rows.append({
                "way": name,
                "envelope": env,
                "messages": args.n,
                "msgs_per_s": round(args.n / tot["wall"], 1),
                "client_cpu_ms": round(1000 * tot["client_cpu"] / args.n, 2),
                "server_cpu_ms": round(1000 * tot["server_cpu"] / args.n, 3),
                "latency_p50_ms": round(1000 * statistics.median(lat), 2),
                "latency_p99_ms": round(1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], 2),
            })
            if args.json:
                print(json.dumps(rows[-1]), flush=True)
    finally:
        lmtp.close()
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        unlink_name(ring_name)
        shutil.rmtree(overflow_dir, ignore_errors=True)
        shutil.rmtree(base, ignore_errors=True)
    if not args.json:
        print(f"{args.n} messages of {args.size} bytes each way in {rounds} turns,"
              f" per-message clients {args.concurrency} at a time; ringtrap submit = {submit_note}"
              f" ({' '.join(submit_cmd[:1])}); {os.cpu_count()} CPUs\n")
        head = ("way", "envelope", "msgs/s", "client CPU ms/msg", "ingest CPU ms/msg",
                "latency p50 ms", "p99 ms")
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for r in rows:
            print(f"| {r['way']} | {r['envelope']} | {r['msgs_per_s']} | {r['client_cpu_ms']} |"
                  f" {r['server_cpu_ms']} | {r['latency_p50_ms']} | {r['latency_p99_ms']} |")
        socat = next((r for r in rows if r["way"] == "socat per message"), None)
        if socat:
            print()
            for r in rows:
                if r["way"] != "socat per message":
                    ratio = r["client_cpu_ms"] / socat["client_cpu_ms"]
                    print(f"{r['way']}: {ratio:.2f}x socat's client CPU")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
