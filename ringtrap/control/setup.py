"""The supervisor's runtime on disk: directories, pidfile, and the hand-over to the service user.

:class:`Runtime` remembers what this start made (directories that did not
exist), so a start refused halfway removes exactly that and nothing it
found.  Started as root with ``service.user`` set, :meth:`Runtime.hand_over`
gives the trap's own files to that user, loads all the code the children
will run, and drops root for good, before the first fork.

A supervisor that dies in the middle leaves directories and owners half
changed; the next start repeats every step, so nothing stays half-done.
"""

from __future__ import annotations

import contextlib
import grp
import importlib
import logging
import os
import pkgutil
from pathlib import Path

from ringtrap import config as configmod
from ringtrap.base import privileges
from ringtrap.base.privileges import PrivilegeError, Target
from ringtrap.config import Config
from ringtrap.control import metrics as metricsmod
from ringtrap.control.managed_spamd import SPAMD_ROOT_USER
from ringtrap.ring import Ring

log = logging.getLogger(__name__)


class SetupError(Exception):
    """The trap cannot start; the message says why and what to do."""


def side_sockets(cfg: Config) -> list[tuple[str, Path]]:
    """The ingest's configured session sockets as (kind, path): submit, then LMTP."""
    ing = cfg.ingest
    return [(kind, path) for kind, path in (("submit", ing.submit_socket),
                                            ("lmtp", ing.lmtp_socket)) if path is not None]


class Runtime:
    """The directories and pidfile one start of the supervisor makes, and their undoing."""

    def __init__(self) -> None:
        self.made_dirs: list[Path] = []  # absent before this start, deepest last
        self.created: set[Path] = set()  # the runtime and results directories made now

    def note(self, path: Path) -> None:
        """Remember ``path`` and those of its parents that do not exist yet."""
        while not path.exists() and path.parent != path:
            self.made_dirs.append(path)
            path = path.parent

    def make_dirs(self, cfg: Config) -> None:
        """Make the sockets' and the results directories, restricting the first if ours."""
        for d in (cfg.ingest.socket.parent, cfg.results.dir):
            if not d.exists():
                self.created.add(d)
            self.note(d)
            d.mkdir(parents=True, exist_ok=True)
        self._restrict_runtime_dir(cfg)

    def _runtime_dir_is_ours(self, cfg: Config) -> bool:
        runtime = cfg.ingest.socket.parent
        return runtime in self.created or str(runtime) == os.environ.get("RUNTIME_DIRECTORY")

    def _restrict_runtime_dir(self, cfg: Config) -> None:
        """The sockets' directory, when it is ours: 0750, group ingest.socket_group.

        The group lets the MTA's delivery user through; a socket_mode that
        grants others (an alias run as nobody) grants them search (x) only.
        """
        if not self._runtime_dir_is_ours(cfg):
            return
        runtime = cfg.ingest.socket.parent
        mode = 0o750 | (0o001 if cfg.ingest.socket_mode & 0o002 else 0)
        try:
            os.chmod(runtime, mode)
            if cfg.ingest.socket_group:
                os.chown(runtime, -1, grp.getgrnam(cfg.ingest.socket_group).gr_gid)
        except (OSError, KeyError) as e:
            raise SetupError(f"ingest.socket {runtime}: {e}") from None

    def prepare_bayes_dir(self, cfg: Config, t: Target | None) -> None:
        """Create spamd.bayes_dir for the user the managed spamd will run as.

        Before dropping root: spamd runs as ``t`` (service.user), as
        :data:`SPAMD_ROOT_USER` when started as root without one, or as us.
        Without a directory that user can write, TELL answers "did nothing".
        """
        d = cfg.spamd.bayes_dir
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

    def prepare_rspamd_dirs(self, cfg: Config, t: Target | None) -> None:
        """Write the managed rspamd's configuration and create rspamd.db_dir for its user.

        Before dropping root: rspamd runs as ``t`` (service.user); started by
        root without one, its main process stays root and its workers switch
        to ``_rspamd`` (or nobody), and both write compiled databases in
        rspamd.db_dir.  The configuration is written fresh at each start.
        """
        from ringtrap.control.managed_rspamd import rspamd_root_user, write_rspamd_config

        try:
            conf = write_rspamd_config(cfg)
        except OSError as e:
            raise SetupError(f"rspamd: cannot write its configuration: {e}") from None
        d = cfg.rspamd.db_dir
        try:
            d.mkdir(mode=0o750, parents=True, exist_ok=True)
            owner = t
            if owner is None and os.geteuid() == 0:
                user = rspamd_root_user()
                owner = privileges.resolve(user) if user else None
            if owner is not None:
                privileges.chown_path(d, owner)
                if t is not None:
                    for p in (conf, conf / "local.d", *conf.rglob("*")):
                        privileges.chown_path(p, t)
        except (OSError, PrivilegeError) as e:
            raise SetupError(f"rspamd.db_dir {d}: {e}") from None

    def hand_over(self, cfg: Config, t: Target, ring: Ring, stage: bool,
                  forward: bool = False) -> None:
        """Hand the trap's files to ``t``, load what children run, drop root for good."""
        try:
            runtime = cfg.ingest.socket.parent
            # the socket's directory only when it is ours: made now, or by systemd for us
            if self._runtime_dir_is_ours(cfg):
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
            if stage:  # scan workers hand on, stage workers take
                privileges.own_dir(configmod.stage_dir(cfg), t, tree=True)
            if forward:  # scan workers hand raw messages on, the forwarder takes them
                privileges.own_dir(configmod.forward_dir(cfg), t, tree=True)
            ring.chown(t.uid, t.gid)
            group = cfg.ingest.socket_group
            for path in [cfg.ingest.socket, *(p for _, p in side_sockets(cfg))]:
                privileges.chown_path(path, t, gid=grp.getgrnam(group).gr_gid if group else None)
            if cfg.supervisor.log_file is not None and cfg.supervisor.log_file.exists():
                privileges.chown_path(cfg.supervisor.log_file, t)
            preload_package()
            if cfg.metrics.listen is not None:
                metricsmod.load_client()
            privileges.drop(t)
        except (OSError, PrivilegeError, ImportError) as e:
            raise SetupError(f"service.user {t.user}: {e}") from None
        configmod.keep_root_defaults()
        log.info("running as user %s (uid %d, gid %d); %d overflow entries handed over",
                 t.user, t.uid, t.gid, moved)

    def undo(self, cfg: Config) -> None:
        """A refused start: remove the directories it made, if still empty, and its pidfile."""
        for d in sorted(self.made_dirs, key=lambda p: len(p.parts), reverse=True):
            _remove_empty_tree(d)
        remove_pidfile(cfg)


def write_pidfile(cfg: Config) -> None:
    """Write our pid to ``supervisor.pidfile``, if set (atomically: a reader sees all or none)."""
    path = cfg.supervisor.pidfile
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{os.getpid()}\n")
    os.replace(tmp, path)


def remove_pidfile(cfg: Config) -> None:
    """Remove ``supervisor.pidfile`` if it still names us (another's is left alone)."""
    path = cfg.supervisor.pidfile
    if path is not None:
        try:
            if path.read_text().strip() == str(os.getpid()):
                path.unlink()
        except FileNotFoundError:
            pass
        except OSError as e:  # e.g. written as root, its directory not the user's
            log.warning("cannot remove the pidfile: %s", e)


def preload_package() -> None:
    """Import every ringtrap module and run its ``preload()`` hook, if it has one.

    Called before dropping root and before forking: children then find the
    code they run already in memory (copy-on-write pages shared with the
    supervisor), and nothing has to be read from places the service user may
    not reach.  A module that loads data lazily offers a ``preload()``.
    """
    import ringtrap

    for info in pkgutil.walk_packages(ringtrap.__path__, "ringtrap."):
        if info.name.startswith("ringtrap.command"):
            continue  # the commands never run in the trap
        try:
            module = importlib.import_module(info.name)
        except ImportError as e:  # an optional dependency: its feature reports it when used
            log.debug("preload: %s not loaded: %s", info.name, e)
            continue
        hook = getattr(module, "preload", None)
        if callable(hook) and getattr(hook, "__module__", None) == info.name:
            hook()
    # loaded lazily: by the configuration on a reload, by a child after fork
    # (ctypes, for prctl), and by the codec registry (host names go through
    # idna in getaddrinfo)
    for name in ("tomllib", "difflib", "textwrap", "shutil", "ctypes", "encodings.idna",
                 "encodings.latin_1", "encodings.cp1252"):
        importlib.import_module(name)


def _remove_empty_tree(top: Path) -> None:
    """Remove ``top`` and the folders below it, if no file is left anywhere in it."""
    for root, dirs, _files in os.walk(top, topdown=False):
        for d in dirs:
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(root, d))
    with contextlib.suppress(OSError):
        top.rmdir()
