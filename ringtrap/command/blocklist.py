"""``ringtrap blocklist``: the relays that hit the trap, written or shown now.

Without options it writes every file ``[blocklist]`` names (as the running
trap does every ``blocklist.interval`` seconds) and prints the listed
entries as a table; ``--format`` prints one format on standard output
instead and writes nothing.  The lines of the result files it could not
read are counted on standard error, never fatal.

``--database`` (``--host NAME`` for one trap) reads the fleet's records
from ``collect.database`` (:mod:`ringtrap.command.collect`) instead of this
host's files, through :class:`DatabaseWindow`; the same policy lists them.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from collections.abc import Iterator
from typing import Any

from ringtrap.base.exits import EX_CONFIG
from ringtrap.command import fleetdb
from ringtrap.config import Config
from ringtrap.control import blockfiles
from ringtrap.control.blocklist import DAY, ReadCounts, Result, Window, compute

# only what the tally reads: a week of a fleet is millions of rows, and the
# record column (the whole record as jsonb) is most of each
_QUERY = ("SELECT host(relay_ip), extract(epoch FROM received)::float8, verdict, fingerprint,"
          " ARRAY(SELECT recipient FROM recipients r WHERE r.msg_key = m.msg_key)"
          " FROM messages m WHERE received >= %s")


class DatabaseWindow:
    """The fleet's records of the last ``days`` days before ``now`` in ``conninfo``.

    All hosts, or ``host`` alone.  Yields each row as the record-like dict
    :class:`~ringtrap.control.blocklist.Tally` reads (``relay_ip``,
    ``verdict``, ``fingerprint``, ``envelope.recipients``) with its
    ``received`` in epoch seconds, streamed through a server-side cursor so a
    week of the fleet is never held in memory.  Read-only: dying in it leaves
    nothing behind.  Raises ImportError without psycopg and psycopg's errors
    (no server, no database, no schema yet) to the caller.
    """

    def __init__(self, conninfo: str, days: int, now: float, host: str | None = None) -> None:
        self.conninfo = conninfo
        self.since = now - days * DAY
        self.host = host
        self.counts = ReadCounts(database=True, host=host)

    def __iter__(self) -> Iterator[tuple[dict[str, Any], float]]:
        import psycopg

        sql = _QUERY
        params: list[Any] = [datetime.datetime.fromtimestamp(self.since, tz=datetime.UTC)]
        if self.host is not None:
            sql += " AND host = %s"
            params.append(self.host)
        sql += " ORDER BY received, msg_key"  # as the files are read: in arrival order
        with psycopg.connect(self.conninfo) as conn, \
                conn.cursor(name="ringtrap_blocklist") as cur:
            cur.itersize = 5000
            cur.execute(sql, params)
            for relay, when, verdict, fingerprint, recipients in cur:
                self.counts.lines += 1
                yield ({"relay_ip": relay, "verdict": verdict, "fingerprint": fingerprint,
                        "envelope": {"recipients": recipients}}, when)


def _table(result: Result) -> str:
    rows = [("network", "hits", "recipients", "campaigns", "first", "last")]
    rows += [(str(e.network), str(e.hits), str(len(e.recipients)), str(len(e.campaigns)),
              d["first"], d["last"]) for e in result.listed for d in (e.to_dict(),)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for r in rows:
        cells = [c.ljust(w) if i == 0 else c.rjust(w) if i < 4 else c
                 for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out) + "\n"


def _n(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def summary(result: Result, counts: ReadCounts) -> str:
    """One line on what was read and why what is not listed is not."""
    c = result.counted
    if counts.database:
        read = (f"{_n(counts.lines, 'record')} in the fleet's database"
                f"{f' (host {counts.host})' if counts.host is not None else ''}")
    else:
        read = (f"{_n(counts.lines, 'line')} in {_n(counts.files, 'file')},"
                f" {_n(counts.skipped, 'line')} skipped (not a record)")
    return (f"{len(result.listed)} listed ({len(result.by_version(4))} IPv4,"
            f" {len(result.by_version(6))} IPv6) of {result.candidates} relays;"
            f" {result.below_threshold} below the thresholds, {result.expired} expired,"
            f" {result.overlapping} overlapping a network never listed;"
            f" {_n(c.hits, 'hit')} from {read}, {c.no_relay} without relay,"
            f" {c.never_listed} from ranges never listed, {c.other_verdicts} of other verdicts")


def run(cfg: Config, args: argparse.Namespace) -> int:
    """The command's body; the exit code."""
    now = time.time()
    window: Window | None = None
    if args.database or args.host is not None:
        window = DatabaseWindow(cfg.collect.database, cfg.blocklist.window_days, now,
                                args.host)
        try:
            return fleetdb.reading(lambda: _run(cfg, args, now, window))
        except fleetdb.DatabaseUnavailable as e:
            return e.report()
    return _run(cfg, args, now, window)


def _run(cfg: Config, args: argparse.Namespace, now: float, window: Window | None) -> int:
    if args.format:
        result, counts = compute(cfg, now, window)
        sys.stdout.write(blockfiles.render_one(cfg, args.format, result, counts, now).decode())
        print(summary(result, counts), file=sys.stderr)
        return 0
    try:
        done = blockfiles.write_all(cfg, now, window=window)
    except OSError as e:
        print(f"ringtrap: blocklist: {e.filename or ''}: {e.strerror}", file=sys.stderr)
        return EX_CONFIG
    sys.stdout.write(_table(done.result))
    print(summary(done.result, done.counts), file=sys.stderr)
    for name, path in done.paths.items():
        print(f"wrote {path} ({name})", file=sys.stderr)
    if not done.paths:
        print("no file written: [blocklist] names none (rbldnsd_ip4, rbldnsd_ip6, postfix,"
              " plain, json); --format FORMAT prints one", file=sys.stderr)
    return 0
