"""``ringtrap top`` (``ringtrap status --watch``): a live terminal view of one trap.

Every second it takes the same reading ``ringtrap status`` takes — the
ring's shared memory, the overflow directory's names, ``/proc`` for each
process — and redraws: the ring's fill bar, the overflow backlog, intake and
scan rates (differences between two readings), and one row per process.
It takes no lock and talks to no ringtrap process, so it costs the trap
nothing and works while the trap is under full load.  It keeps one mapping
of the ring across refreshes and maps it again when a new supervisor
recreates the ring; while no trap runs it says so and keeps watching.

The drawing is :func:`render`, a pure function of two readings, built with
``rich``; :func:`watch` is the loop around it (Ctrl-C ends it).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from rich.console import Console, Group, JustifyMethod, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ringtrap import config as configmod
from ringtrap.command.status import fmt_bytes, fmt_window, gather_status
from ringtrap.overflow import Overflow
from ringtrap.store.proctable import ProcTable
from ringtrap.store.segment import RingError, shm_paths

BAR_WIDTH = 40


@dataclass(frozen=True, slots=True)
class Reading:
    """One ``gather_status`` result and the monotonic time it was taken."""

    status: dict[str, Any] | None
    at: float


class Sampler:
    """Takes readings of one trap, keeping the ring mapped between them."""

    def __init__(self, cfg: configmod.Config) -> None:
        self.cfg = cfg
        self._table: ProcTable | None = None
        self._ino: int | None = None
        self._overflow: Overflow | None = None

    def _segment_inode(self) -> int | None:
        try:
            return os.stat(shm_paths(self.cfg.ring.name)[0]).st_ino
        except OSError:
            return None

    def _current_table(self) -> ProcTable | None:
        ino = self._segment_inode()
        if self._table is not None and ino == self._ino:
            return self._table
        self.close()  # gone or replaced by a new supervisor's ring
        if ino is None:
            return None
        try:
            self._table = ProcTable.attach(self.cfg.ring.name)
        except RingError:
            return None
        self._ino = ino
        return self._table

    def sample(self) -> Reading:
        """A reading now; its status is None when no trap is running."""
        table = self._current_table()
        if self._overflow is None:
            try:
                self._overflow = Overflow(self.cfg.overflow.dir, self.cfg.overflow.max_bytes,
                                          create=False)
            except (OSError, ValueError):
                self._overflow = None
        status = None if table is None else gather_status(self.cfg, table=table,
                                                         spill=self._overflow)
        return Reading(status, time.monotonic())

    def close(self) -> None:
        """Let go of the ring mapping."""
        if self._table is not None:
            self._table.close()
        self._table = None
        self._ino = None


def _rate(cur: dict[str, Any], prev: dict[str, Any] | None, dt: float, *keys: str) -> str:
    """Per-second change of the sum of ``keys`` in the totals; "-" when unknown."""
    if prev is None or dt <= 0 or prev.get("supervisor_pid") != cur.get("supervisor_pid"):
        return "-"
    now = sum(cur["totals"].get(k, 0) for k in keys)
    before = sum(prev["totals"].get(k, 0) for k in keys)
    if now < before:
        return "-"  # the ring was recreated: counters started again
    return f"{(now - before) / dt:.1f}/s"


def fmt_age(seconds: float) -> str:
    """An age in at most three digits and a unit (s, m, h, d): a column that stays narrow."""
    for unit, size, upto in (("s", 1, 100), ("m", 60, 6000), ("h", 3600, 360000)):
        if seconds < upto:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds / 86400:.0f}d"


def fill_bar(used: int, total: int, width: int = BAR_WIDTH) -> Text:
    """A bar of ``width`` cells for ``used`` of ``total``; green, yellow, red by fill."""
    frac = 0.0 if total <= 0 else min(1.0, used / total)
    cells = round(frac * width)
    if used and not cells:
        cells = 1  # anything in the ring shows
    style = "green" if frac < 0.5 else "yellow" if frac < 0.9 else "bold red"
    bar = Text("[")
    bar.append("█" * cells, style=style)
    bar.append("·" * (width - cells), style="dim")
    bar.append("]")
    bar.append(f" {100 * frac:3.0f}%")
    return bar


# the process table's columns in display order; ROLE stands in for the title when
# the title does not fit
_COLUMNS = ("PID", "ROLE", "TITLE", "STATE", "MESSAGE", "AGE", "DONE", "RSS", "CPU")
_JUSTIFY: dict[str, JustifyMethod] = {
    "PID": "right", "ROLE": "left", "TITLE": "left", "STATE": "left", "MESSAGE": "left",
    "AGE": "right", "DONE": "right", "RSS": "right", "CPU": "right"}
# below this the title is not worth a column
_MIN_TITLE = 16


def process_columns(rows: list[dict[str, str]], width: int | None) -> list[str]:
    """The columns that fit ``width`` cells, in display order; all of them when None.

    Every column but the title needs its widest cell (a pid or a state cut
    short misleads), so columns are dropped whole, least useful first: the
    title (its role stays as a short column), then RSS, CPU, AGE (of the
    message, since it was accepted), DONE, MESSAGE.
    PID, the role and STATE always stay.
    """
    shown = [c for c in _COLUMNS if c != "ROLE"]
    if width is None:
        return shown
    need = {c: max([len(c), *(len(r[c]) for r in rows)]) for c in _COLUMNS}
    need["TITLE"] = _MIN_TITLE

    def fits() -> bool:
        # two cells between columns: the table pads each cell by one on either side
        return sum(need[c] for c in shown) + 2 * (len(shown) - 1) <= width

    if fits():
        return shown
    shown = [c for c in _COLUMNS if c != "TITLE"]
    for drop in ("RSS", "CPU", "AGE", "DONE", "MESSAGE"):
        if fits():
            break
        shown.remove(drop)
    return shown


# an address longer than this is cut from the left (a Unix path's end tells it apart)
_HOST_WIDTH = 28


def host_lines(st: dict[str, Any], before: dict[str, Any] | None,
               dt: float) -> list[tuple[str, Text]]:
    """One line per scanner host: its breaker, its scan rate, errors and mean scan time."""
    hosts = st.get("scanner", {}).get("hosts", [])
    prev = {h["host"]: h for h in (before or {}).get("scanner", {}).get("hosts", [])}
    same = before is not None and before.get("supervisor_pid") == st.get("supervisor_pid")
    out = []
    for h in hosts:
        name = h["host"]
        if len(name) > _HOST_WIDTH:
            name = "…" + name[-(_HOST_WIDTH - 1):]
        rate = "-"
        p = prev.get(h["host"])
        if same and p is not None and dt > 0 and h["scans"] >= p["scans"]:
            rate = f"{(h['scans'] - p['scans']) / dt:.1f}/s"
        mean = "-" if h["mean_ms"] is None else f"{h['mean_ms']:.0f} ms"
        line = Text(f"{name:<{_HOST_WIDTH}} ")
        line.append("up  " if h["up"] else "OPEN", style="green" if h["up"] else "bold red")
        line.append(f" {rate:>8} {mean:>7}  {h['errors']} err, {h['breaker_opens']} opened")
        out.append(("host", line))
    return out


def render(cur: Reading, prev: Reading | None, cfg: configmod.Config,
           width: int | None = None) -> RenderableType:
    """The whole screen for reading ``cur``, with rates since ``prev``.

    ``width``: the terminal's, to fit the process table into (None: every column).
    """
    st = cur.status
    if st is None:
        return Text(f"ringtrap: not running (no ring {cfg.ring.name!r} in /dev/shm);"
                    " waiting for it...", style="bold yellow")
    before = prev.status if prev is not None else None
    dt = cur.at - prev.at if prev is not None else 0.0
    r, o, t = st["ring"], st["overflow"], st["totals"]

    head = Text.assemble(
        (f"ringtrap {st['version']}", "bold"),
        f"  supervisor pid {st['supervisor_pid']}  ring {r['name']} (generation "
        f"{r['generation']})  {time.strftime('%H:%M:%S')}",
    )
    grid = Table.grid(padding=(0, 1))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    ring_line = fill_bar(r["used"], r["slots"])
    ring_line.append(f"  {r['used']}/{r['slots']} slots: {r['ready']} ready, "
                     f"{r['claimed']} being processed, {r['filling']} filling; "
                     f"slots of {fmt_bytes(r['slot_bytes'])}")
    grid.add_row("ring", ring_line)
    oldest = "-" if o.get("oldest_age_s") is None else f"{o['oldest_age_s']:.0f} s"
    over = Text(f"{o['ready']} ready ({fmt_bytes(o['ready_bytes'])}), {o['claimed']} being "
                f"processed, {o['failed']} quarantined, oldest {oldest}; "
                f"{fmt_bytes(o['bytes'])} of {fmt_bytes(o['max_bytes'])}")
    if o["ready"]:
        over.stylize("yellow")
    grid.add_row("overflow", over)
    refused = t["refused_too_large"] + t["refused_empty"] + t["refused_temp"]
    grid.add_row("intake", Text(
        f"{_rate(st, before, dt, 'accepted_ring', 'accepted_overflow')} accepted, "
        f"{_rate(st, before, dt, 'accepted_overflow')} spilled, "
        f"{_rate(st, before, dt, 'refused_too_large', 'refused_empty', 'refused_temp')} "
        f"refused"))
    grid.add_row("scan", Text(
        f"{_rate(st, before, dt, 'processed')} processed, "
        f"{_rate(st, before, dt, 'spamd_errors')} spamd errors"))
    for label, line in host_lines(st, before, dt):
        grid.add_row(label, line)
    a = st.get("analysed")
    if a is not None:
        ages = a["scanning_age_s"]
        grid.add_row("analysed", Text(
            f"{_rate(st, before, dt, 'analysed')}; this hour {fmt_window(a['hour'])}, "
            f"24 h {fmt_window(a['day'])}; "
            + ("nothing being scanned" if ages is None else
               f"scanning mail {fmt_age(ages['min'])}-{fmt_age(ages['max'])} old")))
    if st.get("forward"):
        back = Text(f"{_rate(st, before, dt, 'forwarded')} forwarded, backlog "
                    f"{t['forward_backlog']} records, dropped {t['forward_dropped']}, "
                    f"errors {t['forward_errors']}")
        if t["forward_backlog"] > 1000:
            back.stylize("yellow")
        grid.add_row("forward", back)
    verdicts = ", ".join(f"{k.removeprefix('verdict_')} {v}" for k, v in t.items()
                         if k.startswith("verdict_") and v)
    grid.add_row("totals", Text(
        f"accepted {t['accepted_ring'] + t['accepted_overflow']} (spilled "
        f"{t['accepted_overflow']}), refused {refused}, processed {t['processed']}"
        f"{' (' + verdicts + ')' if verdicts else ''}, quarantined {t['quarantined']}, "
        f"purged {t['purged_files']}, restarts {t['restarts']}"))

    cpu_before = {p["pid"]: p["cpu_s"] for p in (before or {}).get("processes", [])}
    rows = []
    for p in st["processes"]:
        title = p.get("title") or p["role"]
        title = title.removeprefix("ringtrap: ")
        cpu = "-"
        if p["cpu_s"] is not None and cpu_before.get(p["pid"]) is not None and dt > 0:
            cpu = f"{100 * max(0.0, p['cpu_s'] - cpu_before[p['pid']]) / dt:.0f}%"
        role = p["role"] + (f" {p['index']}" if p["role"] in ("worker", "stage") else "")
        rss = "-" if p.get("private_bytes") is None else fmt_bytes(p["private_bytes"])
        age = p.get("message_age_s")
        rows.append(({"PID": str(p["pid"]), "ROLE": role, "STATE": p["state"],
                      "MESSAGE": p["message"] or "-",
                      "AGE": "-" if age is None else fmt_age(age),
                      "DONE": str(p["done"]), "RSS": rss,
                      "CPU": cpu, "TITLE": title}, p))
    shown = process_columns([cells for cells, _ in rows], width)
    procs = Table(box=None, pad_edge=False, header_style="bold reverse", expand=False)
    whole = {n: max([len(n), *(len(cells[n]) for cells, _ in rows)]) for n in shown}
    # what is left for the title once every other column has its widest cell
    title_width = None
    if width is not None and "TITLE" in shown:
        others = sum(w for n, w in whole.items() if n != "TITLE") + 2 * (len(shown) - 1)
        title_width = max(_MIN_TITLE, min(60, whole["TITLE"], width - others))
    for name in shown:
        # only the title gives way; pids, states and ids are shown whole or not at all
        procs.add_column(name, justify=_JUSTIFY[name], no_wrap=True,
                         overflow="ellipsis" if name == "TITLE" else "fold",
                         max_width=60 if name == "TITLE" else None,
                         width=title_width if name == "TITLE" else None,
                         min_width=None if name == "TITLE" else whole[name])
    for cells, p in rows:
        state_style = {"scanning": "cyan", "busy": "cyan", "backoff": "bold red",
                       "draining": "yellow", "stopped": "dim"}.get(p["state"], "")
        procs.add_row(*(Text(cells[n], style=state_style) if n == "STATE" else cells[n]
                        for n in shown),
                      style="" if p["alive"] else "dim strike")
    return Group(head, Text(""), grid, Text(""), procs,
                 Text("\nrefreshed every second; Ctrl-C quits", style="dim"))


def watch(cfg: configmod.Config, interval: float = 1.0, console: Console | None = None,
          frames: int | None = None) -> int:
    """Redraw every ``interval`` seconds until Ctrl-C (or ``frames`` redraws); exit code 0."""
    console = console or Console()
    sampler = Sampler(cfg)
    prev: Reading | None = None
    drawn = 0
    try:
        with Live(console=console, auto_refresh=False, transient=False) as live:
            while frames is None or drawn < frames:
                cur = sampler.sample()
                live.update(render(cur, prev, cfg, console.width), refresh=True)
                drawn += 1
                prev = cur
                if frames is None or drawn < frames:
                    time.sleep(interval)
    except KeyboardInterrupt:
        pass
    finally:
        sampler.close()
    return 0
