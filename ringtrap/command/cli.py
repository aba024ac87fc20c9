"""The ``ringtrap`` command: run the trap, show its status, purge, check config.

Exit codes follow sysexits where they apply: 0 success, 64 usage, 69 not
running (status/purge find no trap), 78 configuration error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ringtrap import __version__
from ringtrap import config as configmod
from ringtrap.base.exits import EX_CONFIG, EX_NOINPUT, EX_UNAVAILABLE, EX_USAGE

if TYPE_CHECKING:
    from ringtrap.overflow import Overflow



def _hint(args: argparse.Namespace) -> str:
    """For a command that found nothing: a trap run with -c is found only with the same -c."""
    if getattr(args, "config", None):
        return ""
    return ("; without -c this looks where the built-in defaults put things: give it the"
            " -c FILE the trap runs with")


def _load(path: str | None) -> configmod.Config:
    if path is None:
        return configmod.defaults()
    return configmod.load(path)


def cmd_run(args: argparse.Namespace) -> int:
    from ringtrap import supervisor

    cfg = _load(args.config)
    if args.log_format:
        cfg = configmod.override(cfg, {"supervisor.log_format": args.log_format},
                                 "--log-format")
    return supervisor.run(cfg, Path(args.config).resolve() if args.config else None)


def cmd_status(args: argparse.Namespace) -> int:
    from ringtrap.command import status

    cfg = _load(args.config)
    if args.watch:
        return cmd_top(args)
    st = status.gather_status(cfg)
    if st is None:
        reason = f"no ring {cfg.ring.name!r} in /dev/shm"
        if args.json:
            # scripts get an object either way: "running" says which
            json.dump({"running": False, "version": __version__, "ring": {"name": cfg.ring.name},
                       "reason": reason}, sys.stdout, indent=2)
            print()
        print(f"ringtrap: not running ({reason}){_hint(args)}", file=sys.stderr)
        return EX_UNAVAILABLE
    if args.json:
        json.dump({"running": True, **st}, sys.stdout, indent=2)
        print()
    else:
        status.print_status(st)
    return 0


def cmd_top(args: argparse.Namespace) -> int:
    if args.interval <= 0:
        print("ringtrap: --interval must be a positive number of seconds", file=sys.stderr)
        return EX_USAGE
    from ringtrap.command import top

    return top.watch(_load(args.config), interval=args.interval)


def cmd_purge(args: argparse.Namespace) -> int:
    from ringtrap.overflow import Overflow

    cfg = _load(args.config)
    try:
        o = Overflow(cfg.overflow.dir, cfg.overflow.max_bytes, create=False)
    except FileNotFoundError:
        print(f"ringtrap: no overflow directory {cfg.overflow.dir}; nothing to purge"
              f"{_hint(args)}")
        return 0
    if args.quarantine:
        return _purge_quarantine(cfg, o)
    o.recover_dead()
    res = o.purge()
    print(f"dropped {res.count} messages ({res.bytes} bytes) from {cfg.overflow.dir}")
    if cfg.stage.workers:
        # the slower stage's backlog goes too, as in the daily purge
        try:
            staged = Overflow(configmod.stage_dir(cfg), cfg.stage.max_bytes, create=False)
        except FileNotFoundError:
            pass
        else:
            staged.recover_dead()
            dropped = staged.purge()
            print(f"dropped {dropped.count} messages ({dropped.bytes} bytes) from"
                  f" {configmod.stage_dir(cfg)}")
    if cfg.forward.enabled and cfg.forward.raw:
        # and the raw messages waiting for the broker (their records wait in the results)
        try:
            raw = Overflow(configmod.forward_dir(cfg), cfg.forward.spill_max_bytes,
                           create=False)
        except FileNotFoundError:
            pass
        else:
            raw.recover_dead()
            gone = raw.purge()
            print(f"dropped {gone.count} raw messages ({gone.bytes} bytes) from"
                  f" {configmod.forward_dir(cfg)}")
    count_purge(cfg.ring.name, res.count, res.bytes)
    return 0


def _purge_quarantine(cfg: configmod.Config, o: Overflow) -> int:
    """``purge --quarantine``: drop failed/ of the overflow and of the stage, nothing else."""
    import contextlib

    from ringtrap.base.counters import C
    from ringtrap.overflow import Overflow
    from ringtrap.store.proctable import ProcTable
    from ringtrap.store.segment import RingLayoutError, RingMissing

    stores = [(cfg.overflow.dir, o)]
    if cfg.stage.workers:
        with contextlib.suppress(FileNotFoundError):
            stores.append((configmod.stage_dir(cfg),
                           Overflow(configmod.stage_dir(cfg), cfg.stage.max_bytes,
                                    create=False)))
    gone = 0
    for path, store in stores:
        res = store.purge_failed()
        gone += res.count
        print(f"dropped {res.count} quarantined messages ({res.bytes} bytes) from {path}")
    try:
        table = ProcTable.attach(cfg.ring.name)
    except (RingMissing, RingLayoutError):
        return 0
    with table:
        table.add_totals({C.PURGED_QUARANTINED: gone})
    return 0


def count_purge(ring_name: str, count: int, nbytes: int) -> None:
    """Count a purge where status and metrics read it, if the trap's ring exists."""
    from ringtrap.base.counters import C
    from ringtrap.store.proctable import ProcTable
    from ringtrap.store.segment import RingLayoutError, RingMissing

    try:
        table = ProcTable.attach(ring_name)
    except (RingMissing, RingLayoutError):
        return
    with table:
        table.add_totals({C.PURGED_FILES: count, C.PURGED_BYTES: nbytes})


def _report_campaigns(args: argparse.Namespace, cfg: configmod.Config, day: str) -> int:
    """``ringtrap report --campaigns``: the campaigns of ``--days`` days up to ``day``."""
    import datetime

    from ringtrap.command import fleetdb, report

    if args.days < 1:
        print(f"ringtrap: --days must be at least 1, got {args.days}", file=sys.stderr)
        return EX_USAGE
    last = datetime.date.fromisoformat(day)
    names = [str(last - datetime.timedelta(days=n)) for n in range(args.days - 1, -1, -1)]
    if args.database or args.host:
        try:
            view = fleetdb.reading(lambda: report.campaigns(
                ((d, report.read_day_db(cfg.collect.database, d, args.host)) for d in names),
                day, top=args.top))
        except fleetdb.DatabaseUnavailable as e:
            return e.report()
    else:
        present = [(d, report.day_file(cfg.results.dir, d)) for d in names]
        present = [(d, path) for d, path in present if path.exists()]
        if not present:
            print(f"ringtrap: no records for {names[0]} .. {day} in {cfg.results.dir}"
                  f"{_hint(args)}", file=sys.stderr)
            return EX_NOINPUT
        view = report.campaigns(((d, report.read_day(path)) for d, path in present), day,
                                top=args.top)
    if args.json:
        json.dump({"day": day, **view}, sys.stdout, indent=2)
        print()
    else:
        print(report.render_campaigns(view, day), end="")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    import datetime

    from ringtrap.command import fleetdb, report

    cfg = _load(args.config)
    day = args.day or time.strftime("%Y-%m-%d", time.gmtime())
    try:
        datetime.date.fromisoformat(day)
    except ValueError:
        print(f"ringtrap: --day must be a date YYYY-MM-DD, got {day!r}", file=sys.stderr)
        return EX_USAGE
    if args.campaigns:
        return _report_campaigns(args, cfg, day)
    if args.database or args.host:
        # the fleet's records, loaded by ringtrap collect (collect.database)
        try:
            summary = fleetdb.reading(lambda: report.summarize(
                report.read_day_db(cfg.collect.database, day, args.host), top=args.top))
        except fleetdb.DatabaseUnavailable as e:
            return e.report()
    else:
        path = report.day_file(cfg.results.dir, day)
        if not path.exists():
            print(f"ringtrap: no records for {day} ({path} does not exist){_hint(args)}",
                  file=sys.stderr)
            return EX_NOINPUT
        summary = report.summarize(report.read_day(path), top=args.top)
    if args.json:
        json.dump({"day": day, **summary}, sys.stdout, indent=2)
        print()
    else:
        print(report.render_text(summary, day), end="")
    if args.charts:
        sys.stdout.flush()  # the report before the chart file names on stderr
        try:
            written = report.render_charts(summary, day, Path(args.charts))
        except ImportError:
            print("ringtrap: charts need matplotlib: pip install 'ringtrap[report]'",
                  file=sys.stderr)
            return EX_UNAVAILABLE
        for chart in written:
            print(f"wrote {chart}", file=sys.stderr)
    return 0


def cmd_blocklist(args: argparse.Namespace) -> int:
    from ringtrap.command import blocklist

    return blocklist.run(_load(args.config), args)


def cmd_export(args: argparse.Namespace) -> int:
    from ringtrap.command import export

    return export.run(_load(args.config), args)


def cmd_collect(args: argparse.Namespace) -> int:
    from ringtrap.base import logs
    from ringtrap.command import collect

    cfg = _load(args.config)
    # the journal's: the collector is its own unit, its lines go to stderr
    logs.setup(cfg.supervisor.log_level, None, cfg.supervisor.log_format)
    logs.set_role("collect")
    return collect.run(cfg)


def cmd_config(args: argparse.Namespace) -> int:
    if args.check:
        try:
            configmod.load(args.check)
        except configmod.ConfigError as e:
            print(str(e), file=sys.stderr)
            return EX_CONFIG
        except OSError as e:
            print(f"ringtrap: {args.check}: {e.strerror}", file=sys.stderr)
            return EX_CONFIG
        print(f"{args.check}: OK")
        return 0
    if args.docs:
        print(configmod.docs_table())
        return 0
    if args.man:
        from ringtrap.config import manpage

        print(manpage.man_page(build_parser()), end="")
        return 0
    print(configmod.sample_config(), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="ringtrap",
        description="Spam-trap backend: queue mail from the MTA in a shared-memory ring, "
        "scan it with spamd, record the results.",
    )
    ap.add_argument("--version", action="version", version=f"ringtrap {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument("-c", "--config", metavar="FILE",
                       help="TOML configuration (default: built-in defaults)")

    p = sub.add_parser("run", help="run the trap in the foreground (the systemd main process)")
    with_config(p)
    p.add_argument("--log-format", choices=("human", "json"),
                   help="log line format (default: supervisor.log_format)")
    p.set_defaults(func=cmd_run)

    def with_interval(p: argparse.ArgumentParser) -> None:
        p.add_argument("--interval", type=float, default=1.0, metavar="SECONDS",
                       help="refresh period of the live view (default 1)")

    p = sub.add_parser("status", help="show the ring, the overflow and every process")
    with_config(p)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--json", action="store_true", help="machine-readable output")
    g.add_argument("--watch", action="store_true",
                   help="a live view refreshed every second (same as 'ringtrap top')")
    with_interval(p)
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("top", help="a live view of the ring, the overflow, rates and processes")
    with_config(p)
    with_interval(p)
    p.set_defaults(func=cmd_top)
    p = sub.add_parser("purge", help="drop the overflow backlog now")
    with_config(p)
    p.add_argument("--quarantine", action="store_true",
                   help="drop the quarantined messages (failed/) instead of the backlog")
    p.set_defaults(func=cmd_purge)
    p = sub.add_parser("report", help="the daily report: verdicts, rules, relays, URL"
                       " domains, campaigns, sizes, scan times")
    with_config(p)
    p.add_argument("--day", metavar="YYYY-MM-DD", help="the UTC day to report (default: today)")
    p.add_argument("--top", type=int, default=10, metavar="N", help="rows per table (default 10)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--charts", metavar="DIR",
                   help="also write PNG charts into DIR (needs the 'report' extra: matplotlib)")
    p.add_argument("--database", action="store_true",
                   help="the whole fleet's records from collect.database (ringtrap collect)"
                   " instead of this host's files")
    p.add_argument("--host", metavar="NAME",
                   help="with the database: one trap's records only (its forward.host)")
    p.add_argument("--campaigns", action="store_true",
                   help="the campaigns view instead: the largest body fingerprints of --days"
                   " days with first/last seen, relays and domains, and those new on --day")
    p.add_argument("--days", type=int, default=7, metavar="N",
                   help="with --campaigns: days read, --day the last (default 7)")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("blocklist", help="write the blocklist files now: the relays that hit"
                       " the trap (rbldnsd zones, Postfix map, plain list, JSON)")
    with_config(p)
    p.add_argument("--format", choices=("rbldnsd_ip4", "rbldnsd_ip6", "postfix", "plain", "json"),
                   help="print this format on standard output and write nothing")
    p.add_argument("--database", action="store_true",
                   help="the whole fleet's records from collect.database (ringtrap collect)"
                   " instead of this host's files")
    p.add_argument("--host", metavar="NAME",
                   help="with the database: one trap's records only (its forward.host)")
    p.set_defaults(func=cmd_blocklist)
    p = sub.add_parser("export", help="export what the trap saw as a threat-intel feed"
                       " (needs the 'misp' extra: PyMISP)")
    with_config(p)
    p.add_argument("--misp", metavar="DIR", required=True,
                   help="write a MISP feed into DIR: manifest.json, hashes.csv, one event"
                   " per day")
    p.add_argument("--days", type=int, metavar="N",
                   help="UTC days exported, today included (default: blocklist.window_days)")
    p.add_argument("--org", default="ringtrap", metavar="NAME",
                   help="the creator organisation named in the events (default ringtrap)")
    p.add_argument("--tlp", default="clear", choices=("clear", "green", "amber", "red"),
                   help="TLP tag of the events (default clear)")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("collect", help="the fleet's hub: load the records the traps forward"
                       " to NATS JetStream into PostgreSQL (needs the 'hub' extra)")
    with_config(p)
    p.set_defaults(func=cmd_collect)
    # listed for --help only: main() hands "submit" to ringtrap.command.submit before argparse
    sub.add_parser("submit", help="deliver the message on stdin with its envelope (the MTA's"
                   " pipe client; exit 0 or 75, see 'ringtrap submit --help')", add_help=False)
    p = sub.add_parser("config", help="print a sample configuration or check one")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--sample", action="store_true",
                   help="print a complete commented configuration (the default)")
    g.add_argument("--check", metavar="FILE", help="validate FILE; exit 78 naming every problem")
    g.add_argument("--docs", action="store_true", help="print the settings as a Markdown table")
    g.add_argument("--man", action="store_true",
                   help="print the ringtrap(8) man page (roff), settings included")
    p.set_defaults(func=cmd_config)
    return ap


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    if args_in[:1] == ["submit"]:
        from ringtrap.command import submit

        return submit.main(args_in[1:])
    ap = build_parser()
    args = ap.parse_args(argv)
    if not getattr(args, "func", None):
        ap.print_help(sys.stderr)
        return EX_USAGE
    try:
        return int(args.func(args))
    except configmod.ConfigError as e:
        print(str(e), file=sys.stderr)
        return EX_CONFIG
    except FileNotFoundError as e:
        print(f"ringtrap: {e.filename}: no such file", file=sys.stderr)
        return EX_CONFIG
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
