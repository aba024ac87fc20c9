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


# -- the campaigns view ----------------------------------------------------------------

PREV = "2027-01-14"


def old_line(n: int, day: str, fp: str, **kw: Any) -> dict[str, Any]:
    """A record as the first versions wrote it: the fourteen original keys and a fingerprint."""
    base = {"id": f"o{n:03d}", "received": f"{day}T07:{n % 60:02d}:00.000000+00:00",
            "size": 1000, "verdict": "spam", "reason": None, "score": 9.0, "required": 5.0,
            "rules": ["RULE_A"], "from": "x@example.com", "subject": f"old {fp}",
            "message_id": None, "scanned_ms": 40.0, "attempts": 0, "envelope": {},
            "fingerprint": fp}
    base.update(kw)
    return base


def campaign_days() -> list[tuple[str, list[dict[str, Any]]]]:
    # yesterday: campaign "old" (old lines, no relay_ip, no url_domains, no scanned_at) and
    # the start of "long"; today: more of both, and "fresh", new today
    yesterday = [old_line(n, PREV, "old") for n in range(4)]
    yesterday += [rec(40 + n, fingerprint="long", received=f"{PREV}T2{n}:00:00.000000+00:00",
                      relay_ip=f"203.0.113.{n}", from_domain="bank.example")
                  for n in range(2)]
    today = [old_line(10, DAY, "old")]
    today += [rec(n, fingerprint="fresh", relay_ip=f"198.51.100.{n % 2}",
                  url_domains=["shop.example", *(["cdn.example"] if n == 1 else [])],
                  from_domain="shop.example",
                  scanned_at=f"{DAY}T09:00:00.000000+00:00") for n in range(1, 4)]
    today += [rec(50, fingerprint="long", relay_ip="203.0.113.9", from_domain="bank.example",
                  url_domains=[]),
              rec(51, fingerprint="single"), rec(52, fingerprint=None)]
    return [(PREV, yesterday), (DAY, today)]


def test_campaigns_over_days_with_new_ones_and_old_lines() -> None:
    view = report.campaigns(campaign_days(), DAY)
    assert view["days"] == [PREV, DAY]
    assert (view["campaigns"], view["messages_in_campaigns"], view["new"]) == (3, 11, 1)
    largest = {c["fingerprint"]: c for c in view["largest"]}
    # by messages, then by first seen
    assert [c["fingerprint"] for c in view["largest"]] == ["old", "long", "fresh"]
    old = largest["old"]
    assert (old["messages"], old["relays"], old["top_relays"], old["domains"]) == (5, 0, [], 0)
    assert (old["first_seen"], old["last_seen"]) == (
        f"{PREV}T07:00:00.000000+00:00", f"{DAY}T07:10:00.000000+00:00")
    fresh = largest["fresh"]
    assert fresh["messages"] == 3 and fresh["first_seen"] == f"{DAY}T08:01:00.000000+00:00"
    assert fresh["top_relays"] == [("198.51.100.1", 2), ("198.51.100.0", 1)]
    assert fresh["top_domains"] == [("shop.example", 3), ("cdn.example", 1)]
    long = largest["long"]
    assert (long["relays"], long["first_seen"][:10], long["last_seen"][:10]) == (3, PREV, DAY)
    # yesterday's copies linked to rec()'s example.com, today's to nothing
    assert long["top_domains"] == [("bank.example", 3), ("example.com", 2)]
    assert [c["fingerprint"] for c in view["new_today"]] == ["fresh"]
    assert "single" not in largest
    text = report.render_campaigns(view, DAY)
    assert text.startswith(f"ringtrap campaigns {PREV} .. {DAY} (2 days read): 3 campaigns,"
                           f" 11 messages, 1 new on {DAY}")
    new_part = text.split(f"\nNew on {DAY}\n")[1]
    assert "fresh" in new_part and "old" not in new_part.replace("old fresh", "")
    assert f"{PREV} 07:00" in text and "198.51.100.1 198.51.100.0" in text


def test_campaigns_of_a_quiet_window() -> None:
    view = report.campaigns([(DAY, [rec(1, fingerprint="a")])], DAY)
    assert (view["campaigns"], view["largest"], view["new_today"]) == (0, [], [])
    assert "(none)" in report.render_campaigns(view, DAY)


def test_cli_campaigns_reads_the_days_it_finds(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    results = tmp_path / "results"
    for (_, records), clock in zip(campaign_days(), (T0 - 86400, T0), strict=True):
        with ResultSink(results, clock=lambda c=clock: c) as sink:
            for r in records:
                sink.write(r)
    config = tmp_path / "trap.toml"
    config.write_text(f'[results]\ndir = "{results}"\n[spamd]\naddress = "off"\n')
    assert main(["report", "-c", str(config), "--day", DAY, "--campaigns", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["day"] == DAY and data["days"] == [PREV, DAY]  # the 5 days before: no files
    assert [c["fingerprint"] for c in data["new_today"]] == ["fresh"]
    assert main(["report", "-c", str(config), "--day", DAY, "--campaigns", "--days", "1"]) == 0
    out = capsys.readouterr().out
    # one day alone: "old" and "long" have a single message each today
    assert out.startswith(f"ringtrap campaigns {DAY} .. {DAY} (1 day read): 1 campaign,"
                          f" 3 messages, 1 new on {DAY}")
    assert main(["report", "-c", str(config), "--day", "2027-02-01", "--campaigns"]) == EX_NOINPUT
    assert main(["report", "-c", str(config), "--campaigns", "--days", "0"]) == EX_USAGE
