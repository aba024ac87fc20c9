"""The ``ringtrap`` command line: config tooling, usage errors, the reference tables."""

from __future__ import annotations

import json
import tomllib
import uuid
from pathlib import Path

import pytest

from ringtrap import config as configmod
from ringtrap.command import cli

ROOT = Path(__file__).resolve().parents[2]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_config_sample_is_complete_commented_and_loads_to_the_defaults(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(capsys, "config", "--sample")
    assert code == 0
    # every section is there, every assignment commented out
    assert tomllib.loads(out) == {s: {} for s in configmod.to_dict(configmod.defaults())}
    assert configmod.load_text(out) == configmod.defaults()
    assert out == configmod.sample_config()
    # uncommented, it names every declared key and still means the defaults
    live = configmod.sample_config(commented=False)
    assert {s: set(keys) for s, keys in tomllib.loads(live).items()} == {
        s: set(keys) for s, keys in configmod.to_dict(configmod.defaults()).items()}
    assert configmod.load_text(live) == configmod.defaults()


def test_config_check_accepts_a_good_file(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[workers]\ncount = 2\n[metrics]\nlisten = "127.0.0.1:9809"\n')
    code, out, err = run(capsys, "config", "--check", str(good))
    assert (code, out, err) == (0, f"{good}: OK\n", "")


def test_config_check_names_every_problem(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[workers]\ncount = 0\n[metrics]\nlisten = "nowhere"\n'
                   '[service]\nuser = "no-such-user-for-ringtrap"\n[bogus]\nx = 1\n')
    code, out, err = run(capsys, "config", "--check", str(bad))
    assert code == cli.EX_CONFIG and out == ""
    problems = err.splitlines()
    assert len(problems) == 4, problems
    assert all(p.startswith(f"{bad}: ") for p in problems)
    named = " ".join(problems)
    for key in ("workers.count", "metrics.listen", "service.user", "[bogus]"):
        assert key in named


def test_config_check_of_a_missing_file_fails(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "config", "--check", str(tmp_path / "none.toml"))
    assert code == cli.EX_CONFIG and "none.toml" in err


def test_reference_settings_table_is_the_generated_one(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "config", "--docs")
    assert code == 0
    assert out == configmod.docs_table() + "\n"
    reference = (ROOT / "docs" / "reference.md").read_text()
    assert configmod.docs_table() in reference, "regenerate it: scripts/regen-docs"


def test_reference_metrics_table_lists_every_metric() -> None:
    from ringtrap.control import metrics

    readme = (ROOT / "docs" / "reference.md").read_text()
    names = {n for n, *_ in metrics._LABELLED_COUNTERS} | {
        n for n, *_ in metrics._PLAIN_COUNTERS}
    names = {f"{n}_total" for n in names} | {
        "ringtrap_messages_processed_total", "ringtrap_lock_breaks_total",
        "ringtrap_scan_duration_seconds", "ringtrap_ring_slots_used", "ringtrap_ring_slots",
        "ringtrap_overflow_messages", "ringtrap_overflow_bytes",
        "ringtrap_overflow_oldest_age_seconds", "ringtrap_processes", "ringtrap_scanner_up",
        "ringtrap_scanner_scans_total", "ringtrap_scanner_errors_total",
        "ringtrap_scanner_breaker_opens_total", "ringtrap_scanner_scan_duration_seconds"}
    missing = sorted(n for n in names if f"`{n}" not in readme)
    assert not missing


def test_the_shipped_config_is_valid(tmp_path: Path) -> None:
    # the unit's configuration names the ringtrap user, which a test host lacks
    text = (ROOT / "contrib" / "ringtrap.toml").read_text()
    assert 'user = "ringtrap"' in text
    cfg = configmod.load_text(text.replace('user = "ringtrap"', 'user = "nobody"'))
    assert cfg.service.user == "nobody"
    assert cfg.metrics.listen == configmod.ListenAddress("127.0.0.1", 9809)


def test_status_of_a_trap_that_is_not_running(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "t.toml"
    conf.write_text(f'[ring]\nname = "rt-cli-{uuid.uuid4().hex[:8]}"\n')
    code, out, err = run(capsys, "status", "--json", "-c", str(conf))
    assert code == cli.EX_UNAVAILABLE and "not running" in err
    # still an object on stdout, for the scripts that read it
    down = json.loads(out)
    assert down["running"] is False and down["ring"]["name"].startswith("rt-cli-")
    # the same -c is given: no hint to give it
    assert " -c " not in err


def test_commands_that_find_nothing_without_c_hint_at_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # the defaults point nowhere this test's trap-less host has anything
    tag = uuid.uuid4().hex[:8]
    plain = configmod.defaults()
    empty = configmod.override(plain, {"ring.name": f"rt-cli-{tag}",
                                       "overflow.dir": str(tmp_path / "none"),
                                       "results.dir": str(tmp_path / "results")})
    monkeypatch.setattr(configmod, "defaults", lambda: empty)
    for argv in (["status"], ["status", "--json"], ["report"]):
        code, _, err = run(capsys, *argv)
        assert code in (cli.EX_UNAVAILABLE, cli.EX_NOINPUT) and "-c FILE" in err, argv
    code, out, _ = run(capsys, "purge")
    assert code == 0 and "nothing to purge" in out and "-c FILE" in out


def test_live_view_refuses_a_useless_interval(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "top", "--interval", "0")
    assert code == cli.EX_USAGE and "--interval" in err


def test_status_json_and_watch_are_exclusive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["status", "--json", "--watch"])
    assert info.value.code == 2
    capsys.readouterr()


def test_run_log_format_overrides_the_file(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    from ringtrap import supervisor

    monkeypatch.setattr(supervisor, "run",
                        lambda cfg, path: seen.append(cfg.supervisor.log_format) or 0)
    conf = tmp_path / "t.toml"
    conf.write_text('[supervisor]\nlog_format = "human"\n')
    assert cli.main(["run", "-c", str(conf), "--log-format", "json"]) == 0
    assert cli.main(["run", "-c", str(conf)]) == 0
    assert seen == ["json", "human"]
