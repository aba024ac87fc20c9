"""The blocklist's files: rbldnsd zones, a Postfix access map, a plain list, JSON.

:func:`write_all` computes the blocklist (:mod:`ringtrap.control.blocklist`)
and writes every format ``[blocklist]`` names, each by :func:`write_atomic`:
a temporary file in the same directory, fsync, rename, so rbldnsd, Postfix
or a firewall script never reads half a list, and a writer killed midway
leaves the previous list in place (and at most its own temporary file,
named after its pid).  Beside the results it leaves ``blocklist-state.json``:
when the files were last written and how many entries they hold, which the
metrics endpoint reads.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ringtrap.config import Config
from ringtrap.control.blocklist import Entry, Policy, ReadCounts, Result, Window, compute

FILE_MODE = 0o640
STATE_NAME = "blocklist-state.json"


def _clean(text: str) -> str:
    """One line of text: control characters (a line break would end the entry) as spaces."""
    return "".join(" " if ord(ch) < 0x20 or ord(ch) == 0x7F else ch for ch in text)


def _header(kind: str, result: Result, now: float, version: int) -> list[str]:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    n = len(result.by_version(version)) if version else len(result.listed)
    noun = "entry" if n == 1 else "entries"
    return [f"# ringtrap blocklist ({kind}), written {stamp}: {n} {noun}"]


def _ip4_entry(e: Entry) -> str:
    net = e.network
    return str(net.network_address) if net.prefixlen == 32 else str(net)


def _ip6_entry(e: Entry) -> str:
    """ip6tset wants a /64 as its four leading words; ip6trie takes that or CIDR."""
    net = e.network
    if net.prefixlen == 64:
        words = ipaddress.IPv6Address(net.network_address).exploded.split(":")[:4]
        return ":".join(w.lstrip("0") or "0" for w in words)
    return str(net)


def render_rbldnsd(result: Result, version: int, a_value: str, txt: str, now: float) -> str:
    """An rbldnsd dataset of the ``version`` (4 or 6) entries: ip4set, or ip6tset / ip6trie.

    One default ``:A:TXT`` line serves every entry (ip6tset allows no other);
    rbldnsd puts the queried address where the TXT has ``$``.
    """
    kind = "ip4set" if version == 4 else "ip6tset" if _all_64(result) else "ip6trie"
    lines = _header(kind, result, now, version)
    lines.append(f":{a_value}:{_clean(txt)}")
    entry = _ip4_entry if version == 4 else _ip6_entry
    lines += [entry(e) for e in result.by_version(version)]
    return "\n".join(lines) + "\n"


def _all_64(result: Result) -> bool:
    return all(e.network.prefixlen == 64 for e in result.by_version(6))


def _hits(n: int) -> str:
    return "1 hit" if n == 1 else f"{n} hits"


def render_postfix(result: Result, txt: str, now: float) -> str:
    """A Postfix ``cidr`` table: ``network REJECT text: N hits``, most hits first."""
    lines = _header("postfix cidr", result, now, 0)
    for e in result.listed:
        text = _clean(txt).replace("$", str(e.network.network_address))
        lines.append(f"{e.network} REJECT {text}: {_hits(e.hits)}")
    return "\n".join(lines) + "\n"


def render_plain(result: Result) -> str:
    """One network in CIDR notation per line, most hits first (ipset, nftables)."""
    return "".join(f"{e.network}\n" for e in result.listed)


def render_json(result: Result, counts: ReadCounts, policy: Policy, now: float) -> str:
    """Every listed entry with its counts, the policy and what reading the window met."""
    doc: dict[str, Any] = {
        "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
        "policy": {"window_days": policy.window_days, "min_hits": policy.min_hits,
                   "min_recipients": policy.min_recipients, "expire_days": policy.expire_days,
                   "ipv4_prefix": policy.ipv4_prefix, "ipv6_prefix": policy.ipv6_prefix,
                   "verdicts": sorted(policy.verdicts),
                   "never": [str(n) for n in policy.never],
                   "list_reserved": policy.list_reserved},
        "read": counts.to_dict(),
        "records": result.counted.to_dict(),
        "candidates": result.candidates,
        "below_threshold": result.below_threshold,
        "expired": result.expired,
        "overlapping": result.overlapping,
        "listed": len(result.listed),
        "entries": [e.to_dict() for e in result.listed],
    }
    return json.dumps(doc, indent=1) + "\n"


def write_atomic(path: Path, data: bytes, mode: int = FILE_MODE) -> None:
    """Replace ``path`` with ``data`` whole: temporary file, fsync, rename, fsync the directory.

    A process that dies in here leaves the old file (or none) and at most
    ``.<name>.<pid>.tmp`` beside it, which its next run by the same pid or
    :func:`remove_temporary` removes.  Raises OSError.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def remove_temporary(paths: list[Path], pid: int) -> None:
    """Remove what a writer ``pid`` killed in :func:`write_atomic` left beside ``paths``."""
    for path in paths:
        with contextlib.suppress(OSError):
            path.with_name(f".{path.name}.{pid}.tmp").unlink()


@dataclass(frozen=True)
class Written:
    """One write of the blocklist: when, how many entries, which files."""

    at: float
    ipv4: int
    ipv6: int
    paths: dict[str, Path]
    counts: ReadCounts
    result: Result

    @property
    def entries(self) -> int:
        return self.ipv4 + self.ipv6


def state_path(cfg: Config) -> Path:
    """Where the last write is described for the metrics: beside the result files."""
    return cfg.results.dir / STATE_NAME


def write_all(cfg: Config, now: float | None = None,
              paths: dict[str, Path] | None = None, window: Window | None = None) -> Written:
    """Compute the blocklist and write each format of ``paths`` (default: the configured ones).

    The state file is written last, so it never claims a list that is not on
    disk.  With another ``window`` than the trap's own results (the fleet's
    database) no state file is written: it describes the trap's own list,
    which its metrics report.  Raises OSError on the first file that cannot
    be written.
    """
    now = time.time() if now is None else now
    result, counts = compute(cfg, now, window)
    targets = cfg.blocklist.paths() if paths is None else paths
    for name, path in targets.items():
        write_atomic(path, render_one(cfg, name, result, counts, now))
    done = Written(now, len(result.by_version(4)), len(result.by_version(6)), targets, counts,
                   result)
    if targets and window is None:
        state = {"written": now, "entries": done.entries, "ipv4": done.ipv4, "ipv6": done.ipv6,
                 "skipped_lines": counts.skipped, "hits": result.counted.hits,
                 "files": {name: str(p) for name, p in targets.items()}}
        with contextlib.suppress(OSError):
            write_atomic(state_path(cfg), (json.dumps(state) + "\n").encode())
    return done


def render_one(cfg: Config, name: str, result: Result, counts: ReadCounts, now: float) -> bytes:
    """One format's content, configured or not (``ringtrap blocklist --format``)."""
    b = cfg.blocklist
    if name == "rbldnsd_ip4":
        return render_rbldnsd(result, 4, b.a_value, b.txt, now).encode()
    if name == "rbldnsd_ip6":
        return render_rbldnsd(result, 6, b.a_value, b.txt, now).encode()
    if name == "postfix":
        return render_postfix(result, b.txt, now).encode()
    if name == "plain":
        return render_plain(result).encode()
    if name == "json":
        return render_json(result, counts, Policy.from_config(cfg), now).encode()
    raise ValueError(f"no blocklist format {name!r}")


def read_state(path: Path) -> dict[str, Any] | None:
    """The last write's description, or None when there is none or it is unreadable."""
    try:
        state = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


FORMATS = ("rbldnsd_ip4", "rbldnsd_ip6", "postfix", "plain", "json")
