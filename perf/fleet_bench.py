"""The fleet's path measured: records written, forwarded to JetStream, collected into PostgreSQL.

One real nats-server (JetStream, file storage) and one PostgreSQL from initdb
on a Unix socket, both private and on this machine.  Records shaped like a
scanned message's (about 1.3 KiB of JSON, a unique id each) are

1. appended to a results file with ringtrap's ResultSink (the local write
   every trap does anyway: the baseline);
2. forwarded by ringtrap's forwarder, alone, from a cursor at the start of
   that file until the stream holds them all (its own process: its CPU is the
   trap's cost of forwarding; nats-server's is the hub's);
3. collected by ``ringtrap collect``, alone, until PostgreSQL holds them all
   (its CPU, and PostgreSQL's, are the hub's cost);
4. then, both running, ``--rate`` records a second for ``--seconds`` are
   written and the delay from a record's write to its row is read back (to the
   start of its batch's transaction: the row's ``collected_at``).

Not a test: numbers depend on the machine and what else runs on it.

    python3 perf/fleet_bench.py [--records 20000] [--rate 200] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import psutil  # noqa: E402
from nats_fixture import NatsServer  # noqa: E402
from pg_fixture import PgServer  # noqa: E402

from ringtrap import config as configmod  # noqa: E402
from ringtrap.base import ids  # noqa: E402
from ringtrap.scan.results import ResultSink  # noqa: E402


def record(n: int, written: float | None = None) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "id": ids.new_id(), "received": "2026-12-03T10:00:00.000000+00:00", "size": 4096,
        "verdict": "spam", "reason": None, "score": 14.2, "required": 5.0,
        "rules": ["BAYES_99", "HTML_MESSAGE", "URIBL_ABUSE_SURBL", "RDNS_NONE"],
        "from": f"Sender {n} <s{n}@example.com>", "subject": f"Cheap offer number {n}",
        "message_id": f"<{n}@example.com>", "scanned_ms": 41.3, "attempts": 0,
        "envelope": {"sender": f"b{n}@example.net", "recipients": ["trap@trap.test"],
                     "client_address": "192.0.2.7", "client_helo": "mx.example.net"},
        "relay_ip": "192.0.2.7", "relay_helo": "mx.example.net", "relay_source": "envelope",
        "from_domain": "example.com", "reply_to_domain": None,
        "return_path_domain": "example.net", "date": "Thu, 03 Dec 2026 10:00:00 +0000",
        "urls": [f"http://spam{n % 50}.example/offer?id={n}"],
        "url_domains": [f"spam{n % 50}.example"],
        "attachments": [], "body_sha256": f"{n:064x}", "fingerprint": f"{n % 500:016x}",
        "duplicate_of": None, "defects": [], "archived": None,
        "timings_ms": {"parse": 0.4, "scan": 41.3}, "quarantine": None, "parse_error": None,
        "scanner": "spamd", "scanner_host": "unix:/run/ringtrap/spamd.sock",
        "action": None, "symbols": None,
    }
    if written is not None:
        rec["bench_written"] = written
    return rec


def _forwarder(cfg: configmod.Config) -> None:  # pragma: no cover - child
    from ringtrap.work import child, forward

    loop = forward.Forwarder(cfg, None, parent_pid=os.getppid())
    child.install_signals(loop)
    os._exit(loop.run())


def _collector(cfg: configmod.Config) -> None:  # pragma: no cover - child
    from ringtrap.command import collect

    os._exit(collect.run(cfg))


def cpu(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def family(pid: int) -> list[psutil.Process]:
    p = psutil.Process(pid)
    return [p, *p.children(recursive=True)]


async def _stream_count(url: str) -> int:
    import nats
    from nats.js.errors import NotFoundError

    nc = await nats.connect(url)
    try:
        try:
            return int((await nc.jetstream().stream_info("RINGTRAP")).state.messages)
        except NotFoundError:
            return 0
    finally:
        await nc.close()


def stream_count(url: str) -> int:
    return asyncio.run(_stream_count(url))


def pg_rows(conninfo: str, sql: str) -> list[tuple[Any, ...]]:
    import psycopg

    try:
        with psycopg.connect(conninfo) as c:
            return c.execute(sql).fetchall()
    except psycopg.errors.UndefinedTable:
        return []


def wait(pred: Any, timeout: float, what: str) -> float:
    start = time.monotonic()
    while not pred():
        if time.monotonic() - start > timeout:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - start


def start(target: Any, cfg: configmod.Config) -> multiprocessing.Process:
    p = multiprocessing.get_context("fork").Process(target=target, args=(cfg,))
    p.start()
    return p


def stop(p: multiprocessing.Process) -> None:
    if p.pid is not None and p.is_alive():
        os.kill(p.pid, signal.SIGTERM)
    p.join(60)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=20000)
    ap.add_argument("--rate", type=float, default=200.0, help="records/s in the delay run")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of the delay run")
    ap.add_argument("--batch", type=int, default=500, help="collect.batch")
    args = ap.parse_args()
    n = args.records
    work = Path(tempfile.mkdtemp(prefix="rt-fleet-bench-"))
    results = work / "results"
    with NatsServer(work / "nats") as ns, PgServer() as pg:
        cfg = configmod.override(configmod.defaults(), {
            "results.dir": str(results), "forward.enabled": True, "forward.servers": [ns.url],
            "forward.host": "bench", "collect.servers": [ns.url],
            "collect.database": pg.conninfo, "collect.batch": args.batch,
            "collect.batch_wait": 0.2})
        rows_of = [record(i) for i in range(n)]
        sink = ResultSink(results)
        c0, t0 = time.process_time(), time.monotonic()
        for r in rows_of:
            sink.write(r)
        local_s, local_cpu = time.monotonic() - t0, time.process_time() - c0
        sink.close()
        del rows_of

        nats_procs = [psutil.Process(ns.pid)]
        hub0 = cpu(nats_procs)
        fwd = start(_forwarder, cfg)
        fwd_proc = psutil.Process(fwd.pid)
        fwd_s = wait(lambda: stream_count(ns.url) >= n, 600, "the stream")
        fwd_cpu = cpu([fwd_proc])
        nats_cpu = cpu(nats_procs) - hub0

        pg_procs = family(pg.pid)
        pg0 = cpu(pg_procs)
        col = start(_collector, cfg)
        col_proc = psutil.Process(col.pid)
        count = "SELECT count(*) FROM messages"
        col_s = wait(lambda: (pg_rows(pg.conninfo, count) or [(0,)])[0][0] >= n, 600,
                     "the rows")
        col_cpu = cpu([col_proc])
        pg_cpu = cpu(family(pg.pid)) - pg0

        # the delay: a steady trickle with both running
        sink = ResultSink(results)
        m = int(args.rate * args.seconds)
        t0 = time.monotonic()
        for i in range(m):
            due = t0 + i / args.rate
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            sink.write(record(n + i, written=time.time()))
        sink.close()
        wait(lambda: (pg_rows(pg.conninfo, count) or [(0,)])[0][0] >= n + m, 120,
             "the trickle's rows")
        delays = sorted(
            float(r[0]) * 1000.0 for r in pg_rows(
                pg.conninfo, "SELECT extract(epoch FROM collected_at)"
                " - (record->>'bench_written')::float8 FROM messages"
                " WHERE record ? 'bench_written'"))
        stop(fwd)
        stop(col)

    print(f"fleet benchmark: {n} records of about 1.3 KiB, one nats-server (JetStream, file"
          " storage), PostgreSQL 15 on a Unix socket, this machine\n")
    print("| step | records/s | CPU per record |")
    print("|---|---|---|")
    print(f"| local JSON-lines write (ResultSink) | {n / local_s:,.0f} |"
          f" {1e6 * local_cpu / n:.0f} µs (writer) |")
    print(f"| forwarded to JetStream, acked, cursor fsynced per batch | {n / fwd_s:,.0f} |"
          f" {1e6 * fwd_cpu / n:.0f} µs trap (forwarder), {1e6 * nats_cpu / n:.0f} µs hub"
          " (nats-server) |")
    print(f"| collected into PostgreSQL (COPY, batches of {args.batch}) | {n / col_s:,.0f} |"
          f" {1e6 * col_cpu / n:.0f} µs hub (collector), {1e6 * pg_cpu / n:.0f} µs hub"
          " (PostgreSQL) |")
    if delays:
        print(f"\ndelay from write to row at {args.rate:.0f} records/s ({len(delays)} records):"
              f" median {statistics.median(delays):.0f} ms,"
              f" p99 {delays[min(len(delays) - 1, int(0.99 * len(delays)))]:.0f} ms,"
              f" max {delays[-1]:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
