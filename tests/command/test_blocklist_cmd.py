"""``ringtrap blocklist``: --format prints one format and writes nothing; a write failure is 78."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from ringtrap.command import cli
from ringtrap.scan.record import iso_utc
from ringtrap.scan.results import file_name


def setup(tmp_path: Path, extra: str = "") -> Path:
    results = tmp_path / "results"
    results.mkdir()
    now = time.time()
    lines = [json.dumps({"id": f"m{i}", "received": iso_utc(now - i), "verdict": "spam",
                         "relay_ip": "8.8.8.8"}) for i in range(3)]
    (results / file_name(now)).write_text("\n".join(lines) + "\n[]\n")
    conf = tmp_path / "t.toml"
    conf.write_text(f'[results]\ndir = "{results}"\n[blocklist]\n{extra}')
    return conf


def test_format_prints_one_format_and_writes_nothing(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    conf = setup(tmp_path, f'plain = "{tmp_path / "list.txt"}"\n')
    assert cli.main(["blocklist", "-c", str(conf), "--format", "postfix"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[1:] == ["8.8.8.8/32 REJECT listed by ringtrap trap: 3 hits"]
    assert "1 listed (1 IPv4, 0 IPv6) of 1 relays" in err and "1 line skipped" in err
    assert not (tmp_path / "list.txt").exists()
    assert not (tmp_path / "results" / "blocklist-state.json").exists()


def test_without_files_it_shows_the_table_and_says_none_was_written(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["blocklist", "-c", str(setup(tmp_path))]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[1].split()[:4] == ["8.8.8.8/32", "3", "0", "0"]
    assert "no file written" in err


def test_a_file_that_cannot_be_written_is_a_configuration_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = setup(tmp_path, f'json = "{tmp_path / "missing" / "list.json"}"\n')
    assert cli.main(["blocklist", "-c", str(conf)]) == 78
    assert "missing" in capsys.readouterr().err
