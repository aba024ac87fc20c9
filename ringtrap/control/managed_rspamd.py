"""The rspamd the supervisor runs itself: ``scanner.kind = "rspamd"``, address "managed".

Its whole configuration is ringtrap's: a top-level ``rspamd.conf`` in a
private directory beside the ingest socket, which includes rspamd's stock
rules (what ``$CONFDIR/common.conf`` includes but the Redis-backed Bayes
classifier) and declares one worker only: the normal
worker, on a Unix socket beside the ingest socket.  No proxy, no
controller, no fuzzy storage.  ``LOCAL_CONFDIR`` points at the private
directory, so the host's ``/etc/rspamd/local.d`` changes nothing, and there
its ``local.d`` files turn off the modules that query the network unless
``rspamd.network`` is set.  ``RUNDIR`` and ``LOGDIR`` are the private
directory too; ``DBDIR`` is ``rspamd.db_dir``, kept across starts, because
rspamd compiles its Hyperscan databases there on a first start (tens of
seconds) and reuses them afterwards.

rspamd runs in the foreground (``-f``), logs to its standard error with
each line's severity, and the supervisor relays the lines (``spamd_log``).
It has booted once a process of its own answers ``GET /ping`` on its socket.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
from pathlib import Path

from ringtrap import config as configmod
from ringtrap.config import Config

log = logging.getLogger(__name__)

# The users a managed rspamd started by root runs its workers as (without service.user).
RSPAMD_ROOT_USERS = ("_rspamd", "nobody")

# modules that look names up or fetch from the network, off unless rspamd.network
NETWORK_MODULES = ("asn", "arc", "bimi", "dcc", "dkim", "dmarc", "emails", "fuzzy_check",
                   "hfilter", "mx_check", "rbl", "spf", "surbl", "url_redirector", "whitelist")


def managed_rspamd_socket(cfg: Config) -> Path:
    """Where a managed rspamd's normal worker listens: beside the ingest socket."""
    return cfg.ingest.socket.parent / "rspamd.sock"


def rspamd_conf_dir(cfg: Config) -> Path:
    """The managed rspamd's private LOCAL_CONFDIR, RUNDIR and LOGDIR, beside its socket."""
    return cfg.ingest.socket.parent / "rspamd"


def rspamd_address(cfg: Config) -> str:
    """The managed rspamd's address (its socket); ``rspamd.address`` when there is none."""
    if cfg.rspamd.address.kind == "managed":
        return f"unix:{managed_rspamd_socket(cfg)}"
    return str(cfg.rspamd.address)


def rspamd_addresses(cfg: Config) -> tuple[str, ...]:
    """The rspamd hosts workers scan on: the managed socket, or each of ``rspamd.address``."""
    if cfg.rspamd.address.kind == "managed":
        return (rspamd_address(cfg),)
    return cfg.rspamd.address.hosts()


def _ucl(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def rspamd_files(cfg: Config) -> dict[str, str]:
    """The managed rspamd's configuration: file name (under its directory) -> text."""
    count = cfg.rspamd.workers or cfg.workers.count
    sock = managed_rspamd_socket(cfg)
    files = {
        "rspamd.conf": f"""\
# Written by ringtrap at each start of a managed rspamd: edits are lost.
# $CONFDIR/common.conf without statistic.conf: its Bayes classifier needs Redis,
# and ringtrap learns through spamd only.
lua = "$RULESDIR/rspamd.lua";
.include "$CONFDIR/metrics.conf"
.include "$CONFDIR/actions.conf"
.include "$CONFDIR/groups.conf"
.include "$CONFDIR/composites.conf"
.include "$CONFDIR/modules.conf"
.include "$CONFDIR/settings.conf"
modules {{
    path = "${{PLUGINSDIR}}";
    fallback_path = "${{SHAREDIR}}/lua";
}}
options {{
    pidfile = "$RUNDIR/rspamd.pid";
    .include "$CONFDIR/options.inc"
    .include(try=true; priority=1,duplicate=merge) "$LOCAL_CONFDIR/local.d/options.inc"
}}
logging {{
    type = "console";
    level = "info";
    color = false;
    log_severity = true;
}}
worker "normal" {{
    bind_socket = {_ucl(f"{sock} mode=0600")};
    .include "$CONFDIR/worker-normal.inc"
    count = {count};
}}
""",
    }
    dns = []
    if cfg.rspamd.nameservers:
        dns.append("nameserver = [" + ", ".join(_ucl(n) for n in cfg.rspamd.nameservers)
                   + "];")
    if not cfg.rspamd.network:
        # the lookups left (a client's PTR, say) should cost little when nothing answers
        dns += ["timeout = 1s;", "retransmits = 1;"]
    if dns:
        files["local.d/options.inc"] = "dns {\n    " + "\n    ".join(dns) + "\n}\n"
    if not cfg.rspamd.network:
        for module in NETWORK_MODULES:
            files[f"local.d/{module}.conf"] = "enabled = false;\n"
    return files


def write_rspamd_config(cfg: Config) -> Path:
    """Write :func:`rspamd_files` into :func:`rspamd_conf_dir`, replacing what was there.

    Each file is replaced by rename: an rspamd starting meanwhile reads the
    old file or the new, never half of one.  Returns the directory.
    """
    d = rspamd_conf_dir(cfg)
    files = rspamd_files(cfg)
    (d / "local.d").mkdir(mode=0o750, parents=True, exist_ok=True)
    for old in (d / "local.d").iterdir():
        if f"local.d/{old.name}" not in files:
            old.unlink()
    for name, text in files.items():
        path = d / name
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return d


def rspamd_root_user() -> str | None:
    """The user a managed rspamd started by root runs its workers as; None if none exists."""
    import pwd

    for name in RSPAMD_ROOT_USERS:
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    return None


def rspamd_argv(cfg: Config) -> list[str]:
    """The managed rspamd's command line: foreground, ringtrap's config, private dirs."""
    exe = configmod.find_spamd(cfg.rspamd.command) or cfg.rspamd.command
    d = rspamd_conf_dir(cfg)
    argv = [exe, "-f", "-c", str(d / "rspamd.conf"), f"--var=LOCAL_CONFDIR={d}",
            f"--var=RUNDIR={d}", f"--var=LOGDIR={d}", f"--var=DBDIR={cfg.rspamd.db_dir}"]
    if os.geteuid() == 0:
        user = rspamd_root_user()
        if user is None:
            argv.append("--insecure")  # no unprivileged user to run the workers as
        else:
            import grp
            import pwd

            group = grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name
            argv += ["-u", user, "-g", group]
    return argv


def rspamd_answers_as(path: Path, pid: int, timeout: float = 1.0) -> bool:
    """True if the rspamd listening on ``path`` is process ``pid`` (or its worker) and answers.

    SO_PEERCRED names the process that listens: rspamd's main process or
    one of its workers, whose parent is then ``pid``.  An rspamd left by an
    older supervisor answers on the same path but is not ours.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(path))
            creds = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            peer = struct.unpack("3i", creds)[0]
            if peer != pid and _parent_of(peer) != pid:
                return False
            s.sendall(b"GET /ping HTTP/1.1\r\nHost: localhost\r\n\r\n")
            reply = b""
            while len(reply) < 1024 and (chunk := s.recv(1024)):
                reply += chunk
        except OSError:
            return False
    return reply.startswith(b"HTTP/1.") and reply.rstrip().endswith(b"pong")


def _parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # the command name in parentheses may hold spaces: the fields start after the last ")"
    return int(stat[stat.rindex(b")") + 2 :].split()[1])
