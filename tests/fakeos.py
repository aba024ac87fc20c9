"""A recording fake of the OS seam for the supervisor's logic tests: no process is forked."""

from __future__ import annotations

from dataclasses import dataclass, field

from ringtrap.base.proc import Identity
from ringtrap.control.seam import OS


@dataclass
class FakeOS:
    """Forks nothing: hands out pids, records signals, reports exits on demand."""

    now: float = 1000.0
    wall: float = 1_800_000_000.0
    next_pid: int = 100
    killed: list[tuple[int, int]] = field(default_factory=list)
    exits: list[tuple[int, int]] = field(default_factory=list)
    alive: dict[int, Identity] = field(default_factory=dict)

    def fork(self) -> int:
        self.next_pid += 1
        self.alive[self.next_pid] = Identity(self.next_pid, 7)
        return self.next_pid

    def kill(self, pid: int, sig: int) -> None:
        self.killed.append((pid, sig))

    def waitpid(self, pid: int, flags: int) -> tuple[int, int]:
        if not self.exits:
            return 0, 0
        pid, status = self.exits.pop(0)
        self.alive.pop(pid, None)
        return pid, status

    def identity(self, pid: int) -> Identity | None:
        return self.alive.get(pid)

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def as_os(self) -> OS:
        return OS(fork=self.fork, kill=self.kill, killpg=self.kill, waitpid=self.waitpid,
                  monotonic=lambda: self.now, time=lambda: self.wall, sleep=self.sleep,
                  identity=self.identity)


def exit_status(code: int) -> int:
    return code << 8


def signal_status(sig: int) -> int:
    return sig
