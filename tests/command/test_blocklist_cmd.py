"""``ringtrap blocklist``: --format prints one format and writes nothing; a write failure is 78;
without psycopg --database is 69, and an unreachable database 66."""

from __future__ import annotations

import json
import sys
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


def test_the_database_without_psycopg_is_unavailable(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # what a host without the extra has
    assert cli.main(["blocklist", "-c", str(setup(tmp_path)), "--database"]) == 69
    assert "ringtrap[hub]" in capsys.readouterr().err


def test_an_unreachable_database_is_no_input_and_writes_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("psycopg")
    conf = setup(tmp_path, f'plain = "{tmp_path / "list.txt"}"\n'
                 f'[collect]\ndatabase = "host={tmp_path / "no-server"} dbname=ringtrap"\n')
    for more in ([], ["--format", "plain"], ["--host", "trap-a"]):
        assert cli.main(["blocklist", "-c", str(conf), "--database", *more]) == 66
        out, err = capsys.readouterr()
        assert out == "" and err.startswith("ringtrap: collect.database: ")
    assert not (tmp_path / "list.txt").exists()
