"""The hourly history of accepted and analysed messages (ringtrap.store.history),
on a plain list of words with a clock the test sets, and through a real segment."""

from __future__ import annotations

from collections.abc import Iterator
from uuid import uuid4

import pytest

from ringtrap.base.counters import C
from ringtrap.base.states import Role
from ringtrap.ring import Ring
from ringtrap.store import history
from ringtrap.store.history import HOURS, Hour, Window

H = 3600.0
T0 = 1_700_000_000.0 // H * H  # the start of some hour


def words() -> list[int]:
    return [0] * 256


def counts(hours: list[Hour]) -> list[tuple[int, int]]:
    return [(h.accepted, h.analysed) for h in hours]


def test_growth_lands_in_the_hour_it_was_seen_and_rolls_over() -> None:
    q = words()
    history.tick(q, 10, 2, T0 + 5)  # first tick: what was counted before is this hour's
    history.tick(q, 25, 5, T0 + 3599)
    history.tick(q, 40, 9, T0 + H)  # the next hour starts
    history.tick(q, 41, 9, T0 + H + 10)
    hours = history.read(q, T0 + H + 20)
    assert len(hours) == HOURS
    assert hours[-1] == Hour(T0 + H, 16, 4)
    assert hours[-2] == Hour(T0, 25, 5)
    assert counts(hours[:-2]) == [(0, 0)] * (HOURS - 2)
    assert history.window(hours, 1) == Window(16, 4)
    assert history.window(hours, HOURS) == Window(41, 9)
    assert history.window(hours, HOURS).fraction == pytest.approx(9 / 41)
    assert Window(0, 0).fraction is None


def test_a_day_keeps_24_hours_and_drops_the_25th() -> None:
    q = words()
    total_a = total_n = 0
    for h in range(HOURS + 1):
        total_a += 100 + h
        total_n += h
        history.tick(q, total_a, total_n, T0 + h * H + 1)
    hours = history.read(q, T0 + HOURS * H + 2)
    assert counts(hours) == [(100 + h, h) for h in range(1, HOURS + 1)]
    # the first hour's bucket was reused for the 25th, not added to it
    assert history.window(hours, HOURS) == Window(total_a - 100, total_n)


def test_hours_without_a_tick_read_as_empty() -> None:
    q = words()
    history.tick(q, 5, 5, T0)
    history.tick(q, 8, 6, T0 + 1)
    # no supervisor for three hours: the reader sees nothing for them
    hours = history.read(q, T0 + 3 * H)
    assert counts(hours[-4:]) == [(8, 6), (0, 0), (0, 0), (0, 0)]
    # the supervisor is back: the growth meanwhile counts in its hour, the
    # skipped hours stay empty, and a bucket a day old is not read again
    history.tick(q, 20, 7, T0 + 3 * H + 1)
    hours = history.read(q, T0 + 3 * H + 2)
    assert counts(hours[-4:]) == [(8, 6), (0, 0), (0, 0), (12, 1)]
    assert history.read(q, T0 + (HOURS + 3) * H)[-1] == Hour(T0 + (HOURS + 3) * H, 0, 0)
    assert counts(history.read(q, T0 + (HOURS + 3) * H)) == [(0, 0)] * (HOURS - 1) + [(0, 0)]


def test_a_gap_of_more_than_a_day_empties_every_bucket() -> None:
    q = words()
    history.tick(q, 5, 1, T0)
    history.tick(q, 9, 3, T0 + 30 * H)
    hours = history.read(q, T0 + 30 * H)
    assert counts(hours) == [(0, 0)] * (HOURS - 1) + [(4, 2)]


def test_totals_that_go_down_count_as_no_growth() -> None:
    q = words()
    history.tick(q, 50, 5, T0)
    history.tick(q, 10, 1, T0 + 1)
    history.tick(q, 12, 2, T0 + 2)
    assert history.read(q, T0 + 3)[-1] == Hour(T0, 52, 6)


@pytest.fixture
def ring() -> Iterator[Ring]:
    r = Ring.create(f"rt-history-{uuid4().hex[:8]}", 4, 1024)
    yield r
    r.close()
    r.unlink()


def test_the_segment_keeps_the_history_of_its_counters(ring: Ring) -> None:
    """Rows, retired rows and the ingest's two accepted counters all count."""
    ingest = ring.table.register(Role.INGEST, 0)
    worker = ring.table.register(Role.WORKER, 0)
    ingest.add(C.ACCEPTED_RING, 7)
    ingest.add(C.ACCEPTED_OVERFLOW, 3)
    worker.add(C.ANALYSED, 4)
    ring.table.tick_history(T0 + 10)
    ring.table.retire_row(worker.row)  # folded into the retired block: still counted
    ingest.add(C.ACCEPTED_OVERFLOW, 5)
    ring.table.tick_history(T0 + H + 10)
    hours = ring.table.history(T0 + H + 11)
    assert counts(hours[-2:]) == [(10, 4), (5, 0)]
    assert ring.table.total(C.ANALYSED) == 4
