"""Rules across keys: what no single key's kind can check alone.

Each rule names the keys it reads, the first of them in its message, and is
skipped when one of them is invalid by itself, so one mistake is reported
once.  The values several keys decide together (the stage's directory,
whether the managed spamd must accept TELL) are computed here as well.
"""

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ringtrap.config import hostdefaults
from ringtrap.config.hostdefaults import find_spamd
from ringtrap.config.sections import Config, SpamdConfig
from ringtrap.config.values import GiB, format_size, toml_str

# spamd's own default for --timeout-child: a child gives up on a message after
# this long, so a worker's spamd.timeout must be longer to hear the answer.
SPAMD_CHILD_TIMEOUT = 300.0

# The whole ring is one shared-memory segment held in RAM.
MAX_RING_BYTES = 16 * GiB


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


# rspamd's own default task_timeout: it answers with what it has after this long
RSPAMD_TASK_TIMEOUT = 8.0


def runs_managed_spamd(c: Config) -> bool:
    """True if the supervisor runs a spamd of its own: the scanner is a managed spamd."""
    return c.scanner.kind == "spamd" and c.spamd.address.kind == "managed"


def runs_managed_rspamd(c: Config) -> bool:
    """True if the supervisor runs an rspamd of its own: the scanner is a managed rspamd."""
    return c.scanner.kind == "rspamd" and c.rspamd.address.kind == "managed"


def managed_spamd_tells(c: Config) -> bool:
    """True if the stage sends TELL to the managed spamd, which then needs --allow-tell."""
    return (runs_managed_spamd(c) and c.stage.workers > 0
            and c.stage.address is None and (c.stage.learn or c.stage.report))


def managed_spamd_learns(c: Config) -> bool:
    """True if the stage learns through the managed spamd: it needs spamd.bayes_dir."""
    return managed_spamd_tells(c) and c.stage.learn


def stage_dir(c: Config) -> Path:
    """The stage's spill directory: ``stage.dir`` or ``<overflow.dir>-stage2``."""
    if c.stage.dir is not None:
        return c.stage.dir
    return c.overflow.dir.with_name(c.overflow.dir.name + "-stage2")


def forward_dir(c: Config) -> Path:
    """The forwarder's raw spill directory: ``forward.spill_dir`` or ``<overflow.dir>-forward``."""
    if c.forward.spill_dir is not None:
        return c.forward.spill_dir
    return c.overflow.dir.with_name(c.overflow.dir.name + "-forward")


def _spamd_child_timeout(spamd: SpamdConfig) -> float:
    """The --timeout-child a managed spamd runs with (its default unless overridden)."""
    args = spamd.extra_args if spamd.address.kind == "managed" else ()
    value = None
    for i, arg in enumerate(args):
        if arg == "--timeout-child" and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith("--timeout-child="):
            value = arg.partition("=")[2]
    try:
        return float(value) if value is not None else SPAMD_CHILD_TIMEOUT
    except ValueError:
        return SPAMD_CHILD_TIMEOUT  # spamd itself will reject the argument


def _spamd_scans(c: Config) -> bool:
    return c.scanner.kind == "spamd" and c.spamd.address.kind != "off"


def _check_heartbeat(c: Config) -> str | None:
    if _spamd_scans(c) and c.spamd.timeout >= c.workers.heartbeat_timeout:
        return (
            f"must be less than workers.heartbeat_timeout ({_num(c.workers.heartbeat_timeout)} s),"
            f" or a worker waiting on spamd is taken for hung; got {_num(c.spamd.timeout)}"
        )
    return None


def _check_child_timeout(c: Config) -> str | None:
    child = _spamd_child_timeout(c.spamd)
    if _spamd_scans(c) and c.spamd.timeout <= child:
        return (
            f"must be greater than spamd's child timeout ({_num(child)} s, --timeout-child)"
            f" so spamd answers or gives up first; got {_num(c.spamd.timeout)}"
        )
    return None


def _check_connect_timeout(c: Config) -> str | None:
    if _spamd_scans(c) and c.spamd.connect_timeout > c.spamd.timeout:
        return (
            f"must not exceed spamd.timeout ({_num(c.spamd.timeout)} s),"
            f" got {_num(c.spamd.connect_timeout)}"
        )
    return None


def _check_spamd_installed(c: Config) -> str | None:
    if runs_managed_spamd(c) and find_spamd(c.spamd.command) is None:
        return (
            f'"managed" needs spamd, but spamd.command {toml_str(c.spamd.command)} is not'
            f" found (PATH, {', '.join(hostdefaults.SBIN_DIRS)}); install spamassassin,"
            ' set spamd.command or set spamd.address = "off"'
        )
    return None


def _check_rspamd_installed(c: Config) -> str | None:
    if runs_managed_rspamd(c) and find_spamd(c.rspamd.command) is None:
        return (
            f'"managed" needs rspamd, but rspamd.command {toml_str(c.rspamd.command)} is not'
            f" found (PATH, {', '.join(hostdefaults.SBIN_DIRS)}); install rspamd, set"
            ' rspamd.command, give the address of a running rspamd or set scanner.kind = "spamd"'
        )
    return None


def _check_rspamd_timeout(c: Config) -> str | None:
    if c.scanner.kind != "rspamd":
        return None
    if c.rspamd.timeout >= c.workers.heartbeat_timeout:
        return (
            f"must be less than workers.heartbeat_timeout ({_num(c.workers.heartbeat_timeout)} s),"
            f" or a worker waiting on rspamd is taken for hung; got {_num(c.rspamd.timeout)}"
        )
    if runs_managed_rspamd(c) and c.rspamd.timeout <= RSPAMD_TASK_TIMEOUT:
        return (
            f"must be greater than rspamd's task_timeout ({_num(RSPAMD_TASK_TIMEOUT)} s)"
            f" so rspamd answers first; got {_num(c.rspamd.timeout)}"
        )
    return None


def _check_rspamd_connect_timeout(c: Config) -> str | None:
    if c.scanner.kind == "rspamd" and c.rspamd.connect_timeout > c.rspamd.timeout:
        return (
            f"must not exceed rspamd.timeout ({_num(c.rspamd.timeout)} s),"
            f" got {_num(c.rspamd.connect_timeout)}"
        )
    return None


def _check_stage_learns_by_spamd(c: Config) -> str | None:
    if c.scanner.kind == "rspamd" and c.stage.workers and c.stage.address is None:
        return (
            'the stage learns and reports through spamd only: with scanner.kind = "rspamd"'
            ' set stage.address to a spamd ("unix:/path" or "tcp:host:port"), or stage.workers = 0'
        )
    return None


def _check_ring_size(c: Config) -> str | None:
    total = c.ring.slots * c.ring.slot_bytes
    if total > MAX_RING_BYTES:
        return (
            f"ring.slots * ring.slot_bytes = {c.ring.slots} * {format_size(c.ring.slot_bytes)}"
            f" = {total} bytes exceeds the {format_size(MAX_RING_BYTES)} limit on the"
            " shared-memory segment"
        )
    return None


def _check_overflow_cap(c: Config) -> str | None:
    if c.overflow.max_bytes < c.ingest.max_message_bytes:
        return (
            f"must be at least ingest.max_message_bytes ({c.ingest.max_message_bytes}),"
            f" or the largest messages could never be spilled; got {c.overflow.max_bytes}"
        )
    return None


def _nested(a: Path, b: Path) -> bool:
    """Whether either directory is, or lies inside, the other."""
    a, b = Path(os.path.normpath(a)), Path(os.path.normpath(b))
    return a.is_relative_to(b) or b.is_relative_to(a)


def _check_results_outside_overflow(c: Config) -> str | None:
    if _nested(c.results.dir, c.overflow.dir):
        return (
            f"{toml_str(str(c.results.dir))} must not be inside overflow.dir or contain it:"
            " the daily purge would delete results"
        )
    return None


def _check_service_group(c: Config) -> str | None:
    if c.service.group and not c.service.user:
        return (
            f"{toml_str(c.service.group)} needs service.user: the group is only taken"
            " when dropping to a user"
        )
    return None


def _check_archive_outside_overflow(c: Config) -> str | None:
    if c.archive.dir is not None and _nested(c.archive.dir, c.overflow.dir):
        return (
            f"{toml_str(str(c.archive.dir))} must not be inside overflow.dir or contain it:"
            " the daily purge would delete the archive"
        )
    return None


def _check_stage_timeout(c: Config) -> str | None:
    if c.stage.workers and c.stage.timeout >= c.workers.heartbeat_timeout:
        return (
            f"must be less than workers.heartbeat_timeout ({_num(c.workers.heartbeat_timeout)}"
            f" s), or a stage worker waiting on spamd is taken for hung; got"
            f" {_num(c.stage.timeout)}"
        )
    return None


def _check_stage_spamd(c: Config) -> str | None:
    if (c.stage.workers and c.stage.address is None and c.spamd.address.kind == "off"
            and c.scanner.kind == "spamd"):
        return 'needs a spamd: set stage.address, or spamd.address other than "off"'
    return None


def _check_stage_pool(c: Config) -> str | None:
    # every spamd of a pool has a Bayes database of its own: which one learns is the
    # operator's choice, not the trap's
    if (c.stage.workers and c.stage.address is None and c.spamd.address.kind == "pool"
            and (c.stage.learn or c.stage.report)):
        return ("spamd.address is a list: set stage.address to the one spamd the stage"
                " learns and reports through")
    return None


def _check_distinct_sockets(c: Config) -> str | None:
    ing = c.ingest
    taken = {os.path.normpath(ing.socket): "ingest.socket"}
    for key, path in (("ingest.submit_socket", ing.submit_socket),
                      ("ingest.lmtp_socket", ing.lmtp_socket)):
        if path is None:
            continue
        other = taken.setdefault(os.path.normpath(path), key)
        if other != key:
            return f"{key} {toml_str(str(path))} is also {other}; every socket needs its own path"
    return None


def _in_ring_path(key: str, d: Path, ring: str) -> str | None:
    """Why directory ``d`` cannot be, or be under, one of the ring's /dev/shm names."""
    shm = Path("/dev/shm")
    d = Path(os.path.normpath(d))
    for taken in (shm / ring, shm / f"sem.{ring}.lock", shm / f"sem.{ring}.ready"):
        if d.is_relative_to(taken):
            where = "is" if d == taken else "is inside"
            return (
                f"{toml_str(str(d))} {where} {taken}, where the ring {ring!r} keeps its"
                f" shared memory: {key} cannot be there; choose another directory or ring.name"
            )
    return None


def _check_overflow_not_ring(c: Config) -> str | None:
    return _in_ring_path("overflow.dir", c.overflow.dir, c.ring.name)


def _check_stage_not_ring(c: Config) -> str | None:
    if not c.stage.workers:
        return None
    return _in_ring_path("the stage's directory", stage_dir(c), c.ring.name)


def _check_blocklist_expiry(c: Config) -> str | None:
    b = c.blocklist
    if b.expire_days > b.window_days:
        return (f"{b.expire_days} days is longer than blocklist.window_days ({b.window_days}):"
                " hits older than the window are never read")
    return None


def _check_forward_tls_pair(c: Config) -> str | None:
    f = c.forward
    if (f.tls_cert_file is None) != (f.tls_key_file is None):
        return ("and forward.tls_key_file go together (a client certificate and its key):"
                " set both or neither")
    return None


def _check_forward_one_credential(c: Config) -> str | None:
    f = c.forward
    if f.creds_file is not None and f.nkey_seed_file is not None:
        return ("and forward.nkey_seed_file exclude each other: a creds file already holds"
                " the nkey seed")
    return None


def _check_forward_not_ring(c: Config) -> str | None:
    if not (c.forward.enabled and c.forward.raw):
        return None
    return _in_ring_path("the forwarder's spill directory", forward_dir(c), c.ring.name)


def _check_forward_dir_distinct(c: Config) -> str | None:
    if not (c.forward.enabled and c.forward.raw):
        return None
    d = forward_dir(c)
    for key, other in (("overflow.dir", c.overflow.dir), ("results.dir", c.results.dir)):
        if _nested(d, other):
            return (f"the forwarder's spill directory {toml_str(str(d))} must not be inside"
                    f" {key} or contain it")
    if c.stage.workers and _nested(d, stage_dir(c)):
        return (f"the forwarder's spill directory {toml_str(str(d))} must not be inside the"
                " stage's directory or contain it")
    return None


@dataclass(frozen=True, slots=True)
class Rule:
    """A check across keys; skipped when one of ``keys`` is itself invalid."""

    keys: tuple[str, ...]  # the first one is named in the message
    check: Callable[[Config], str | None]


RULES: tuple[Rule, ...] = (
    Rule(("spamd.timeout", "workers.heartbeat_timeout", "spamd.address", "scanner.kind"),
         _check_heartbeat),
    Rule(("spamd.timeout", "spamd.extra_args", "spamd.address", "scanner.kind"),
         _check_child_timeout),
    Rule(("spamd.connect_timeout", "spamd.timeout", "spamd.address", "scanner.kind"),
         _check_connect_timeout),
    Rule(("spamd.address", "spamd.command", "scanner.kind"), _check_spamd_installed),
    Rule(("rspamd.address", "rspamd.command", "scanner.kind"), _check_rspamd_installed),
    Rule(("rspamd.timeout", "workers.heartbeat_timeout", "rspamd.address", "scanner.kind"),
         _check_rspamd_timeout),
    Rule(("rspamd.connect_timeout", "rspamd.timeout", "scanner.kind"),
         _check_rspamd_connect_timeout),
    Rule(("stage.address", "stage.workers", "scanner.kind"), _check_stage_learns_by_spamd),
    Rule(("ring.slots", "ring.slot_bytes"), _check_ring_size),
    Rule(("overflow.max_bytes", "ingest.max_message_bytes"), _check_overflow_cap),
    Rule(("results.dir", "overflow.dir"), _check_results_outside_overflow),
    Rule(("overflow.dir", "ring.name"), _check_overflow_not_ring),
    Rule(("stage.dir", "stage.workers", "overflow.dir", "ring.name"), _check_stage_not_ring),
    Rule(("ingest.socket", "ingest.submit_socket", "ingest.lmtp_socket"), _check_distinct_sockets),
    Rule(("archive.dir", "overflow.dir"), _check_archive_outside_overflow),
    Rule(("stage.timeout", "stage.workers", "workers.heartbeat_timeout"), _check_stage_timeout),
    Rule(("stage.workers", "stage.address", "spamd.address"), _check_stage_spamd),
    Rule(("stage.address", "stage.workers", "spamd.address"), _check_stage_pool),
    Rule(("service.group", "service.user"), _check_service_group),
    Rule(("blocklist.expire_days", "blocklist.window_days"), _check_blocklist_expiry),
    Rule(("forward.tls_cert_file", "forward.tls_key_file"), _check_forward_tls_pair),
    Rule(("forward.creds_file", "forward.nkey_seed_file"), _check_forward_one_credential),
    Rule(("forward.spill_dir", "forward.enabled", "forward.raw", "overflow.dir", "ring.name"),
         _check_forward_not_ring),
    Rule(("forward.spill_dir", "forward.enabled", "forward.raw", "overflow.dir", "results.dir",
          "stage.dir", "stage.workers"), _check_forward_dir_distinct),
)


def cross_key_problems(config: Config, invalid: set[str]) -> list[str]:
    """What the rules find wrong in ``config``, each as "section.key: problem".

    ``invalid`` holds the keys already reported as bad by themselves; a rule
    reading one of them is skipped.
    """
    problems = []
    for rule in RULES:
        if invalid.isdisjoint(rule.keys):
            problem = rule.check(config)
            if problem:
                problems.append(f"{rule.keys[0]}: {problem}")
    return problems
