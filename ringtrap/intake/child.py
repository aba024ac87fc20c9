"""The ingest process: its entry point after the fork, its signals, its HUP reload.

The supervisor binds the sockets and forks; :func:`child_main` attaches the
ring, serves an :class:`~ringtrap.ingest_socket.IngestServer` until it is
stopped or orphaned, and applies the reloadable keys (:data:`RELOADED`) of
a configuration the supervisor has accepted.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
from pathlib import Path
from types import FrameType

from ringtrap import config as configmod
from ringtrap.base import logs
from ringtrap.base.states import Role
from ringtrap.config import Config
from ringtrap.ingest_socket import IngestServer
from ringtrap.overflow import Overflow
from ringtrap.ring import Ring

log = logging.getLogger(__name__)


class _ChildSignals:
    """The ingest child's signal dispositions; the handlers only record.

    Installed before anything else in the child, so a TERM or HUP that comes
    while the ring is being attached meets these handlers, not the default
    action; a stop asked before the server exists is applied once it does.
    """

    __slots__ = ("drain", "reload", "reopen", "server", "stop_graceful", "stop_now")

    def __init__(self, drain: float) -> None:
        self.drain = drain
        self.server: IngestServer | None = None
        self.stop_graceful = False
        self.stop_now = False
        self.reopen = False
        self.reload = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._term)
        signal.signal(signal.SIGINT, self._quit)
        signal.signal(signal.SIGQUIT, self._quit)
        signal.signal(signal.SIGUSR1, self._usr1)
        # the supervisor forwards a reload it has accepted
        signal.signal(signal.SIGHUP, self._hup)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)

    def attach(self, server: IngestServer) -> None:
        self.server = server
        if self.stop_now:
            server.stop(graceful=False)
        elif self.stop_graceful:
            server.stop(graceful=True, drain_timeout=self.drain)

    def _term(self, signum: int, frame: FrameType | None) -> None:
        self.stop_graceful = True
        if self.server is not None:
            self.server.stop(graceful=True, drain_timeout=self.drain)

    def _quit(self, signum: int, frame: FrameType | None) -> None:
        self.stop_now = True
        if self.server is not None:
            self.server.stop(graceful=False)

    def _usr1(self, signum: int, frame: FrameType | None) -> None:
        self.reopen = True  # the loop reopens the log file (logrotate)

    def _hup(self, signum: int, frame: FrameType | None) -> None:
        self.reload = True  # the loop loads the configuration again


def child_main(
    cfg: Config,
    listener: socket.socket,
    row_index: int,
    *,
    submit: socket.socket | None = None,
    lmtp: socket.socket | None = None,
    config_path: Path | None = None,
) -> int:
    """Run the ingest in a forked child; return its exit code (0: clean stop).

    ``listener`` is the raw socket; ``submit`` and ``lmtp`` the optional
    session sockets, all bound by the supervisor.

    Expects the parent's fork hygiene to have run (signals reset, foreign fds
    closed, title set).  TERM stops gracefully, INT and QUIT at once, USR1
    reopens the log file, HUP loads ``config_path`` again and applies its
    reloadable keys (the supervisor sends it once it has accepted the file;
    without a file HUP does nothing); the loop also stops gracefully when
    the parent is gone.  If this process dies at any point, nothing it
    answered OK is lost and the rest is recovered as the crash model of
    :mod:`ringtrap.ingest_socket` says; a failure to start is logged and
    returns 1.
    """
    ppid = os.getppid()
    signals = _ChildSignals(_drain_timeout(cfg))
    signals.install()
    try:
        ring = Ring.attach(cfg.ring.name)
    except Exception:
        log.exception("ingest cannot attach the ring %r", cfg.ring.name)
        return 1
    try:
        return _serve_child(cfg, (listener, submit, lmtp), ring, row_index, signals, ppid,
                            config_path)
    except Exception:
        log.exception("ingest failed")
        return 1
    finally:
        ring.close()


def _serve_child(
    cfg: Config,
    listeners: tuple[socket.socket, socket.socket | None, socket.socket | None],
    ring: Ring,
    row_index: int,
    signals: _ChildSignals,
    ppid: int,
    config_path: Path | None = None,
) -> int:
    ing = cfg.ingest
    overflow = Overflow(cfg.overflow.dir, cfg.overflow.max_bytes)
    row = ring.table.register(Role.INGEST, 0, row=row_index)
    listener, submit, lmtp = listeners
    server = IngestServer(
        listener,
        ring,
        overflow,
        max_message_bytes=ing.max_message_bytes,
        idle_timeout=ing.idle_timeout,
        max_connections=ing.max_connections,
        message_timeout=ing.message_timeout,
        submit_max_connections=ing.submit_max_connections,
        lmtp_max_connections=ing.lmtp_max_connections,
        row=row,
        submit_listener=submit,
        lmtp_listener=lmtp,
    )
    # the wake-up byte cuts the select short after a handler has run
    signal.set_wakeup_fd(server.wakeup_fd, warn_on_full_buffer=False)
    signals.attach(server)
    log.info("ingest serving (ring %s, overflow %s)", ring.name, overflow.path)
    try:
        orphaned = False
        while not server.finished:
            server.serve_once(1.0)
            if signals.reopen:
                signals.reopen = False
                logs.reopen()
            if signals.reload:
                signals.reload = False
                cfg = _reload(cfg, config_path, server, signals)
            if not orphaned and os.getppid() != ppid:
                orphaned = True
                log.warning("supervisor (pid %d) is gone: finishing and exiting", ppid)
                server.stop(graceful=True, drain_timeout=signals.drain)
    finally:
        signal.set_wakeup_fd(-1)
        server.close()
    return 0


# The keys the running ingest takes on HUP; every other key it reads is
# restart-only (config.restart_only()), which a test checks.
RELOADED = frozenset({
    "ingest.max_message_bytes",
    "ingest.idle_timeout",
    "ingest.message_timeout",
    "ingest.max_connections",
    "ingest.submit_max_connections",
    "ingest.lmtp_max_connections",
    "overflow.max_bytes",
    "supervisor.graceful_timeout",
})


def _drain_timeout(cfg: Config) -> float:
    # well inside the supervisor's own deadline, so clients still get an answer
    return min(10.0, cfg.supervisor.graceful_timeout / 2)


def _reload(
    cfg: Config, path: Path | None, server: IngestServer, signals: _ChildSignals
) -> Config:
    """Load ``path`` again and apply it; the configuration now in force.

    The file is the one the supervisor has just accepted; a file that fails
    to load now (edited again in between) leaves everything as it was.
    """
    if path is None:
        return cfg
    try:
        new = configmod.keep_restart_only(configmod.load(path), cfg)
    except (configmod.ConfigError, OSError) as e:
        log.error("HUP: configuration refused, keeping the running one:\n%s", e)
        return cfg
    server.reconfigure(new)
    signals.drain = _drain_timeout(new)
    changed = [key for key in configmod.changed_keys(cfg, new) if key in RELOADED]
    log.info("HUP: ingest applied %s", ", ".join(changed) or "no changes")
    return new


__all__ = ["RELOADED", "child_main"]
