"""Socket helpers of the ingest: binding a listening socket, probing the kernel's I/O flags.

Used by the supervisor, which binds the ingest's sockets before it forks the
ingest (so a restarted ingest inherits them), and by the server itself.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import socket
import stat
import struct
import time
from pathlib import Path

log = logging.getLogger(__name__)

LISTEN_BACKLOG = 1024
# how long the probe below lets a read that ignores RWF_NOWAIT wait
_PROBE_WAIT = 0.2


def nowait_io() -> bool:
    """True if preadv2 and pwritev2 honour RWF_NOWAIT on a blocking socket.

    Linux does from 5.x on; a kernel that rejects the flag says so, and one
    that accepted it but waited anyway would be caught by the receive
    timeout, so the probe never hangs and never answers yes wrongly.
    """
    flag = getattr(os, "RWF_NOWAIT", None)
    if flag is None:
        return False
    a, b = socket.socketpair()
    try:
        # blocking whatever socket.setdefaulttimeout() says: an EAGAIN must
        # come from the flag, not from an O_NONBLOCK descriptor
        a.setblocking(True)
        b.setblocking(True)
        b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                     struct.pack("ll", 0, int(_PROBE_WAIT * 1e6)))
        t0 = time.monotonic()
        try:
            os.preadv(b.fileno(), [bytearray(1)], -1, flag)
        except BlockingIOError:
            if time.monotonic() - t0 >= _PROBE_WAIT / 2:
                return False  # it waited: the timeout answered, not the flag
        else:
            return False  # nothing was sent: a read cannot have succeeded
        return os.pwritev(a.fileno(), [b"x"], -1, flag) == 1
    except (OSError, NotImplementedError):
        return False
    finally:
        a.close()
        b.close()



def bind_socket(path: Path, mode: int = 0o660, group: str = "") -> socket.socket:
    """Create the listening ingest socket at ``path`` (a stale socket file is replaced).

    Raises RuntimeError if a process answers on ``path``, or if ``path`` is
    something other than a socket.  The socket gets its mode and group before
    ``listen``, so no client can connect through wider permissions.  Dying
    midway leaves at most a socket file nobody answers on, which the next
    call replaces.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise RuntimeError(f"ingest socket {path} exists and is not a socket")
        if _answers(path):
            raise RuntimeError(f"ingest socket {path} is in use by another process")
        log.info("removing stale ingest socket %s", path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        try:
            os.chmod(path, mode)
            if group:
                os.chown(path, -1, grp.getgrnam(group).gr_gid)
            sock.listen(LISTEN_BACKLOG)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            raise
    except BaseException:
        sock.close()
        raise
    return sock


def _answers(path: Path) -> bool:
    """True if something accepts connections on the socket file ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # a listener with a full backlog keeps connect waiting: that is an answer too
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except TimeoutError:
        return True
    finally:
        probe.close()
    return True
