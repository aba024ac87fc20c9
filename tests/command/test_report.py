"""The daily report (ringtrap.command.report and ``ringtrap report``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ringtrap.command import report
from ringtrap.command.cli import EX_NOINPUT, EX_USAGE, main
from ringtrap.scan.results import ResultSink

T0 = 1_800_000_000.0  # 2027-01-15 08:00 UTC
DAY = "2027-01-15"


def rec(n: int, verdict: str = "spam", **kw: Any) -> dict[str, Any]:
    base = {"id": f"m{n:03d}", "received": f"{DAY}T08:{n % 60:02d}:00.000000+00:00",
            "size": 2000 + n, "verdict": verdict, "rules": ["RULE_A"], "subject": f"s{n}",
            "relay_ip": "192.0.2.7", "url_domains": ["example.com"], "fingerprint": None,
            "duplicate_of": None, "scanned_ms": 50.0 if verdict in ("spam", "ham") else None}
    base.update(kw)
    return base


def sample_day() -> list[dict[str, Any]]:
    records = [rec(0, fingerprint="f1", rules=["GTUBE", "RULE_A"], scanned_ms=80.0)]
    records += [rec(n, "duplicate", fingerprint="f1", duplicate_of="m000",
                    relay_ip=f"198.51.100.{n}") for n in range(1, 6)]
    records += [rec(10, "ham", rules=[], fingerprint="f2", relay_ip="2001:db8:1:2::5",
                    url_domains=["other.org", "example.com"], size=70000, scanned_ms=20.0)]
    records += [rec(11, "bounce", rules=[], relay_ip=None, url_domains=[], size=500000)]
    return records


def test_summary_counts() -> None:
    s = report.summarize(sample_day())
    assert s["messages"] == 8
    assert s["verdicts"] == {"duplicate": 5, "spam": 1, "ham": 1, "bounce": 1}
    assert s["top_rules"][0] == ("RULE_A", 6) and ("GTUBE", 1) in s["top_rules"]
    assert s["top_relays"][0] == ("192.0.2.7", 1) and len(s["top_relays"]) == 7
    assert ("198.51.100.0/24", 5) in s["top_networks"]
    assert ("2001:db8:1::/48", 1) in s["top_networks"]
    assert s["top_url_domains"][0] == ("example.com", 7)
    c = s["campaigns"]
    assert (c["groups"], c["messages_in_groups"], c["repeats"]) == (1, 6, 5)
    assert (c["recognised_repeats"], c["scans_saved"]) == (5, 5)
    assert c["top"][0] == {"fingerprint": "f1", "messages": 6, "first": "m000",
                           "subject": "s0", "verdicts": {"spam": 1, "duplicate": 5},
                           "relays": 6}
    assert s["scan_ms"]["count"] == 2 and s["scan_ms"]["max"] == 80.0
    assert s["sizes"]["max"] == 500000
    assert sum(s["sizes"]["histogram"].values()) == 8
    assert s["hours"][8] == 8


def test_summary_tells_the_scanners_and_rspamd_actions_apart() -> None:
    records = [rec(0, scanner="spamd", scanned_ms=60.0),
               rec(1, scanner="rspamd", action="reject", rules=["GTUBE"], scanned_ms=3.0),
               rec(2, "ham", scanner="rspamd", action="greylist", scanned_ms=5.0),
               rec(3, "duplicate", scanner="rspamd", action="reject", duplicate_of="m001"),
               rec(4, "bounce", rules=[])]
    s = report.summarize(records)
    assert s["scanners"] == {
        "rspamd": {"messages": 3, "scan_ms": {"count": 2, "min": 3.0, "median": 3.0,
                                              "p95": 5.0, "max": 5.0, "mean": 4.0}},
        "spamd": {"messages": 1, "scan_ms": {"count": 1, "min": 60.0, "median": 60.0,
                                             "p95": 60.0, "max": 60.0, "mean": 60.0}},
    }
    assert s["actions"] == {"reject": 2, "greylist": 1}
    text = report.render_text(s, DAY)
    assert "rspamd actions" in text and "greylist" in text
    # a day scanned by spamd alone has no actions table
    assert "rspamd actions" not in report.render_text(report.summarize(sample_day()), DAY)


def test_text_report_has_every_table() -> None:
    text = report.render_text(report.summarize(sample_day()), DAY)
    assert text.startswith(f"ringtrap report for {DAY}: 8 messages")
    for title in ("Verdicts", "Top rules", "Top relay IPs", "Top relay networks",
                  "Top URL domains", "Largest campaigns", "Sizes", "Scan times"):
        assert f"\n{title}" in text
    assert "  duplicate         5  62.5%" in text
    assert "1 group of repeated bodies holds 6 messages (5 repeats)" in text


def test_empty_day() -> None:
    text = report.render_text(report.summarize([]), DAY)
    assert "0 messages" in text and "(none)" in text


def write_day(tmp_path: Path, records: list[dict[str, Any]]) -> Path:
    results = tmp_path / "results"
    with ResultSink(results, clock=lambda: T0) as sink:
        for r in records:
            sink.write(r)
    config = tmp_path / "trap.toml"
    config.write_text(f'[results]\ndir = "{results}"\n[spamd]\naddress = "off"\n')
    return config


def test_cli_text_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_day(tmp_path, sample_day())
    assert main(["report", "-c", str(config), "--day", DAY]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"ringtrap report for {DAY}: 8 messages")
    assert main(["report", "-c", str(config), "--day", DAY, "--json", "--top", "1"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["day"] == DAY and len(data["top_url_domains"]) == 1


def test_cli_missing_day_and_bad_day(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_day(tmp_path, sample_day())
    assert main(["report", "-c", str(config), "--day", "2027-01-16"]) == EX_NOINPUT
    assert main(["report", "-c", str(config), "--day", "15.01.2027"]) == EX_USAGE
    assert "YYYY-MM-DD" in capsys.readouterr().err


def test_bad_lines_are_skipped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_day(tmp_path, sample_day())
    path = report.day_file(tmp_path / "results", DAY)
    with open(path, "ab") as f:
        f.write(b"{half a record\n[1, 2]\n")
    assert main(["report", "-c", str(config), "--day", DAY, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["messages"] == 8


def test_charts_are_png_files(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    config = write_day(tmp_path, sample_day())
    charts = tmp_path / "charts"
    assert main(["report", "-c", str(config), "--day", DAY, "--charts", str(charts)]) == 0
    files = sorted(p.name for p in charts.iterdir())
    assert files == sorted(f"ringtrap-{DAY}-{n}.png" for n in
                           ("verdicts", "rules", "relays", "url-domains", "hours", "sizes"))
    for name in files:
        assert (charts / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_bar_carries_its_value() -> None:
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for horizontal in (False, True):
        fig, ax = plt.subplots()
        try:
            report.draw_bars(ax, ["a", "b", "c"], [400, 1, 0], horizontal)
            texts = sorted(t.get_text() for t in ax.texts if t.get_text())
        finally:
            plt.close(fig)
        # the one-message bar beside the 400 one is labelled; an empty one is not
        assert texts == ["1", "400"], (horizontal, texts)
