"""Run a command offline: in a private network namespace with a DNS that knows nothing.

Usage: ``unshare -n python3 tests/netns_dns.py COMMAND ARGS...``

rspamd resolves names for its RBL and URL checks; without a resolver every
message waits out its DNS timeouts.  This brings ``lo`` up in the fresh
namespace, forks a responder on 127.0.0.1:53 (UDP) that answers every query
NXDOMAIN and echoes its EDNS0 OPT record (rspamd ignores an answer to an EDNS0
query that has none), then execs COMMAND, keeping its pid: whoever started
``unshare`` signals the command itself.  The responder asks for SIGKILL when
its parent (the command) dies, and polls for it besides.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import signal
import socket
import struct
import sys

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
NXDOMAIN = 3
OPT = 41


def lo_up() -> None:
    """Bring the loopback interface of this namespace up."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


def _skip_name(data: bytes, pos: int) -> int:
    while pos < len(data):
        n = data[pos]
        if n == 0:
            return pos + 1
        if n & 0xC0 == 0xC0:
            return pos + 2
        pos += 1 + n
    raise ValueError("name runs past the packet")


def answer(query: bytes) -> bytes | None:
    """The NXDOMAIN reply to ``query``, its question and OPT record echoed; None if garbage."""
    if len(query) < 12:
        return None
    qid, flags, qd, an, ns, ar = struct.unpack("!6H", query[:12])
    if flags & 0x8000 or qd != 1:
        return None
    try:
        end = _skip_name(query, 12) + 4  # QTYPE, QCLASS
        pos = end
        for _ in range(an + ns):  # none in a query, but skip them if sent
            pos = _skip_name(query, pos)
            pos += 10 + struct.unpack("!H", query[pos + 8 : pos + 10])[0]
        opt = b""
        for _ in range(ar):
            start = pos
            pos = _skip_name(query, pos)
            rtype = struct.unpack("!H", query[pos : pos + 2])[0]
            pos += 10 + struct.unpack("!H", query[pos + 8 : pos + 10])[0]
            if rtype == OPT:
                opt = query[start:pos]
    except (ValueError, struct.error):
        return None
    reply_flags = 0x8000 | (flags & 0x7900) | 0x0080 | NXDOMAIN  # QR, opcode+RD, RA
    head = struct.pack("!6H", qid, reply_flags, 1, 0, 0, 1 if opt else 0)
    return head + query[12:end] + opt


def serve(parent: int, ready: int) -> None:  # pragma: no cover - the forked responder
    """Answer queries until the parent is gone; closes ``ready`` once bound."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 53))
        os.close(ready)  # bound: the command may start
        s.settimeout(1.0)
        while os.getppid() == parent:
            try:
                data, peer = s.recvfrom(4096)
            except TimeoutError:
                continue
            reply = answer(data)
            if reply is not None:
                s.sendto(reply, peer)


def main(argv: list[str]) -> None:
    if not argv:
        sys.exit("usage: unshare -n python3 netns_dns.py COMMAND ARGS...")
    lo_up()
    ready_r, ready_w = os.pipe()
    parent = os.getpid()
    if os.fork() == 0:  # pragma: no cover - the responder
        os.close(ready_r)
        try:
            os.setsid()  # out of the command's process group: its group signals miss us
            serve(parent, ready_w)
        finally:
            os._exit(0)
    os.close(ready_w)
    os.read(ready_r, 1)  # EOF once the responder is bound (or dead)
    os.close(ready_r)
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
