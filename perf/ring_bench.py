"""Queue throughput, side by side: the ringtrap ring against the usual IPC queues.

One producer process moves N messages of 4 KiB to one or two consumer
processes through each transport; every row is the median of ``--runs`` runs
measured in this one invocation, the transports taking turns, so the rows
compare on the same machine state.

    python3 perf/ring_bench.py                # table
    python3 perf/ring_bench.py --json         # rows as JSON objects
    python3 perf/ring_bench.py -n 100000 --runs 5 --only ring,mpqueue

faster-fifo is optional (``pip install .[bench]``); its row is skipped if absent.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import posix_ipc

from ringtrap.ring import PutResult, Ring
from ringtrap.store.segment import unlink_name

CTX = mp.get_context("fork")
MQ_DEPTH = [0]  # the depth the kernel allowed, reported under the table
STOP = b"STOP"
# how long the ring producer sleeps when the ring is full: short next to the
# 3 ms or so the consumers need to empty 1,024 slots
_FULL_WAIT = 50e-6


def _payload(size: int) -> bytes:
    return (b"Received: from trap\r\nSubject: x\r\n\r\n" + b"y" * size)[:size]


# --- the ringtrap ring -------------------------------------------------------


def ring_run(n: int, consumers: int, size: int) -> float:
    name = f"rt-bench-{os.getpid()}"
    unlink_name(name)
    ring = Ring.create(name, 1024, max(size, 4096))
    done = CTX.Queue()

    def consume() -> None:
        r = Ring.attach(name)
        claim, ack = r.claim, r.ack  # bound once, as the other consumers' get is
        got = 0
        while True:
            c = claim(1.0)
            if c is None:
                continue
            ack(c)
            if c.msgid == "STOP":
                break
            got += 1
        done.put(got)
        r.close()

    procs = [CTX.Process(target=consume) for _ in range(consumers)]
    for p in procs:
        p.start()
    data = _payload(size)
    ids = [f"{i:020d}" for i in range(n)]
    put = ring.put
    ok = PutResult.OK
    t0 = time.perf_counter()
    # The real ingest spills when the ring is full; a benchmark waits for
    # room, as the other transports' put and send do.  It sleeps rather than
    # spins: three processes share two cores, and a spinning producer takes
    # the CPU the consumers need to make room.
    sleep = time.sleep
    for msgid in ids:
        while put(msgid, data) != ok:
            sleep(_FULL_WAIT)
    for _ in procs:
        while put("STOP", b"") != ok:
            sleep(_FULL_WAIT)
    total = sum(done.get() for _ in procs)
    elapsed = time.perf_counter() - t0
    for p in procs:
        p.join()
    ring.close()
    ring.unlink()
    assert total == n, (total, n)
    return elapsed


# --- multiprocessing.Queue ----------------------------------------------------


def _generic_run(n: int, consumers: int, size: int,
                 make: Callable[[], tuple[Callable[[bytes], None], Callable[[], bytes], object]],
                 ) -> float:
    put, get, handle = make()
    done = CTX.Queue()

    def consume() -> None:
        got = 0
        while True:
            m = get()
            if m == STOP:
                break
            got += 1
        done.put(got)

    procs = [CTX.Process(target=consume) for _ in range(consumers)]
    for p in procs:
        p.start()
    data = _payload(size)
    t0 = time.perf_counter()
    for _ in range(n):
        put(data)
    for _ in procs:
        put(STOP)
    total = sum(done.get() for _ in procs)
    elapsed = time.perf_counter() - t0
    for p in procs:
        p.join()
    assert total == n, (total, n)
    del handle
    return elapsed


def mpqueue_run(n: int, consumers: int, size: int) -> float:
    def make() -> tuple[Callable[[bytes], None], Callable[[], bytes], object]:
        q = CTX.Queue(maxsize=1024)
        return q.put, q.get, q

    return _generic_run(n, consumers, size, make)


def fasterfifo_run(n: int, consumers: int, size: int) -> float:
    import faster_fifo

    def make() -> tuple[Callable[[bytes], None], Callable[[], bytes], object]:
        q = faster_fifo.Queue(max_size_bytes=1024 * (size + 64))
        return (lambda m: q.put(m, timeout=60)), (lambda: q.get(timeout=60)), q

    return _generic_run(n, consumers, size, make)


def mqueue_run(n: int, consumers: int, size: int) -> float:
    name = f"/rt-bench-mq-{os.getpid()}"

    def make() -> tuple[Callable[[bytes], None], Callable[[], bytes], object]:
        # the kernel caps queue memory at 819,200 bytes per queue for users
        depth = max(1, min(1024, 800_000 // (size + 64)))
        try:
            q = posix_ipc.MessageQueue(name, posix_ipc.O_CREX, max_messages=depth,
                                       max_message_size=size)
        except ValueError:
            # without CAP_SYS_RESOURCE the depth is capped by fs.mqueue.msg_max
            with open("/proc/sys/fs/mqueue/msg_max") as f:
                depth = int(f.read())
            q = posix_ipc.MessageQueue(name, posix_ipc.O_CREX, max_messages=depth,
                                       max_message_size=size)
        MQ_DEPTH[0] = depth
        q.unlink()

        def get() -> bytes:
            return q.receive()[0]

        return q.send, get, q

    return _generic_run(n, consumers, size, make)


TRANSPORTS: dict[str, tuple[str, Callable[[int, int, int], float]]] = {
    "ring": ("ringtrap ring", ring_run),
    "mpqueue": ("multiprocessing.Queue", mpqueue_run),
    "fasterfifo": ("faster-fifo", fasterfifo_run),
    "mqueue": ("posix_ipc.MessageQueue", mqueue_run),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--messages", type=int, default=200_000)
    ap.add_argument("--size", type=int, default=4096, help="message bytes (default 4096)")
    ap.add_argument("--runs", type=int, default=3, help="runs per row; the median is shown")
    ap.add_argument("--only", default=",".join(TRANSPORTS), help="comma-separated transports")
    ap.add_argument("--topologies", default="1,2", help="consumer counts, e.g. 1,2")
    ap.add_argument("--json", action="store_true", help="print rows as JSON")
    args = ap.parse_args(argv)

    keys = args.only.split(",")
    if "fasterfifo" in keys:
        try:
            import faster_fifo  # noqa: F401
        except ImportError:
            print("skipping faster-fifo: not installed", file=sys.stderr)
            keys.remove("fasterfifo")
    rows = []
    for consumers in (int(c) for c in args.topologies.split(",")):
        # runs take turns across transports, so a change in the machine's
        # state during the benchmark falls on every row alike
        times: dict[str, list[float]] = {key: [] for key in keys}
        for _ in range(args.runs):
            for key in keys:
                times[key].append(TRANSPORTS[key][1](args.messages, consumers, args.size))
        for key in keys:
            label = TRANSPORTS[key][0]
            t = statistics.median(times[key])
            rate = args.messages / t
            rows.append({
                "name": label,
                "topology": f"1->{consumers}",
                "msgs_per_s": round(rate),
                "mb_per_s": round(rate * args.size / 1e6, 1),
            })
    base = {r["topology"]: r["msgs_per_s"] for r in rows if r["name"] == "multiprocessing.Queue"}
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{args.messages} messages of {args.size} bytes, median of {args.runs} runs\n")
    print(f"| {'transport':<24} | topology | {'msgs/s':>10} | {'MB/s':>8} | vs mp.Queue |")
    print(f"|{'-' * 26}|----------|{'-' * 12}|{'-' * 10}|-------------|")
    for r in rows:
        ref = base.get(r["topology"])
        ratio = f"{r['msgs_per_s'] / ref:.2f}x" if ref else "-"
        print(f"| {r['name']:<24} | {r['topology']:<8} | {r['msgs_per_s']:>10,} "
              f"| {r['mb_per_s']:>8} | {ratio:>11} |")
    if MQ_DEPTH[0]:
        print(f"\nposix_ipc.MessageQueue depth: {MQ_DEPTH[0]} messages (kernel limit)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
