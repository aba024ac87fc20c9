"""The spamd the supervisor runs itself (``spamd.address = "managed"``).

Where it listens, the command line it is started with (sized to the worker
pool), and the probe that says it has booted: it answers PING on its socket
as the process that bound it.  Started, stopped and restarted by the
supervisor like any other child; its lines are relogged by ``spamd_log``.
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

# The user a managed spamd started by root switches to (without service.user).
SPAMD_ROOT_USER = "nobody"
# a booted spamd is sent PING this often, and restarted after this many misses in a row
PING_INTERVAL = 30.0
PING_FAILURES = 3
# how long a spamd may take to load its rules before the first PING
RULES_LOAD = 60.0


def managed_spamd_socket(cfg: Config) -> Path:
    """Where a managed spamd listens: beside the ingest socket."""
    return cfg.ingest.socket.parent / "spamd.sock"


def spamd_address(cfg: Config) -> str | None:
    """The address of the scanning spamd (a pool's first), or None when scanning is off."""
    a = cfg.spamd.address
    if a.kind == "off":
        return None
    if a.kind == "pool":
        return a.hosts()[0]
    if a.kind == "managed":
        return f"unix:{managed_spamd_socket(cfg)}"
    return str(a)


def scanner_addresses(cfg: Config) -> tuple[str, ...] | None:
    """The addresses workers scan on, or None when scanning is off."""
    if cfg.spamd.address.kind == "pool":
        return cfg.spamd.address.hosts()
    one = spamd_address(cfg)
    return None if one is None else (one,)


def spamd_argv(cfg: Config) -> list[str]:
    """The managed spamd's command line: one child per worker unless set, kept exact."""
    exe = configmod.find_spamd(cfg.spamd.command) or cfg.spamd.command
    children = cfg.spamd.children or cfg.workers.count
    sock = managed_spamd_socket(cfg)
    argv = [exe, f"--socketpath={sock}", "--socketmode=0600",
            f"--max-children={children}", f"--min-children={children}",
            "--round-robin", "--syslog=stderr", "--nouser-config"]
    if os.geteuid() == 0:
        argv.append(f"--username={SPAMD_ROOT_USER}")
    if configmod.managed_spamd_tells(cfg):
        argv.append("--allow-tell")
    if configmod.managed_spamd_learns(cfg):
        argv.append(f"--cf=bayes_path {cfg.spamd.bayes_dir / 'bayes'}")
    argv.extend(cfg.spamd.extra_args)
    return argv


def spamd_answers_as(path: Path, pid: int, timeout: float = 1.0) -> bool:
    """True if the spamd listening on ``path`` is process ``pid`` and answers PING.

    SO_PEERCRED names the process that bound the listening socket: a spamd
    left by an older supervisor answers PING on the same path but is not
    ours, and ours has not booted while it holds the socket.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(path))
            creds = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            if struct.unpack("3i", creds)[0] != pid:
                return False
            s.sendall(b"PING SPAMC/1.5\r\n\r\n")
            reply = b""
            while len(reply) < 256 and (chunk := s.recv(256)):
                reply += chunk
        except OSError:
            return False
    return reply.startswith(b"SPAMD/") and b"PONG" in reply


class PingWatch:
    """The running managed spamd's liveness: a PING now and then, counted misses."""

    def __init__(self) -> None:
        self.next_ping = 0.0  # monotonic
        self.failures = 0  # missed in a row

    def failed(self, cfg: Config, started: float, now: float, rspamd: bool = False) -> bool:
        """True when the spamd running since ``started`` has missed too many PINGs in a row.

        Sends at most one PING per call, and only when one is due;
        ``rspamd``: the managed scanner is rspamd (``GET /ping``).
        """
        if now < self.next_ping or now - started < RULES_LOAD:
            return False
        self.next_ping = now + PING_INTERVAL
        from ringtrap.scan.scanner import ScanError, Scanner
        from ringtrap.scan.spamd import SpamdClient

        client: Scanner
        if rspamd:
            from ringtrap.control.managed_rspamd import rspamd_address
            from ringtrap.scan.rspamd import RspamdClient

            client = RspamdClient(rspamd_address(cfg), connect_timeout=2.0, timeout=5.0)
        else:
            client = SpamdClient(f"unix:{managed_spamd_socket(cfg)}", connect_timeout=2.0,
                                 timeout=5.0)
        name = "rspamd" if rspamd else "spamd"
        try:
            client.ping()
        except ScanError as e:
            self.failures += 1
            log.warning("managed %s did not answer PING (%s), %d in a row", name, e,
                        self.failures)
            if self.failures >= PING_FAILURES:
                self.failures = 0
                return True
        else:
            self.failures = 0
        return False
