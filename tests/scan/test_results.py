"""Tests of the results sink (ringtrap.scan.results): lines, modes, rotation, concurrency."""

from __future__ import annotations

import calendar
import json
import os
import stat
import traceback
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from ringtrap.scan.results import ResultSink, encode, file_name, read_results, result_files

# 2024-05-01 12:00:00 UTC
NOON = float(calendar.timegm((2024, 5, 1, 12, 0, 0)))


class Clock:
    """A settable wall clock."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def record(n: int, **extra: object) -> dict[str, object]:
    return {"id": f"m{n}", "verdict": "spam", "score": 12.5, "rules": ["A", "B"], **extra}


def lines_of(path: Path) -> list[bytes]:
    data = path.read_bytes()
    assert data.endswith(b"\n")
    return data.split(b"\n")[:-1]


def test_records_are_appended_one_json_per_line(tmp_path: Path, umask_022: None) -> None:
    directory = tmp_path / "a" / "b"  # created when missing
    with ResultSink(directory, clock=Clock(NOON)) as sink:
        for n in range(3):
            sink.write(record(n))
        assert sink.path == directory / "results-2024-05-01.jsonl"
    # a second sink (a restarted worker) appends, never truncates
    with ResultSink(directory, clock=Clock(NOON)) as sink:
        sink.write(record(3))
    path = directory / "results-2024-05-01.jsonl"
    assert [json.loads(line) for line in lines_of(path)] == [record(n) for n in range(4)]
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert list(read_results(directory)) == [record(n) for n in range(4)]


def test_each_write_is_in_the_file_when_it_returns(tmp_path: Path) -> None:
    sink = ResultSink(tmp_path, clock=Clock(NOON))
    sink.write(record(1))
    # read through another descriptor while the sink is still open
    assert list(read_results(tmp_path)) == [record(1)]
    sink.close()


def test_rotates_at_midnight_utc(tmp_path: Path) -> None:
    clock = Clock(float(calendar.timegm((2024, 12, 31, 23, 59, 59))) + 0.75)
    sink = ResultSink(tmp_path, clock=clock)
    sink.write(record(1))
    clock.now += 0.5  # 2025-01-01 00:00:00.25 UTC
    sink.write(record(2))
    sink.write(record(3))
    clock.now -= 0.5  # a wall clock stepped back: the earlier day's file again
    sink.write(record(4))
    sink.close()
    old, new = tmp_path / "results-2024-12-31.jsonl", tmp_path / "results-2025-01-01.jsonl"
    assert result_files(tmp_path) == [old, new]
    assert [json.loads(x)["id"] for x in lines_of(old)] == ["m1", "m4"]
    assert [json.loads(x)["id"] for x in lines_of(new)] == ["m2", "m3"]


def test_file_name_uses_the_utc_date() -> None:
    assert file_name(float(calendar.timegm((2024, 2, 29, 23, 59, 59)))) == (
        "results-2024-02-29.jsonl"
    )
    assert file_name(float(calendar.timegm((2024, 3, 1, 0, 0, 0)))) == "results-2024-03-01.jsonl"


def test_text_is_utf8_and_stays_one_line(tmp_path: Path) -> None:
    tricky = record(1, subject="Grüße \u2028 split\x85here\u2029 \n and \r too", lone="\udc80")
    with ResultSink(tmp_path, clock=Clock(NOON)) as sink:
        sink.write(tricky)
        sink.write(record(2, subject="Привет"))
    path = tmp_path / "results-2024-05-01.jsonl"
    # even a reader that splits on every Unicode line break sees two lines
    assert len(path.read_text(encoding="utf-8").splitlines()) == 2
    assert list(read_results(tmp_path)) == [tricky, record(2, subject="Привет")]
    assert "Привет".encode() in path.read_bytes()  # readable, not \\u-escaped


def test_encode_is_one_line() -> None:
    line = encode(record(1, subject="a\nb"))
    assert line.endswith(b"\n") and line.count(b"\n") == 1


def test_write_after_close_raises(tmp_path: Path) -> None:
    sink = ResultSink(tmp_path)
    sink.close()
    sink.close()
    with pytest.raises(ValueError):
        sink.write(record(1))


def test_read_results_strict_and_lenient(tmp_path: Path) -> None:
    (tmp_path / "results-2024-05-01.jsonl").write_bytes(b'{"id":"a"}\n{"id":\n[1]\n{"id":"b"}\n')
    (tmp_path / "other.txt").write_text("not results\n")
    with pytest.raises(ValueError, match=r"results-2024-05-01\.jsonl:2"):
        list(read_results(tmp_path))
    assert list(read_results(tmp_path, strict=False)) == [{"id": "a"}, {"id": "b"}]
    assert list(read_results(tmp_path / "missing")) == []


WRITERS = 6
PER_WRITER = 400


def _writer(directory: Path, writer: int, shared: ResultSink | None) -> None:
    sink = shared if shared is not None else ResultSink(directory)
    # records of different sizes, several above a page, so an append done in
    # more than one write would show up as a broken line
    for n in range(PER_WRITER):
        sink.write({"writer": writer, "n": n, "pad": "x" * ((n * 997 + writer * 131) % 9000)})


@pytest.mark.slow
@pytest.mark.parametrize("shared", [False, True], ids=["own-sink", "inherited-sink"])
def test_concurrent_writers_never_interleave(tmp_path: Path, shared: bool) -> None:
    parent_sink = ResultSink(tmp_path) if shared else None
    if parent_sink is not None:
        parent_sink.write({"writer": -1, "n": 0, "pad": ""})  # the fd exists before fork
    pids = []
    for writer in range(WRITERS):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 1
            try:
                _writer(tmp_path, writer, parent_sink)
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        pids.append(pid)
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    if parent_sink is not None:
        parent_sink.close()
    # every line parses, and every record is there exactly once
    seen = Counter((r["writer"], r["n"]) for r in read_results(tmp_path))
    expected = {(w, n) for w in range(WRITERS) for n in range(PER_WRITER)}
    if shared:
        expected.add((-1, 0))
    assert set(seen) == expected
    assert max(seen.values()) == 1
