"""The supervisor: the one main process of the unit, parent of everything else.

It owns the children (one ingest, ``workers.count`` workers, optionally a
managed spamd or rspamd), the ring's lifecycle (create or adopt, unlink after a clean
drain), recovery of what a dead child held, signals, the daily purge and
systemd notification.  It never looks at message content.

The main loop follows one pattern: signal handlers only put the signal on a
queue; the loop waits on that queue for at most a second, dispatches to a
``handle_<name>`` method, then always runs housekeeping — reap, recover,
heartbeats, reconcile the children with the desired state, purge, title.
Restarts, reloads and shutdown are all "change the desired state, let the
next tick close the gap".

The loop's parts live beside it in ``ringtrap/control``: ``child`` (one
child's state machine and exit classification), ``liveness`` (heartbeats,
boots, a hung ring-lock holder), ``adopt`` (the ring across supervisors,
recovery of dead children's claims), ``setup`` (directories, pidfile, the
drop to the service user), ``fork`` (a fresh child's boot), ``purge``,
``managed_spamd``, ``managed_rspamd`` and ``seam`` (the OS calls, faked by the logic tests).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
import signal
import socket
import time
from enum import Enum
from pathlib import Path

from ringtrap import config as configmod
from ringtrap.base import logs, modes, privileges, systemd
from ringtrap.base.counters import C
from ringtrap.base.exits import EX_CONFIG, EX_OK, EX_SOFTWARE
from ringtrap.base.privileges import PrivilegeError
from ringtrap.base.proc import Identity
from ringtrap.base.states import SCANNER_ROLES, ChildState, ExitCause, ProcState, Role
from ringtrap.base.titles import set_title
from ringtrap.config import Config
from ringtrap.control import adopt, blockfiles, fork, liveness
from ringtrap.control import metrics as metricsmod
from ringtrap.control import purge as purgemod
from ringtrap.control.adopt import Recovery, Stores
from ringtrap.control.blockwriter import BlocklistWriter
from ringtrap.control.child import (
    RESTART_COUNTERS,
    Child,
    classify,
    describe_status,
    gave_up,
    note_exit,
    restart_delay,
    set_state,
    stop_next,
)
from ringtrap.control.managed_rspamd import (
    managed_rspamd_socket,
    rspamd_answers_as,
    rspamd_argv,
    rspamd_files,
    write_rspamd_config,
)
from ringtrap.control.managed_spamd import (
    PingWatch,
    managed_spamd_socket,
    spamd_answers_as,
    spamd_argv,
)
from ringtrap.control.purge import next_purge
from ringtrap.control.seam import OS
from ringtrap.control.setup import (
    Runtime,
    SetupError,
    remove_pidfile,
    side_sockets,
    write_pidfile,
)
from ringtrap.overflow import Overflow
from ringtrap.ring import Ring
from ringtrap.store.proctable import ProcRow
from ringtrap.store.segment import DEFAULT_ROWS, unlink_name

log = logging.getLogger(__name__)

SUPERVISOR_ROW = 0
INGEST_ROW = 1
FIRST_WORKER_ROW = 2

# the longest a turn of the loop waits for the ring lock: a live holder is
# killed if it is hung (RingLock.check_lock), and what needed the lock is retried
RING_LOCK_PATIENCE = 0.2


class Phase(Enum):
    """The supervisor's desired state; shutdown is a phase, never an exception."""

    RUNNING = "running"
    DRAINING = "draining"  # TERM: stop intake, finish in-flight, persist the ring
    STOPPING = "stopping"  # INT/QUIT: stop now, leave the ring for adoption
    DONE = "done"


class Supervisor:
    """Runs the trap; see the module docstring.  Use :meth:`run`."""

    def __init__(self, cfg: Config, config_path: Path | None = None, os_: OS | None = None) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.os = os_ or OS()
        self.phase = Phase.RUNNING
        self.generation = 0
        self.children: list[Child] = []
        self.signals: queue.SimpleQueue[int] = queue.SimpleQueue()
        self.ring: Ring | None = None
        self.overflow: Overflow | None = None
        self.stage_store: Overflow | None = None  # the slower stage's spill directory
        self.forward_store: Overflow | None = None  # raw messages waiting for the forwarder
        self.row: ProcRow | None = None
        self.listener: socket.socket | None = None
        # the ingest's session sockets by kind ("submit", "lmtp"), when configured
        self.side_listeners: dict[str, socket.socket] = {}
        self.exit_code = EX_OK
        self.drained = False  # TERM: persist the ring on the way out
        self.drain_deadline = 0.0
        # what this start made, so a start refused halfway removes exactly that
        self._made_ring = False
        self.runtime = Runtime()
        # what a stop that ran out of time had to kill, for the last log line
        self.cut_processes = 0
        self.cut_messages = 0
        self.next_purge_at = 0.0
        self.spamd_watch = PingWatch()
        self.last_title = 0.0
        self._old_handlers: dict[int, object] = {}
        self.metrics: metricsmod.MetricsServer | None = None
        # WATCHDOG=1 is sent from housekeeping only, so it stops when the loop stalls
        self.watchdog_every = systemd.watchdog_interval()
        self.last_watchdog = 0.0
        # dead children whose recovery found the ring lock held: retried each turn
        self.recovery = Recovery()
        # the blocklist files, rewritten every blocklist.interval by a short-lived child
        self.blocklist = BlocklistWriter()

    def _on_signal(self, signum: int, frame: object) -> None:
        # only record: no logging, no reaping, no I/O (see STYLE rule 1)
        self.signals.put(signum)

    def install_signals(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP,
                    signal.SIGUSR1, signal.SIGCHLD):
            self._old_handlers[sig] = signal.signal(sig, self._on_signal)

    def handle_term(self) -> None:
        if self.phase is Phase.RUNNING:
            log.info("TERM: draining (stop intake, finish in-flight work, persist the ring)")
            self.begin_drain()
        elif self.phase is Phase.DRAINING:
            log.warning("second TERM: stopping now")
            self.begin_stop()

    def handle_int(self) -> None:
        if self.phase in (Phase.RUNNING, Phase.DRAINING):
            log.info("stopping fast; the ring is kept for the next start")
            self.begin_stop()

    handle_quit = handle_int

    def handle_hup(self) -> None:
        if self.phase is Phase.RUNNING:
            self.reload()

    def handle_usr1(self) -> None:
        logs.reopen()
        for c in self.children:
            if c.state is ChildState.RUNNING and c.role not in SCANNER_ROLES:
                self._signal(c, signal.SIGUSR1)
        log.info("log files reopened")

    def handle_chld(self) -> None:
        pass  # housekeeping reaps

    def run(self) -> int:
        """Set up, supervise until stopped, tear down; returns the exit code."""
        try:
            self.setup()
        except SetupError as e:
            log.error("%s", e)
            self.teardown_after_failed_setup()
            return EX_CONFIG
        systemd.notify(ready=1, status=self.status_line(), mainpid=os.getpid())
        set_title("supervisor", self.status_line())
        log.info("ringtrap running: %s", self.status_line())
        wait = min(1.0, self.watchdog_every or 1.0)
        while self.phase is not Phase.DONE:
            try:
                signum = self.signals.get(timeout=wait)
            except queue.Empty:
                signum = 0
            while signum:
                self.dispatch(signum)
                try:
                    signum = self.signals.get_nowait()
                except queue.Empty:
                    signum = 0
            self.housekeeping()
        self.teardown()
        return self.exit_code

    def dispatch(self, signum: int) -> None:
        name = signal.Signals(signum).name.lower().removeprefix("sig")
        handler = getattr(self, f"handle_{name}", None)
        if handler is not None:
            handler()

    def setup(self) -> None:
        """Create or adopt the stores, bind the socket, start the children.

        With ``service.user`` set and started as root, everything is created
        as root, handed to that user, and privileges are dropped before the
        first child is forked.
        """
        cfg = self.cfg
        set_title("supervisor", "starting")
        try:
            target = privileges.needed(cfg.service.user)
            if target is not None:
                target = privileges.resolve(cfg.service.user, cfg.service.group)
        except PrivilegeError as e:
            raise SetupError(str(e)) from None
        self.install_signals()
        self.runtime.make_dirs(cfg)
        self.runtime.note(cfg.overflow.dir)
        try:
            self.overflow = Overflow(cfg.overflow.dir, cfg.overflow.max_bytes,
                                     quarantine_max_bytes=cfg.overflow.quarantine_max_bytes)
        except OSError as e:
            raise SetupError(f"overflow.dir {cfg.overflow.dir}: {e}") from None
        self.ring = self._open_ring()
        self.row = self.ring.table.register(Role.SUPERVISOR, 0, row=SUPERVISOR_ROW)
        self.row.set_state(ProcState.IDLE)
        n = self.overflow.recover_dead()
        if n:
            log.info("requeued %d overflow messages held by processes that died", n)
            self.row.add(C.RECOVERED_OVERFLOW, n)
        if cfg.stage.workers:
            from ringtrap.work import stage

            self.runtime.note(configmod.stage_dir(cfg))
            try:
                self.stage_store = stage.open_store(cfg)
            except OSError as e:
                raise SetupError(f"stage.dir {configmod.stage_dir(cfg)}: {e}") from None
            n = self.stage_store.recover_dead()
            if n:
                log.info("requeued %d stage messages held by processes that died", n)
        if cfg.forward.enabled and cfg.forward.raw:
            from ringtrap.work import forward

            self.runtime.note(configmod.forward_dir(cfg))
            try:
                self.forward_store = forward.open_store(cfg)
            except OSError as e:
                raise SetupError(f"forward.spill_dir {configmod.forward_dir(cfg)}: {e}") from None
            n = self.forward_store.recover_dead()
            if n:
                log.info("requeued %d raw messages held by a forwarder that died", n)
        from ringtrap.intake.sockets import bind_socket

        try:
            self.listener = bind_socket(cfg.ingest.socket, cfg.ingest.socket_mode,
                                        cfg.ingest.socket_group)
        except (OSError, RuntimeError) as e:
            raise SetupError(f"ingest.socket {cfg.ingest.socket}: {e}") from None
        self.listener.set_inheritable(False)
        for kind, path in side_sockets(cfg):
            try:
                side = bind_socket(path, cfg.ingest.socket_mode, cfg.ingest.socket_group)
            except (OSError, RuntimeError) as e:
                raise SetupError(f"ingest.{kind}_socket {path}: {e}") from None
            side.set_inheritable(False)
            self.side_listeners[kind] = side
        # the sockets are ours now, so no live trap uses this runtime directory (or
        # its pidfile: written only now, a start refused above leaves another's alone)
        adopt.stop_orphan_spamd(cfg)
        if configmod.managed_spamd_learns(cfg):
            self.runtime.prepare_bayes_dir(cfg, target)
        if configmod.runs_managed_rspamd(cfg):
            self.runtime.prepare_rspamd_dirs(cfg, target)
        write_pidfile(cfg)
        if target is not None:
            self.runtime.hand_over(cfg, target, self.ring, stage=self.stage_store is not None,
                                   forward=self.forward_store is not None)
        if cfg.metrics.listen is not None:
            self._start_metrics()
        if configmod.runs_managed_spamd(cfg):
            self.children.append(Child(Role.SPAMD, 0, -1))
        if configmod.runs_managed_rspamd(cfg):
            self.children.append(Child(Role.RSPAMD, 0, -1))
        self.children.append(Child(Role.INGEST, 0, INGEST_ROW))
        for i in range(cfg.workers.count):
            self.children.append(Child(Role.WORKER, i, FIRST_WORKER_ROW + i))
        for i in range(cfg.stage.workers if self.stage_store is not None else 0):
            # stage rows count down from the last, clear of a pool that grows on reload
            self.children.append(Child(Role.STAGE, i, self.ring.rows - 1 - i))
        if cfg.forward.enabled:
            # the row below the stage's: stage.workers is restart-only, so it never moves
            self.children.append(Child(Role.FORWARDER, 0,
                                       self.ring.rows - 1 - cfg.stage.workers))
        self.next_purge_at = next_purge(self.os.time(), cfg.overflow.purge_at)
        # from now on a turn never waits long on the ring lock (see housekeeping)
        self.ring.lock.patience = RING_LOCK_PATIENCE
        self.reconcile()

    def _start_metrics(self) -> None:
        listen = self.cfg.metrics.listen
        assert listen is not None
        collector = metricsmod.TrapCollector(self.cfg.ring.name, self.cfg.overflow.dir,
                                             self.cfg.overflow.max_bytes,
                                             blocklist_state=blockfiles.state_path(self.cfg))
        try:
            self.metrics = metricsmod.start(listen.host, listen.port, collector)
        except (OSError, ImportError) as e:
            collector.close()
            raise SetupError(f"metrics.listen {listen}: {e}") from None
        host, port = self.metrics.address
        log.info("metrics on http://%s:%d/metrics", f"[{host}]" if ":" in host else host, port)

    def _stop_metrics(self) -> None:
        if self.metrics is not None:
            self.metrics.stop()
            self.metrics = None

    def _open_ring(self) -> Ring:
        rows = max(DEFAULT_ROWS,
                   FIRST_WORKER_ROW + self.cfg.workers.count + self.cfg.stage.workers + 1
                   + int(self.cfg.forward.enabled))
        ring, self._made_ring = adopt.open_ring(self.cfg, self.overflow, self.os, rows)
        return ring

    def teardown_after_failed_setup(self) -> None:
        """Undo a refused start: remove what it made, and nothing it found."""
        self._stop_metrics()
        self._kill_all(signal.SIGKILL)
        self._reap_blocking(5.0)
        self._close_listener()  # only the sockets it bound
        if self.ring is not None:
            # a ring it made holds nothing yet: no ingest ran to fill it
            made = self._made_ring and self.ring.snapshot().used == 0
            self.ring.close()
            if made:
                unlink_name(self.cfg.ring.name)
        self.runtime.undo(self.cfg)

    def teardown(self) -> None:
        """After the last child is gone: persist or keep the ring, close up."""
        systemd.notify(stopping=1, status="stopped")
        self.blocklist.stop(self.os)
        self._stop_metrics()
        if self.ring is not None and self.overflow is not None:
            adopt.close_ring(self.cfg.ring.name, self.ring, self.overflow, self.row,
                             persist=self.drained)
        if self.listener is not None or self.side_listeners:
            self._close_listener()
        adopt.forget_spamd(self.cfg)
        remove_pidfile(self.cfg)
        how = "drain" if self.drained else "fast stop"
        if self.cut_processes:
            log.warning("ringtrap stopped: the %s ran out of time and cut %d processes holding "
                        "%d messages (requeued, no attempt counted)", how, self.cut_processes,
                        self.cut_messages, extra={"event": "stopped", "cut_processes":
                                                  self.cut_processes,
                                                  "cut_messages": self.cut_messages})
        else:
            log.info("ringtrap stopped: %s clean", how,
                     extra={"event": "stopped", "cut_processes": 0, "cut_messages": 0})

    def begin_drain(self) -> None:
        self.phase = Phase.DRAINING
        self.drained = True
        systemd.notify(stopping=1, status="draining")
        self.drain_deadline = self.os.monotonic() + self.cfg.supervisor.graceful_timeout
        self._close_listener()
        # the ingest first, so everything it accepted is stored before workers stop
        for c in self.children:
            c.retire = True
        for c in self.children:
            if c.role is Role.INGEST:
                self._stop_child(c, signal.SIGTERM)

    def begin_stop(self) -> None:
        self.phase = Phase.STOPPING
        self.drained = False
        systemd.notify(stopping=1, status="stopping")
        self._close_listener()
        for c in self.children:
            c.retire = True
            if c.role not in SCANNER_ROLES:
                self._stop_child(c, signal.SIGQUIT)
        self.drain_deadline = self.os.monotonic() + 5.0

    def _close_listener(self) -> None:
        for kind, side in self.side_listeners.items():
            with contextlib.suppress(OSError):
                side.close()
            with contextlib.suppress(OSError):
                os.unlink(getattr(self.cfg.ingest, f"{kind}_socket"))
        self.side_listeners = {}
        if self.listener is None:
            return
        with contextlib.suppress(OSError):
            self.listener.close()
        self.listener = None
        # clients now fail fast (and defer) instead of waiting in a dead backlog;
        # after a privilege drop the directory may not be ours: the next start
        # replaces the stale file
        with contextlib.suppress(OSError):
            os.unlink(self.cfg.ingest.socket)

    def reload(self) -> list[str]:
        """HUP: load the configuration again; replace workers and stages one at a time.

        Returns the changed keys that are restart-only: they keep their
        running values until the next start, and the log says so.
        """
        if self.config_path is None:
            log.info("HUP: no configuration file; nothing to reload")
            return []
        systemd.notify(reloading=1, status="reloading",
                       monotonic_usec=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)
        try:
            new = configmod.load(self.config_path)
        except (configmod.ConfigError, OSError) as e:
            log.error("HUP: configuration refused, keeping the running one:\n%s", e)
            systemd.notify(ready=1, status=self.status_line())
            return []
        old = self.cfg
        changed = configmod.changed_keys(old, new)
        restart_only = configmod.restart_only()
        waiting = [key for key in changed if key in restart_only]
        if waiting:
            log.warning("HUP: %s changed: restart-only, takes effect at the next start",
                        ", ".join(waiting))
            new = configmod.keep_restart_only(new, old)
        applied = [key for key in changed if key not in restart_only]
        managed = configmod.runs_managed_spamd(new)
        spamd_before = spamd_argv(self.cfg) if managed else []
        rspamd_before = (rspamd_argv(self.cfg), rspamd_files(self.cfg))
        self.cfg = new
        self.generation += 1
        if configmod.runs_managed_rspamd(new) and (rspamd_argv(new),
                                                   rspamd_files(new)) != rspamd_before:
            # its count follows workers.count: rewritten now, read at its restart
            write_rspamd_config(new)
            for c in self.children:
                if c.role is Role.RSPAMD and c.state is ChildState.RUNNING:
                    log.info("HUP: restarting the managed rspamd")
                    self._stop_child(c, signal.SIGTERM)
        if managed and spamd_argv(new) != spamd_before:
            # --max-children follows workers.count: a pool resized needs a spamd resized
            for c in self.children:
                if c.role is Role.SPAMD and c.state is ChildState.RUNNING:
                    log.info("HUP: restarting the managed spamd: %s",
                             " ".join(spamd_argv(new)[1:]))
                    self._stop_child(c, signal.SIGTERM)
        if self.overflow is not None:
            self.overflow.max_bytes = new.overflow.max_bytes
            self.overflow.quarantine_max_bytes = new.overflow.quarantine_max_bytes
        self.next_purge_at = next_purge(self.os.time(), new.overflow.purge_at)
        workers = [c for c in self.children if c.role is Role.WORKER and not c.retire]
        for c in workers[new.workers.count :]:
            c.retire = True
            if c.state is ChildState.RUNNING:
                self._stop_child(c, signal.SIGTERM)
            elif c.state is ChildState.WAITING:
                set_state(c, ChildState.EXITED, "pool shrank")
        used = {c.index for c in self.children if c.role is Role.WORKER and not c.retire}
        for i in range(new.workers.count):
            if i not in used:
                self.children.append(Child(Role.WORKER, i, FIRST_WORKER_ROW + i,
                                           generation=self.generation))
        log.info("HUP: configuration %s loaded (generation %d, %d workers); applied: %s",
                 self.config_path, self.generation, new.workers.count,
                 ", ".join(applied) or "no changes")
        systemd.notify(ready=1, status=self.status_line())
        return waiting

    def _roll_workers(self) -> None:
        """Bring the children to the current config generation.

        Workers and stages are replaced one at a time; the ingest keeps its
        connections and is told to reload (HUP) once it has registered, so
        one that was still booting with the old configuration hears it too.
        """
        for c in self.children:
            if (c.role is Role.INGEST and c.state is ChildState.RUNNING
                    and c.generation < self.generation and self._registered(c)):
                c.generation = self.generation
                self._signal(c, signal.SIGHUP)
        workers = [c for c in self.children
                   if c.role in (Role.WORKER, Role.STAGE, Role.FORWARDER)]
        if any(c.state is ChildState.STOPPING and not c.retire for c in workers):
            return  # one replacement in flight
        for c in workers:
            if c.state is ChildState.RUNNING and not c.retire and c.generation < self.generation:
                log.info("replacing %s with the new configuration", c.name)
                self._stop_child(c, signal.SIGTERM)
                return

    def _registered(self, c: Child) -> bool:
        """True once ``c`` holds its process-table row: its own signal handlers are in place."""
        if self.ring is None:
            return False
        return any(r.row == c.row and r.pid == c.pid for r in self.ring.table.read_rows())

    def housekeeping(self) -> None:
        self.reap()
        if self.ring is not None:
            self.check_ring_lock()
            if self.recovery.pending:
                self.recovery.retry(self._stores())
            if self.row:
                self.row.beat()
            # wall clock: the history is kept by calendar hour
            self.ring.table.tick_history(self.os.time())
        now = self.os.monotonic()
        if self.phase is Phase.RUNNING:
            self.check_boots(now)
            self.check_heartbeats(now)
            self._roll_workers()
            self.reconcile()
            self.check_spamd(now)
            if self.os.time() >= self.next_purge_at:
                self.purge(scheduled=True)
                self.next_purge_at = next_purge(self.os.time(), self.cfg.overflow.purge_at)
            self.blocklist.tick(self.cfg, self.os, self._old_handlers)
        else:
            self.progress_shutdown(now)
        if now - self.last_title >= 1.0:
            self.last_title = now
            line = self.status_line()
            set_title("supervisor", line)
            systemd.notify(status=self.notify_status(line))
        if self.watchdog_every and now - self.last_watchdog >= self.watchdog_every:
            # only here, at the end of a full turn: a stuck loop stops the pings
            self.last_watchdog = now
            systemd.notify(watchdog=1)

    def check_ring_lock(self) -> None:
        """Break the ring lock of a dead holder; kill a live holder that is hung."""
        assert self.ring is not None
        liveness.check_ring_lock(self.ring, self.children, self.os, self._signal, self.row)

    def progress_shutdown(self, now: float) -> None:
        """Stop the children in their order; kill what still runs at the deadline."""
        for c in stop_next(self.children, draining=self.phase is Phase.DRAINING):
            self._stop_child(c, signal.SIGTERM)
        if now > self.drain_deadline:
            late = [c for c in self.children if c.active]
            if late:
                log.warning("shutdown deadline passed: killing %s",
                            ", ".join(c.name for c in late))
                for c in late:
                    c.cut = True
                    self._signal(c, signal.SIGKILL)
                self._reap_blocking(5.0)
        if all(c.state in (ChildState.EXITED, ChildState.WAITING) for c in self.children):
            self.phase = Phase.DONE

    def reconcile(self) -> None:
        """Start every child that should run and whose restart time has come."""
        now = self.os.monotonic()
        for c in self.children:
            if c.state is ChildState.WAITING and not c.retire and now >= c.restart_at:
                self.spawn(c)
        self.children = [c for c in self.children if c.state is not ChildState.EXITED]

    def check_heartbeats(self, now: float) -> None:
        """Abort children whose heartbeat stalled, kill those that outlive the abort."""
        if self.ring is None:
            return
        aborted = liveness.check_heartbeats(self.children, self.ring.table.read_rows(), now,
                                            self.cfg.workers.heartbeat_timeout, self._signal)
        if aborted and self.row:
            self.row.add(C.HEARTBEAT_KILLS, aborted)

    def check_spamd(self, now: float) -> None:
        """PING the managed spamd (or rspamd) now and then; restart it after repeated misses."""
        c = next((c for c in self.children if c.role in SCANNER_ROLES
                  and c.state is ChildState.RUNNING), None)
        if c is not None and self.spamd_watch.failed(self.cfg, c.started, now,
                                                     rspamd=c.role is Role.RSPAMD):
            log.error("restarting the managed %s", c.name)
            self._stop_child(c, signal.SIGTERM, retire=False)

    def purge(self, scheduled: bool = False) -> tuple[int, int]:
        """Drop the overflow backlog now; returns (files, bytes) dropped."""
        assert self.overflow is not None
        days = self.cfg.overflow.quarantine_retention_days if scheduled else None
        return purgemod.purge(self.overflow, self.stage_store, self.row, days, self.os.time(),
                              forward=self.forward_store)

    def spawn(self, c: Child) -> None:
        """Fork one child; its boot runs in a fixed order (see :mod:`ringtrap.control.fork`)."""
        pid = fork.start(self.os, c, self.cfg, self.config_path, self._old_handlers,
                         self.listener, self.side_listeners, crash_code=EX_SOFTWARE)
        c.started_as(pid, self.os.identity(pid), self.os.monotonic(), self.generation)
        if c.role in SCANNER_ROLES:
            adopt.record_spamd(self.cfg, c.ident)
        log.info("started %s (pid %d)", c.name, pid,
                 extra={"event": "start", "child": c.name, "child_pid": pid})

    def _signal(self, c: Child, sig: int) -> None:
        if c.pid <= 0:
            return
        # a pid is not an identity: never signal a process that merely reuses it
        if c.ident is not None and self.os.identity(c.pid) != c.ident:
            return
        with contextlib.suppress(ProcessLookupError):
            self.os.kill(c.pid, sig)

    def _stop_child(self, c: Child, sig: int, retire: bool | None = None) -> None:
        if retire is not None:
            c.retire = retire
        if c.state is ChildState.RUNNING:
            set_state(c, ChildState.STOPPING, signal.Signals(sig).name)
            c.stop_sent = self.os.monotonic()
            self._signal(c, sig)
        elif c.state is ChildState.WAITING and c.retire:
            set_state(c, ChildState.EXITED, "not restarted")

    def _kill_all(self, sig: int) -> None:
        for c in self.children:
            if c.active:
                self._signal(c, sig)

    def reap(self) -> None:
        """Collect every exited child and act on how it exited."""
        while True:
            try:
                pid, status = self.os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            c = next((c for c in self.children if c.pid == pid), None)
            if c is None:
                self.blocklist.reaped(pid, status)
                continue
            self.on_exit(c, status)

    def _reap_blocking(self, timeout: float) -> None:
        deadline = self.os.monotonic() + timeout
        while self.os.monotonic() < deadline:
            self.reap()
            if not any(c.active for c in self.children):
                return
            self.os.sleep(0.05)

    def on_exit(self, c: Child, status: int) -> None:
        now = self.os.monotonic()
        booted = liveness.booted(c, self.ring)
        cause = classify(c, status, booted)
        how = describe_status(status)
        ident = c.ident
        pid = c.pid
        c.pid = 0
        c.ident = None
        if c.role not in SCANNER_ROLES:
            held = self._recover(c, ident, count_attempt=cause is not ExitCause.CUT)
        else:
            held = 0
            # spamd's (and rspamd's) children outlive a parent that died hard (SIGKILL, OOM) and
            # keep serving the old socket; they are in its process group (setsid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                self.os.killpg(pid, signal.SIGKILL)
        note_exit(c, cause, booted, now)
        if cause is ExitCause.CUT:
            self.cut_processes += 1
            self.cut_messages += held
        level = {ExitCause.REQUESTED: logging.INFO,
                 ExitCause.CUT: logging.WARNING}.get(cause, logging.ERROR)
        log.log(level, "%s exited (%s): %s", c.name, how, cause.name.lower().replace("_", " "),
                extra={"event": "exit", "child": c.name, "status": how,
                       "cause": cause.name.lower()})
        if c.retire or self.phase is not Phase.RUNNING:
            set_state(c, ChildState.EXITED, how)
            return
        if gave_up(c):
            log.critical("%s failed to start %d times in a row; giving up", c.name, c.failures)
            self.exit_code = EX_SOFTWARE
            set_state(c, ChildState.EXITED, "gave up")
            self.begin_drain()
            return
        delay = restart_delay(c, cause)
        c.restart_at = now + delay
        set_state(c, ChildState.WAITING, how)
        if self.row and cause is not ExitCause.REQUESTED:
            self.row.add(C.RESTARTS)
            self.row.add(RESTART_COUNTERS[cause])
        if cause is not ExitCause.REQUESTED:
            log.warning("restarting %s in %.1f s", c.name, delay,
                        extra={"event": "restart", "child": c.name, "delay_s": delay})

    def check_boots(self, now: float) -> None:
        """Note which running children have finished their boot."""
        for c in self.children:
            if c.state is not ChildState.RUNNING or c.booted:
                continue
            if c.role not in SCANNER_ROLES:
                liveness.booted(c, self.ring)
            elif now - c.boot_checked >= 1.0:
                c.boot_checked = now
                if c.role is Role.RSPAMD:
                    c.booted = rspamd_answers_as(managed_rspamd_socket(self.cfg), c.pid)
                else:
                    c.booted = spamd_answers_as(managed_spamd_socket(self.cfg), c.pid)
                if c.booted:
                    log.info("managed %s (pid %d) answers", c.name, c.pid)

    def _stores(self) -> Stores:
        return Stores(self.ring, self.overflow, self.stage_store, self.row, self.forward_store)

    def _recover(self, c: Child, ident: Identity | None, count_attempt: bool = True) -> int:
        return self.recovery.recover(self._stores(), c, ident, count_attempt)

    def status_line(self) -> str:
        workers = sum(1 for c in self.children
                      if c.role is Role.WORKER and c.state is ChildState.RUNNING)
        parts = [f"{workers} workers"]
        if self.ring is not None:
            parts.append(f"ring {100 * self.ring.used_slots() // self.ring.slots}%")
        if self.overflow is not None:
            parts.append(f"overflow {self.overflow.ready_count()}")
        if self.phase is not Phase.RUNNING:
            parts.append(self.phase.value)
        return " ".join(parts)

    def notify_status(self, line: str) -> str:
        """The STATUS= line systemd shows: the title's ``line`` plus the message totals."""
        if self.ring is None:
            return line
        t = self.ring.snapshot().totals()
        return (f"{line}; accepted {t[C.ACCEPTED_RING] + t[C.ACCEPTED_OVERFLOW]},"
                f" processed {t[C.PROCESSED]}, spamd errors {t[C.SPAMD_ERRORS]}")


def run(cfg: Config, config_path: Path | None = None) -> int:
    """Run the trap in the foreground until stopped; the exit code for the shell."""
    modes.restrict_umask()  # before the log file: nothing the trap writes is for others
    logs.setup(cfg.supervisor.log_level, cfg.supervisor.log_file, cfg.supervisor.log_format)
    try:
        return Supervisor(cfg, config_path).run()
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM):
            log.error("%s (run as root or set paths you can write in the configuration)", e)
            return EX_CONFIG
        raise
