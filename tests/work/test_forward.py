"""The forwarder's own logic on real files: the cursor, the tail, the backlog count, the key.

The publishing loop against a real nats-server is tested end to end in
tests/e2e/test_forward.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest

from ringtrap.base.counters import C
from ringtrap.base.states import Role
from ringtrap.ring import Ring
from ringtrap.store.segment import unlink_name
from ringtrap.work.forward import (
    CURSOR_NAME,
    Backlog,
    BacklogGauge,
    Position,
    Tail,
    load_cursor,
    message_id,
    save_cursor,
)

DAY1 = "results-2026-12-01.jsonl"
DAY2 = "results-2026-12-02.jsonl"


def line(n: int) -> bytes:
    return json.dumps({"id": f"{n:013x}-0004d2", "verdict": "spam"}).encode() + b"\n"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_cursor_survives_and_a_broken_one_means_from_the_start(tmp_path: Path) -> None:
    assert load_cursor(tmp_path) is None
    save_cursor(tmp_path, Position(DAY1, 120))
    assert load_cursor(tmp_path) == Position(DAY1, 120)
    assert not (tmp_path / (CURSOR_NAME + ".tmp")).exists()
    (tmp_path / CURSOR_NAME).write_text('{"file": "../etc/passwd", "offset": 3}')
    assert load_cursor(tmp_path) is None
    (tmp_path / CURSOR_NAME).write_text("{not json")
    assert load_cursor(tmp_path) is None


def test_the_tail_gives_complete_lines_only_with_the_position_after_each(
        tmp_path: Path) -> None:
    f = tmp_path / DAY1
    f.write_bytes(line(1) + line(2) + b'{"id": "half')
    tail = Tail(tmp_path, None)
    got = tail.read(10, 1 << 20)
    assert [data + b"\n" for data, _ in got] == [line(1), line(2)]
    assert got[-1][1] == Position(DAY1, len(line(1) + line(2)))
    assert tail.read(10, 1 << 20) == []  # the half line waits for its newline
    with f.open("ab") as out:
        out.write(b'"}\n')
    [(data, end)] = tail.read(10, 1 << 20)
    assert data == b'{"id": "half"}' and end.offset == f.stat().st_size


def test_the_tail_moves_to_the_next_day_once_the_old_file_settled(tmp_path: Path) -> None:
    clock = Clock()
    (tmp_path / DAY1).write_bytes(line(1))
    tail = Tail(tmp_path, None, clock=clock, settle=5.0)
    assert len(tail.read(10, 1 << 20)) == 1
    (tmp_path / DAY2).write_bytes(line(2))
    assert tail.read(10, 1 << 20) == []  # a late write to day 1 may still come
    with (tmp_path / DAY1).open("ab") as out:
        out.write(line(3))
    assert [d + b"\n" for d, _ in tail.read(10, 1 << 20)] == [line(3)]
    assert tail.read(10, 1 << 20) == []
    clock.now += 5.0
    assert tail.read(10, 1 << 20) == []  # moves on now ...
    assert [d + b"\n" for d, _ in tail.read(10, 1 << 20)] == [line(2)]  # ... and reads day 2
    assert tail.skipped == 0


def test_a_file_removed_by_retention_is_passed_and_a_shorter_one_read_again(
        tmp_path: Path) -> None:
    (tmp_path / DAY2).write_bytes(line(2))
    tail = Tail(tmp_path, Position(DAY1, 500))  # day 1 is gone
    [(_, end)] = tail.read(10, 1 << 20)
    assert end == Position(DAY2, len(line(2)))
    tail = Tail(tmp_path, Position(DAY2, 10_000))  # replaced by a shorter file
    assert [d + b"\n" for d, _ in tail.read(10, 1 << 20)] == [line(2)]


def test_the_tail_stops_at_max_lines_and_seek_rewinds(tmp_path: Path) -> None:
    (tmp_path / DAY1).write_bytes(b"".join(line(i) for i in range(10)))
    tail = Tail(tmp_path, None)
    first = tail.read(4, 1 << 20)
    assert len(first) == 4
    tail.seek(None)  # the batch was not acknowledged: from the last cursor again
    assert tail.read(4, 1 << 20) == first
    assert len(tail.read(100, 1 << 20)) == 6


def test_the_backlog_counts_lines_ahead_of_the_cursor_across_files(tmp_path: Path) -> None:
    (tmp_path / DAY1).write_bytes(b"".join(line(i) for i in range(5)))
    (tmp_path / DAY2).write_bytes(b"".join(line(i) for i in range(3)) + b"partial")
    backlog = Backlog(tmp_path, None)
    assert backlog.scan(budget=len(line(0)) * 2) == 2  # a small budget: counted over turns
    assert backlog.scan() == 8
    backlog.committed(Position(DAY1, len(line(0)) * 3), 3)
    assert backlog.lines == 5
    # a commit past the frontier (the tail ran ahead of the count) starts it over
    backlog = Backlog(tmp_path, None)
    backlog.committed(Position(DAY2, len(line(0))), 6)
    assert backlog.scan() == 2


def test_the_message_id_carries_the_host_and_tells_a_stage_quarantine_apart() -> None:
    rec = {"id": "0640c3f1a2b3c-0004d2", "quarantine": None}
    assert message_id("mx1", rec) == "mx1:0640c3f1a2b3c-0004d2"
    stage = {"id": "0640c3f1a2b3c-0004d2", "quarantine": {"store": "stage"}}
    assert message_id("mx1", stage) == "mx1:0640c3f1a2b3c-0004d2:stage"
    with pytest.raises(ValueError):
        message_id("mx1", {"id": "../x"})


@pytest.fixture
def ring() -> Iterator[Ring]:
    name = f"rt-fwd-{uuid4().hex[:8]}"
    r = Ring.create(name, 8, 4096)
    yield r
    r.close()
    unlink_name(name)


def test_the_backlog_is_a_level_a_dead_forwarder_does_not_leave_behind(ring: Ring) -> None:
    row = ring.table.register(Role.FORWARDER, 0)
    gauge = BacklogGauge(row)
    gauge.set(40)
    row.add(C.FORWARDED, 7)
    ring.table.retire_row(row.row)  # it died with a backlog of 40
    assert ring.snapshot().totals()[C.FORWARDED] == 7
    assert ring.snapshot().totals()[C.FORWARD_BACKLOG] == 0
    # the next one counts 12 left, not 12 on top of 40, and can count down
    gauge = BacklogGauge(ring.table.register(Role.FORWARDER, 0))
    gauge.set(12)
    gauge.set(3)
    assert ring.snapshot().totals()[C.FORWARD_BACKLOG] == 3


def test_a_drain_stops_the_forwarder_after_the_workers_that_write_its_records() -> None:
    from ringtrap.base.states import ChildState
    from ringtrap.control.child import Child, set_state, stop_next

    ingest, worker, fwd = (Child(Role.INGEST, 0, 1), Child(Role.WORKER, 0, 2),
                           Child(Role.FORWARDER, 0, 62))
    kids = [ingest, worker, fwd]
    for k in kids:
        k.started_as(100 + k.row, None, 0.0, 0)
    assert fwd.name == "forwarder"
    set_state(ingest, ChildState.EXITED)
    assert stop_next(kids, draining=True) == [worker]
    set_state(worker, ChildState.EXITED)
    assert stop_next(kids, draining=True) == [fwd]
