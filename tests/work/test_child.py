"""The boot every forked child runs first (ringtrap.work.child.boot), in a real fork.

The reseed of ``random`` is not checked: CPython already reseeds it in
every forked child (os.register_at_fork), so no test of it could fail.
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Iterator

import pytest
from forking import Children, read_all, report

from ringtrap.work import child


@pytest.fixture
def children() -> Iterator[Children]:
    c = Children()
    yield c
    c.reap_all()


def test_boot_resets_signals_and_closes_what_it_does_not_keep(
    children: Children,
) -> None:
    caught = signal.signal(signal.SIGUSR2, lambda s, f: None)
    wake_r, wake_w = socket.socketpair()
    wake_w.setblocking(False)
    old_wakeup = signal.set_wakeup_fd(wake_w.fileno())
    other = os.open(os.devnull, os.O_RDONLY)
    kept = os.open(os.devnull, os.O_RDONLY)
    try:
        def boot_and_tell(w: int) -> None:
            child.boot("worker 7", [signal.SIGUSR2], {kept, w})
            fds = []
            for fd in (other, kept):
                try:
                    os.fstat(fd)
                    fds.append("open")
                except OSError:
                    fds.append("closed")
            report(w, " ".join([
                "default" if signal.getsignal(signal.SIGUSR2) == signal.SIG_DFL else "caught",
                str(signal.set_wakeup_fd(-1)), *fds]))

        pid, r = children.fork(boot_and_tell)
        out = read_all(r).split()
        assert children.wait(pid) == 0
    finally:
        signal.set_wakeup_fd(old_wakeup)
        signal.signal(signal.SIGUSR2, caught)
        for fd in (other, kept):
            os.close(fd)
        wake_r.close()
        wake_w.close()
    assert out == ["default", "-1", "closed", "open"]
