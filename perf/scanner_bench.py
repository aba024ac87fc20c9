"""The same messages through spamd and rspamd, each fed directly and through a real ringtrap.

Four rows, in this one invocation, at equal concurrency (``--concurrency``
connections, the scanner with as many children or workers):

  spamd, spamc per message     one ``spamc -U`` process per message, as a
                               delivery script feeds spamd (the reference)
  spamd, through ringtrap      ``ringtrap run`` with ``spamd.address`` the same spamd
  rspamd, keep-alive client    one HTTP/1.1 connection per thread, POST /checkv2,
                               reopened whenever rspamd closes it (rspamc-like)
  rspamd, through ringtrap     ``ringtrap run`` with ``scanner.kind = "rspamd"``

The scanners are real: a spamd with ``--local`` (no network tests) and an
offline rspamd in a private network namespace with its network modules off
(tests/rspamd_fixture.py), each on a Unix socket.  The corpus is the
campaign benchmark's (perf/dedupe_bench.py) with every message distinct,
and ringtrap's dedupe is off, so every message is scanned.  rspamd gets the
same messages ``--rspamd-passes`` times over, so that its rows last long
enough to measure.

msgs/s is messages over the wall time from the first send to the last
answer (directly), or from the moment the scanner is let go, with every
message delivered into the trap while it was stopped, to the last record
(through ringtrap).  Server CPU per message is
the scanner's process tree (its reaped children too); client CPU is spamc's,
the keep-alive threads', or ringtrap's workers' and ingest's.

    python3 perf/scanner_bench.py                 # 100 messages, 2 connections, 3 rounds
    python3 perf/scanner_bench.py -n 200 --json
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "perf")]

import psutil  # noqa: E402
from dedupe_bench import corpus  # noqa: E402
from rspamd_fixture import RspamdProcess, rspamd_missing_reason  # noqa: E402
from spamd_fixture import SpamdProcess, spamc_missing_reason, spamd_missing_reason  # noqa: E402
from trap_fixture import Trap, reply_id  # noqa: E402

from ringtrap.base import envelope  # noqa: E402


def tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and its live descendants, with the children it reaped."""
    try:
        p = psutil.Process(pid)
        t = p.cpu_times()
        total = t.user + t.system + t.children_user + t.children_system
        for kid in p.children(recursive=True):
            try:
                k = kid.cpu_times()
                total += k.user + k.system
            except psutil.Error:
                pass
        return total
    except psutil.Error:
        return 0.0


def trap_client_cpu(trap: Trap) -> float:
    """CPU seconds of the trap's workers and ingest (the scanner excluded)."""
    total = 0.0
    for p in trap.children():
        try:
            cmd = " ".join(p.cmdline())
            if "worker" in cmd or "ingest" in cmd:
                t = p.cpu_times()
                total += t.user + t.system
        except psutil.Error:
            pass
    return total


def in_parallel(n: int, work: Callable[[int], None]) -> None:
    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def spamc_direct(spamd: SpamdProcess, msgs: list[bytes], conc: int) -> dict[str, Any]:
    """One spamc process per message, ``conc`` at a time."""
    scores: list[float | None] = [None] * len(msgs)

    def run(k: int) -> None:
        for i in range(k, len(msgs), conc):
            out = subprocess.run(["spamc", "-U", str(spamd.socket_path), "-x", "-c"],
                                 input=msgs[i], capture_output=True, timeout=300)
            head = out.stdout.decode().strip().partition("/")[0]
            scores[i] = float(head) if out.returncode in (0, 1) and head else None

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    server0 = tree_cpu(spamd.pid)
    t0 = time.perf_counter()
    in_parallel(conc, run)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    client = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return _row("spamd", "spamc per message", len(msgs), wall, tree_cpu(spamd.pid) - server0,
                client, unscanned=sum(s is None for s in scores))


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def rspamd_direct(rspamd: RspamdProcess, msgs: list[bytes], conc: int) -> dict[str, Any]:
    """``conc`` threads, each with one kept-alive HTTP connection, POST /checkv2."""
    failed = [0]

    def run(k: int) -> None:
        conn = _UnixHTTPConnection(str(rspamd.socket_path), timeout=60)
        for i in range(k, len(msgs), conc):
            try:
                conn.request("POST", "/checkv2", body=msgs[i],
                             headers={"Connection": "keep-alive"})
                reply = conn.getresponse()
                body = reply.read()
                if reply.status != 200 or "score" not in json.loads(body):
                    failed[0] += 1
            except (OSError, http.client.HTTPException, ValueError):
                failed[0] += 1
                conn.close()
        conn.close()

    server0 = tree_cpu(rspamd.proc.pid)  # type: ignore[union-attr]
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    in_parallel(conc, run)
    wall = time.perf_counter() - t0
    client = time.process_time() - cpu0
    return _row("rspamd", "keep-alive client", len(msgs), wall,
                tree_cpu(rspamd.proc.pid) - server0, client,  # type: ignore[union-attr]
                unscanned=failed[0])


def through_ringtrap(kind: str, server_pid: int, settings: dict[str, dict[str, Any]],
                     msgs: list[bytes], conc: int) -> dict[str, Any]:
    """Every message into a real trap, then the scan timed until the last record is written."""
    base: dict[str, dict[str, Any]] = {
        "workers": {"count": conc, "heartbeat_timeout": 400},
        "ring": {"slots": max(64, len(msgs) + 8), "slot_bytes": "64K"},
        "dedupe": {"enabled": False},
        "prefilter": {"checks": []},
        "supervisor": {"graceful_timeout": 20, "log_level": "info"},
    }
    for section, values in settings.items():
        base.setdefault(section, {}).update(values)
    trap = Trap(Path(tempfile.mkdtemp(prefix="rt-scanbench-")), base)
    try:
        trap.start()
        # The scanner is stopped while the messages go in: fed one connection
        # at a time from here, the ingest would trail the scan and the row
        # would time this process's sending.  Directly fed, the scanner has
        # every message at hand as well.
        frozen = freeze(server_pid, True)
        try:
            ids = {reply_id(trap.send(envelope.frame(m))) for m in msgs}
        finally:
            server0 = tree_cpu(server_pid)
            client0 = trap_client_cpu(trap)
            t0 = time.perf_counter()
            freeze(server_pid, False, frozen)
        # counted by lines, often: a row of rspamd lasts about a second, and a
        # coarse poll would add its step to it
        deadline = time.monotonic() + 60 + len(msgs) * 2.0
        while _lines(trap) < len(msgs) and time.monotonic() < deadline:
            time.sleep(0.002)
        wall = time.perf_counter() - t0
        records = trap.wait_records(ids, timeout=10)
        server = tree_cpu(server_pid) - server0
        client = trap_client_cpu(trap) - client0
        mine = [r for r in records if r["id"] in ids]
        unscanned = sum(r["verdict"] not in ("spam", "ham") or r.get("scanner") != kind
                        for r in mine)
        return _row(kind, "through ringtrap", len(msgs), wall, server, client,
                    unscanned=unscanned)
    finally:
        trap.signal(15)
        try:
            trap.wait_exit(60)
        finally:
            trap.close()


def freeze(pid: int, stop: bool, procs: list[psutil.Process] | None = None
           ) -> list[psutil.Process]:
    """SIGSTOP (``stop``) or SIGCONT the scanner ``pid`` and all its processes."""
    if procs is None:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.send_signal(signal.SIGSTOP if stop else signal.SIGCONT)
    return procs


def _lines(trap: Trap) -> int:
    """Records written so far: the result files' lines, without parsing them."""
    n = 0
    for f in trap.results_dir.glob("*.jsonl"):
        with contextlib.suppress(FileNotFoundError):
            n += f.read_bytes().count(b"\n")
    return n


def _row(scanner: str, way: str, n: int, wall: float, server: float, client: float,
         unscanned: int) -> dict[str, Any]:
    return {
        "scanner": scanner, "way": way, "messages": n, "seconds": round(wall, 2),
        "msgs_per_s": round(n / wall, 2),
        "server_cpu_ms_per_msg": round(server / n * 1000, 2),
        "client_cpu_ms_per_msg": round(client / n * 1000, 2),
        "unscanned": unscanned,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--messages", type=int, default=100, help="distinct messages")
    ap.add_argument("--concurrency", type=int, default=2,
                    help="connections, spamd children, rspamd workers, ringtrap workers")
    ap.add_argument("--rspamd-passes", type=int, default=10,
                    help="times rspamd's rows go through the messages (default 10)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="runs of each row, taking turns; the median is shown (default 3)")
    ap.add_argument("--smoke", action="store_true", help="a few messages, one pass: seconds")
    ap.add_argument("--json", action="store_true", help="print rows as JSON")
    args = ap.parse_args(argv)
    if args.smoke:
        args.messages, args.rspamd_passes, args.rounds = 6, 1, 1
    reason = spamd_missing_reason() or spamc_missing_reason() or rspamd_missing_reason()
    if reason:
        print(f"scanner_bench: {reason}", file=sys.stderr)
        return 69
    msgs = [m for m, _ in corpus(args.messages, seed=7, singles=1.0)]
    rmsgs = msgs * args.rspamd_passes
    conc = args.concurrency
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}

    def keep(row: dict[str, Any]) -> None:
        runs.setdefault((row["scanner"], row["way"]), []).append(row)

    # each scanner's two rows take turns, so a slow moment of the machine
    # does not land on one of them alone
    with SpamdProcess(max_children=conc) as spamd:
        for _ in range(args.rounds):
            keep(spamc_direct(spamd, msgs, conc))
            keep(through_ringtrap("spamd", spamd.pid,
                                  {"spamd": {"address": spamd.unix_address}}, msgs, conc))
    with RspamdProcess(count=conc) as rspamd:
        assert rspamd.proc is not None
        for _ in range(args.rounds):
            keep(rspamd_direct(rspamd, rmsgs, conc))
            keep(through_ringtrap(
                "rspamd", rspamd.proc.pid,
                {"scanner": {"kind": "rspamd"}, "rspamd": {"address": rspamd.address}},
                rmsgs, conc))
    rows = []
    for results in runs.values():
        results.sort(key=lambda r: r["msgs_per_s"])
        row = dict(results[len(results) // 2])
        row["rounds"] = [r["msgs_per_s"] for r in results]
        row["unscanned"] = sum(r["unscanned"] for r in results)
        rows.append(row)
    by = {(r["scanner"], r["way"]): r for r in rows}
    ours_spamd = by["spamd", "through ringtrap"]["msgs_per_s"]
    ours_rspamd = by["rspamd", "through ringtrap"]["msgs_per_s"]
    direct_rspamd = by["rspamd", "keep-alive client"]["msgs_per_s"]
    summary = {
        "rspamd_over_spamd_through_ringtrap": round(ours_rspamd / ours_spamd, 1),
        "ringtrap_rspamd_of_direct_pct": round(100 * ours_rspamd / direct_rspamd, 1),
        "ringtrap_spamd_of_spamc_pct": round(
            100 * ours_spamd / by["spamd", "spamc per message"]["msgs_per_s"], 1),
    }
    if args.json:
        print(json.dumps({"rows": rows, "summary": summary}, indent=2))
        return 0
    print(f"{args.messages} distinct messages (rspamd: {args.rspamd_passes} passes), "
          f"{conc} connections, {os.cpu_count()} CPUs, median of {args.rounds} rounds"
          f" taking turns\n")
    head = (f"{'scanner':8} {'fed by':20} {'messages':>8} {'msgs/s':>8} {'server ms/msg':>13}"
            f" {'client ms/msg':>13} {'unscanned':>9}  msgs/s of each round")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['scanner']:8} {r['way']:20} {r['messages']:>8} {r['msgs_per_s']:>8}"
              f" {r['server_cpu_ms_per_msg']:>13} {r['client_cpu_ms_per_msg']:>13}"
              f" {r['unscanned']:>9}  {' '.join(f'{x:g}' for x in r['rounds'])}")
    print(f"\nthrough ringtrap, rspamd scans {summary['rspamd_over_spamd_through_ringtrap']}x"
          f" as many messages a second as spamd; ringtrap with rspamd reaches"
          f" {summary['ringtrap_rspamd_of_direct_pct']}% of rspamd fed directly, with spamd"
          f" {summary['ringtrap_spamd_of_spamc_pct']}% of spamc")
    return 0


if __name__ == "__main__":
    sys.exit(main())
