"""What runs in a freshly forked child before its role's own main.

The order is fixed (STYLE rule 7): ask for a signal when the supervisor
dies, then the boot every child shares (:func:`ringtrap.work.child.boot`:
signals reset, every descriptor the role does not own closed, ``random``
reseeded; workers must not hold the ingest socket, the spamd is exec'd with
stdio and the log only), then the role's ``child_main`` (title, ring
attach, loop).  Nothing here returns
to the supervisor's code: the caller ends the process with ``os._exit``.
"""

from __future__ import annotations

import ctypes  # here, not in the child: after a privilege drop the stdlib may be unreadable
import logging
import os
import signal
import socket
from collections.abc import Iterable
from pathlib import Path

from ringtrap.base.states import Role
from ringtrap.config import Config
from ringtrap.control import spamd_log
from ringtrap.control.child import Child
from ringtrap.control.managed_rspamd import rspamd_addresses, rspamd_argv
from ringtrap.control.managed_spamd import scanner_addresses, spamd_address, spamd_argv
from ringtrap.control.seam import OS
from ringtrap.work import child as work_child

log = logging.getLogger(__name__)


def die_with_parent(parent: int) -> None:  # pragma: no cover - child
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


def start(os_: OS, c: Child, cfg: Config, config_path: Path | None, handled: Iterable[int],
          listener: socket.socket | None, side_listeners: dict[str, socket.socket],
          crash_code: int) -> int:
    """Fork child ``c`` through ``os_``; returns its pid.  The child never returns.

    A child whose boot or main raises logs it and exits with ``crash_code``.
    """
    log_pipe: tuple[int, int] | None = None
    argv: list[str] | None = None
    if c.role is Role.SPAMD:
        argv = spamd_argv(cfg)
    elif c.role is Role.RSPAMD:
        argv = rspamd_argv(cfg)
    if argv is not None:
        # the scanner's stdout and stderr: relogged where the trap's own lines go
        log_pipe = os.pipe()
    parent = os.getpid()
    pid = os_.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = crash_code
        try:
            die_with_parent(parent)
            if log_pipe is not None:
                os.dup2(log_pipe[1], 1)
                os.dup2(log_pipe[1], 2)
            code = boot(c, cfg, config_path, handled, listener, side_listeners, argv)
        except BaseException:
            log.exception("%s failed", c.name)
        finally:
            os._exit(code)
    if log_pipe is not None:
        os.close(log_pipe[1])
        spamd_log.start(log_pipe[0], rspamd=c.role is Role.RSPAMD)
    return pid


def boot(c: Child, cfg: Config, config_path: Path | None, handled: Iterable[int],
         listener: socket.socket | None, side_listeners: dict[str, socket.socket],
         spamd_argv: list[str] | None) -> int:  # pragma: no cover - child
    """Run child ``c`` in this freshly forked process; returns its exit code.

    ``handled``: the signals the supervisor caught, put back to their defaults.
    """
    # the boot order of ringtrap.work.child: signals, fds, random and log role
    # first; a child that is no ring user must not keep the parent's ring
    # mapping, and the spamd is exec'd, so every fd but stdio and the log goes
    keep: set[int] = set()
    if c.role is Role.INGEST and listener is not None:
        keep.add(listener.fileno())
        keep.update(side.fileno() for side in side_listeners.values())
    work_child.boot(c.name, handled, keep)
    if spamd_argv is not None:
        os.setsid()  # its own group: our TERM to the group never races its children
        os.execvp(spamd_argv[0], spamd_argv)
    # then title, ring attach and loop, which are the role's own (its child_main)
    if c.role is Role.INGEST:
        from ringtrap.intake.child import child_main

        assert listener is not None
        return child_main(cfg, listener, c.row, submit=side_listeners.get("submit"),
                          lmtp=side_listeners.get("lmtp"), config_path=config_path)
    if c.role is Role.FORWARDER:
        from ringtrap.work import forward

        return forward.child_main(cfg, c.index, c.row)
    if c.role is Role.STAGE:
        from ringtrap.work import stage

        # the stage talks to spamd only: with rspamd scanning, stage.address names one
        return stage.child_main(cfg, c.index, c.row,
                                spamd_address(cfg) if cfg.scanner.kind == "spamd" else None)
    from ringtrap import worker

    if cfg.scanner.kind == "rspamd":
        return worker.child_main(cfg, c.index, c.row, spamd_address=rspamd_addresses(cfg))
    return worker.child_main(cfg, c.index, c.row,
                             spamd_address=scanner_addresses(cfg) or "off")
