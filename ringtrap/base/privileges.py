"""Running as ``service.user``: hand the trap's files to it, then drop root.

A supervisor started as root with ``[service] user`` set prepares, while it
is still root, everything it and its children will need (directories, the
ring's shared memory, the socket), gives those to the service user, and
then becomes that user before it forks any child.  Nothing here runs in a
child.

Only directories that are the trap's own are handed over: the results and
overflow directories, and a directory the trap just created or that systemd
created for this unit (``$RUNTIME_DIRECTORY``).  A shared directory such as
``/run`` or ``/tmp`` that merely holds the socket is never chowned.

If the process dies half-way, some files already belong to the service
user; the next start repeats every step, so nothing is left half-done.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


class PrivilegeError(Exception):
    """The trap cannot run as the configured user; the text says why."""


@dataclass(frozen=True, slots=True)
class Target:
    """The user and group the trap runs as after dropping root."""

    user: str
    uid: int
    gid: int
    home: str

    def owns(self, st: os.stat_result) -> bool:
        return st.st_uid == self.uid and st.st_gid == self.gid


def resolve(user: str, group: str = "") -> Target:
    """The uid and gid of ``user`` (and ``group``, default its primary group)."""
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise PrivilegeError(f"service.user: no such user {user!r}") from None
    gid = pw.pw_gid
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise PrivilegeError(f"service.group: no such group {group!r}") from None
    return Target(user, pw.pw_uid, gid, pw.pw_dir)


def needed(user: str) -> Target | None:
    """The target to drop to, or None when this process should stay as it is.

    Raises PrivilegeError when ``user`` is set, this process is not root and
    is not already that user: it could not become it.
    """
    if not user:
        return None
    target = resolve(user)
    if os.geteuid() == 0:
        return target if target.uid != 0 else None
    if os.geteuid() == target.uid:
        return None
    raise PrivilegeError(
        f"service.user is {user!r} but ringtrap runs as uid {os.geteuid()}: start it as root"
        " (it drops to that user itself) or as that user"
    )


def chown_path(path: Path, t: Target, gid: int | None = None) -> None:
    """Give one file or directory (never a symlink's target) to the service user."""
    st = os.lstat(path)
    want_gid = t.gid if gid is None else gid
    if (st.st_uid, st.st_gid) != (t.uid, want_gid):
        os.chown(path, t.uid, want_gid, follow_symlinks=False)


def own_dir(path: Path, t: Target, *, tree: bool = False) -> int:
    """Give directory ``path`` (and with ``tree`` everything below it) to the user.

    Returns how many entries changed owner.  A world-writable sticky
    directory (``/tmp``, ``/dev/shm``) is shared by definition and refused.
    """
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise PrivilegeError(f"{path} is not a directory")
    if st.st_mode & stat.S_ISVTX and st.st_mode & stat.S_IWOTH:
        raise PrivilegeError(f"{path} is a shared directory; give ringtrap a directory of its own")
    changed = 0
    if not t.owns(st):
        os.chown(path, t.uid, t.gid, follow_symlinks=False)
        changed += 1
    if tree:
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                p = os.path.join(root, name)
                with contextlib.suppress(FileNotFoundError):  # a file claimed meanwhile
                    if not t.owns(os.lstat(p)):
                        os.chown(p, t.uid, t.gid, follow_symlinks=False)
                        changed += 1
    return changed


def drop(t: Target) -> None:
    """Become ``t`` for good: supplementary groups, gid, then uid (in that order).

    Also points HOME, USER and LOGNAME at the user, for the managed spamd.
    Raises PrivilegeError if root could be regained afterwards.
    """
    os.setgroups(os.getgrouplist(t.user, t.gid))
    os.setgid(t.gid)
    os.setuid(t.uid)
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:  # pragma: no cover - a kernel that let us back would be a hole
        raise PrivilegeError("could regain root after dropping privileges")
    os.environ["HOME"] = t.home
    os.environ["USER"] = os.environ["LOGNAME"] = t.user
