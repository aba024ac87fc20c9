"""The side by side: three ways to feed one spamd, measured in interleaved slices.

Each contender is prepared with the same backlog and then paused (SIGSTOP
on its consumers).  The measurement resumes one contender at a time for a
short slice, counts what it finished, and pauses it again, rotating through
the contenders for a number of rounds.  On a machine shared with other work
the background load drifts by the minute; slices of a few seconds spread
that drift evenly over the three, where one long window each would hand one
of them the quiet minute.  A request in flight when its contender is paused
still completes in spamd and is counted in that contender's next slice, so
the boundaries cost every contender the same.

Pausing is safe for each: a stopped ringtrap worker keeps its claim and its
heartbeat is far from the supervisor's timeout over a few slices; a stopped
dirqueue worker keeps its lock; a stopped ``spamc`` has already sent its
message (spamd answers into the socket buffer).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import stress_flood as fl
from stress_baselines import DirQueue, DirQueueRun, SpamcRun
from stress_trap import StressTrap, group_cpu_seconds


class Contender:
    """One way to drain the backlog: prepared, then paused and resumed slice by slice."""

    name = ""

    def pids(self) -> list[int]:
        """The consumer processes to stop and continue."""
        raise NotImplementedError

    def count(self) -> int:
        """Messages finished so far."""
        raise NotImplementedError

    def cpu(self) -> float:
        """CPU seconds its own processes used so far (spamd excluded)."""
        raise NotImplementedError

    def backlog(self) -> int:
        """Messages still waiting."""
        raise NotImplementedError

    def signal(self, sig: int) -> None:
        """Send ``sig`` (SIGSTOP, SIGCONT) to every consumer."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def finish(self) -> dict[str, Any]:
        """Stop for good; extra figures for the report."""
        return {}


class RingtrapContender(Contender):
    """ringtrap's workers draining the ring and the overflow, preloaded through the ingest."""

    name = "ringtrap"

    def __init__(self, trap: StressTrap, paths: list[Path],
                 on_delivery: Callable[[str, str], None]) -> None:
        self.trap = trap
        trap.start()
        sup = trap.supervisor_pid
        assert sup is not None
        self.sup = sup
        t0 = time.monotonic()
        got = fl.deliver_all(trap.socket_path, paths, threads=8)
        self.preload_s = time.monotonic() - t0
        for outcome, detail in got:
            on_delivery(outcome, detail)
        self.refused = sum(1 for o, _ in got if o != fl.OK)
        self._workers = trap.pids("worker")

    def pids(self) -> list[int]:
        return self._workers

    def count(self) -> int:
        st = self.trap.fresh_status()
        return 0 if st is None else int(st["totals"]["processed"])

    def cpu(self) -> float:
        return group_cpu_seconds(self.sup)

    def backlog(self) -> int:
        st = self.trap.fresh_status()
        return 0 if st is None else int(st["ring"]["used"] + st["overflow"]["ready"])

    def finish(self) -> dict[str, Any]:
        return {"preload_s": round(self.preload_s, 1), "refused": self.refused}


class DirQueueContender(Contender):
    """N workers with IPC::DirQueue's ordered pickup, preloaded by temp file + rename."""

    name = "dirqueue"

    def __init__(self, base: Path, address: str, workers: int, paths: list[Path]) -> None:
        self.base = base
        self.queue = DirQueue(base)
        t0 = time.monotonic()
        for p in paths:
            self.queue.enqueue(p.read_bytes())
        self.preload_s = time.monotonic() - t0
        self.run = DirQueueRun(base, address, workers)
        self.run.start()

    def pids(self) -> list[int]:
        return self.run.pids()

    def count(self) -> int:
        return self.run.count()

    def cpu(self) -> float:
        total = 0.0
        for pid in self.pids():
            with contextlib.suppress(psutil.Error):
                t = psutil.Process(pid).cpu_times()
                total += t.user + t.system
        return total

    def backlog(self) -> int:
        return self.queue.depth()

    def finish(self) -> dict[str, Any]:
        self.signal(signal.SIGCONT)
        pickups = self.run.stop()
        return {"preload_s": round(self.preload_s, 1), "pickup": pickup_bands(pickups)}


class SpamcContender(Contender):
    """N shell loops of ``spamc -y`` over the same files, straight at spamd."""

    name = "spamc"

    def __init__(self, socket_path: Path, paths: list[Path], loops: int, workdir: Path) -> None:
        self.total = len(paths)
        self.run = SpamcRun(socket_path, paths, loops, workdir)
        self.run.start()

    def pids(self) -> list[int]:
        return [sh.pid for sh in self.run.shells]

    def signal(self, sig: int) -> None:
        # the whole session: the shell and the spamc it is running
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, sig)

    def count(self) -> int:
        return self.run.count()[0]

    def cpu(self) -> float:
        return self.run.cpu_seconds()

    def backlog(self) -> int:
        return max(0, self.total - sum(self.run.count()))

    def finish(self) -> dict[str, Any]:
        failed = self.run.count()[1]
        self.signal(signal.SIGCONT)
        self.run.stop()
        return {"failed_calls": failed}


def pickup_bands(pickups: list[tuple[int, float]]) -> list[dict[str, Any]]:
    """Mean pickup time by queue-depth band, from the dirqueue workers' own clocks."""
    bands = [(0, 1000), (1000, 5000), (5000, 10000), (10000, 20000), (20000, 10**9)]
    out = []
    for lo, hi in bands:
        sel = [s for d, s in pickups if lo <= d < hi]
        if sel:
            out.append({"depth": f"{lo:,}-{hi:,}" if hi < 10**9 else f"{lo:,}+",
                        "pickups": len(sel), "mean_ms": round(1000 * sum(sel) / len(sel), 2)})
    return out


@dataclass
class _Tally:
    """What one contender did over all its slices."""

    done: int = 0
    seconds: float = 0.0
    cpu: float = 0.0  # its own processes
    spamd_cpu: float = 0.0
    others: float = 0.0  # every other process on the machine
    per_round: list[float] = field(default_factory=list)


def _busy_cpu() -> float:
    t = psutil.cpu_times()
    return float(sum(t)) - t.idle - getattr(t, "iowait", 0.0)


def _self_cpu() -> float:
    t = psutil.Process().cpu_times()
    return t.user + t.system + t.children_user + t.children_system


def interleave(contenders: list[Contender], spamd_pid: int, rounds: int, slice_s: float,
               warmup_s: float, progress: Callable[[str], None]) -> dict[str, dict[str, Any]]:
    """Resume each contender in turn for ``slice_s``; ``rounds`` times, rotating the order.

    Each contender first runs ``warmup_s`` unmeasured (spamd's children warm,
    the caches fill).  Returns per contender: finished messages, seconds
    measured, msgs/s overall and per round, CPU of its own processes and of
    spamd per message, and the cores others used while it ran.
    """
    for c in contenders:
        c.signal(signal.SIGSTOP)
    acc = {c.name: _Tally() for c in contenders}
    for c in contenders:
        progress(f"side by side: warming up {c.name}")
        c.signal(signal.SIGCONT)
        time.sleep(warmup_s)
        c.signal(signal.SIGSTOP)
    for r in range(rounds):
        order = contenders[r % len(contenders):] + contenders[: r % len(contenders)]
        progress(f"side by side: round {r + 1}/{rounds}")
        for c in order:
            a = acc[c.name]
            n0, cpu0, sp0 = c.count(), c.cpu(), group_cpu_seconds(spamd_pid)
            busy0, me0 = _busy_cpu(), _self_cpu()
            t0 = time.monotonic()
            c.signal(signal.SIGCONT)
            time.sleep(slice_s)
            c.signal(signal.SIGSTOP)
            el = time.monotonic() - t0
            n1, cpu1, sp1 = c.count(), c.cpu(), group_cpu_seconds(spamd_pid)
            busy1, me1 = _busy_cpu(), _self_cpu()
            spamd_cpu, own = sp1 - sp0, cpu1 - cpu0
            a.done += n1 - n0
            a.seconds += el
            a.cpu += own
            a.spamd_cpu += spamd_cpu
            a.others += max(0.0, (busy1 - busy0) - spamd_cpu - own - (me1 - me0))
            a.per_round.append(round((n1 - n0) / el, 2))
    out: dict[str, dict[str, Any]] = {}
    for c in contenders:
        a = acc[c.name]
        done, secs = a.done, a.seconds
        out[c.name] = {
            "done": done, "seconds": round(secs, 1),
            "msgs_per_s": round(done / secs, 2) if secs else 0.0,
            "per_round": a.per_round,
            "queue_cpu_ms_per_msg": round(1000 * a.cpu / done, 2) if done else None,
            "spamd_cpu_ms_per_msg": round(1000 * a.spamd_cpu / done, 1) if done else None,
            "other_load_cores": round(a.others / secs, 2) if secs else None,
            "backlog_left": c.backlog(),
        }
    return out


__all__ = ["Contender", "DirQueueContender", "RingtrapContender", "SpamcContender",
           "interleave", "pickup_bands"]
