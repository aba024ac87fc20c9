"""The stress harness: a flood through a real ringtrap with a real spamd, side by side.

It starts a private spamd and a ringtrap of its own (or attaches to a
running trap with ``--attach``), then:

1. **Floods** the ingest socket for ``--duration`` seconds: a steady rate
   that ramps, periodic bursts, ``--clients`` concurrent connections,
   message sizes from a realistic distribution (most a few KiB, a long tail
   to several MiB, some over the size limit) or from ``--messages DIR``.
   With ``--chaos`` it SIGKILLs workers, the ingest, the supervisor
   (restarted), spamd children or spamd itself, and fills the overflow to
   its cap, one action every ``--chaos-every`` seconds.  With ``--day N``
   (the accelerated day) the overflow is purged every N seconds instead of
   daily.  Every second it samples intake and completion rates, the ring,
   the overflow backlog, ingest/scan/queue latency and each process's
   memory and CPU; a progress line shows where the run is.  With
   ``--scanner spamd,rspamd`` and ``--drain-order oldest,newest`` it floods
   a grid: each scanner with each order, a trap and a scanner of its own.
2. **Closes the ledger**: stops the flood, stops the trap gracefully (the
   ring goes to the overflow), purges what is left and checks that every
   message that got ``OK`` was recorded or dropped by a purge (by id):
   ``lost`` must be 0.
3. **Side by side** (unless ``--no-compare``): the same message set, the
   same spamd, the same concurrency, a backlog ``--compare-depth`` deep,
   drained by ringtrap's workers, by a directory queue picked up the way
   IPC::DirQueue does (ordered), and by N parallel ``spamc`` loops with no
   queue at all; then the pickup cost of each store by queue depth.
4. **Reports**: ``report.md``, ``summary.json``, ``samples.jsonl`` and PNG
   charts (matplotlib, ``pip install .[stress]``) in ``--out``; for each row
   of the grid, and per purge period, how much of what was accepted was
   analysed, how old it was and what the purge dropped (``analysed.png``).

    python3 perf/stress.py --smoke                   # under a minute: CI's smoke test
    python3 perf/stress.py --duration 600 --chaos --day 60
    python3 perf/stress.py --attach /etc/ringtrap/ringtrap.toml --duration 120 --rate 50
    python3 perf/stress.py --scanner spamd,rspamd --drain-order oldest,newest --day 30
    python3 perf/stress.py --json ...                # the summary as JSON on stdout

Exit status: 0 when lost = 0, 1 when an accepted message was lost, 2 when
the harness itself could not run.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import random
import shutil
import signal
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))  # the tests' private spamd and rspamd

import psutil  # noqa: E402
import stress_flood as fl  # noqa: E402
import stress_report as report  # noqa: E402
from rspamd_fixture import RspamdProcess, rspamd_missing_reason  # noqa: E402
from stress_baselines import SCAN_LIMIT, pickup_cost  # noqa: E402
from stress_chaos import ACTIONS, OWNED, Chaos  # noqa: E402
from stress_compare import (  # noqa: E402
    Contender,
    DirQueueContender,
    RingtrapContender,
    SpamcContender,
    interleave,
)
from stress_ledger import Ledger  # noqa: E402
from stress_sample import TickSampler  # noqa: E402
from stress_trap import ResultsTail, StressSpamd, StressTrap, wait_until  # noqa: E402

from ringtrap import __version__  # noqa: E402
from ringtrap.base import ids  # noqa: E402
from ringtrap.overflow import DRAIN_ORDERS  # noqa: E402
from ringtrap.scan.results import read_results  # noqa: E402

KIB, MIB = 1024, 1024 * 1024
EXIT_LOST = 1
EXIT_HARNESS = 2
SCANNERS = ("spamd", "rspamd")
SPAMD_ACTIONS = ("spamd-child", "spamd")


# --- options -----------------------------------------------------------------------


def _size(text: str) -> int:
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": KIB, "M": MIB, "G": 1024 * MIB}.get(t[-1:], 1)
    return int(float(t[:-1] if t[-1:] in "KMG" else t) * mult)


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    ap = argparse.ArgumentParser(
        description="Flood a ringtrap with a real spamd, with chaos; compare it side by side "
        "with a directory queue and spamc; report with charts.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = ap.add_argument_group("flood")
    g.add_argument("--duration", type=float, default=120.0, help="seconds of flood")
    g.add_argument("--rate", type=float, default=40.0, help="messages per second at the start")
    g.add_argument("--ramp-to", type=float, default=80.0,
                   help="messages per second at the end (a linear ramp)")
    g.add_argument("--burst-rate", type=float, default=300.0,
                   help="extra messages per second during a burst")
    g.add_argument("--burst-every", type=float, default=60.0, help="seconds between bursts")
    g.add_argument("--burst-len", type=float, default=5.0, help="seconds a burst lasts")
    g.add_argument("--clients", type=int, default=16, help="concurrent client connections")
    g.add_argument("--messages", type=Path, metavar="DIR",
                   help="send the files under DIR instead of generated messages")
    g.add_argument("--set-size", type=int, default=1000,
                   help="distinct generated messages (sizes drawn from the distribution)")
    g.add_argument("--max-message", type=_size, default=4 * MIB,
                   help="ingest.max_message_bytes; the tail reaches it, some messages exceed it")
    g.add_argument("--seed", type=int, default=1)
    g = ap.add_argument_group("the trap")
    g.add_argument("--attach", type=Path, metavar="CONFIG",
                   help="drive the running ringtrap of CONFIG instead of starting one "
                        "(no supervisor or spamd chaos, no side by side)")
    g.add_argument("--workers", type=int, default=os.cpu_count() or 2,
                   help="workers, spamd children, dirqueue workers and spamc loops")
    g.add_argument("--ring-slots", type=int, default=1024,
                   help="ring.slots of the trap started here (ringtrap's default: 1024)")
    g.add_argument("--overflow-max", type=_size, default=256 * MIB,
                   help="overflow.max_bytes of the trap started here")
    g.add_argument("--drain-order", default="oldest", metavar="ORDERS",
                   help="overflow.drain_order, or several separated by commas (oldest,newest):"
                        " then the flood runs once per order, each with a trap of its own,"
                        " and the report puts what each analysed side by side")
    g.add_argument("--scanner", default="spamd", metavar="KINDS",
                   help="scanner.kind: spamd, rspamd or both (spamd,rspamd); each kind"
                        " with each drain order floods a trap and a scanner of its own (a"
                        " private spamd; an offline rspamd in a private network namespace,"
                        " as the tests run it: needs root)")
    g.add_argument("--grid-duration", type=float, default=0.0, metavar="SECONDS",
                   help="seconds of flood of each grid run after the first (0: --duration)")
    g.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="SECTION.KEY=VALUE",
                   help="another setting of the trap started here (VALUE is JSON or a string)")
    g = ap.add_argument_group("chaos and the accelerated day")
    g.add_argument("--chaos", nargs="?", const="all", default="",
                   help=f"comma-separated actions from {','.join(ACTIONS)} (or 'all')")
    g.add_argument("--chaos-every", type=float, default=20.0,
                   help="seconds between the end of one chaos action and the next")
    g.add_argument("--chaos-hold", type=float, default=10.0,
                   help="seconds the overflow-full action waits after filling the overflow")
    g.add_argument("--day", type=float, default=0.0, metavar="SECONDS",
                   help="accelerated day: purge the overflow every SECONDS (0: never)")
    g.add_argument("--final", choices=("purge", "drain"), default="purge",
                   help="after the flood: purge the backlog, or drain it first "
                        "(up to --drain-timeout)")
    g.add_argument("--drain-timeout", type=float, default=600.0)
    g = ap.add_argument_group("side by side")
    g.add_argument("--no-compare", action="store_true", help="skip the side-by-side phase")
    g.add_argument("--compare-depth", type=int, default=20000,
                   help="backlog each system drains in the side by side")
    g.add_argument("--compare-slice", type=float, default=10.0,
                   help="seconds each system drains per round while the others are paused")
    g.add_argument("--compare-rounds", type=int, default=12,
                   help="rounds of the three systems, in rotating order")
    g.add_argument("--compare-warmup", type=float, default=5.0,
                   help="seconds each system drains unmeasured before the first round")
    g.add_argument("--depths", default="1000,5000,20000",
                   help="queue depths of the pickup-cost table")
    g = ap.add_argument_group("output")
    g.add_argument("--out", type=Path, help="output folder (default perf/out/stress-<time>)")
    g.add_argument("--no-charts", action="store_true")
    g.add_argument("--redraw", type=Path, metavar="DIR",
                   help="only redraw the report and charts of the run in DIR "
                        "(from its summary.json and samples.jsonl)")
    g.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    g.add_argument("--smoke", action="store_true",
                   help="a run of under a minute with chaos, for CI: asserts correctness, "
                        "never speed")
    return ap


SMOKE = {
    "duration": 14.0, "rate": 25.0, "ramp_to": 40.0, "burst_rate": 120.0, "burst_every": 6.0,
    "burst_len": 1.5, "clients": 8, "set_size": 120, "max_message": 1 * MIB, "workers": 2,
    "chaos": "worker,ingest,overflow-full,supervisor,spamd-child", "chaos_every": 1.0,
    "chaos_hold": 1.5, "day": 5.0, "compare_depth": 150, "compare_slice": 2.0,
    "compare_warmup": 1.0, "compare_rounds": 1, "depths": "200,1000",
    "overflow_max": 64 * MIB, "ring_slots": 64, "grid_duration": 8.0,
}


def apply_smoke(args: argparse.Namespace, ap: argparse.ArgumentParser) -> None:
    """The smoke mode's settings, except where the command line says otherwise."""
    for k, v in SMOKE.items():
        if getattr(args, k) == ap.get_default(k):
            setattr(args, k, v)


def parse_overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    """``section.key=value`` pairs into settings; a value is JSON if it parses, else a string."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot:
            raise SystemExit(f"--set {item!r}: expected SECTION.KEY=VALUE")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        out.setdefault(section, {})[name] = value
    return out


def chaos_actions(spec: str, attached: bool) -> list[str]:
    """The chaos actions asked for, minus those a run attached to a trap cannot do."""
    if not spec:
        return []
    acts = list(ACTIONS) if spec == "all" else [a.strip() for a in spec.split(",") if a.strip()]
    bad = [a for a in acts if a not in ACTIONS]
    if bad:
        raise SystemExit(f"--chaos: unknown action(s) {', '.join(bad)}; known: "
                         f"{', '.join(ACTIONS)}")
    if attached:
        acts = [a for a in acts if a not in OWNED]
    return acts


# --- the run -------------------------------------------------------------------------


class Run:
    """One invocation: its spamd, its trap, the flood, the ledger, the side by side."""

    def __init__(self, args: argparse.Namespace, out: Path, drain_order: str = "oldest",
                 scanner: str = "spamd") -> None:
        self.args = args
        self.out = out
        self.drain_order = drain_order
        self.scanner = scanner
        self.rspamd: RspamdProcess | None = None
        # (seconds into the flood, seconds since accepted) of each analysed record as it appeared
        self.record_ages: list[tuple[float, float]] = []
        self.flood_wall0 = 0.0
        self.mean_age_s: float | None = None
        self.work = out / "work"
        self.work.mkdir(parents=True, exist_ok=True)
        self.tag = uuid.uuid4().hex[:8]
        self.shm = Path(f"/dev/shm/rt-stress-{self.tag}.work")
        self.rng = random.Random(args.seed)
        self.ledger = Ledger()
        self.samples: list[dict[str, Any]] = []
        self.latencies: list[float] = []  # seconds from connect to OK, every accepted delivery
        self.purges: list[dict[str, Any]] = []
        self.spamd: StressSpamd | None = None
        self.trap: StressTrap | None = None
        self.chaos: Chaos | None = None
        self.flood_t0 = 0.0
        self.started = time.time()
        self.compare: dict[str, Any] = {}
        self.pickups: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.phase_times: dict[str, float] = {}
        self._progress_at = 0.0
        self._tty = sys.stderr.isatty()
        self.load_at_start = [round(x, 2) for x in os.getloadavg()]

    # -- setup ------------------------------------------------------------------------

    def setup(self) -> None:
        """The message set, spamd and the trap."""
        a = self.args
        if a.messages:
            self.msgs = fl.load_message_dir(a.messages)
            self.set_origin = f"{len(self.msgs)} files from {a.messages}"
        else:
            model = fl.SizeModel(max_message=a.max_message)
            self.msgs = fl.build_message_set(a.set_size, model, a.seed)
            self.set_origin = (
                f"{len(self.msgs)} generated messages: log-normal around "
                f"{model.median // KIB} KiB, {model.tail_share:.1%} Pareto tail to "
                f"{a.max_message / MIB:g} MiB, {model.over_share:.1%} over the limit")
        self.sizes = fl.size_summary(self.msgs, a.max_message)
        if a.attach:
            self.trap = StressTrap(self.work, attach=a.attach)
            if self.trap.status() is None:
                raise RuntimeError(f"no running ringtrap for {a.attach} (no ring "
                                   f"{self.trap.cfg.ring.name!r})")
            return
        t0 = time.monotonic()
        settings: dict[str, dict[str, Any]] = {
            "ingest": {"max_message_bytes": a.max_message},
            "ring": {"slots": a.ring_slots},
            "overflow": {"max_bytes": a.overflow_max, "drain_order": self.drain_order},
            "workers": {"count": a.workers},
        }
        if self.scanner == "rspamd":
            self.rspamd = RspamdProcess(count=a.workers, log_path=self.work / "rspamd.log")
            self.rspamd.start()
            self.phase_times["rspamd_start_s"] = round(time.monotonic() - t0, 1)
            settings["scanner"] = {"kind": "rspamd"}
            settings["rspamd"] = {"address": self.rspamd.address}
            settings["spamd"] = {"address": "off"}
        else:
            self.spamd = StressSpamd(max_children=a.workers, log_path=self.work / "spamd.log")
            self.spamd.start()
            self.phase_times["spamd_start_s"] = round(time.monotonic() - t0, 1)
            settings["spamd"] = {"address": self.spamd.unix_address}
        for section, values in parse_overrides(a.overrides).items():
            settings.setdefault(section, {}).update(values)
        self.trap = StressTrap(self.work, settings)
        self.phase_times["trap_start_s"] = round(self.trap.start(), 1)

    # -- the flood ----------------------------------------------------------------------

    def t(self) -> float:
        """Seconds since the flood started."""
        return time.monotonic() - self.flood_t0

    def flood(self) -> None:
        """The flood phase: deliveries, samples, chaos and accelerated-day purges."""
        a = self.args
        trap = self.trap
        assert trap is not None
        profile = fl.Profile(a.rate, a.duration, a.ramp_to, a.burst_rate, a.burst_every,
                             a.burst_len)
        self.profile = profile
        actions = chaos_actions(a.chaos, trap.attached)
        skipped = [x for x in chaos_actions(a.chaos, False) if x not in actions]
        if skipped:
            self.notes.append(f"chaos actions skipped on an attached trap: {', '.join(skipped)}")
        if self.scanner != "spamd":
            skipped = [x for x in actions if x in SPAMD_ACTIONS]
            actions = [x for x in actions if x not in SPAMD_ACTIONS]
            if skipped:
                self.notes.append(f"chaos actions skipped with {self.scanner}: "
                                  f"{', '.join(skipped)} (they kill spamd)")
        flood = fl.Flood(trap.socket_path, self.msgs, profile, a.clients, a.seed)
        self.flood_t0 = flood.start()
        self.flood_wall0 = time.time()
        # the overflow-full action's message: the largest the ingest accepts
        fits = [m for m in self.msgs if len(m) <= trap.cfg.ingest.max_message_bytes - 64]
        big = max(fits, key=len) if fits else b""
        self.chaos = Chaos(trap, self.spamd, actions, a.chaos_every, self.rng, self.t,
                           hold=a.chaos_hold, fixed_order=a.smoke, filler=big)
        sampler = TickSampler(trap, self.spamd)
        self.sampler = sampler
        self.tail = ResultsTail(trap.cfg.results.dir)
        self.tail.read_new()  # records from before this run are not this run's
        next_tick = self.flood_t0 + 1.0
        next_day = a.day if a.day > 0 else float("inf")
        pending: list[fl.Delivery] = []
        while True:
            pending.extend(flood.poll(max(0.0, min(0.2, next_tick - time.monotonic()))))
            now = time.monotonic()
            if now < next_tick:
                continue
            next_tick += 1.0
            t = now - self.flood_t0
            self._tick(t, profile.rate_at(t - 0.5), pending, "flood")
            pending = []
            # the accelerated day: the daily purge every --day seconds
            if t >= next_day:
                next_day += a.day
                self._purge(t, "day")
            # chaos starts nothing in the last seconds: the end must see a whole trap
            self.chaos.tick(until=a.duration - min(5.0, a.chaos_every + 2))
            self._progress(t)
            if t >= a.duration:
                break
        flood.stop()
        rest = flood.join()
        self._take(rest, "flood")
        self.shed = flood.shed
        fl.close_quietly(flood.out)
        self.chaos.wait()
        self.phase_times["flood_s"] = round(self.t(), 1)

    def _take(self, deliveries: list[fl.Delivery], phase: str) -> None:
        for d in deliveries:
            self.ledger.outcome(d.outcome, d.detail, d.detail if d.outcome == fl.OK else None,
                                phase)
            if d.outcome == fl.OK:
                self.latencies.append(d.latency)

    def _tick(self, t: float, offered: float, deliveries: list[fl.Delivery], phase: str) -> None:
        self._take(deliveries, phase)
        if self.chaos is not None:
            for outcome, detail in self.chaos.take_deliveries():
                self.ledger.outcome(outcome, detail, detail if outcome == fl.OK else None,
                                    "fill")
        recs = self.tail.read_new()
        self.ledger.records(r["id"] for r in recs if isinstance(r.get("id"), str))
        wall = time.time()
        self.record_ages.extend(
            (t, round(wall - ids.id_time(r["id"]), 2)) for r in recs
            if _analysed(r) and isinstance(r.get("id"), str) and ids.is_valid(r["id"]))
        s = self.sampler.sample(t, offered, deliveries, recs)
        s["phase"] = phase
        self.samples.append(s)

    def _purge(self, t: float, why: str) -> None:
        assert self.trap is not None
        t0 = time.monotonic()
        dropped, nbytes = self.trap.purge()
        self.ledger.purge(dropped)
        self.purges.append({"t": round(t, 1), "why": why, "dropped": len(dropped),
                            "bytes": nbytes, "took_s": round(time.monotonic() - t0, 3)})

    def _progress(self, t: float, force: bool = False) -> None:
        """The live line: rewritten in place on a terminal, every 5 s otherwise."""
        if not self._tty and not force and t - self._progress_at < 5.0:
            return
        self._progress_at = t
        s = self.samples[-1] if self.samples else {}
        led = self.ledger
        chaos = len(self.chaos.events) if self.chaos else 0

        def num(key: str, fmt: str = "{:.0f}") -> str:
            v = s.get(key)
            return "-" if v is None else fmt.format(v)

        line = (f"[{t:5.0f}/{self.args.duration:.0f}s] offered {s.get('offered', 0):.0f}/s "
                f"ok {s.get('ok', 0)}/s done {num('processed_s')}/s | ring "
                f"{s.get('ring_used', '-')}/{s.get('ring_slots', '-')} overflow "
                f"{s.get('ov_ready', '-')} ({(s.get('ov_bytes') or 0) / MIB:.1f} MiB, oldest "
                f"{num('ov_oldest_s')} s) | ingest p99 {num('lat_p99_ms', '{:.1f}')} ms, "
                f"scan p50 {num('scan_p50_ms')} ms | accepted {len(led.accepted)} "
                f"recorded {len(led.recorded)} purged {len(led.purged)} | chaos {chaos} "
                f"purges {len(self.purges)}")
        if self._tty:
            width = shutil.get_terminal_size((160, 20)).columns
            sys.stderr.write("\r" + line[: width - 1].ljust(width - 1))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    # -- closing the ledger ----------------------------------------------------------------

    def note_analysed_age(self) -> None:
        """Keep the trap's mean age of what it analysed, before a stop resets its counters."""
        assert self.trap is not None
        st = self.trap.fresh_status()
        if st is not None:
            self.mean_age_s = st["analysed"]["mean_age_s"]

    def analysed(self) -> dict[str, Any]:
        """What this run's flood had analysed once its ledger closed (see analysed_row)."""
        assert self.trap is not None
        done = {r["id"] for r in read_results(self.trap.cfg.results.dir, strict=False)
                if _analysed(r)}
        accepted = {m: ids.id_time(m) for m, phase in self.ledger.accepted.items()
                    if phase == "flood" and ids.is_valid(m)}
        order = self.trap.cfg.overflow.drain_order if self.trap.attached else self.drain_order
        a = self.args
        row = report.analysed_row(order, accepted, done, self.flood_wall0, a.duration,
                                  self.mean_age_s)
        flood_purges = [p for p in self.purges if p["why"] in ("day", "flood")]
        row["periods"] = report.period_rows(accepted, done, self.flood_wall0, a.duration, a.day,
                                            self.record_ages, flood_purges)
        ages = [age for _, age in self.record_ages]
        row.update(scanner=self.trap.cfg.scanner.kind,
                   age_mean_s=round(sum(ages) / len(ages), 1) if ages else None,
                   age_max_s=max(ages) if ages else None,
                   purged=sum(p["dropped"] for p in flood_purges),
                   lost=self.ledger.summary()["lost"])
        return row

    def close_ledger(self, phase: str) -> dict[str, Any]:
        """Stop the intake's backlog where it is and account for every accepted id.

        A trap started here is stopped with TERM (in-flight scans finish, the
        ring is persisted to the overflow) and its overflow purged by id; an
        attached trap is purged and left to finish its ring.
        """
        trap = self.trap
        assert trap is not None
        a = self.args
        t0 = time.monotonic()
        if a.final == "drain" and phase == "flood":
            self._drain(a.drain_timeout)
        if self._tty:
            sys.stderr.write("\n")
        if trap.attached:
            self._purge(self.t(), phase)
            with contextlib.suppress(TimeoutError):
                wait_until(lambda: _ring_idle(trap), a.drain_timeout, "the ring to drain", 0.5)
        else:
            code = trap.stop()
            if code not in (0, None):
                self.notes.append(f"the trap exited {code} on TERM after the {phase} phase")
            self._purge(self.t(), phase)
        if self.chaos is not None:
            for outcome, detail in self.chaos.take_deliveries():
                self.ledger.outcome(outcome, detail, detail if outcome == fl.OK else None,
                                    "fill")
        self.ledger.quarantine(trap.quarantined_ids())
        # every record, read whole: the ledger does not rest on the tail's bookkeeping
        self.ledger.records(r["id"] for r in read_results(trap.cfg.results.dir, strict=False)
                            if isinstance(r.get("id"), str))
        self.phase_times[f"{phase}_close_s"] = round(time.monotonic() - t0, 1)
        return self.ledger.summary()

    def _drain(self, timeout: float) -> None:
        """Keep sampling until the backlog is gone (or ``timeout``)."""
        assert self.trap is not None
        deadline = time.monotonic() + timeout
        next_tick = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            time.sleep(max(0.0, next_tick - time.monotonic()))
            next_tick += 1.0
            t = self.t()
            self._tick(t, 0.0, [], "drain")
            self._progress(t)
            s = self.samples[-1]
            if s.get("ring_used") == 0 and s.get("ov_ready") == 0 and s.get("ov_claimed") == 0:
                return
        self.notes.append(f"the backlog did not drain within {timeout:g} s; the rest was purged")

    # -- side by side ---------------------------------------------------------------------

    def side_by_side(self) -> None:
        """The same backlog drained by ringtrap, a directory queue and spamc loops, interleaved."""
        a = self.args
        assert self.spamd is not None and self.trap is not None
        scan_set = [m for m in self.msgs if len(m) <= min(SCAN_LIMIT, a.max_message)]
        setdir = self.shm / "set"
        setdir.mkdir(parents=True, exist_ok=True)
        paths = []
        nbytes = 0
        for i in range(a.compare_depth):
            # a distinct first line per copy: to the trap every one is a new message
            data = f"X-Stress-Compare: {i}\r\n".encode() + scan_set[i % len(scan_set)]
            p = setdir / f"{i:07d}.eml"
            p.write_bytes(data)
            paths.append(p)
            nbytes += len(data)
        self.compare = {"depth": a.compare_depth, "set_bytes": nbytes,
                        "distinct": len(scan_set), "slice_s": a.compare_slice,
                        "rounds": a.compare_rounds, "warmup_s": a.compare_warmup,
                        "workers": a.workers}

        def log(text: str) -> None:
            sys.stderr.write(text + "\n")

        def took(outcome: str, detail: str) -> None:
            self.ledger.outcome(outcome, detail, detail if outcome == fl.OK else None, "compare")

        contenders: list[Contender] = []
        t0 = time.monotonic()
        try:
            log(f"side by side: preloading {a.compare_depth:,} messages into each")
            spamd, trap = self.spamd, self.trap
            makers: list[Callable[[], Contender]] = [
                lambda: RingtrapContender(trap, paths, took),
                lambda: DirQueueContender(self.shm / "dirqueue", spamd.unix_address, a.workers,
                                          paths),
                lambda: SpamcContender(spamd.socket_path, paths, a.workers, self.shm / "spamc"),
            ]
            for make in makers:
                c = make()
                c.signal(signal.SIGSTOP)  # nobody drains unmeasured while the next one loads
                contenders.append(c)
            self.phase_times["compare_preload_s"] = round(time.monotonic() - t0, 1)
            t0 = time.monotonic()
            systems = interleave(contenders, self.spamd.pid, a.compare_rounds, a.compare_slice,
                                 a.compare_warmup, log)
            self.phase_times["compare_s"] = round(time.monotonic() - t0, 1)
        finally:
            for c in contenders:
                c.signal(signal.SIGCONT)
        for c in contenders:
            systems[c.name].update(c.finish())
        self.compare["systems"] = systems
        self.close_ledger("compare")  # the trap's leftover backlog: TERM, purge by id
        shutil.rmtree(self.shm / "dirqueue", ignore_errors=True)
        shutil.rmtree(setdir, ignore_errors=True)

    def pickup_table(self) -> None:
        """Pickup cost by queue depth for each store (no spamd involved)."""
        for d in (int(x) for x in self.args.depths.split(",") if x.strip()):
            sys.stderr.write(f"pickup cost at depth {d}\n")
            self.pickups.append(pickup_cost(d, 200 if not self.args.smoke else 30,
                                            self.shm / "pickup"))

    # -- the end ---------------------------------------------------------------------------

    def close(self) -> None:
        """Stop and remove everything this run started or made."""
        if self.trap is not None:
            self.trap.close()
        if self.spamd is not None:
            self.spamd.stop()
        if self.rspamd is not None:
            self.rspamd.stop()
        shutil.rmtree(self.shm, ignore_errors=True)

    def summary(self, flood_ledger: dict[str, Any]) -> dict[str, Any]:
        """Everything the report shows, JSON-ready."""
        a = self.args
        assert self.trap is not None
        final = self.ledger.summary()
        return {
            "version": __version__,
            "started": dt.datetime.fromtimestamp(self.started).isoformat(timespec="seconds"),
            "command": " ".join([os.path.basename(sys.executable), "perf/stress.py",
                                 *sys.argv[1:]]),
            "host": {"cpus": os.cpu_count(), "load_at_start": self.load_at_start,
                     "load_at_end": [round(x, 2) for x in os.getloadavg()],
                     "mem_total": psutil.virtual_memory().total},
            "smoke": a.smoke,
            "attached": self.trap.attached,
            "config": {
                "workers": self.trap.cfg.workers.count, "ring_slots": self.trap.cfg.ring.slots,
                "slot_bytes": self.trap.cfg.ring.slot_bytes,
                "overflow_max": self.trap.cfg.overflow.max_bytes,
                "max_message": self.trap.cfg.ingest.max_message_bytes,
                "scan_limit": self.trap.cfg.workers.scan_limit_bytes,
                "spamd": "private spamd, --local, round-robin, children = workers"
                if self.spamd else "private offline rspamd, normal workers = workers"
                if self.rspamd else str(self.trap.cfg.spamd.address),
            },
            "flood": {"profile": self.profile.describe(), "clients": a.clients,
                      "messages": self.set_origin, "sizes": self.sizes,
                      "expected": round(self.profile.expected(0, a.duration)),
                      "shed": self.shed, "day_s": a.day,
                      "chaos": self.chaos.actions if self.chaos else [],
                      "chaos_every_s": a.chaos_every},
            "phase_times": self.phase_times,
            "analysed": self.analysed(),
            "ledger_flood": {k: v for k, v in flood_ledger.items()},
            "ledger": final,
            "lost": final["lost"],
            "chaos_events": self.chaos.events if self.chaos else [],
            "purges": self.purges,
            "memory": report.memory_table(self.samples),
            "spamd_memory": report.spamd_memory(self.samples),
            "totals": report.flood_totals(self.samples, self.latencies),
            "compare": report.compare_table(self.compare) if self.compare else None,
            "compare_raw": self.compare or None,
            "pickup_cost": self.pickups,
            "notes": self.notes,
        }


def _analysed(r: dict[str, Any]) -> bool:
    """A record of a message analysed: scanned, or a campaign repeat recorded from its first."""
    return r.get("scanned_ms") is not None or r.get("verdict") == "duplicate"


def _ring_idle(trap: StressTrap) -> bool:
    st = trap.fresh_status()
    return st is not None and st["ring"]["used"] == 0 and st["overflow"]["claimed"] == 0


def redraw(out: Path) -> int:
    """Write the report and charts of a finished run again, from what it saved."""
    summary = json.loads((out / "summary.json").read_text())
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()
               if line.strip()]
    # the tables that come from the samples alone are recomputed: a newer harness may show more
    summary["memory"] = report.memory_table(samples)
    summary["spamd_memory"] = report.spamd_memory(samples)
    summary["charts"] = [c.name for c in report.write_charts(samples, summary, out)]
    (out / "report.md").write_text(report.markdown(summary))
    print(f"report: {out / 'report.md'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the harness; see the module docstring."""
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.redraw:
        return redraw(args.redraw)
    if args.smoke:
        apply_smoke(args, ap)
    if args.attach:
        args.no_compare = True
    # absolute: the trap's configuration resolves relative paths against its own directory
    out = (args.out or HERE / "out" / f"stress-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    orders = [o.strip() for o in args.drain_order.split(",") if o.strip()]
    bad = [o for o in orders if o not in DRAIN_ORDERS]
    if bad or not orders:
        raise SystemExit(f"--drain-order: {', '.join(bad) or 'none given'}; known: "
                         f"{', '.join(DRAIN_ORDERS)}")
    scanners = [k.strip() for k in args.scanner.split(",") if k.strip()]
    bad = [k for k in scanners if k not in SCANNERS]
    if bad or not scanners:
        raise SystemExit(f"--scanner: {', '.join(bad) or 'none given'}; known: "
                         f"{', '.join(SCANNERS)}")
    if args.attach and (len(orders) > 1 or scanners != ["spamd"]):
        raise SystemExit("--drain-order, --scanner: an attached trap has the order and the "
                         "scanner its configuration says")
    if "rspamd" in scanners and (why := rspamd_missing_reason()):
        raise SystemExit(f"--scanner rspamd: {why}")
    # spamd first: the side by side (spamd's alternatives) runs beside the first row
    grid = [(k, o) for k in sorted(dict.fromkeys(scanners), key=SCANNERS.index)
            for o in dict.fromkeys(orders)]
    if grid[0][0] != "spamd":
        args.no_compare = True
    # the first row's run is the report's; each other row floods a trap of its own
    others = []
    for kind, order in grid[1:]:
        sub = out / f"{kind}-{order}"
        alone = argparse.Namespace(**{**vars(args), "no_compare": True,
                                      "duration": args.grid_duration or args.duration})
        other, samples = run_one(alone, sub, order, kind)
        _write(other, samples, sub, alone)
        others.append(other)
    summary, samples = run_one(args, out, grid[0][1], grid[0][0])
    summary["grid"] = [summary["analysed"], *(o["analysed"] for o in others)]
    summary["grid_runs"] = [str(Path(o["report"]).parent.relative_to(out)) for o in others]
    summary["lost"] += sum(o["lost"] for o in others)
    _write(summary, samples, out, args)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(report.headline(summary))
        print(report.analysed_md(summary["grid"]), end="")
        if args.day > 0:
            print(report.periods_md(summary["grid"]), end="")
        print(f"report: {out / 'report.md'}")
    return EXIT_LOST if summary["lost"] else 0


def run_one(args: argparse.Namespace, out: Path, order: str,
            scanner: str = "spamd") -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One flood with ``overflow.drain_order`` = ``order`` and ``scanner.kind`` =
    ``scanner``: its summary and samples."""
    out.mkdir(parents=True, exist_ok=True)
    run = Run(args, out, order, scanner)
    try:
        run.setup()
        run.flood()
        run.note_analysed_age()
        flood_ledger = run.close_ledger("flood")
        if not args.no_compare:
            run.side_by_side()
            run.pickup_table()
        summary = run.summary(flood_ledger)
    except BaseException:  # Ctrl-C included: never leave a trap, a spamd or a ring behind
        run.close()
        raise
    run.close()
    return summary, run.samples


def _write(summary: dict[str, Any], samples: list[dict[str, Any]], out: Path,
           args: argparse.Namespace) -> None:
    """A run's samples, charts, summary.json and report.md in ``out``."""
    (out / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    charts: list[Path] = []
    if not args.no_charts:
        try:
            charts = report.write_charts(samples, summary, out)
        except ImportError:
            summary["notes"].append("charts skipped: matplotlib is not installed "
                                    "(pip install '.[stress]')")
            sys.stderr.write("charts skipped: matplotlib is not installed "
                             "(pip install '.[stress]')\n")
    summary["charts"] = [c.name for c in charts]
    summary["report"] = str(out / "report.md")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "report.md").write_text(report.markdown(summary))


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
    except (RuntimeError, TimeoutError, OSError) as e:
        print(f"stress: {e}", file=sys.stderr)
        sys.exit(EXIT_HARNESS)
