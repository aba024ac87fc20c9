"""The daily report: what one day of result records says, as text, JSON or PNG charts.

:func:`summarize` folds a day's records into counts (verdicts, scanners and
rspamd's actions, rules, relay IPs and networks, URL domains, campaigns,
sizes, scan times);
:func:`render_text` prints them as plain-text tables and :func:`render_charts`
draws them with matplotlib, an optional extra (``pip install ringtrap[report]``)
imported only when charts are asked for.  :func:`campaigns` is the campaigns
view over several days: the largest body fingerprints with their first and
last sighting, relays and domains, and the ones new on the report's day
(:func:`render_campaigns` prints it).  Read-only: it never writes
anywhere but the chart directory it is given.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ringtrap.base.states import Verdict
from ringtrap.scan.results import PREFIX, SUFFIX

log = logging.getLogger(__name__)

TOP = 10
# relays are grouped into networks of this size (what a provider usually hands out)
IPV4_PREFIX = 24
IPV6_PREFIX = 48
SIZE_BUCKETS = (1024, 4096, 16384, 65536, 262144, 1048576)
SCANNED = (Verdict.SPAM, Verdict.HAM, Verdict.ERROR)


def day_file(directory: str | os.PathLike[str], day: str) -> Path:
    """The results file of ``day`` (``YYYY-MM-DD``) under ``directory``."""
    return Path(directory) / f"{PREFIX}{day}{SUFFIX}"


def read_day(path: Path) -> Iterator[dict[str, Any]]:
    """The records of one results file; a line that is not a JSON object is skipped."""
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            try:
                record = json.loads(line)
            except ValueError:
                log.warning("%s:%d: skipping a line that is not JSON", path, number)
                continue
            if isinstance(record, dict):
                yield record


def read_day_db(conninfo: str, day: str, host: str | None = None
                ) -> Iterator[dict[str, Any]]:
    """The records of the fleet's database (``ringtrap collect``) received on UTC ``day``.

    All hosts, or ``host`` alone.  Each record once, as its trap wrote it
    (the ``record`` column).  Streamed through a server-side cursor, so a
    busy day is not held in memory.  Raises psycopg's errors (no database,
    no schema) to the caller.
    """
    import datetime

    import psycopg

    start = datetime.datetime.fromisoformat(day).replace(tzinfo=datetime.UTC)
    end = start + datetime.timedelta(days=1)
    sql = "SELECT record FROM messages WHERE received >= %s AND received < %s"
    params: list[Any] = [start, end]
    if host is not None:
        sql += " AND host = %s"
        params.append(host)
    sql += " ORDER BY received, id"  # as the files are read: in arrival order
    with psycopg.connect(conninfo) as conn, conn.cursor(name="ringtrap_report") as cur:
        cur.execute(sql, params)
        for (record,) in cur:
            if isinstance(record, dict):
                yield record


def network(ip: str) -> str | None:
    """The /24 (IPv4) or /48 (IPv6) network of ``ip``, or None if it is no address."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return None
    prefix = IPV4_PREFIX if addr.version == 4 else IPV6_PREFIX
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False))


def _quantile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    i = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[i]


def _stats(values: list[float]) -> dict[str, float | int | None]:
    values = sorted(values)
    return {
        "count": len(values),
        "min": values[0] if values else None,
        "median": _quantile(values, 0.5),
        "p95": _quantile(values, 0.95),
        "max": values[-1] if values else None,
        "mean": round(sum(values) / len(values), 3) if values else None,
    }


def summarize(records: Iterable[dict[str, Any]], top: int = TOP) -> dict[str, Any]:
    """Fold records into the report's figures (a JSON-ready dict)."""
    verdicts: Counter[str] = Counter()
    rules: Counter[str] = Counter()
    scanners: Counter[str] = Counter()
    actions: Counter[str] = Counter()
    scanner_ms: dict[str, list[float]] = {}
    relays: Counter[str] = Counter()
    networks: Counter[str] = Counter()
    url_domains: Counter[str] = Counter()
    hours: Counter[int] = Counter()
    campaigns: dict[str, dict[str, Any]] = {}
    sizes: list[float] = []
    scan_ms: list[float] = []
    size_hist = [0] * (len(SIZE_BUCKETS) + 1)
    total = duplicates_seen = parse_errors = 0
    for r in records:
        total += 1
        verdict = str(r.get("verdict"))
        verdicts[verdict] += 1
        rules.update(str(x) for x in r.get("rules") or ())
        scanner = r.get("scanner")
        if isinstance(scanner, str):
            scanners[scanner] += 1
        action = r.get("action")
        if isinstance(action, str):
            actions[action] += 1
        ip = r.get("relay_ip")
        if isinstance(ip, str):
            relays[ip] += 1
            net = network(ip)
            if net:
                networks[net] += 1
        url_domains.update(str(d) for d in r.get("url_domains") or ())
        size = r.get("size")
        if isinstance(size, int):
            sizes.append(size)
            size_hist[sum(1 for b in SIZE_BUCKETS if size > b)] += 1
        ms = r.get("scanned_ms")
        if isinstance(ms, int | float) and verdict in SCANNED:
            scan_ms.append(float(ms))
            scanner_ms.setdefault(scanner if isinstance(scanner, str) else "-",
                                  []).append(float(ms))
        received = r.get("received")
        if isinstance(received, str) and len(received) >= 13 and received[11:13].isdigit():
            hours[int(received[11:13])] += 1
        if r.get("duplicate_of"):
            duplicates_seen += 1
        if r.get("parse_error"):
            parse_errors += 1
        fp = r.get("fingerprint")
        if isinstance(fp, str):
            c = campaigns.setdefault(fp, {"fingerprint": fp, "messages": 0, "first": r.get("id"),
                                          "subject": r.get("subject"), "verdicts": Counter(),
                                          "relays": set()})
            c["messages"] += 1
            c["verdicts"][verdict] += 1
            if isinstance(ip, str) and len(c["relays"]) < 10_000:
                c["relays"].add(ip)
    groups = sorted((c for c in campaigns.values() if c["messages"] > 1),
                    key=lambda c: (-c["messages"], c["first"] or ""))
    in_campaigns = sum(c["messages"] for c in groups)
    scans_saved = verdicts.get(Verdict.DUPLICATE, 0)
    return {
        "messages": total,
        "verdicts": dict(verdicts.most_common()),
        # scanned (or prefiltered) all the same: a note, not a verdict
        "parse_errors": parse_errors,
        # who gave the verdicts (repeats recorded from a first copy included), and how fast
        "scanners": {name: {"messages": n, "scan_ms": _stats(scanner_ms.get(name, []))}
                     for name, n in scanners.most_common()},
        "actions": dict(actions.most_common()),
        "top_rules": rules.most_common(top),
        "top_relays": relays.most_common(top),
        "top_networks": networks.most_common(top),
        "top_url_domains": url_domains.most_common(top),
        "campaigns": {
            "groups": len(groups),
            "messages_in_groups": in_campaigns,
            "repeats": in_campaigns - len(groups),
            "recognised_repeats": duplicates_seen,
            "scans_saved": scans_saved,
            "top": [{"fingerprint": c["fingerprint"], "messages": c["messages"],
                     "first": c["first"], "subject": c["subject"],
                     "verdicts": dict(c["verdicts"]), "relays": len(c["relays"])}
                    for c in groups[:top]],
        },
        "sizes": {**_stats(sizes), "total": int(sum(sizes)),
                  "histogram": dict(zip(_size_labels(), size_hist, strict=True))},
        "scan_ms": _stats(scan_ms),
        "hours": [hours.get(h, 0) for h in range(24)],
    }


# what one campaign keeps of its relays and domains: enough for the top few
# and a count, bounded however many a botnet uses
_MAX_DISTINCT = 10_000
CAMPAIGN_SHOWN = 3


def campaigns(days: Iterable[tuple[str, Iterable[dict[str, Any]]]], day: str,
              top: int = TOP) -> dict[str, Any]:
    """The campaigns view (a JSON-ready dict) of records read day by day.

    ``days`` gives each UTC day (``YYYY-MM-DD``, oldest first) with its
    records; ``day`` is the report's day, the last.  A campaign is a body
    fingerprint seen in more than one message; ``largest`` are the ``top``
    by messages over all the days, ``new`` the ``top`` first seen on
    ``day``.  First and last seen are the records' ``received`` (a record
    without one counts at its file's day).  Records of any version are read:
    a key a record lacks is simply not counted.
    """
    seen: dict[str, dict[str, Any]] = {}
    names: list[str] = []
    for name, records in days:
        names.append(name)
        for r in records:
            fp = r.get("fingerprint")
            if not isinstance(fp, str) or not fp:
                continue
            received = r.get("received")
            when = received if isinstance(received, str) and len(received) >= 10 else name
            c = seen.get(fp)
            if c is None:
                c = seen[fp] = {"fingerprint": fp, "messages": 0, "first_seen": when,
                                "last_seen": when, "first": r.get("id"),
                                "subject": r.get("subject"), "verdicts": Counter(),
                                "relays": Counter(), "domains": Counter()}
            c["messages"] += 1
            c["first_seen"] = min(c["first_seen"], when)
            c["last_seen"] = max(c["last_seen"], when)
            c["verdicts"][str(r.get("verdict"))] += 1
            ip = r.get("relay_ip")
            if isinstance(ip, str) and (ip in c["relays"] or len(c["relays"]) < _MAX_DISTINCT):
                c["relays"][ip] += 1
            domains = {d for d in [r.get("from_domain"), *(r.get("url_domains") or ())]
                       if isinstance(d, str) and d}
            for d in domains:
                if d in c["domains"] or len(c["domains"]) < _MAX_DISTINCT:
                    c["domains"][d] += 1
    groups = sorted((c for c in seen.values() if c["messages"] > 1),
                    key=lambda c: (-c["messages"], c["first_seen"], c["fingerprint"]))
    new = [c for c in groups if c["first_seen"][:10] == day]
    return {
        "days": names,
        "campaigns": len(groups),
        "messages_in_campaigns": sum(c["messages"] for c in groups),
        "new": len(new),
        "largest": [_campaign_row(c) for c in groups[:top]],
        "new_today": [_campaign_row(c) for c in new[:top]],
    }


def _campaign_row(c: dict[str, Any]) -> dict[str, Any]:
    return {"fingerprint": c["fingerprint"], "messages": c["messages"],
            "first_seen": c["first_seen"], "last_seen": c["last_seen"],
            "first": c["first"], "subject": c["subject"], "verdicts": dict(c["verdicts"]),
            "relays": len(c["relays"]), "top_relays": _most(c["relays"]),
            "domains": len(c["domains"]), "top_domains": _most(c["domains"])}


def _most(counter: Counter[str]) -> list[tuple[str, int]]:
    # ties in name order: the same records give the same view
    return sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[:CAMPAIGN_SHOWN]


def render_campaigns(view: dict[str, Any], day: str) -> str:
    """The campaigns view as plain-text tables."""
    span = view["days"]
    first = span[0] if span else day
    lines = [f"ringtrap campaigns {first} .. {day} ({_count(len(span), 'day')} read):"
             f" {_count(view['campaigns'], 'campaign')},"
             f" {_count(view['messages_in_campaigns'], 'message')},"
             f" {view['new']} new on {day}"]

    def rows(entries: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return [(e["fingerprint"][:12], e["messages"], _short(e["first_seen"]),
                 _short(e["last_seen"]), e["relays"],
                 " ".join(ip for ip, _ in e["top_relays"]) or None, e["domains"],
                 " ".join(d for d, _ in e["top_domains"]) or None, e["subject"])
                for e in entries]

    header = ("fingerprint", "messages", "first seen", "last seen", "relays", "top relays",
              "domains", "top domains", "subject")
    lines += _table("Largest campaigns", header, rows(view["largest"]))
    lines += _table(f"New on {day}", header, rows(view["new_today"]))
    return "\n".join(lines) + "\n"


def _short(when: str) -> str:
    """``received`` to the minute, ``YYYY-MM-DD HH:MM`` (a bare day stays as it is)."""
    return when[:16].replace("T", " ")


def _size_labels() -> list[str]:
    labels = [f"<= {_human(b)}" for b in SIZE_BUCKETS]
    return [*labels, f"> {_human(SIZE_BUCKETS[-1])}"]


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" or n == int(n) else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def _table(title: str, header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> list[str]:
    """A titled plain-text table: numbers right-aligned, text left-aligned and cut at 60."""
    out = ["", title]
    if not rows:
        return [*out, "  (none)"]
    right = [all(isinstance(r[i], int | float) or r[i] is None or _is_size(r[i]) for r in rows)
             for i in range(len(header))]
    cells = [tuple(str(c) for c in header)] + [tuple("-" if c is None else str(c) for c in r)
                                                for r in rows]
    widths = [min(60, max(len(row[i]) for row in cells)) for i in range(len(header))]
    for row in cells:
        parts = []
        for i, cell in enumerate(row):
            cell = cell if len(cell) <= widths[i] else cell[: widths[i] - 3] + "..."
            parts.append(cell.rjust(widths[i]) if right[i] else cell.ljust(widths[i]))
        out.append("  " + "  ".join(parts).rstrip())
    return out


def _is_size(cell: object) -> bool:
    return isinstance(cell, str) and cell.endswith(("B", "%")) and cell[:1].isdigit()


def render_text(summary: dict[str, Any], day: str) -> str:
    """The report as plain-text tables."""
    total = summary["messages"]
    lines = [f"ringtrap report for {day}: {total} messages"]

    def pct(n: int) -> str:
        return f"{100 * n / total:.1f}%" if total else "-"

    lines += _table("Verdicts", ("verdict", "messages", "share"),
                    [(v, n, pct(n)) for v, n in summary["verdicts"].items()])
    lines += ["", f"Parse errors: {summary['parse_errors']} messages ringtrap could not parse"
                  " (scanned all the same; the record's parse_error says why)"]
    lines += _table("Scanners", ("scanner", "messages", "scans", "mean ms", "p95 ms"),
                    [(name, v["messages"], v["scan_ms"]["count"], v["scan_ms"]["mean"],
                      v["scan_ms"]["p95"]) for name, v in summary["scanners"].items()])
    if summary["actions"]:
        lines += _table("rspamd actions", ("action", "messages"),
                        list(summary["actions"].items()))
    lines += _table("Top rules", ("rule", "hits"), summary["top_rules"])
    lines += _table("Top relay IPs", ("relay", "messages"), summary["top_relays"])
    lines += _table("Top relay networks", ("network", "messages"), summary["top_networks"])
    lines += _table("Top URL domains", ("domain", "messages"), summary["top_url_domains"])
    c = summary["campaigns"]
    hold = "holds" if c["groups"] == 1 else "hold"
    lines += ["", f"Campaigns: {_count(c['groups'], 'group')} of repeated bodies {hold}"
                  f" {_count(c['messages_in_groups'], 'message')}"
                  f" ({_count(c['repeats'], 'repeat')});"
                  f" {c['recognised_repeats']} recognised as repeats when they arrived,"
                  f" {c['scans_saved']} scans saved"]
    lines += _table("Largest campaigns", ("fingerprint", "messages", "relays", "verdicts",
                                          "first", "subject"),
                    [(g["fingerprint"][:12], g["messages"], g["relays"],
                      ",".join(f"{v}:{n}" for v, n in g["verdicts"].items()), g["first"],
                      g["subject"]) for g in c["top"]])
    s = summary["sizes"]
    lines += _table("Sizes", ("messages", "total", "min", "median", "p95", "max"),
                    [(s["count"], _human(s["total"]),
                      *(None if s[k] is None else _human(s[k])
                        for k in ("min", "median", "p95", "max")))])
    lines += _table("Size distribution", ("size", "messages"), list(s["histogram"].items()))
    t = summary["scan_ms"]
    lines += _table("Scan times (ms)", ("scans", "mean", "median", "p95", "max"),
                    [(t["count"], t["mean"], t["median"], t["p95"], t["max"])])
    return "\n".join(lines) + "\n"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def draw_bars(ax: Any, labels: list[str], values: list[float], horizontal: bool) -> None:
    """One chart's bars, each with its value: a 1 beside a 400 stays readable."""
    if horizontal:
        bars = ax.barh(labels[::-1], values[::-1])
        shown = values[::-1]
    else:
        bars = ax.bar(labels, values)
        ax.tick_params(axis="x", labelrotation=45 if len(labels) > 8 else 0)
        shown = values
    ax.bar_label(bars, labels=[f"{v:g}" if v else "" for v in shown], padding=2, fontsize=8)
    # room for the label of the longest bar
    if horizontal:
        ax.margins(x=0.1)
    else:
        ax.margins(y=0.1)


def render_charts(summary: dict[str, Any], day: str, outdir: Path) -> list[Path]:
    """PNG charts of the report in ``outdir``; raises ImportError without matplotlib."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, no GUI toolkit
    import matplotlib.pyplot as plt

    outdir.mkdir(parents=True, exist_ok=True)
    charts: list[tuple[str, str, list[str], list[float], bool]] = [
        ("verdicts", "Verdicts", list(summary["verdicts"]), list(summary["verdicts"].values()),
         False),
        ("rules", "Top rules", [r for r, _ in summary["top_rules"]],
         [n for _, n in summary["top_rules"]], True),
        ("relays", "Top relay networks", [r for r, _ in summary["top_networks"]],
         [n for _, n in summary["top_networks"]], True),
        ("url-domains", "Top URL domains", [r for r, _ in summary["top_url_domains"]],
         [n for _, n in summary["top_url_domains"]], True),
        ("hours", "Messages per hour (UTC)", [f"{h:02d}" for h in range(24)],
         summary["hours"], False),
        ("sizes", "Message sizes", list(summary["sizes"]["histogram"]),
         list(summary["sizes"]["histogram"].values()), False),
    ]
    written = []
    for name, title, labels, values, horizontal in charts:
        fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
        try:
            draw_bars(ax, labels, values, horizontal)
            ax.set_title(f"{title} — {day}")
            fig.tight_layout()
            path = outdir / f"ringtrap-{day}-{name}.png"
            fig.savefig(path)
            written.append(path)
        finally:
            plt.close(fig)
    return written
