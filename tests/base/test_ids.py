"""Message ids: unique, ordered by arrival, and a forked child's never collide with its parent's."""

from __future__ import annotations

import os
import time

from ringtrap.base import ids


def test_ids_are_valid_unique_and_increasing() -> None:
    made = [ids.new_id() for _ in range(50_000)]  # far more than one per microsecond
    assert all(ids.is_valid(m) for m in made)
    assert len(set(made)) == len(made)
    assert made == sorted(made)
    assert abs(ids.id_time(made[0]) - time.time()) < 60
    assert made[0].endswith(f"-{os.getpid() & 0xFFFFFF:06x}")


def test_a_forked_child_issues_ids_with_its_own_pid() -> None:
    before = ids.new_id()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.write(w, " ".join(ids.new_id() for _ in range(1000)).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        child = f.read().split()
    os.waitpid(pid, 0)
    after = ids.new_id()
    assert len(child) == 1000
    assert all(c.endswith(f"-{pid & 0xFFFFFF:06x}") for c in child)
    assert not {before, after} & set(child)
    assert after.endswith(f"-{os.getpid() & 0xFFFFFF:06x}")
    assert ids.is_valid("0640c3f1a2b3c-0004d2")
    assert not ids.is_valid("0640c3f1a2b3c-0004d2/../x")
    assert not ids.is_valid("0640c3f1a2b3c-0004d2\n")  # it becomes part of file names
