"""A real Postfix flood: what an MX hands a trap per second, route by route.

A private Postfix (Debian's, its own configuration directory, SMTP on a free
127.0.0.1 port, every service unchrooted, logging to a file; see
tests/postfix_fixture.py) is configured from the shipped snippets in
contrib/postfix/ and takes mail from Postfix's own load generator
``smtp-source`` (many concurrent sessions, one message per session, a fresh
recipient each: ``-N``).  Each trap domain goes out by one route:

  lmtp       Postfix's lmtp client to ringtrap's LMTP socket (contrib/postfix/*-lmtp)
  deliver    pipe(8) running ``ringtrap-deliver`` (sh + dd + nc)   (contrib/postfix/*-pipe)
  submit     pipe(8) running ``ringtrap submit`` (Debian's python3 -S)  (the same)
  dirqueue   pipe(8) running a Perl script that writes one queue file the way
             IPC::DirQueue's classic trap delivery does (data and control
             written in tmp/, linked into data/ and queue/), on tmpfs

The routes take turns in one run (interleaved when ``--rounds`` > 1), each
flood starting with an empty queue.  The trap is a real ``ringtrap run``
(tests/trap_fixture.py) with spamd off: its workers parse and record, so the
scanner is not what is measured.  The pipe user is ``nobody``.

Measured per route: messages per second accepted over SMTP (smtp-source's
wall time) and delivered out of Postfix's queue (from the first connection
until the queue is empty: by then the trap or the directory queue holds
every message); the queue's depth (files in incoming/, active/, deferred/,
hold/) every 0.5 s; CPU per message of Postfix (master and every process
under it, reaped ones included through the master's children times, minus
the delivery commands), of the delivery processes (what each pipe(8)
process reaped: sh, dd, nc, python3, perl), of ringtrap's ingest and of its
workers, and of smtp-source itself (it shares the cores); deferrals and
bounces from the mail log.  Then it checks that every queue id Postfix
accepted arrived exactly once (records in the trap, control files in the
directory queue).  The pipe services get ``-o max_use`` and ``-o max_idle``
so no pipe(8) process exits inside a flood and takes its children's CPU
times with it into the master's.

Needs root (Postfix), /usr/sbin/smtp-source, nc and perl.

    python3 perf/mta_flood.py                     # 2,000 messages of 4 KiB per route, 20 sessions
    python3 perf/mta_flood.py --rounds 3 --json
    python3 perf/mta_flood.py --smoke             # seconds
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import psutil  # noqa: E402
from postfix_fixture import (  # noqa: E402
    PostfixInstance,
    install_clients,
    main_cf,
    missing_reason,
    snippet,
)
from trap_fixture import Trap, wait_until  # noqa: E402

SMTP_SOURCE = "/usr/sbin/smtp-source"
PERL = "/usr/bin/perl"
PIPE_USER = "nobody"
ROUTES = ("lmtp", "deliver", "submit", "dirqueue")
LABELS = {"lmtp": "LMTP", "deliver": "pipe ringtrap-deliver", "submit": "pipe ringtrap submit",
          "dirqueue": "pipe dirqueue script"}
# pipe(8) transports in master.cf, by route
TRANSPORTS = {"deliver": "ringtrapsh", "submit": "ringtrap", "dirqueue": "dirqueue"}
QUEUE_DIRS = ("maildrop", "incoming", "active", "deferred", "hold")
SAMPLE = 0.5  # seconds between queue-depth samples

# The classic trap delivery: one process per message, one queue file, no daemon.
DQ_ENQUEUE = r"""#!/usr/bin/perl
# dq-enqueue DIR [key=value ...]: the message on stdin into the directory
# queue DIR, laid out as IPC::DirQueue lays out its own: the data file and
# the control file are written in tmp/, then linked into data/ and queue/
# (a reader lists queue/ and never sees half a file).  The key=value pairs
# become metadata lines of the control file.  Exit 75 on any failure, so
# Postfix defers instead of bouncing.  Lean on purpose: every module loaded
# is paid once per message (warnings and Sys::Hostname would double the cost).
use strict;
use Fcntl qw(O_WRONLY O_CREAT O_EXCL);
use Time::HiRes qw(time);

sub fail { print STDERR "dq-enqueue: @_\n"; exit 75 }

sub put {
    my ($path, $data) = @_;
    sysopen(my $fh, $path, O_WRONLY | O_CREAT | O_EXCL, 0600) or fail("$path: $!");
    binmode $fh;
    print {$fh} $data or fail("$path: $!");
    close $fh or fail("$path: $!");
}

my ($dir, @meta) = @ARGV;
defined $dir or fail("usage: dq-enqueue DIR [key=value ...]");
binmode STDIN;
my $msg = do { local $/; <STDIN> };
defined $msg or fail("stdin: $!");
my $host = "localhost";
if (open(my $fh, "<", "/proc/sys/kernel/hostname")) { chomp($host = <$fh> // $host) }
my $now = time;
my @t = gmtime($now);
my $name = sprintf("%04d%02d%02d%02d%02d%02d%06d.%s.%d.%d", $t[5] + 1900, $t[4] + 1,
                   @t[3, 2, 1, 0], ($now - int $now) * 1e6, $host, $$, int rand 1e6);
put("$dir/tmp/d.$name", $msg);
link("$dir/tmp/d.$name", "$dir/data/$name") or fail("link data: $!");
unlink "$dir/tmp/d.$name";
my $ctl = "QDFN: $dir/data/$name\nQDSB: " . length($msg) . "\nQDTM: $now\n"
        . "QDHN: $host\nQDPD: $$\n";
for (@meta) { my ($k, $v) = split /=/, $_, 2; $ctl .= "$k: " . ($v // "") . "\n" }
put("$dir/tmp/c.$name", $ctl);
link("$dir/tmp/c.$name", "$dir/queue/50.$name") or fail("link queue: $!");
unlink "$dir/tmp/c.$name";
exit 0;
"""


def missing() -> str | None:
    """Why the flood cannot run here, or None."""
    reason = missing_reason()
    if reason:
        return reason
    for tool, why in ((SMTP_SOURCE, "smtp-source (Debian's postfix package)"),
                      (PERL, "perl (the directory-queue script)"),
                      ("/usr/bin/nc", "nc (netcat-openbsd, for ringtrap-deliver)"),
                      ("/usr/bin/python3", "Debian's python3 (for ringtrap submit as nobody)")):
        if not os.access(tool, os.X_OK):
            return f"{why} is not installed"
    return None


# -- the instance ---------------------------------------------------------------------


def domain(route: str) -> str:
    return f"{route}.flood.test"


def configure(pf: PostfixInstance, trap: Trap, bin_: Path, dq_script: Path, dq_dir: Path) -> None:
    """Every route from the shipped snippets, with this run's paths, user and domains."""
    run = f"{trap.rundir}/"

    def local(text: str) -> str:
        return (text.replace("/run/ringtrap/", run)
                .replace("/usr/local/bin/", f"{bin_}/")
                .replace("user=ringtrap", f"user={PIPE_USER}")
                .replace("hash:/etc/postfix/", f"texthash:{pf.etc}/"))

    pipe = local(snippet("master.cf-pipe"))
    head, _, rest = pipe.partition("\n")
    # only for the accounting: a pipe(8) process that exits mid-flood would carry
    # its children's CPU into the master's times (see the module docstring)
    pipe = f"{head}\n  -o max_use=1000000 -o max_idle=3600\n{rest}"
    submit_argv = f"argv={bin_}/ringtrap submit"
    assert submit_argv in pipe
    services = {
        "ringtrap": pipe,
        "ringtrapsh": pipe.replace("ringtrap  unix", "ringtrapsh unix", 1)
                          .replace(submit_argv, f"argv={bin_}/ringtrap-deliver"),
        # the classic script knows no envelope options: the queue id and the
        # envelope become metadata lines of its control file
        "dirqueue": (pipe.split("argv=")[0].replace("ringtrap  unix", "dirqueue  unix", 1)
                     + f"argv={dq_script} {dq_dir} queue_id=${{queue_id}}"
                     " sender=${sender} recipient=${original_recipient}\n"),
    }
    assert services["ringtrapsh"] != pipe and services["dirqueue"].startswith("dirqueue ")
    pf.master = (re.sub(r"(?m)^lmtp .*\n", snippet("master.cf-lmtp"), pf.master)
                 + "".join(services.values()))
    pipe_main = main_cf(local(snippet("main.cf-pipe")))
    lmtp_main = main_cf(local(snippet("main.cf-lmtp")))
    pf.main.update(pipe_main)
    pf.main.update(lmtp_main)
    for transport in ("ringtrapsh", "dirqueue"):
        pf.main.update({k.replace("ringtrap_", f"{transport}_"): v
                        for k, v in pipe_main.items() if k.startswith("ringtrap_")})
    # four trap domains where an operator has one: the snippet's line, once per route
    pf.main["relay_domains"] = ", ".join(
        pipe_main["relay_domains"].replace("trap.example.org", domain(r)) for r in ROUTES)
    lmtp_route = local(snippet("transport-lmtp"))
    pipe_route = local(snippet("transport-pipe"))
    routes = [lmtp_route.replace("trap.example.org", domain("lmtp"))]
    for route, transport in TRANSPORTS.items():
        routes.append(pipe_route.replace("trap.example.org", domain(route))
                      .replace("ringtrap:", f"{transport}:"))
    pf.files["transport"] = "".join(routes)


def make_dirqueue(root: Path) -> Path:
    for sub in ("tmp", "data", "queue"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for d in (root, root / "tmp", root / "data", root / "queue"):
        shutil.chown(d, PIPE_USER)
    return root


def clear_dirqueue(root: Path) -> None:
    for sub in ("tmp", "data", "queue"):
        for f in os.scandir(root / sub):
            os.unlink(f.path)


def queue_depth(spool: Path) -> int:
    """Files in Postfix's queues (deferred/ is hashed into subdirectories)."""
    n = 0
    for name in QUEUE_DIRS:
        for _dirpath, _dirs, files in os.walk(spool / name):
            n += len(files)
    return n


# -- CPU ------------------------------------------------------------------------------


def own(t: Any) -> float:
    return float(t.user + t.system)


def reaped(t: Any) -> float:
    return float(t.children_user + t.children_system)


class PostfixCPU:
    """CPU seconds of the instance's process tree, and of what its pipe(8) processes ran.

    The master reaps every daemon, so its children times hold every Postfix
    process that exited; live ones are read one by one.  A pipe(8) process
    reaps the command it ran: its children times are the delivery
    processes'.  Those are kept per process as last seen (each sample), so a
    pipe process that is gone still counts.
    """

    def __init__(self, master_pid: int) -> None:
        self.master = psutil.Process(master_pid)
        self.pipes: dict[tuple[int, float], float] = {}
        self.live: set[tuple[int, float]] = set()

    def pipes_seen(self) -> float:
        """Look at the live pipe(8) processes; what their commands took so far, gone ones too."""
        self.live = set()
        for p in self.master.children():
            with contextlib.suppress(psutil.Error), p.oneshot():
                if p.name() == "pipe":
                    key = (p.pid, p.create_time())
                    self.pipes[key] = reaped(p.cpu_times())
                    self.live.add(key)
        return sum(self.pipes.values())

    def gone(self) -> int:
        """pipe(8) processes seen that have exited (what they reaped after the last look is
        counted as Postfix's)."""
        return len(self.pipes.keys() - self.live)

    def sample(self) -> tuple[float, float]:
        """(the whole tree, the delivery commands) so far."""
        t = self.master.cpu_times()
        total = own(t) + reaped(t)
        for p in self.master.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                pt = p.cpu_times()
                total += own(pt) + reaped(pt)
        return total, self.pipes_seen()


def trap_cpu(trap: Trap) -> dict[str, float]:
    """CPU seconds so far of the trap's ingest and workers."""
    out = {"ingest": 0.0, "worker": 0.0}
    st = trap.status() or {"processes": []}
    for p in st["processes"]:
        if p["alive"] and p["role"] in out:
            with contextlib.suppress(psutil.Error):
                out[p["role"]] += own(psutil.Process(p["pid"]).cpu_times())
    return out


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


# -- one flood --------------------------------------------------------------------------


@dataclass
class Flood:
    """What one route's flood measured (rounds add up)."""

    route: str
    messages: int = 0
    smtp_s: float = 0.0
    deliver_s: float = 0.0
    depth: list[tuple[float, int]] = field(default_factory=list)  # (seconds in, files)
    cpu_postfix: float = 0.0
    cpu_delivery: float = 0.0
    cpu_ingest: float = 0.0
    cpu_workers: float = 0.0
    cpu_source: float = 0.0
    deferred: int = 0
    bounced: int = 0
    accepted: int = 0  # queue ids Postfix logged for the flood
    arrived: int = 0  # of those, found at the far end
    missing: int = 0
    duplicates: int = 0
    pipes_gone: int = 0  # pipe(8) processes that exited inside the flood


class Bench:
    def __init__(self, work: Path, args: argparse.Namespace) -> None:
        self.args = args
        self.work = work
        (work / "trap").mkdir()
        settings: dict[str, dict[str, Any]] = {
            "ingest": {"lmtp_socket": "", "socket_mode": 0o666, "idle_timeout": 30},
            "ring": {"slots": 1024},
            "supervisor": {"log_level": "info"},
        }
        self.trap = Trap(work / "trap", settings)
        self.trap.settings["ingest"]["lmtp_socket"] = str(self.trap.rundir / "lmtp.sock")
        self.trap.write_config()
        self.trap.rundir.chmod(0o755)
        self.dq_dir = make_dirqueue(Path(f"/dev/shm/rt-flood-{uuid.uuid4().hex[:8]}.dq"))
        bin_ = install_clients(work)
        self.dq_script = bin_ / "dq-enqueue"
        self.dq_script.write_text(DQ_ENQUEUE.replace("/usr/bin/perl", PERL, 1))
        self.dq_script.chmod(0o755)
        self.pf = PostfixInstance(work / "postfix")
        configure(self.pf, self.trap, bin_, self.dq_script, self.dq_dir)

    def start(self) -> None:
        self.trap.start()
        self.pf.start()
        self.cpu = PostfixCPU(int((self.pf.queue / "pid" / "master.pid").read_text().split()[0]))

    def close(self) -> None:
        self.pf.stop()
        self.trap.close()
        shutil.rmtree(self.dq_dir, ignore_errors=True)

    def log_from(self, offset: int) -> str:
        with open(self.pf.maillog, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    def flood(self, route: str, rnd: int, out: Flood) -> None:
        """One smtp-source flood to ``route``'s domain, measured until the queue is empty."""
        a = self.args
        sender = f"flood-{rnd}-{route}@example.net"
        log_at = self.pf.maillog.stat().st_size
        pf0 = self.cpu.sample()
        gone0 = self.cpu.gone()
        trap0 = trap_cpu(self.trap)
        src0 = children_cpu()
        depth: list[tuple[float, int]] = []
        done = threading.Event()

        def sampler() -> None:
            while True:
                depth.append((round(time.monotonic() - t0, 2), queue_depth(self.pf.queue)))
                self.cpu.pipes_seen()
                if done.wait(SAMPLE):
                    return

        t = threading.Thread(target=sampler, daemon=True)
        t0 = time.monotonic()
        t.start()
        src = subprocess.run(
            [SMTP_SOURCE, "-s", str(a.sessions), "-m", str(a.messages), "-l", str(a.size),
             "-N", "-M", "sender.example", "-f", sender, "-t", f"trap@{domain(route)}",
             f"127.0.0.1:{self.pf.port}"],
            capture_output=True, timeout=3600, stdin=subprocess.DEVNULL, check=False)
        t_smtp = time.monotonic() - t0
        if src.returncode != 0:
            done.set()
            raise SystemExit(f"smtp-source exited {src.returncode}: {src.stderr.decode()[-2000:]}")
        src1 = children_cpu()
        deadline = t0 + a.timeout
        while queue_depth(self.pf.queue):
            if time.monotonic() > deadline:
                done.set()
                raise SystemExit(f"{route}: the queue is not empty after {a.timeout} s")
            time.sleep(0.05)
        t_done = time.monotonic() - t0
        done.set()
        t.join()
        pf1 = self.cpu.sample()
        out.pipes_gone += self.cpu.gone() - gone0
        trap1 = trap_cpu(self.trap)
        log = self.log_from(log_at)
        qids = set(re.findall(r" ([0-9A-F]{6,}): client=", log))
        to_route = rf"to=<[^>]*@{re.escape(domain(route))}>.*"
        out.messages += a.messages
        out.smtp_s += t_smtp
        out.deliver_s += t_done
        # rounds follow one another on the series' time axis
        start = out.depth[-1][0] + SAMPLE if out.depth else 0.0
        out.depth += [(round(start + at, 2), n) for at, n in depth]
        out.cpu_postfix += (pf1[0] - pf0[0]) - (pf1[1] - pf0[1])
        out.cpu_delivery += pf1[1] - pf0[1]
        out.cpu_ingest += trap1["ingest"] - trap0["ingest"]
        out.cpu_workers += trap1["worker"] - trap0["worker"]
        out.cpu_source += src1 - src0
        out.deferred += len(re.findall(to_route + "status=deferred", log))
        out.bounced += len(re.findall(to_route + "status=bounced", log))
        got = self.arrivals(route, sender, len(qids))
        out.accepted += len(qids)
        out.arrived += sum(1 for q in qids if got[q] >= 1)
        out.missing += sum(1 for q in qids if got[q] == 0) + max(0, a.messages - len(qids))
        out.duplicates += sum(got[q] - 1 for q in qids if got[q] > 1) + sum(
            n for q, n in got.items() if q not in qids)

    def arrivals(self, route: str, sender: str, want: int) -> collections.Counter[str]:
        """Queue id -> how often it arrived at the route's far end from ``sender``."""
        if route == "dirqueue":
            got: collections.Counter[str] = collections.Counter()
            for f in os.scandir(self.dq_dir / "queue"):
                meta = dict(line.split(": ", 1) for line in
                            Path(f.path).read_text().splitlines() if ": " in line)
                if meta.get("sender") == sender:
                    got[meta.get("queue_id", "")] += 1
            clear_dirqueue(self.dq_dir)
            return got

        def processed() -> bool:
            st = self.trap.status()
            if st is None:
                return False
            t = st["totals"]
            return bool(t["processed"] >= t["accepted_ring"] + t["accepted_overflow"])

        # the workers record after the ingest accepted: wait for them, then count
        wait_until(processed, 600, "the trap's workers to record every message", step=0.2)
        got = collections.Counter()
        for r in self.trap.records():
            env = r.get("envelope") or {}
            if env.get("sender") == sender:
                got[str(env.get("queue_id"))] += 1
        return got


# -- the report ---------------------------------------------------------------------------


def row(f: Flood) -> dict[str, Any]:
    n = max(f.messages, 1)
    d = [depth for _at, depth in f.depth] or [0]
    # what it takes to get a message from SMTP into the trap (the workers come after)
    path = {"Postfix": f.cpu_postfix, "delivery processes": f.cpu_delivery,
            "ringtrap ingest": f.cpu_ingest}
    return {
        "route": f.route,
        "label": LABELS[f.route],
        "messages": f.messages,
        "smtp_rate": round(f.messages / f.smtp_s, 1) if f.smtp_s else 0.0,
        "deliver_rate": round(f.messages / f.deliver_s, 1) if f.deliver_s else 0.0,
        "smtp_s": round(f.smtp_s, 2),
        "deliver_s": round(f.deliver_s, 2),
        "depth_max": max(d),
        "depth_mean": round(sum(d) / len(d), 1),
        "depth": f.depth,
        "cpu_postfix_ms": round(1000 * f.cpu_postfix / n, 2),
        "cpu_delivery_ms": round(1000 * f.cpu_delivery / n, 2),
        "cpu_ingest_ms": round(1000 * f.cpu_ingest / n, 3),
        "cpu_workers_ms": round(1000 * f.cpu_workers / n, 2),
        "cpu_source_ms": round(1000 * f.cpu_source / n, 2),
        "cpu_path_ms": round(1000 * sum(path.values()) / n, 2),
        "limit": max(path, key=lambda k: path[k]),
        "deferred": f.deferred,
        "bounced": f.bounced,
        "accepted": f.accepted,
        "arrived": f.arrived,
        "missing": f.missing,
        "duplicates": f.duplicates,
        "pipes_gone": f.pipes_gone,
    }


# (label, key, shown only for routes into ringtrap)
TABLE = [
    ("messages", "messages", False),
    ("accepted over SMTP, msgs/s", "smtp_rate", False),
    ("delivered out of the queue, msgs/s", "deliver_rate", False),
    ("queue depth max / mean", "depth", False),
    ("Postfix CPU ms/msg", "cpu_postfix_ms", False),
    ("delivery processes CPU ms/msg", "cpu_delivery_ms", False),
    ("ringtrap ingest CPU ms/msg", "cpu_ingest_ms", True),
    ("ringtrap workers CPU ms/msg (spamd off)", "cpu_workers_ms", True),
    ("smtp-source CPU ms/msg", "cpu_source_ms", False),
    ("SMTP to stored, CPU ms/msg (Postfix + delivery + ingest)", "cpu_path_ms", False),
    ("the largest share of it", "limit", False),
    ("deferred / bounced", "deferrals", False),
    ("arrived exactly once", "once", False),
]


def cell(r: dict[str, Any], key: str, trap_only: bool) -> str:
    if trap_only and r["route"] == "dirqueue":
        return "-"
    if key == "depth":
        return f"{r['depth_max']} / {r['depth_mean']}"
    if key == "deferrals":
        return f"{r['deferred']} / {r['bounced']}"
    if key == "once":
        bad = []
        if r["missing"]:
            bad.append(f"{r['missing']} missing")
        if r["duplicates"]:
            bad.append(f"{r['duplicates']} twice")
        return f"{r['arrived']} of {r['messages']}" + (f" ({', '.join(bad)})" if bad else "")
    return str(r[key])


def chart(series: list[tuple[float, int]], width: int = 60, height: int = 6) -> list[str]:
    """The queue depth over time as columns of '#' (each the peak of its slice of time)."""
    if not any(n for _at, n in series):
        return []
    width = min(width, len(series))
    cols = [0] * width
    for k, (_at, n) in enumerate(series):
        i = k * width // len(series)
        cols[i] = max(cols[i], n)
    top = max(cols)
    lines = ["".join("#" if c and c * height >= level * top else " " for c in cols).rstrip()
             for level in range(height, 0, -1)]
    return [*lines, f"0 s{series[-1][0]:{max(width - 3, 1)}.0f} s"]


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"Postfix flood: {args.messages} messages of {args.size} bytes per route and round,"
          f" {args.sessions} smtp-source sessions, {args.rounds} round(s); spamd off (the"
          " trap's workers parse and record, nothing is scanned)")
    load = getattr(args, "load_before", None)
    if load:
        print("load average before the run (1, 5, 15 min): " + " ".join(f"{x:.2f}" for x in load))
    print()
    print("| | " + " | ".join(r["label"] for r in rows) + " |")
    print("|---|" + "---|" * len(rows))
    for label, key, trap_only in TABLE:
        print(f"| {label} | " + " | ".join(cell(r, key, trap_only) for r in rows) + " |")
    for r in rows:
        if r["pipes_gone"]:
            print(f"note: {r['label']}: {r['pipes_gone']} pipe(8) processes exited inside the"
                  " flood; what they reaped after the last look counts as Postfix's CPU")
    print()
    print(f"queue depth every {SAMPLE} s (files in Postfix's queues):")
    for r in rows:
        print(f"  {r['label']}: max {r['depth_max']}, mean {r['depth_mean']},"
              f" {len(r['depth'])} samples")
        for line in chart(r["depth"]):
            print(f"    |{line}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--messages", type=int, default=2000,
                    help="messages per route and round (default 2000)")
    ap.add_argument("-l", "--size", type=int, default=4096,
                    help="message body bytes (smtp-source -l; default 4096)")
    ap.add_argument("-s", "--sessions", type=int, default=20,
                    help="concurrent SMTP sessions (smtp-source -s; default 20)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="rounds; the routes take turns in each (default 1)")
    ap.add_argument("--routes", default=",".join(ROUTES),
                    help=f"comma-separated subset of {','.join(ROUTES)}")
    ap.add_argument("--timeout", type=float, default=900.0,
                    help="seconds a flood may take to leave the queue (default 900)")
    ap.add_argument("--smoke", action="store_true",
                    help="a few seconds: 30 messages of 1 KiB, 4 sessions, one round")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = ap.parse_args()
    if args.smoke:
        args.messages, args.size, args.sessions, args.rounds = 30, 1024, 4, 1
    routes = [r.strip() for r in args.routes.split(",") if r.strip()]
    if not routes or any(r not in ROUTES for r in routes):
        ap.error(f"--routes takes a subset of {','.join(ROUTES)}")
    reason = missing()
    if reason:
        print(f"mta_flood: {reason}", file=sys.stderr)
        return 2
    # short, and traversable by the user Postfix runs the pipe commands as
    work = Path(tempfile.mkdtemp(prefix="rt-flood-", dir="/tmp"))
    work.chmod(0o755)
    args.load_before = os.getloadavg()
    bench = Bench(work, args)
    floods = {r: Flood(r) for r in routes}
    try:
        bench.start()
        for rnd in range(args.rounds):
            for route in routes:
                bench.flood(route, rnd, floods[route])
                if not args.json:
                    print(f"round {rnd + 1}: {route} done", file=sys.stderr)
    finally:
        bench.close()
        shutil.rmtree(work, ignore_errors=True)
    rows = [row(floods[r]) for r in routes]
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        report(rows, args)
    return 0 if all(r["missing"] == 0 and r["duplicates"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
