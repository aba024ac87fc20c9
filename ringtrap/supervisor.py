"""The supervisor: the one main process of the unit, parent of everything else.

It owns the children (one ingest, ``workers.count`` workers, optionally a
managed spamd), the ring's lifecycle (create or adopt, unlink after a clean
drain), recovery of what a dead child held, signals, the daily purge and
systemd notification.  It never looks at message content.

The main loop follows one pattern: signal handlers only put the signal on a
queue; the loop waits on that queue for at most a second, dispatches to a
``handle_<name>`` method, then always runs housekeeping — reap, recover,
heartbeats, reconcile the children with the desired state, purge, title.
Restarts, reloads and shutdown are all "change the desired state, let the
next tick close the gap".
"""

from __future__ import annotations

import contextlib
import ctypes  # here, not in the child: after a privilege drop the stdlib may be unreadable
import datetime as dt
import errno
import grp
import logging
import os
import queue
import signal
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from ringtrap import config as configmod
from ringtrap import ring as ringmod
from ringtrap.base import logs, modes, privileges, proc, systemd
from ringtrap.base.counters import C
from ringtrap.base.exits import EX_CONFIG, EX_OK, EX_SOFTWARE
from ringtrap.base.privileges import PrivilegeError, Target
from ringtrap.base.proc import Identity
from ringtrap.base.states import ChildState, ExitCause, ProcState, Role
from ringtrap.base.titles import set_title
from ringtrap.config import Config
from ringtrap.control import metrics as metricsmod
from ringtrap.overflow import Overflow, OverflowFull
from ringtrap.ring import ProcRow, Ring
from ringtrap.work import child

log = logging.getLogger(__name__)

SUPERVISOR_ROW = 0
INGEST_ROW = 1
FIRST_WORKER_ROW = 2

# a booted child that dies within this long of starting is crash-looping: back off
MIN_UPTIME = 2.0
BACKOFF_MAX = 30.0
# a crash-looping child that booted is retried for ever, at most this far apart
CRASH_BACKOFF_FIRST = 0.5
CRASH_BACKOFF_MAX = 5.0
# consecutive boot failures (deaths before the boot finished) after which the unit gives up
MAX_BOOT_FAILURES = 5
# a child is given this long to register and beat before its heartbeat counts
BOOT_GRACE = 30.0
# the ingest beats every loop turn (<= 1 s); it may not stall longer than this
INGEST_HEARTBEAT_TIMEOUT = 30.0
# after SIGABRT for a stalled heartbeat, SIGKILL if still alive this much later
ABORT_GRACE = 5.0
# the longest a turn of the loop waits for the ring lock: a live holder is
# killed if it is hung (Ring.check_lock), and what needed the lock is retried
RING_LOCK_PATIENCE = 0.2
SPAMD_PING_INTERVAL = 30.0
SPAMD_PING_FAILURES = 3


class Kind(Enum):
    INGEST = "ingest"
    WORKER = "worker"
    SPAMD = "spamd"
    STAGE = "stage"  # a worker of the slower learn/report stage


class Phase(Enum):
    """The supervisor's desired state; shutdown is a phase, never an exception."""

    RUNNING = "running"
    DRAINING = "draining"  # TERM: stop intake, finish in-flight, persist the ring
    STOPPING = "stopping"  # INT/QUIT: stop now, leave the ring for adoption
    DONE = "done"


@dataclass
class Child:
    """One supervised child and its state machine (only _set_state moves it)."""

    kind: Kind
    index: int
    row: int  # process-table row, -1 for spamd (it does not attach to the ring)
    state: ChildState = ChildState.WAITING
    pid: int = 0
    ident: Identity | None = None
    started: float = 0.0  # monotonic
    restart_at: float = 0.0  # monotonic; when WAITING
    failures: int = 0  # consecutive boot failures
    crashes: int = 0  # consecutive deaths within MIN_UPTIME of a finished boot
    booted: bool = False  # its row left STARTING (spamd: it answered PING as the listener)
    boot_checked: float = 0.0  # monotonic; the managed spamd's last boot probe
    stop_sent: float = 0.0  # monotonic; when STOPPING
    abort_sent: float = 0.0  # monotonic; SIGABRT for a stalled heartbeat
    cut: bool = False  # SIGKILLed by us because a stop ran past its deadline
    retire: bool = False  # do not restart after it exits (pool shrank, replaced)
    generation: int = 0  # config generation it was started with

    @property
    def name(self) -> str:
        indexed = self.kind in (Kind.WORKER, Kind.STAGE)
        return f"{self.kind.value} {self.index}" if indexed else self.kind.value


_ALLOWED: dict[ChildState, set[ChildState]] = {
    ChildState.WAITING: {ChildState.RUNNING, ChildState.EXITED},
    ChildState.RUNNING: {ChildState.STOPPING, ChildState.WAITING, ChildState.EXITED},
    ChildState.STOPPING: {ChildState.WAITING, ChildState.EXITED},
    ChildState.EXITED: set(),
}


@dataclass
class OS:
    """The operating-system calls the supervisor makes, injectable for tests."""

    fork: Callable[[], int] = os.fork
    kill: Callable[[int, int], None] = os.kill
    waitpid: Callable[[int, int], tuple[int, int]] = os.waitpid
    killpg: Callable[[int, int], None] = os.killpg
    monotonic: Callable[[], float] = time.monotonic
    time: Callable[[], float] = time.time
    identity: Callable[[int], Identity | None] = field(
        default=lambda pid: (lambda s: Identity(pid, s) if s is not None else None)(
            proc.start_ticks(pid)
        )
    )


def next_purge(now: float, at: dt.time) -> float:
    """Epoch seconds of the next local ``at`` strictly after ``now``."""
    local = dt.datetime.fromtimestamp(now).astimezone()
    candidate = local.replace(hour=at.hour, minute=at.minute, second=0, microsecond=0)
    if candidate.timestamp() <= now:
        candidate = (local + dt.timedelta(days=1)).replace(
            hour=at.hour, minute=at.minute, second=0, microsecond=0
        )
    return candidate.timestamp()


def backoff_delay(failures: int) -> float:
    """Seconds to wait before restarting a child that failed its boot ``failures`` times."""
    return float(min(BACKOFF_MAX, 2 ** max(0, failures - 1)))


def crash_delay(crashes: int) -> float:
    """Seconds to wait before restarting a booted child that died soon ``crashes`` times.

    Zero for a child that ran a while: one crash costs no time.  A child
    killed over and over (a poison message, an operator's loop) is slowed
    down, never given up on: it booted, so it can run.
    """
    if crashes <= 0:
        return 0.0
    return min(CRASH_BACKOFF_MAX, CRASH_BACKOFF_FIRST * 2 ** (crashes - 1))


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


# The user a managed spamd started by root switches to (without service.user).
SPAMD_ROOT_USER = "nobody"


def managed_spamd_socket(cfg: Config) -> Path:
    """Where a managed spamd listens: beside the ingest socket."""
    return cfg.ingest.socket.parent / "spamd.sock"


def spamd_owner_file(cfg: Config) -> Path:
    """Where the supervisor records its managed spamd's identity: beside its socket."""
    return cfg.ingest.socket.parent / "spamd.owner"


def read_spamd_owner(path: Path) -> Identity | None:
    """The identity a ``spamd.owner`` file records, None if it is missing or unreadable."""
    try:
        pid, start = (int(v) for v in path.read_text().split())
    except (OSError, ValueError):
        return None
    return Identity(pid, start)


def spamd_address(cfg: Config) -> str | None:
    """The address workers use, or None when scanning is off."""
    a = cfg.spamd.address
    if a.kind == "off":
        return None
    if a.kind == "managed":
        return f"unix:{managed_spamd_socket(cfg)}"
    return str(a)


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
        self.row: ProcRow | None = None
        self.listener: socket.socket | None = None
        # the ingest's session sockets by kind ("submit", "lmtp"), when configured
        self.side_listeners: dict[str, socket.socket] = {}
        self.exit_code = EX_OK
        self.drained = False  # TERM: persist the ring on the way out
        self.drain_deadline = 0.0
        # what this start made, so a start refused halfway removes exactly that
        self._made_ring = False
        self._made_dirs: list[Path] = []
        # what a stop that ran out of time had to kill, for the last log line
        self.cut_processes = 0
        self.cut_messages = 0
        self.next_purge_at = 0.0
        self.spamd_next_ping = 0.0
        self.spamd_ping_failures = 0
        self.last_title = 0.0
        self._old_handlers: dict[int, object] = {}
        self.metrics: metricsmod.MetricsServer | None = None
        # WATCHDOG=1 is sent from housekeeping only, so it stops when the loop stalls
        self.watchdog_every = systemd.watchdog_interval()
        self.last_watchdog = 0.0
        # dead children whose recovery found the ring lock held: retried each turn
        self.pending_recovery: list[tuple[Child, Identity, bool]] = []

    # -- signals -------------------------------------------------------------

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
            if c.state is ChildState.RUNNING and c.kind is not Kind.SPAMD:
                self._signal(c, signal.SIGUSR1)
        log.info("log files reopened")

    def handle_chld(self) -> None:
        pass  # housekeeping reaps

    # -- lifecycle --------------------------------------------------------------

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
        created = set()
        for d in (cfg.ingest.socket.parent, cfg.results.dir):
            if not d.exists():
                created.add(d)
            self._made_dirs += _absent(d)
            d.mkdir(parents=True, exist_ok=True)
        self._restrict_runtime_dir(created)
        self._made_dirs += _absent(cfg.overflow.dir)
        try:
            self.overflow = Overflow(cfg.overflow.dir, cfg.overflow.max_bytes,
                                     quarantine_max_bytes=cfg.overflow.quarantine_max_bytes)
        except OSError as e:
            raise SetupError(f"overflow.dir {cfg.overflow.dir}: {e}") from None
        self.ring = self._open_ring()
        self.row = self.ring.register(Role.SUPERVISOR, 0, row=SUPERVISOR_ROW)
        self.row.set_state(ProcState.IDLE)
        n = self.overflow.recover_dead()
        if n:
            log.info("requeued %d overflow messages held by processes that died", n)
            self.row.add(C.RECOVERED_OVERFLOW, n)
        if cfg.stage.workers:
            from ringtrap.work import stage

            self._made_dirs += _absent(configmod.stage_dir(cfg))
            try:
                self.stage_store = stage.open_store(cfg)
            except OSError as e:
                raise SetupError(f"stage.dir {configmod.stage_dir(cfg)}: {e}") from None
            n = self.stage_store.recover_dead()
            if n:
                log.info("requeued %d stage messages held by processes that died", n)
        from ringtrap.intake.sockets import bind_socket

        try:
            self.listener = bind_socket(cfg.ingest.socket, cfg.ingest.socket_mode,
                                        cfg.ingest.socket_group)
        except (OSError, RuntimeError) as e:
            raise SetupError(f"ingest.socket {cfg.ingest.socket}: {e}") from None
        self.listener.set_inheritable(False)
        for kind, path in _side_sockets(cfg):
            try:
                side = bind_socket(path, cfg.ingest.socket_mode, cfg.ingest.socket_group)
            except (OSError, RuntimeError) as e:
                raise SetupError(f"ingest.{kind}_socket {path}: {e}") from None
            side.set_inheritable(False)
            self.side_listeners[kind] = side
        # the sockets are ours now, so no live trap uses this runtime directory (or
        # its pidfile: written only now, a start refused above leaves another's alone)
        self._stop_orphan_spamd()
        if configmod.managed_spamd_learns(cfg):
            self._prepare_bayes_dir(target)
        self._write_pidfile()
        if target is not None:
            self._become(target, created)
        if cfg.metrics.listen is not None:
            self._start_metrics()
        if cfg.spamd.address.kind == "managed":
            self.children.append(Child(Kind.SPAMD, 0, -1))
        self.children.append(Child(Kind.INGEST, 0, INGEST_ROW))
        for i in range(cfg.workers.count):
            self.children.append(Child(Kind.WORKER, i, FIRST_WORKER_ROW + i))
        for i in range(cfg.stage.workers if self.stage_store is not None else 0):
            # stage rows count down from the last, clear of a pool that grows on reload
            self.children.append(Child(Kind.STAGE, i, self.ring.rows - 1 - i))
        self.next_purge_at = next_purge(self.os.time(), cfg.overflow.purge_at)
        # from now on a turn never waits long on the ring lock (see housekeeping)
        self.ring.patience = RING_LOCK_PATIENCE
        self.reconcile()

    def _runtime_dir_is_ours(self, created: set[Path]) -> bool:
        runtime = self.cfg.ingest.socket.parent
        return runtime in created or str(runtime) == os.environ.get("RUNTIME_DIRECTORY")

    def _restrict_runtime_dir(self, created: set[Path]) -> None:
        """The sockets' directory, when it is ours: 0750, group ingest.socket_group.

        The group lets the MTA's delivery user through; a socket_mode that
        grants others (an alias run as nobody) grants them search (x) only.
        """
        cfg = self.cfg
        if not self._runtime_dir_is_ours(created):
            return
        runtime = cfg.ingest.socket.parent
        mode = 0o750 | (0o001 if cfg.ingest.socket_mode & 0o002 else 0)
        try:
            os.chmod(runtime, mode)
            if cfg.ingest.socket_group:
                os.chown(runtime, -1, grp.getgrnam(cfg.ingest.socket_group).gr_gid)
        except (OSError, KeyError) as e:
            raise SetupError(f"ingest.socket {runtime}: {e}") from None

    def _prepare_bayes_dir(self, t: Target | None) -> None:
        """Create spamd.bayes_dir for the user the managed spamd will run as.

        Before dropping root: spamd runs as ``t`` (service.user), as
        :data:`SPAMD_ROOT_USER` when started as root without one, or as us.
        Without a directory that user can write, TELL answers "did nothing".
        """
        d = self.cfg.spamd.bayes_dir
        new = [p for p in (d, *d.parents) if not p.exists()]
        try:
            d.mkdir(mode=0o750, parents=True, exist_ok=True)
            owner = t
            if owner is None and os.geteuid() == 0:
                owner = privileges.resolve(SPAMD_ROOT_USER)
            if owner is not None:
                privileges.chown_path(d, owner)
                for p in new[1:]:  # made just now under our umask: let spamd pass, not list
                    os.chmod(p, os.stat(p).st_mode & 0o7777 | 0o001)
        except (OSError, PrivilegeError) as e:
            raise SetupError(f"spamd.bayes_dir {d}: {e}") from None
        if owner is not None:
            for p in d.parents:
                st = os.stat(p)
                if not (st.st_mode & 0o001 or st.st_uid == owner.uid
                        or (st.st_mode & 0o010 and st.st_gid == owner.gid)):
                    log.warning("spamd.bayes_dir %s: %s is not searchable by %s, the managed"
                                " spamd's user: it will learn nothing", d, p, owner.user)
                    break
        log.info("the managed spamd learns into %s", d)

    def _become(self, t: Target, created: set[Path]) -> None:
        """Hand the trap's files to ``t``, load what children run, drop root for good."""
        cfg = self.cfg
        assert self.ring is not None
        try:
            runtime = cfg.ingest.socket.parent
            # the socket's directory only when it is ours: made now, or by systemd for us
            if self._runtime_dir_is_ours(created):
                privileges.own_dir(runtime, t)
                group = cfg.ingest.socket_group  # the MTA still passes through
                if group:
                    privileges.chown_path(runtime, t, gid=grp.getgrnam(group).gr_gid)
            privileges.own_dir(cfg.results.dir, t)
            for f in cfg.results.dir.iterdir():
                privileges.chown_path(f, t)
            moved = privileges.own_dir(cfg.overflow.dir, t, tree=True)
            if cfg.archive.dir is not None:  # workers write the Maildir archive
                cfg.archive.dir.mkdir(parents=True, exist_ok=True)
                privileges.own_dir(cfg.archive.dir, t, tree=True)
            if self.stage_store is not None:  # scan workers hand on, stage workers take
                privileges.own_dir(configmod.stage_dir(cfg), t, tree=True)
            self.ring.chown(t.uid, t.gid)
            group = cfg.ingest.socket_group
            for path in [cfg.ingest.socket, *(p for _, p in _side_sockets(cfg))]:
                privileges.chown_path(path, t, gid=grp.getgrnam(group).gr_gid if group else None)
            if cfg.supervisor.log_file is not None and cfg.supervisor.log_file.exists():
                privileges.chown_path(cfg.supervisor.log_file, t)
            privileges.preload_package()
            if cfg.metrics.listen is not None:
                metricsmod.load_client()
            privileges.drop(t)
        except (OSError, PrivilegeError, ImportError) as e:
            raise SetupError(f"service.user {t.user}: {e}") from None
        configmod.keep_root_defaults()
        log.info("running as user %s (uid %d, gid %d); %d overflow entries handed over",
                 t.user, t.uid, t.gid, moved)

    def _start_metrics(self) -> None:
        listen = self.cfg.metrics.listen
        assert listen is not None
        collector = metricsmod.TrapCollector(self.cfg.ring.name, self.cfg.overflow.dir,
                                             self.cfg.overflow.max_bytes)
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
        cfg = self.cfg.ring
        rows = max(ringmod.DEFAULT_ROWS,
                   FIRST_WORKER_ROW + self.cfg.workers.count + self.cfg.stage.workers + 1)
        try:
            ring = Ring.create(cfg.name, cfg.slots, cfg.slot_bytes, mode=cfg.mode, rows=rows)
        except ringmod.RingExists:
            pass
        else:
            self._made_ring = True
            return ring
        try:
            old = Ring.attach(cfg.name)
        except ringmod.RingLayoutError as e:
            raise SetupError(
                f"{e}; if no ringtrap is running, drain it with the version that made it "
                f"(start it, then stop it with TERM) or remove it, and the messages in it, "
                f"with: rm -f {' '.join(ringmod.shm_paths(cfg.name))}"
            ) from None
        owner = old.owner
        if owner.pid != os.getpid() and proc.is_alive(owner):
            old.close()
            raise SetupError(
                f"ring {cfg.name!r} belongs to a running ringtrap supervisor (pid {owner.pid})"
            )
        self._stop_old_generation(old)
        if (old.slots, old.slot_bytes) != (cfg.slots, cfg.slot_bytes):
            log.warning("ring geometry changed (%d x %d -> %d x %d): moving its messages to "
                        "the overflow and recreating it", old.slots, old.slot_bytes,
                        cfg.slots, cfg.slot_bytes)
            old.recover_dead()
            moved = self._evacuate(old)
            left = old.snapshot().used
            old.close()
            if left:
                raise SetupError(
                    f"ring {cfg.name!r} still holds {left} messages after moving {moved} to "
                    f"the overflow; start with its old geometry "
                    f"({old.slots} x {old.slot_bytes}) to process them"
                )
            ringmod.unlink_name(cfg.name)
            log.info("moved %d messages from the old ring", moved)
            ring = Ring.create(cfg.name, cfg.slots, cfg.slot_bytes, mode=cfg.mode, rows=rows)
            self._made_ring = True
            return ring
        old.close()
        ring = Ring.adopt(cfg.name)
        snap = ring.snapshot()
        log.info("adopted ring %r (generation %d): %d ready, %d requeued from dead processes",
                 cfg.name, snap.generation, snap.ready, snap.requeued)
        return ring

    def _stop_orphan_spamd(self) -> None:
        """Stop a managed spamd that a crashed supervisor left running.

        Run as root, spamd switches users and the kernel drops its
        parent-death signal: it outlives a SIGKILLed supervisor, keeps the
        socket, and every new spamd fails to bind.  Its identity was recorded
        at its start; what is still running of its session is stopped.
        """
        path = spamd_owner_file(self.cfg)
        old = read_spamd_owner(path)
        if old is None:
            return
        if proc.session_members(old):
            log.warning("stopping the managed spamd (pid %d) left by the previous supervisor",
                        old.pid)
            n = proc.stop_session(old, self.cfg.supervisor.graceful_timeout)
            log.info("stopped %d spamd processes of the previous supervisor", n)
        with contextlib.suppress(OSError):
            path.unlink()

    def _record_spamd(self, ident: Identity | None) -> None:
        """Write the managed spamd's identity for the next supervisor (see above)."""
        if ident is None:
            return
        path = spamd_owner_file(self.cfg)
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.write_text(f"{ident.pid} {ident.start}\n")
            os.replace(tmp, path)
        except OSError as e:
            log.warning("cannot record the managed spamd in %s: %s; a spamd left by a crash "
                        "will not be stopped by the next start", path, e)

    def _forget_spamd(self) -> None:
        """Remove the record of a managed spamd that has exited."""
        path = spamd_owner_file(self.cfg)
        old = read_spamd_owner(path)
        if old is not None and not proc.session_members(old):
            with contextlib.suppress(OSError):
                path.unlink()

    def _stop_old_generation(self, ring: Ring) -> None:
        """Stop processes of a crashed supervisor's generation still using the ring."""
        me = os.getpid()
        alive = [r for r in ring.read_rows()
                 if r.pid != me and proc.is_alive((r.pid, r.start))]
        if not alive:
            return
        log.warning("stopping %d processes left by the previous supervisor", len(alive))
        for r in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(r.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.cfg.supervisor.graceful_timeout
        while time.monotonic() < deadline and any(
            proc.is_alive((r.pid, r.start)) for r in alive
        ):
            time.sleep(0.1)
        for r in alive:
            if proc.is_alive((r.pid, r.start)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(r.pid, signal.SIGKILL)
        while any(proc.is_alive((r.pid, r.start)) for r in alive):
            time.sleep(0.05)

    def _evacuate(self, ring: Ring) -> int:
        """Move every READY message of ``ring`` to the overflow; returns the count."""
        assert self.overflow is not None
        moved = 0
        recounted = False
        while True:
            c = ring.claim(timeout=0.0)
            if c is None:
                if ring.snapshot().ready == 0:
                    return moved
                if recounted:  # READY but out of reach: leave the ring in place
                    log.error("ring %r: %d ready messages could not be taken",
                              ring.name, ring.snapshot().ready)
                    return moved
                ring.recount_strays()
                recounted = True
                continue
            recounted = False
            try:
                self.overflow.spill(c.msgid, c.data, c.attempts)
            except OverflowFull:
                # the cap must not lose an accepted message: store it anyway
                self.overflow.quarantine_bytes(c.msgid, c.data, c.attempts,
                                               "overflow full while persisting the ring")
            ring.ack(c)
            moved += 1

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
                ringmod.unlink_name(self.cfg.ring.name)
        for d in sorted(self._made_dirs, key=lambda p: len(p.parts), reverse=True):
            _remove_empty_tree(d)
        self._remove_pidfile()

    def teardown(self) -> None:
        """After the last child is gone: persist or keep the ring, close up."""
        systemd.notify(stopping=1, status="stopped")
        self._stop_metrics()
        ring = self.ring
        if ring is not None and self.overflow is not None:
            # every child is gone: a held lock is a dead one's (or a foreign
            # process's), and waiting for it is all that is left to do
            ring.patience = ringmod.OWNER_PATIENCE
            res = ring.recover_dead()
            if res.requeued and self.row:
                self.row.add(C.RECOVERED_RING, res.requeued)
            if self.drained:
                moved = self._evacuate(ring)
                if self.row:
                    self.row.add(C.DRAINED_TO_OVERFLOW, moved)
                if moved:
                    log.info("persisted %d ring messages to the overflow", moved)
                if ring.snapshot().used == 0:
                    ring.close()
                    ringmod.unlink_name(self.cfg.ring.name)
                else:  # pragma: no cover - a live foreign claimer
                    log.warning("ring still holds claimed messages; keeping it for adoption")
                    ring.close()
            else:
                ring.close()
        if self.listener is not None or self.side_listeners:
            self._close_listener()
        self._forget_spamd()
        self._remove_pidfile()
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
            if c.kind is Kind.INGEST:
                self._stop_child(c, signal.SIGTERM)

    def begin_stop(self) -> None:
        self.phase = Phase.STOPPING
        self.drained = False
        systemd.notify(stopping=1, status="stopping")
        self._close_listener()
        for c in self.children:
            c.retire = True
            if c.kind is not Kind.SPAMD:
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

    # -- reload ----------------------------------------------------------------

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
        managed = new.spamd.address.kind == "managed"
        spamd_before = self._spamd_argv() if managed else []
        self.cfg = new
        self.generation += 1
        if managed and self._spamd_argv() != spamd_before:
            # --max-children follows workers.count: a pool resized needs a spamd resized
            for c in self.children:
                if c.kind is Kind.SPAMD and c.state is ChildState.RUNNING:
                    log.info("HUP: restarting the managed spamd: %s",
                             " ".join(self._spamd_argv()[1:]))
                    self._stop_child(c, signal.SIGTERM)
        if self.overflow is not None:
            self.overflow.max_bytes = new.overflow.max_bytes
            self.overflow.quarantine_max_bytes = new.overflow.quarantine_max_bytes
        self.next_purge_at = next_purge(self.os.time(), new.overflow.purge_at)
        workers = [c for c in self.children if c.kind is Kind.WORKER and not c.retire]
        for c in workers[new.workers.count :]:
            c.retire = True
            if c.state is ChildState.RUNNING:
                self._stop_child(c, signal.SIGTERM)
            elif c.state is ChildState.WAITING:
                self._set_state(c, ChildState.EXITED, "pool shrank")
        used = {c.index for c in self.children if c.kind is Kind.WORKER and not c.retire}
        for i in range(new.workers.count):
            if i not in used:
                self.children.append(Child(Kind.WORKER, i, FIRST_WORKER_ROW + i,
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
            if (c.kind is Kind.INGEST and c.state is ChildState.RUNNING
                    and c.generation < self.generation and self._registered(c)):
                c.generation = self.generation
                self._signal(c, signal.SIGHUP)
        workers = [c for c in self.children if c.kind in (Kind.WORKER, Kind.STAGE)]
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
        return any(r.row == c.row and r.pid == c.pid for r in self.ring.read_rows())

    # -- housekeeping ----------------------------------------------------------

    def housekeeping(self) -> None:
        self.reap()
        if self.ring is not None:
            self.check_ring_lock()
            if self.pending_recovery:
                pending, self.pending_recovery = self.pending_recovery, []
                for c, ident, count_attempt in pending:
                    self._recover(c, ident, count_attempt)
            if self.row:
                self.row.beat()
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
        """Break the ring lock of a dead holder; kill a live holder that is hung.

        A holder that is stopped or has held the lock far longer than any
        critical section takes makes no progress and never will by itself:
        it is killed (a child of ours is then reaped and recovered as hung),
        and a later turn breaks its lock.  Nothing here waits on the lock.
        """
        assert self.ring is not None
        check = self.ring.check_lock(self.os.monotonic())
        if check.broken and self.row:
            self.row.add(C.LOCK_BREAKS)
        hung = check.hung
        if hung is None or hung.pid == os.getpid():
            return
        c = next((c for c in self.children if c.ident is not None
                  and tuple(c.ident) == tuple(hung)), None)
        name = c.name if c is not None else "a process outside the trap"
        log.error("%s (pid %d) holds the ring lock and is %s: killing it", name, hung.pid,
                  "stopped" if check.stopped else "stuck",
                  extra={"event": "lock_holder_kill", "holder_pid": hung.pid})
        if c is not None:
            if not c.abort_sent:
                c.abort_sent = self.os.monotonic()
            self._signal(c, signal.SIGKILL)
        elif proc.is_alive(hung):  # a pid is not an identity: only that process
            try:
                self.os.kill(hung.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError) as e:
                log.error("cannot kill pid %d: %s", hung.pid, e)
                return
        if self.row:
            self.row.add(C.LOCK_HOLDER_KILLS)

    def progress_shutdown(self, now: float) -> None:
        ingest_running = any(c.kind is Kind.INGEST and c.state in
                             (ChildState.RUNNING, ChildState.STOPPING) for c in self.children)
        if self.phase is Phase.DRAINING and not ingest_running:
            for c in self.children:
                if c.kind is Kind.WORKER and c.state is ChildState.RUNNING:
                    self._stop_child(c, signal.SIGTERM)
        scanning = any(c.kind in (Kind.INGEST, Kind.WORKER) and c.state in
                       (ChildState.RUNNING, ChildState.STOPPING) for c in self.children)
        if self.phase is Phase.DRAINING and not scanning:
            for c in self.children:
                if c.kind is Kind.STAGE and c.state is ChildState.RUNNING:
                    self._stop_child(c, signal.SIGTERM)
        workers_running = any(c.kind is not Kind.SPAMD and c.state in
                              (ChildState.RUNNING, ChildState.STOPPING)
                              for c in self.children)
        if not workers_running:
            for c in self.children:
                if c.kind is Kind.SPAMD and c.state is ChildState.RUNNING:
                    self._stop_child(c, signal.SIGTERM)
        if now > self.drain_deadline:
            late = [c for c in self.children if c.state in
                    (ChildState.RUNNING, ChildState.STOPPING)]
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
        if self.ring is None:
            return
        rows = {r.row: r for r in self.ring.read_rows()}
        now_ns = time.monotonic_ns()
        for c in self.children:
            if c.state is not ChildState.RUNNING or c.kind is Kind.SPAMD:
                continue
            if c.abort_sent:
                if now - c.abort_sent > ABORT_GRACE:
                    self._signal(c, signal.SIGKILL)
                continue
            r = rows.get(c.row)
            if r is None or c.ident is None or r.pid != c.pid:
                continue  # not registered yet
            limit = (INGEST_HEARTBEAT_TIMEOUT if c.kind is Kind.INGEST
                     else self.cfg.workers.heartbeat_timeout)
            if now - c.started < BOOT_GRACE and r.heartbeat_ns == 0:
                continue
            stalled = (now_ns - r.heartbeat_ns) / 1e9
            if stalled > limit:
                log.error("%s (pid %d) heartbeat stalled %.0f s (state %s, message %s): "
                          "aborting it", c.name, c.pid, stalled, r.state.name, r.msgid or "-")
                c.abort_sent = now
                self._signal(c, signal.SIGABRT)
                if self.row:
                    self.row.add(C.HEARTBEAT_KILLS)

    def check_spamd(self, now: float) -> None:
        managed = [c for c in self.children if c.kind is Kind.SPAMD
                   and c.state is ChildState.RUNNING]
        if not managed or now < self.spamd_next_ping:
            return
        c = managed[0]
        if now - c.started < 60.0:
            return  # still loading its rules
        self.spamd_next_ping = now + SPAMD_PING_INTERVAL
        from ringtrap.scan.spamd import SpamdClient, SpamdError

        try:
            SpamdClient(f"unix:{managed_spamd_socket(self.cfg)}", connect_timeout=2.0,
                        timeout=5.0).ping()
            self.spamd_ping_failures = 0
        except SpamdError as e:
            self.spamd_ping_failures += 1
            log.warning("managed spamd did not answer PING (%s), %d in a row", e,
                        self.spamd_ping_failures)
            if self.spamd_ping_failures >= SPAMD_PING_FAILURES:
                self.spamd_ping_failures = 0
                log.error("restarting the managed spamd")
                self._stop_child(c, signal.SIGTERM, retire=False)

    def purge(self, scheduled: bool = False) -> tuple[int, int]:
        """Drop the overflow backlog now; returns (files, bytes) dropped."""
        assert self.overflow is not None
        self.overflow.recover_dead()
        res = self.overflow.purge()
        if self.stage_store is not None:
            # the stage's backlog is dropped daily too: it may lag, never pile up
            self.stage_store.recover_dead()
            staged = self.stage_store.purge()
            log.info("dropped %d stage messages (%d bytes)", staged.count, staged.bytes)
        if scheduled:
            self._purge_quarantine()
        if self.row:
            self.row.add(C.PURGED_FILES, res.count)
            self.row.add(C.PURGED_BYTES, res.bytes)
        log.info("%s purge: dropped %d overflow messages (%d bytes)",
                 "daily" if scheduled else "requested", res.count, res.bytes,
                 extra={"event": "purge", "dropped": res.count, "dropped_bytes": res.bytes})
        return res.count, res.bytes

    def _purge_quarantine(self) -> None:
        """The daily purge's share of failed/, by overflow.quarantine_retention_days."""
        assert self.overflow is not None
        days, now = self.cfg.overflow.quarantine_retention_days, self.os.time()
        gone = self.overflow.purge_quarantine(days, now).count
        if self.stage_store is not None:
            gone += self.stage_store.purge_quarantine(days, now).count
        if self.row:
            self.row.add(C.PURGED_QUARANTINED, gone)
        if gone:
            log.info("daily purge: dropped %d quarantined messages", gone)

    # -- children ----------------------------------------------------------------

    def _set_state(self, c: Child, new: ChildState, why: str = "") -> None:
        if new not in _ALLOWED[c.state]:
            raise RuntimeError(f"illegal child transition {c.name}: {c.state.name} -> {new.name}")
        log.debug("%s: %s -> %s %s", c.name, c.state.name, new.name, why)
        c.state = new

    def spawn(self, c: Child) -> None:
        """Fork one child; its boot runs in a fixed order (see _child_boot)."""
        log_pipe: tuple[int, int] | None = None
        if c.kind is Kind.SPAMD:
            argv = self._spamd_argv()
            # spamd's stdout and stderr: relogged where the trap's own lines go
            log_pipe = os.pipe()
        listener = self.listener
        parent = os.getpid()
        pid = self.os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = EX_SOFTWARE
            try:
                _die_with_parent(parent)
                if log_pipe is not None:
                    os.dup2(log_pipe[1], 1)
                    os.dup2(log_pipe[1], 2)
                code = self._child_boot(c, listener,
                                        argv if c.kind is Kind.SPAMD else None)
            except BaseException:
                logging.getLogger(__name__).exception("%s failed", c.name)
            finally:
                os._exit(code)
        if log_pipe is not None:
            from ringtrap.control import spamd_log

            os.close(log_pipe[1])
            spamd_log.start(log_pipe[0])
        c.pid = pid
        c.ident = self.os.identity(pid)
        c.started = self.os.monotonic()
        c.abort_sent = 0.0
        c.stop_sent = 0.0
        c.cut = False
        c.booted = False
        c.boot_checked = 0.0
        c.generation = self.generation
        if c.kind is Kind.SPAMD:
            self._record_spamd(c.ident)
        self._set_state(c, ChildState.RUNNING, f"pid {pid}")
        log.info("started %s (pid %d)", c.name, pid,
                 extra={"event": "start", "child": c.name, "child_pid": pid})

    def _child_boot(self, c: Child, listener: socket.socket | None,
                    spamd_argv: list[str] | None) -> int:  # pragma: no cover - child
        # the boot order of ringtrap.work.child: signals, fds, random and log role
        # first; a child that is no ring user must not keep the parent's ring
        # mapping, and the spamd is exec'd, so every fd but stdio and the log goes
        keep: set[int] = set()
        if c.kind is Kind.INGEST and listener is not None:
            keep.add(listener.fileno())
            keep.update(side.fileno() for side in self.side_listeners.values())
        child.boot(c.name, self._old_handlers, keep)
        if spamd_argv is not None:
            os.setsid()  # its own group: our TERM to the group never races its children
            os.execvp(spamd_argv[0], spamd_argv)
        # then title, ring attach and loop, which are the role's own (its child_main)
        if c.kind is Kind.INGEST:
            from ringtrap.intake.child import child_main

            assert listener is not None
            return child_main(self.cfg, listener, c.row,
                              submit=self.side_listeners.get("submit"),
                              lmtp=self.side_listeners.get("lmtp"),
                              config_path=self.config_path)
        if c.kind is Kind.STAGE:
            from ringtrap.work import stage

            return stage.child_main(self.cfg, c.index, c.row, spamd_address(self.cfg))
        from ringtrap import worker

        return worker.child_main(self.cfg, c.index, c.row, spamd_address=spamd_address(self.cfg))

    def _spamd_argv(self) -> list[str]:
        cfg = self.cfg
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
            self._set_state(c, ChildState.STOPPING, signal.Signals(sig).name)
            c.stop_sent = self.os.monotonic()
            self._signal(c, sig)
        elif c.state is ChildState.WAITING and c.retire:
            self._set_state(c, ChildState.EXITED, "not restarted")

    def _kill_all(self, sig: int) -> None:
        for c in self.children:
            if c.state in (ChildState.RUNNING, ChildState.STOPPING):
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
                continue
            self.on_exit(c, status)

    def _reap_blocking(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.reap()
            if not any(c.state in (ChildState.RUNNING, ChildState.STOPPING)
                       for c in self.children):
                return
            time.sleep(0.05)

    def classify(self, c: Child, status: int, booted: bool) -> ExitCause:
        """The one place an exit is classified.

        ``booted``: the child finished its boot (see :meth:`_booted`).  Only a
        child that never did failed to start, however long it took to fail
        (a spamd that loads its rules and cannot bind) or however soon a
        booted one died (killed right after it registered).
        """
        if c.cut:
            return ExitCause.CUT
        if c.abort_sent:
            return ExitCause.HUNG
        if c.state is ChildState.STOPPING:
            return ExitCause.REQUESTED
        if not booted:
            return ExitCause.TOO_FAST
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
            return ExitCause.REQUESTED  # e.g. a worker recycled over its memory limit
        return ExitCause.CRASHED

    def on_exit(self, c: Child, status: int) -> None:
        now = self.os.monotonic()
        booted = self._booted(c)
        cause = self.classify(c, status, booted)
        how = _describe_status(status)
        ident = c.ident
        pid = c.pid
        c.pid = 0
        c.ident = None
        if c.kind is not Kind.SPAMD:
            held = self._recover(c, ident, count_attempt=cause is not ExitCause.CUT)
        else:
            held = 0
            # spamd's children outlive a parent that died hard (SIGKILL, OOM) and
            # keep serving the old socket; they are in its process group (setsid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                self.os.killpg(pid, signal.SIGKILL)
        c.failures = c.failures + 1 if cause is ExitCause.TOO_FAST else 0
        if booted:
            c.crashes = c.crashes + 1 if (cause is not ExitCause.REQUESTED
                                          and now - c.started < MIN_UPTIME) else 0
        if cause is ExitCause.CUT:
            self.cut_processes += 1
            self.cut_messages += held
        level = {ExitCause.REQUESTED: logging.INFO,
                 ExitCause.CUT: logging.WARNING}.get(cause, logging.ERROR)
        log.log(level, "%s exited (%s): %s", c.name, how, cause.name.lower().replace("_", " "),
                extra={"event": "exit", "child": c.name, "status": how,
                       "cause": cause.name.lower()})
        if c.retire or self.phase is not Phase.RUNNING:
            self._set_state(c, ChildState.EXITED, how)
            return
        if c.failures >= MAX_BOOT_FAILURES:
            log.critical("%s failed to start %d times in a row; giving up", c.name, c.failures)
            self.exit_code = EX_SOFTWARE
            self._set_state(c, ChildState.EXITED, "gave up")
            self.begin_drain()
            return
        if cause is ExitCause.TOO_FAST:
            delay = backoff_delay(c.failures)
        elif cause is ExitCause.REQUESTED:
            delay = 0.0
        else:
            delay = crash_delay(c.crashes)
        c.restart_at = now + delay
        self._set_state(c, ChildState.WAITING, how)
        if self.row and cause is not ExitCause.REQUESTED:
            self.row.add(C.RESTARTS)
            self.row.add(_RESTART_COUNTERS[cause])
        if cause is not ExitCause.REQUESTED:
            log.warning("restarting %s in %.1f s", c.name, delay,
                        extra={"event": "restart", "child": c.name, "delay_s": delay})

    def _booted(self, c: Child) -> bool:
        """Whether ``c`` finished its boot: remembered, or its row says so now.

        A ring child has booted once its process-table row (its own pid and
        start) has left STARTING: it attached, registered and reached its
        loop.  Read before its row is retired.
        """
        if c.booted or self.ring is None or c.ident is None or c.row < 0:
            return c.booted
        for r in self.ring.read_rows():
            if r.row == c.row and (r.pid, r.start) == tuple(c.ident):
                c.booted = r.state is not ProcState.STARTING
        return c.booted

    def check_boots(self, now: float) -> None:
        """Note which running children have finished their boot."""
        for c in self.children:
            if c.state is not ChildState.RUNNING or c.booted:
                continue
            if c.kind is not Kind.SPAMD:
                self._booted(c)
            elif now - c.boot_checked >= 1.0:
                c.boot_checked = now
                c.booted = spamd_answers_as(managed_spamd_socket(self.cfg), c.pid)
                if c.booted:
                    log.info("managed spamd (pid %d) answers", c.pid)

    def _recover(self, c: Child, ident: Identity | None, count_attempt: bool = True) -> int:
        """Requeue what a dead child held in the ring and the overflow; fold its row.

        ``count_attempt``: False when we killed it ourselves at a stop's
        deadline, so a merely slow message is not pushed towards quarantine.
        Returns how many messages were requeued.
        """
        if self.ring is None or self.overflow is None or ident is None:
            return 0
        try:
            res = self.ring.recover(ident, count_attempt=count_attempt)
        except ringmod.RingBusy as e:
            # a live process holds the lock: never wait for it here (the next
            # turns kill it if it is hung); the dead child's claims keep
            log.warning("%s: recovery waits for the ring lock (%s)", c.name, e)
            self.pending_recovery.append((c, ident, count_attempt))
            return 0
        n = self.overflow.recover(ident, count_attempt=count_attempt)
        if self.stage_store is not None:
            # a stage worker's claims, and a scan worker's half-written hand-off
            n += self.stage_store.recover(ident, count_attempt=count_attempt)
        if res.requeued or res.freed or n:
            log.warning("%s died holding %d ring and %d overflow messages: requeued "
                        "(%d half-written slots freed)", c.name, res.requeued, n, res.freed,
                        extra={"event": "recovery", "child": c.name,
                               "requeued": res.requeued + n, "freed": res.freed})
        if self.row:
            self.row.add(C.RECOVERED_RING, res.requeued)
            self.row.add(C.RECOVERED_OVERFLOW, n)
        rows = {r.row: r for r in self.ring.read_rows()}
        r = rows.get(c.row)
        if r is not None and (r.pid, r.start) == tuple(ident):
            # on RingBusy the row is left to its next occupant's death, or adopt()
            with contextlib.suppress(ringmod.RingBusy):
                self.ring.retire_row(c.row, ident)
        return res.requeued + n

    # -- status -----------------------------------------------------------------

    def status_line(self) -> str:
        workers = sum(1 for c in self.children
                      if c.kind is Kind.WORKER and c.state is ChildState.RUNNING)
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

    # -- pidfile ----------------------------------------------------------------

    def _write_pidfile(self) -> None:
        path = self.cfg.supervisor.pidfile
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(f"{os.getpid()}\n")
        os.replace(tmp, path)

    def _remove_pidfile(self) -> None:
        path = self.cfg.supervisor.pidfile
        if path is not None:
            try:
                if path.read_text().strip() == str(os.getpid()):
                    path.unlink()
            except FileNotFoundError:
                pass
            except OSError as e:  # e.g. written as root, its directory not the user's
                log.warning("cannot remove the pidfile: %s", e)


_RESTART_COUNTERS = {
    ExitCause.CRASHED: C.RESTARTS_CRASHED,
    ExitCause.TOO_FAST: C.RESTARTS_TOO_FAST,
    ExitCause.HUNG: C.RESTARTS_HUNG,
}


class SetupError(Exception):
    """The trap cannot start; the message says why and what to do."""


def _side_sockets(cfg: Config) -> list[tuple[str, Path]]:
    """The ingest's configured session sockets as (kind, path): submit, then LMTP."""
    ing = cfg.ingest
    return [(kind, path) for kind, path in (("submit", ing.submit_socket),
                                            ("lmtp", ing.lmtp_socket)) if path is not None]


def _absent(path: Path) -> list[Path]:
    """``path`` and those of its parents that do not exist yet."""
    out = []
    while not path.exists() and path.parent != path:
        out.append(path)
        path = path.parent
    return out


def _remove_empty_tree(top: Path) -> None:
    """Remove ``top`` and the folders below it, if no file is left anywhere in it."""
    for root, dirs, _files in os.walk(top, topdown=False):
        for d in dirs:
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(root, d))
    with contextlib.suppress(OSError):
        top.rmdir()


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            return f"killed by {signal.Signals(sig).name}"
        except ValueError:
            return f"killed by signal {sig}"
    return f"exit {os.WEXITSTATUS(status)}"


def _die_with_parent(parent: int) -> None:  # pragma: no cover - child
    """Ask the kernel for a TERM when the supervisor dies (TERM: finish, then exit).

    A child also polls getppid(), but only once its loop runs; this closes the
    gap before that, and stops an exec'd spamd, which polls nothing.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # it died before the request took effect
        os._exit(0)


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
