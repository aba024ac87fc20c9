"""Helpers for tests that fork children which report back on pipes.

Every child is reaped, and any left running is SIGKILLed at teardown, so a
failing test never leaves processes behind; reads have deadlines, so a child
that hangs fails the test instead of the run.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
import traceback
from collections.abc import Callable


def body(msgid: str, size: int) -> bytes:
    """Deterministic content for ``msgid`` so a reader can check every byte."""
    seed = msgid.encode()
    return (seed * (size // len(seed) + 1))[:size]


class Reaper:
    """The children of one test: waited for with a deadline, the rest killed."""

    def __init__(self) -> None:
        self.pids: list[int] = []

    def log(self, pid: int) -> str:
        """What a child left behind to show when it hangs (nothing by default)."""
        return ""

    def wait(self, pid: int, timeout: float = 30.0) -> int:
        """Exit code of ``pid`` (negative: killed by that signal), failing on a hang."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                self.pids.remove(pid)
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.01)
        details = self.log(pid)
        raise AssertionError(f"child {pid} did not exit in {timeout} s"
                             + (f":\n{details}" if details else ""))

    def reap_all(self) -> None:
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError, ChildProcessError):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
        self.pids.clear()


class Children(Reaper):
    """Forked children of one test that report on pipes; any left running are
    killed at teardown."""

    def fork(self, fn: Callable[[int], None]) -> tuple[int, int]:
        """Run ``fn(write_fd)`` in a child; return (pid, read_fd) of its report pipe."""
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 1
            try:
                os.close(r)
                fn(w)
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        os.close(w)
        self.pids.append(pid)
        return pid, r

    def kill(self, pid: int) -> None:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        self.pids.remove(pid)


def read_line(fd: int, timeout: float = 20.0) -> str:
    """Read one line a child reports, failing rather than hanging.

    Reads a byte at a time so that nothing after the line is consumed.
    """
    deadline = time.monotonic() + timeout
    buf = b""
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        assert left > 0, "child did not report in time"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 1)
            assert chunk, "child exited without reporting"
            buf += chunk
    return buf.decode().strip()


def read_all(fd: int, timeout: float = 20.0) -> str:
    """Everything a child writes until it exits (EOF); closes ``fd``."""
    deadline = time.monotonic() + timeout
    chunks = []
    try:
        while True:
            left = deadline - time.monotonic()
            assert left > 0, "child did not finish reporting in time"
            if select.select([fd], [], [], left)[0]:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    return b"".join(chunks).decode()
                chunks.append(chunk)
    finally:
        os.close(fd)


def report(fd: int, text: str) -> None:
    os.write(fd, text.encode() + b"\n")
