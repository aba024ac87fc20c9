"""The trap's blocklist: which relays hit the trap often and recently enough to be listed.

:class:`RecordWindow` reads the result records of the last days back from
``results.dir``, as any version of ringtrap wrote them, counting the lines it
cannot use instead of failing on them; :class:`Tally` folds the records into
one :class:`Entry` per relay address (IPv6 and, if configured, IPv4 by
network), and :meth:`Tally.result` applies the :class:`Policy`: thresholds,
expiry after a quiet period, and the ranges that are never listed.  The files
made from the result are :mod:`ringtrap.control.blockfiles`.

Read-only: nothing here writes.  The supervisor runs it in a short-lived
child (:mod:`ringtrap.control.blockwriter`), ``ringtrap blocklist`` in the
foreground; either may die in it at any point and leave nothing behind.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ringtrap.config import Config
from ringtrap.config.sections import BLOCKLIST_VERDICTS
from ringtrap.scan.results import PREFIX, SUFFIX, day_name

log = logging.getLogger(__name__)

DAY = 86400
# distinct recipients, campaigns and addresses kept per entry: past this a
# count reads "at least"; it bounds the memory one flooding relay can take
MAX_DISTINCT = 10_000

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass
class ReadCounts:
    """What reading the window's files met, line by line (or its rows, from the database)."""

    files: int = 0
    lines: int = 0  # from the fleet's database: its rows
    # not a JSON object, or no arrival time that parses: never a crash, never a hit
    skipped: int = 0
    before_window: int = 0  # in a file of the window, but received before it
    # read from the fleet's database (ringtrap collect) instead of files: all hosts or one
    database: bool = False
    host: str | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.database:
            return {"source": "database", "host": self.host, "records": self.lines}
        return {"files": self.files, "lines": self.lines, "skipped": self.skipped,
                "before_window": self.before_window}


class Window(Protocol):
    """Where the records come from: ``(record, received)`` pairs and what reading them met.

    :class:`RecordWindow` reads a trap's own result files; the fleet's
    database gives the same pairs (``ringtrap blocklist --database``).
    """

    counts: ReadCounts

    def __iter__(self) -> Iterator[tuple[dict[str, Any], float]]: ...


def parse_received(value: object) -> float | None:
    """A record's ``received`` as epoch seconds; a time without offset is UTC; None if unusable."""
    if not isinstance(value, str):
        return None
    try:
        when = datetime.datetime.fromisoformat(value)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp()


class RecordWindow:
    """The records of the ``days`` UTC days up to ``now`` under ``directory``, oldest first.

    Iterating yields ``(record, received)`` pairs of the records received
    within ``days * 86400`` seconds before ``now``; :attr:`counts` says how
    many lines were read and skipped.  A file written while it is read is
    read up to its last complete line.
    """

    def __init__(self, directory: str | os.PathLike[str], days: int, now: float) -> None:
        self.directory = Path(directory)
        self.days = days
        self.now = now
        self.since = now - days * DAY
        self.counts = ReadCounts()

    def files(self) -> list[Path]:
        """The result files of the window's days that exist, oldest first."""
        names = [f"{PREFIX}{day_name(self.now - back * DAY)}{SUFFIX}"
                 for back in range(self.days, -1, -1)]
        return [self.directory / n for n in dict.fromkeys(names)
                if (self.directory / n).is_file()]

    def __iter__(self) -> Iterator[tuple[dict[str, Any], float]]:
        for path in self.files():
            try:
                f = open(path, "rb")  # noqa: SIM115 - closed below, around the loop
            except FileNotFoundError:
                continue  # removed by the retention since it was listed
            self.counts.files += 1
            with f:
                for number, line in enumerate(f, 1):
                    if not line.endswith(b"\n"):
                        break  # a line still being written
                    self.counts.lines += 1
                    try:
                        record = json.loads(line)
                    except ValueError:
                        record = None
                    when = parse_received(record.get("received")) \
                        if isinstance(record, dict) else None
                    if when is None:
                        self.counts.skipped += 1
                        log.debug("%s:%d: skipped: not a record with a received time",
                                  path, number)
                        continue
                    if when < self.since:
                        self.counts.before_window += 1
                        continue
                    assert isinstance(record, dict)
                    yield record, when


@dataclass(frozen=True)
class Policy:
    """What is counted and what is listed; see the [blocklist] section."""

    window_days: int = 7
    min_hits: int = 2
    min_recipients: int = 1
    expire_days: int = 3
    ipv4_prefix: int = 32
    ipv6_prefix: int = 64
    never: tuple[Network, ...] = ()  # records.trusted_networks and blocklist.allow
    list_reserved: bool = False
    verdicts: frozenset[str] = frozenset(BLOCKLIST_VERDICTS)

    @classmethod
    def from_config(cls, cfg: Config) -> Policy:
        b = cfg.blocklist
        never = tuple(ipaddress.ip_network(n) for n in (*cfg.records.trusted_networks, *b.allow))
        return cls(window_days=b.window_days, min_hits=b.min_hits,
                   min_recipients=b.min_recipients, expire_days=b.expire_days,
                   ipv4_prefix=b.ipv4_prefix, ipv6_prefix=b.ipv6_prefix, never=never,
                   list_reserved=b.list_reserved, verdicts=frozenset(b.verdicts))

    def never_listed(self, addr: Address) -> bool:
        """True for an address that is never counted: loopback, unless configured the
        non-global ranges, and the trusted and allowed networks."""
        if addr.is_loopback or addr.is_unspecified or addr.is_multicast:
            return True
        if not self.list_reserved and not addr.is_global:
            return True
        return any(addr in n for n in self.never)

    def prefix_of(self, addr: Address) -> int:
        return self.ipv4_prefix if addr.version == 4 else self.ipv6_prefix

    def key_of(self, addr: Address) -> tuple[int, int]:
        """The entry ``addr`` counts toward: its version and its network's first address."""
        host = addr.max_prefixlen - self.prefix_of(addr)
        return addr.version, int(addr) >> host << host

    def overlaps_never(self, net: Network) -> bool:
        """True if listing ``net`` would list an address that must never be."""
        return any(net.version == n.version and net.overlaps(n) for n in self.never)


def relay_address(value: object) -> Address | None:
    """A record's ``relay_ip`` as an address; an IPv4-mapped IPv6 one as IPv4."""
    if not isinstance(value, str):
        return None
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


class Distinct:
    """Distinct strings, few of them usually: one string alone until a second one comes.

    A week of a busy trap holds hundreds of thousands of relays, most seen
    once; a set per relay and per kind would take most of the writer's memory.
    """

    __slots__ = ("_v",)

    def __init__(self) -> None:
        self._v: str | set[str] | None = None

    def add(self, value: str) -> None:
        v = self._v
        if v is None:
            self._v = value
        elif isinstance(v, str):
            if v != value:
                self._v = {v, value}
        elif len(v) < MAX_DISTINCT:
            v.add(value)

    def values(self) -> set[str]:
        v = self._v
        return set() if v is None else {v} if isinstance(v, str) else set(v)

    def __len__(self) -> int:
        v = self._v
        return 0 if v is None else 1 if isinstance(v, str) else len(v)


class Entry:
    """One relay address or network and what the window's records say of it."""

    __slots__ = ("_addresses", "_campaigns", "_recipients", "first", "hits", "key", "last",
                 "prefixlen")

    def __init__(self, key: tuple[int, int], prefixlen: int) -> None:
        self.key = key  # (IP version, the network's first address as an int)
        self.prefixlen = prefixlen
        self.hits = 0
        self.first = 0.0
        self.last = 0.0
        self._recipients = Distinct()
        self._campaigns = Distinct()
        self._addresses = Distinct()  # only when the entry is wider than one host

    @property
    def network(self) -> Network:
        version, value = self.key
        address = ipaddress.IPv4Address(value) if version == 4 else ipaddress.IPv6Address(value)
        return ipaddress.ip_network((address, self.prefixlen))

    @property
    def recipient_count(self) -> int:
        return len(self._recipients)

    @property
    def recipients(self) -> set[str]:
        return self._recipients.values()

    @property
    def campaigns(self) -> set[str]:
        return self._campaigns.values()

    @property
    def addresses(self) -> set[str]:
        if self.prefixlen == (32 if self.key[0] == 4 else 128):
            return {str(self.network.network_address)}
        return self._addresses.values()

    def add(self, addr: Address, when: float, recipients: list[str], campaign: str | None
            ) -> None:
        if not self.hits or when < self.first:
            self.first = when
        self.last = max(self.last, when)
        self.hits += 1
        if self.prefixlen < addr.max_prefixlen:
            self._addresses.add(str(addr))
        for r in recipients:
            self._recipients.add(r)
        if campaign:
            self._campaigns.add(campaign)

    def to_dict(self) -> dict[str, Any]:
        return {"network": str(self.network), "hits": self.hits,
                "first": _iso(self.first), "last": _iso(self.last),
                "recipients": len(self._recipients), "campaigns": len(self._campaigns),
                "addresses": sorted(self.addresses, key=ipaddress.ip_address)[:100]}


def _iso(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, tz=datetime.UTC).isoformat(timespec="seconds")


def _recipients(record: dict[str, Any]) -> list[str]:
    env = record.get("envelope")
    rcpts = env.get("recipients") if isinstance(env, dict) else None
    if not isinstance(rcpts, list):
        return []
    # a trap has few addresses: one copy of each, however many entries name it
    return [sys.intern(r.lower()) for r in rcpts if isinstance(r, str) and r]


@dataclass
class Counted:
    """What became of the window's records."""

    hits: int = 0  # counted toward an entry
    other_verdicts: int = 0  # a verdict that is no hit (bounce, auto-reply, quarantined...)
    no_relay: int = 0  # no relay_ip (older records, unparsed and quarantined messages)
    never_listed: int = 0  # the relay is in a range that is never listed

    def to_dict(self) -> dict[str, int]:
        return {"hits": self.hits, "other_verdicts": self.other_verdicts,
                "no_relay": self.no_relay, "never_listed": self.never_listed}


@dataclass
class Result:
    """The listed entries, most hits first, and why the others are not listed."""

    listed: list[Entry]
    candidates: int  # entries with at least one hit
    below_threshold: int
    expired: int  # enough hits, but quiet for longer than expire_days
    overlapping: int  # its network overlaps a network never listed
    counted: Counted

    def by_version(self, version: int) -> list[Entry]:
        return [e for e in self.listed if e.network.version == version]


class Tally:
    """Folds records into entries under one :class:`Policy`."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.entries: dict[tuple[int, int], Entry] = {}
        self.counted = Counted()

    def add(self, record: dict[str, Any], when: float) -> None:
        """Count one record received at ``when`` (epoch seconds)."""
        if str(record.get("verdict")) not in self.policy.verdicts:
            self.counted.other_verdicts += 1
            return
        addr = relay_address(record.get("relay_ip"))
        if addr is None:
            self.counted.no_relay += 1
            return
        if self.policy.never_listed(addr):
            self.counted.never_listed += 1
            return
        key = self.policy.key_of(addr)
        entry = self.entries.get(key)
        if entry is None:
            entry = self.entries[key] = Entry(key, self.policy.prefix_of(addr))
        fp = record.get("fingerprint")
        entry.add(addr, when, _recipients(record), sys.intern(fp) if isinstance(fp, str) else None)
        self.counted.hits += 1

    def result(self, now: float) -> Result:
        """The entries listed at ``now``: enough hits and recipients, and not quiet too long."""
        p = self.policy
        quiet_since = now - p.expire_days * DAY
        listed = []
        below = expired = overlapping = 0
        for e in self.entries.values():
            # 1 asks nothing: a message delivered without an envelope names no recipient
            few = p.min_recipients > 1 and e.recipient_count < p.min_recipients
            if e.hits < p.min_hits or few:
                below += 1
            elif e.last < quiet_since:
                expired += 1
            elif p.overlaps_never(e.network):
                overlapping += 1
            else:
                listed.append(e)
        listed.sort(key=lambda e: (-e.hits, e.key))
        return Result(listed, len(self.entries), below, expired, overlapping, self.counted)


def compute(cfg: Config, now: float, window: Window | None = None
            ) -> tuple[Result, ReadCounts]:
    """The blocklist of ``cfg`` at ``now`` (epoch seconds), from its results directory.

    ``window`` reads the records from elsewhere instead (the fleet's
    database): the same policy applies to whatever it yields.
    """
    policy = Policy.from_config(cfg)
    if window is None:
        window = RecordWindow(cfg.results.dir, policy.window_days, now)
    tally = Tally(policy)
    for record, when in window:
        tally.add(record, when)
    return tally.result(now), window.counts
