"""The status model: one reading of a running trap, as ``status``, ``top``, perf and tests see it.

A reading takes no lock and talks to no ringtrap process: it copies the
ring's header and process table out of shared memory, counts the overflow's
and the stage's file names and asks ``/proc`` about each process, so it costs
the trap nothing and works under full load.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psutil

from ringtrap import __version__
from ringtrap import config as configmod
from ringtrap.base import proc
from ringtrap.base.counters import C
from ringtrap.overflow import Overflow
from ringtrap.store import history
from ringtrap.store.hosttable import HostReading
from ringtrap.store.proctable import ProcTable
from ringtrap.store.segment import RingLayoutError, RingMissing
from ringtrap.store.snapshot import read_snapshot


def fmt_bytes(n: float) -> str:
    """A byte count as B, KiB, MiB or GiB, as status and top show it."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def gather_status(cfg: configmod.Config, table: ProcTable | None = None,
                  spill: Overflow | None = None) -> dict[str, Any] | None:
    """Everything ``status`` shows, as a JSON-ready dict; None if no ring exists.

    ``table`` (the segment's process table) and ``spill`` (an Overflow) are
    handles to reuse (``ringtrap top`` keeps them between readings); by
    default the table is attached and closed here.
    """
    wall = time.time()
    if table is not None:
        snap = read_snapshot(table)
        hours = table.history(wall)
    else:
        try:
            table = ProcTable.attach(cfg.ring.name)
        except (RingMissing, RingLayoutError):
            return None
        with table:
            snap = read_snapshot(table)
            hours = table.history(wall)
    totals = snap.totals()
    procs = []
    now_ns = time.monotonic_ns()
    for r in snap.rows:
        rss = cpu = title = None
        alive = False
        try:
            p = psutil.Process(r.pid)
            with p.oneshot():
                # the process title (setproctitle rewrites the command line)
                title = " ".join(p.cmdline()).strip() or None
                rss = p.memory_info().rss
                t = p.cpu_times()
                cpu = round(t.user + t.system, 2)
                alive = p.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            pass
        c = r.counters
        beat_age = round((now_ns - r.heartbeat_ns) / 1e9, 1) if r.heartbeat_ns else None
        procs.append({
            "pid": r.pid,
            "role": r.role.name.lower(),
            "index": r.index,
            "state": r.state.name.lower(),
            "message": r.msgid or None,
            "done": c[C.PROCESSED] if r.role.name == "WORKER"
            else max(c[C.STAGE_LEARNED] + c[C.STAGE_NOT_LEARNED], c[C.STAGE_REPORTED])
            if r.role.name == "STAGE"
            else c[C.ACCEPTED_RING] + c[C.ACCEPTED_OVERFLOW],
            "heartbeat_age_s": beat_age,
            # how long ago the message it works on was accepted
            "message_age_s": round(max(0.0, wall - r.received), 1) if r.received else None,
            "rss_bytes": rss,
            # without the shared ring every process maps: what the process itself holds
            "private_bytes": proc.private_rss(r.pid) if alive else None,
            "cpu_s": cpu,
            "alive": alive,
            "title": title,
        })
    overflow = spill_status(cfg.overflow.dir, cfg.overflow.max_bytes, spill)
    # the slower stage's backlog: what scan workers handed on and it has not done yet
    stage = (spill_status(configmod.stage_dir(cfg), cfg.stage.max_bytes)
             if cfg.stage.workers else None)
    forward = forward_status(cfg, totals) if cfg.forward.enabled else None
    return {
        "version": __version__,
        "supervisor_pid": snap.owner.pid,
        "ring": {
            "name": snap.name, "slots": snap.slots, "slot_bytes": snap.slot_bytes,
            "used": snap.used, "ready": snap.ready, "claimed": snap.claimed,
            "filling": snap.filling, "generation": snap.generation,
            "lock_breaks": snap.lock_breaks,
        },
        "overflow": overflow,
        "stage": stage,
        "forward": forward,
        "totals": {c.name.lower(): totals[c] for c in C},
        "analysed": analysed_status(hours, totals, procs),
        "processes": procs,
        "scanner": {"kind": cfg.scanner.kind, "hosts": [host_status(h) for h in snap.hosts]},
    }


def host_status(h: HostReading) -> dict[str, Any]:
    """One scanner host for status: its breaker as last seen, scans, errors, latency."""
    return {
        "host": h.host,
        "up": h.up,
        "state": h.state.name.lower().replace("_", "-"),
        "open_in": h.open_in,
        "scans": h.scans,
        "errors": h.errors,
        "breaker_opens": h.opens,
        "mean_ms": round(h.scan_us / h.scans / 1000.0, 1) if h.scans else None,
    }


def _window(w: history.Window) -> dict[str, Any]:
    f = w.fraction
    return {"accepted": w.accepted, "analysed": w.analysed,
            "fraction": None if f is None else round(f, 4)}


def analysed_status(hours: list[history.Hour], totals: list[int],
                    procs: list[dict[str, Any]]) -> dict[str, Any]:
    """The analysed fraction for status: this clock hour so far, the hour before,
    the last 24 clock hours (this one included), each hour, and the age of the
    messages workers are scanning now (seconds since they were accepted)."""
    ages = [p["message_age_s"] for p in procs
            if p["role"] == "worker" and p["state"] == "scanning"
            and p["message_age_s"] is not None]
    analysed = totals[C.ANALYSED]
    return {
        "hour": _window(history.window(hours, 1)),
        "last_hour": _window(history.window(hours[:-1], 1)),
        "day": _window(history.window(hours, history.HOURS)),
        "hours": [{"start": h.start, "accepted": h.accepted, "analysed": h.analysed}
                  for h in hours],
        "scanning": len(ages),
        "scanning_age_s": {"min": min(ages), "max": max(ages)} if ages else None,
        # since the ring was made: from accepted to taken up, on average
        "mean_age_s": round(totals[C.ANALYSED_AGE_US] / analysed / 1e6, 1) if analysed
        else None,
    }


def fmt_window(w: dict[str, Any]) -> str:
    """"120 of 5000 (2.4%)" for one window of :func:`analysed_status`."""
    f = w["fraction"]
    return f"{w['analysed']} of {w['accepted']}" + ("" if f is None else f" ({100 * f:.1f}%)")


def fmt_scanning(a: dict[str, Any]) -> str:
    """The age of what is being scanned, for one line of status or top."""
    ages = a["scanning_age_s"]
    if ages is None:
        return "nothing being scanned"
    return f"scanning mail {ages['min']:.0f}-{ages['max']:.0f} s old"


def forward_status(cfg: configmod.Config, totals: Any) -> dict[str, Any]:
    """The forwarder's side of a reading: where its cursor is and what is not yet acked."""
    from ringtrap.work.forward import load_cursor

    cursor = load_cursor(Path(cfg.results.dir))
    out: dict[str, Any] = {
        "servers": list(cfg.forward.servers), "host": cfg.forward.host,
        "stream": cfg.forward.stream,
        "cursor": None if cursor is None else {"file": cursor.file, "offset": cursor.offset},
        "backlog": totals[C.FORWARD_BACKLOG], "forwarded": totals[C.FORWARDED],
        "duplicates": totals[C.FORWARD_DUPLICATES], "dropped": totals[C.FORWARD_DROPPED],
        "errors": totals[C.FORWARD_ERRORS],
    }
    if cfg.forward.raw:
        out["raw"] = spill_status(configmod.forward_dir(cfg), cfg.forward.spill_max_bytes)
    return out


def spill_status(path: Path, max_bytes: int, store: Overflow | None = None) -> dict[str, Any]:
    """A spill directory's backlog (ready, claimed, quarantined, bytes, oldest) for status."""
    out: dict[str, Any] = {"dir": str(path)}
    try:
        o = store or Overflow(path, max_bytes, create=False)
        st = o.stats()
        out.update({
            "ready": st.ready, "ready_bytes": st.ready_bytes, "claimed": st.claimed,
            "failed": st.failed, "bytes": st.total_bytes, "max_bytes": max_bytes,
            "oldest_age_s": None if st.oldest_age is None else round(st.oldest_age, 1),
        })
    except (OSError, ValueError):
        out.update({"ready": 0, "ready_bytes": 0, "claimed": 0, "failed": 0, "bytes": 0,
                    "max_bytes": max_bytes, "oldest_age_s": None})
    return out


def print_status(st: dict[str, Any]) -> None:
    """The text ``ringtrap status`` prints for a reading of :func:`gather_status`."""
    r, o, t = st["ring"], st["overflow"], st["totals"]
    print(f"ringtrap {st['version']}, supervisor pid {st['supervisor_pid']}")
    print(f"ring     {r['name']}: {r['used']}/{r['slots']} slots used "
          f"({r['ready']} ready, {r['claimed']} being processed), "
          f"slots of {fmt_bytes(r['slot_bytes'])}")
    oldest = "-" if o["oldest_age_s"] is None else f"{o['oldest_age_s']:.0f} s"
    print(f"overflow {o['dir']}: {o['ready']} ready ({fmt_bytes(o['ready_bytes'])}), "
          f"{o['claimed']} being processed, {o['failed']} quarantined, oldest {oldest}, "
          f"{fmt_bytes(o['bytes'])} of {fmt_bytes(o['max_bytes'])}")
    g = st.get("stage")
    if g:
        oldest = "-" if g["oldest_age_s"] is None else f"{g['oldest_age_s']:.0f} s"
        print(f"stage    {g['dir']}: {g['ready']} waiting ({fmt_bytes(g['ready_bytes'])}), "
              f"{g['claimed']} being processed, {g['failed']} quarantined, oldest {oldest}; "
              f"handed on {t['stage_handed_on']}, dropped {t['stage_dropped']}, learned "
              f"{t['stage_learned']} (not learned {t['stage_not_learned']}), reported "
              f"{t['stage_reported']}, errors {t['stage_errors']}")
    f = st.get("forward")
    if f:
        at = "-" if f["cursor"] is None else f"{f['cursor']['file']}:{f['cursor']['offset']}"
        print(f"forward  {f['host']} to {', '.join(f['servers'])}: forwarded "
              f"{t['forwarded']}, backlog {t['forward_backlog']} records, duplicates "
              f"{t['forward_duplicates']}, dropped {t['forward_dropped']}, errors "
              f"{t['forward_errors']}; cursor {at}")
        raw = f.get("raw")
        if raw:
            print(f"         raw messages {raw['dir']}: {raw['ready']} waiting "
                  f"({fmt_bytes(raw['ready_bytes'])} of {fmt_bytes(raw['max_bytes'])}), "
                  f"handed on {t['forward_raw_handed_on']}, forwarded "
                  f"{t['forward_raw_forwarded']}, too large {t['forward_raw_too_large']}")
    accepted = t["accepted_ring"] + t["accepted_overflow"]
    refused = t["refused_too_large"] + t["refused_empty"] + t["refused_temp"]
    print(f"messages accepted {accepted} (ring {t['accepted_ring']}, overflow "
          f"{t['accepted_overflow']}), refused {refused}, processed {t['processed']} "
          f"(spam {t['verdict_spam']}, ham {t['verdict_ham']}, not scanned "
          f"{t['verdict_not_scanned']}), quarantined {t['quarantined']}, purged "
          f"{t['purged_files']}")
    for h in st.get("scanner", {}).get("hosts", ()):
        mean = "-" if h["mean_ms"] is None else f"{h['mean_ms']:.0f} ms"
        print(f"scanner  {h['host']}: {'up' if h['up'] else 'OPEN'}"
              f"{'' if h['up'] or h['open_in'] < 2 else ' in ' + str(h['open_in']) + ' workers'},"
              f" {h['scans']} scans ({mean}), {h['errors']} errors, breaker opened"
              f" {h['breaker_opens']} times")
    a = st["analysed"]
    print(f"analysed this hour {fmt_window(a['hour'])}, last hour {fmt_window(a['last_hour'])},"
          f" last 24 h {fmt_window(a['day'])}; {fmt_scanning(a)}")
    print()
    # RSS here leaves out the shared ring, which every process maps whole
    print(f"{'PID':>7}  {'ROLE':<10} {'STATE':<9} {'MESSAGE':<21} {'DONE':>8} {'RSS':>10} "
          f"{'CPU s':>8}")
    for p in st["processes"]:
        role = p["role"] + (f" {p['index']}" if p["role"] in ("worker", "stage") else "")
        rss = "-" if p["private_bytes"] is None else fmt_bytes(p["private_bytes"])
        cpu = "-" if p["cpu_s"] is None else f"{p['cpu_s']:.1f}"
        print(f"{p['pid']:>7}  {role:<10} {p['state']:<9} {p['message'] or '-':<21} "
              f"{p['done']:>8} {rss:>10} {cpu:>8}")
