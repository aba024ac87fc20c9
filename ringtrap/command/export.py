"""``ringtrap export --misp DIR``: what the trap saw, as a MISP feed a MISP instance subscribes to.

One MISP event per UTC day of records, holding the relay IPs, URLs,
registered domains, attachment SHA-256s and sender addresses seen that
day; each attribute's comment says in how many messages it was seen, and
its ``first_seen`` / ``last_seen`` when.  The folder is a MISP feed as
MISP's own "feed" export writes it: ``<event uuid>.json`` per event,
``manifest.json`` indexing them and ``hashes.csv`` (MD5 of every value,
event uuid) for MISP's quick lookups; point a feed of type "MISP Feed" at
the folder served over HTTP, or at it on disk ("local feed").

The events are built with PyMISP's model (``MISPEvent.to_feed``), an
optional extra (``pip install 'ringtrap[misp]'``) imported only here.  Event
and attribute uuids are derived from the organisation, the day and the
value, so a day exported again replaces its event rather than adding one.
Files are replaced by rename, the manifest last: a MISP that pulls while an
export runs sees the old feed or the new one.  Read-only for the records.
"""

from __future__ import annotations

import argparse
import datetime
import email.utils
import json
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ringtrap.base.exits import EX_CONFIG, EX_UNAVAILABLE, EX_USAGE
from ringtrap.config import Config
from ringtrap.control.blockfiles import write_atomic
from ringtrap.control.blocklist import Policy, RecordWindow, relay_address
from ringtrap.scan.results import day_name

# uuids of ringtrap's events and attributes: uuid5 under this namespace
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:ringtrap:misp-feed")
# values kept per attribute type and day, most seen first: a MISP event of a
# million attributes is one no instance wants to pull
MAX_PER_TYPE = 10_000
TAG = "ringtrap"

# (record field, MISP type, category, to_ids)
ATTRIBUTE_TYPES = {
    "relay": ("ip-src", "Network activity", True),
    "url": ("url", "Network activity", False),
    "domain": ("domain", "Network activity", False),
    "sha256": ("sha256", "Payload delivery", True),
    "sender": ("email-src", "Payload delivery", False),
}


@dataclass
class Seen:
    """One value of one day: in how many messages, and when first and last."""

    messages: int = 0
    first: float = 0.0
    last: float = 0.0
    notes: set[str] = field(default_factory=set)  # filenames, sender roles

    def add(self, when: float, note: str | None = None) -> None:
        if not self.messages or when < self.first:
            self.first = when
        self.last = max(self.last, when)
        self.messages += 1
        if note and len(self.notes) < 5:
            self.notes.add(note)


Day = dict[str, dict[str, Seen]]  # kind -> value -> Seen


def _values(record: dict[str, Any], policy: Policy) -> Iterable[tuple[str, str, str | None]]:
    """(kind, value, note) of everything one record contributes to the feed, each once."""
    seen: set[tuple[str, str]] = set()

    def once(kind: str, value: str, note: str | None = None
             ) -> Iterable[tuple[str, str, str | None]]:
        if (kind, value) not in seen:
            seen.add((kind, value))
            yield kind, value, note

    addr = relay_address(record.get("relay_ip"))
    if addr is not None and not policy.never_listed(addr):
        yield from once("relay", str(addr))
    for url in record.get("urls") or ():
        if isinstance(url, str) and url:
            yield from once("url", url)
    for domain in record.get("url_domains") or ():
        if isinstance(domain, str) and domain:
            yield from once("domain", domain.lower())
    for att in record.get("attachments") or ():
        if isinstance(att, dict) and isinstance(att.get("sha256"), str):
            name = att.get("name")
            yield from once("sha256", att["sha256"].lower(),
                            f"file {name}" if isinstance(name, str) and name else None)
    env = record.get("envelope")
    sender = env.get("sender") if isinstance(env, dict) else None
    if isinstance(sender, str) and "@" in sender:
        yield from once("sender", sender.lower(), "envelope sender")
    header = record.get("from")
    if isinstance(header, str):
        address = email.utils.parseaddr(header)[1]
        if "@" in address:
            yield from once("sender", address.lower(), "From")


def collect(cfg: Config, days: int, now: float) -> tuple[dict[str, Day], RecordWindow]:
    """Every value seen per UTC day of the last ``days`` days (today included)."""
    policy = Policy.from_config(cfg)
    # the window counts whole days: from the first second of the first one
    start = now - (now % 86400) - (days - 1) * 86400
    window = RecordWindow(cfg.results.dir, days, now)
    out: dict[str, Day] = {}
    for record, when in window:
        if when < start or str(record.get("verdict")) not in policy.verdicts:
            continue
        day = out.setdefault(day_name(when), {kind: {} for kind in ATTRIBUTE_TYPES})
        for kind, value, note in _values(record, policy):
            day[kind].setdefault(value, Seen()).add(when, note)
    return out, window


def _utc(epoch: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(epoch, tz=datetime.UTC)


def comment(seen: Seen) -> str:
    """An attribute's comment: the count, and the notes (file names, sender roles)."""
    n = "1 message" if seen.messages == 1 else f"{seen.messages} messages"
    text = f"seen in {n} to the spam trap"
    return text + (f" ({', '.join(sorted(seen.notes))})" if seen.notes else "")


def build_event(day: str, values: Day, org: str, tlp: str, now: float,
                min_hits: int) -> Any:
    """The MISP event of one day (a ``pymisp.MISPEvent``); raises ImportError without PyMISP."""
    from pymisp import MISPEvent, MISPOrganisation

    event = MISPEvent()
    event.uuid = str(uuid.uuid5(NAMESPACE, f"event/{org}/{day}"))
    event.info = f"{org}: mail received by a spam trap on {day}"
    event.set_date(datetime.date.fromisoformat(day))
    orgc = MISPOrganisation()
    orgc.name = org
    orgc.uuid = str(uuid.uuid5(NAMESPACE, f"org/{org}"))
    event.Orgc = orgc
    event.analysis = 2 if day < day_name(now) else 1  # today's is still growing
    event.threat_level_id = 3  # low: unsolicited mail, not a targeted attack
    event.add_tag(f"tlp:{tlp}")
    event.add_tag(TAG)
    stamp = _utc(now)
    for kind, (misp_type, category, to_ids) in ATTRIBUTE_TYPES.items():
        ranked = sorted(values[kind].items(), key=lambda kv: (-kv[1].messages, kv[0]))
        for value, seen in ranked[:MAX_PER_TYPE]:
            # a relay seen once may be a mistyped address: an indicator from min_hits on
            ids = to_ids and (kind != "relay" or seen.messages >= min_hits)
            attr = event.add_attribute(misp_type, value, category=category, to_ids=ids,
                                       comment=comment(seen), first_seen=_utc(seen.first),
                                       last_seen=_utc(seen.last))
            attr.uuid = str(uuid.uuid5(uuid.UUID(event.uuid), f"{misp_type}/{value}"))
            attr.timestamp = stamp
    event.timestamp = stamp
    event.publish_timestamp = stamp
    event.published = True
    return event


def write_feed(directory: Path, events: list[Any]) -> tuple[dict[str, Any], int]:
    """Write the events, then the manifest and hashes.csv of every event in ``directory``.

    Events of days no longer exported stay in the feed.  Returns the
    manifest and the number of hashes.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for event in events:
        feed = event.to_feed(with_meta=True)
        feed["Event"].pop("_hashes", None)
        feed["Event"].pop("_manifest", None)
        write_atomic(directory / f"{event.uuid}.json", json.dumps(feed, indent=1).encode())
    from pymisp import MISPEvent

    manifest: dict[str, Any] = {}
    hashes: list[str] = []
    for path in sorted(directory.glob("*.json")):
        if path.name == "manifest.json":
            continue
        event = MISPEvent()
        try:
            event.load_file(str(path))
        except (OSError, ValueError, KeyError):
            continue  # not an event of the feed
        manifest.update(event.manifest)
        hashes += [f"{h},{event.uuid}" for h in event.attributes_hashes("md5")]
    write_atomic(directory / "hashes.csv", "".join(f"{h}\n" for h in hashes).encode())
    write_atomic(directory / "manifest.json", json.dumps(manifest, indent=1).encode())
    return manifest, len(hashes)


def run(cfg: Config, args: argparse.Namespace) -> int:
    """The command's body; the exit code."""
    days = cfg.blocklist.window_days if args.days is None else args.days
    if days < 1:
        print("ringtrap: --days must be 1 or more", file=sys.stderr)
        return EX_USAGE
    try:
        import pymisp  # noqa: F401 - only to fail before any work
    except ImportError:
        print("ringtrap: the MISP feed needs PyMISP: pip install 'ringtrap[misp]'",
              file=sys.stderr)
        return EX_UNAVAILABLE
    now = time.time()
    per_day, window = collect(cfg, days, now)
    events = [build_event(day, values, args.org, args.tlp, now, cfg.blocklist.min_hits)
              for day, values in sorted(per_day.items())]
    try:
        manifest, nhashes = write_feed(Path(args.misp), events)
    except OSError as e:
        print(f"ringtrap: export: {e.filename or args.misp}: {e.strerror}", file=sys.stderr)
        return EX_CONFIG
    for event in events:
        print(f"{event.date.isoformat()} {event.uuid}.json: {len(event.attributes)} attributes")
    print(f"{len(events)} events written, {len(manifest)} in the feed, {nhashes} hashes;"
          f" {window.counts.lines} lines read, {window.counts.skipped} skipped (not a record)",
          file=sys.stderr)
    return 0
