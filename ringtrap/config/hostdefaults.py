"""Defaults that depend on who runs the trap and on what the host has.

Root gets system paths (``/run/ringtrap``, ``/var/lib/ringtrap``), anyone
else the XDG directories; the ring name carries the uid; the worker count
follows the CPUs; spamd is managed only where it is installed.  Each is a
``default_factory`` called when a config is built, never at import, so
tests can monkeypatch ``os.geteuid`` and the environment.
"""

import os
from pathlib import Path
from typing import Literal

from ringtrap.config.values import SpamdAddress

# Where Debian and source installs put spamd; a non-root PATH often lacks them.
SBIN_DIRS: tuple[str, ...] = ("/usr/sbin", "/usr/local/sbin")


# Set once a supervisor started as root has dropped its privileges: its
# defaults (ring name, paths) stay those of root, so a reload computes the
# same ones it started with.
started_as_root = False


def keep_root_defaults() -> None:
    """Compute later defaults as root's, whatever the effective uid now is.

    The supervisor calls this after dropping to ``service.user``, so a HUP
    reload keeps the paths and ring name the trap started with.
    """
    global started_as_root
    started_as_root = True


def _euid() -> int:
    return 0 if started_as_root else os.geteuid()


def runtime_dir() -> Path:
    """Directory for the ingest socket and the managed spamd's socket.

    ``/run/ringtrap`` as root, else ``$XDG_RUNTIME_DIR/ringtrap`` when that
    variable names a writable directory, else ``/tmp/ringtrap-<uid>``.
    """
    euid = _euid()
    if euid == 0:
        return Path("/run/ringtrap")
    xdg = os.environ.get("XDG_RUNTIME_DIR", "")
    # The XDG spec says to ignore a relative value.
    if os.path.isabs(xdg) and os.path.isdir(xdg) and os.access(xdg, os.W_OK | os.X_OK):
        return Path(xdg) / "ringtrap"
    return Path(f"/tmp/ringtrap-{euid}")


def _state_home() -> Path:
    xdg = os.environ.get("XDG_STATE_HOME", "")
    if os.path.isabs(xdg):
        return Path(xdg)
    return Path.home() / ".local" / "state"


def default_socket() -> Path:
    """ingest.socket: ``ingest.sock`` in the runtime directory."""
    return runtime_dir() / "ingest.sock"


# the default of ingest.submit_socket until IngestConfig puts it beside ingest.socket
BESIDE_INGEST = Path("submit.sock")


def beside_ingest() -> Path:
    """ingest.submit_socket's marker default, replaced by a path beside ingest.socket."""
    return BESIDE_INGEST


def _user_suffix() -> str:
    euid = _euid()
    return "" if euid == 0 else f"-{euid}"


def default_ring_name() -> str:
    """ring.name: ``ringtrap`` as root, else ``ringtrap-<uid>``."""
    return "ringtrap" + _user_suffix()


def default_overflow_dir() -> Path:
    """overflow.dir: a tmpfs directory named after the user."""
    # not "/dev/shm/<ring.name>": that path is the ring's own segment
    return Path("/dev/shm/ringtrap" + _user_suffix() + ".overflow")


def default_results_dir() -> Path:
    """results.dir: under /var/lib/ringtrap as root, else under the XDG state home."""
    if _euid() == 0:
        return Path("/var/lib/ringtrap/results")
    return _state_home() / "ringtrap" / "results"


def default_bayes_dir() -> Path:
    """spamd.bayes_dir: under /var/lib/ringtrap as root, else under the XDG state home."""
    if _euid() == 0:
        return Path("/var/lib/ringtrap/bayes")
    return _state_home() / "ringtrap" / "bayes"


def default_rspamd_db_dir() -> Path:
    """rspamd.db_dir: under /var/lib/ringtrap as root, else under the XDG state home."""
    if _euid() == 0:
        return Path("/var/lib/ringtrap/rspamd")
    return _state_home() / "ringtrap" / "rspamd"


def default_worker_count() -> int:
    """workers.count: one worker per CPU."""
    return os.cpu_count() or 2


def find_spamd(command: str) -> str | None:
    """Path of the spamd program ``command`` names, or None if it is not installed.

    A bare name is looked up on ``PATH`` and then in ``SBIN_DIRS``; the
    supervisor should execute the returned path, not ``command`` itself.
    """
    import shutil

    dirs = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d]
    dirs += [d for d in SBIN_DIRS if d not in dirs]
    return shutil.which(command, path=os.pathsep.join(dirs))


def default_spamd_address() -> SpamdAddress:
    """spamd.address: "managed" where spamd is installed, else "off"."""
    kind: Literal["managed", "off"] = "managed" if find_spamd("spamd") else "off"
    return SpamdAddress(kind)


def default_forward_host() -> str:
    """This host's name as one NATS subject token: its first label, ``.`` never in it.

    A name the kind would refuse (empty, odd characters) becomes ``trap``:
    the default must always load; an operator names a fleet's hosts anyway.
    """
    import socket

    name = socket.gethostname().split(".")[0]
    ok = name and all(c.isascii() and (c.isalnum() or c in "-_") for c in name)
    return name if ok else "trap"
