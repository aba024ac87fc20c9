"""The blocklist's logic: what is counted, what is listed, what the files say."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pytest

from ringtrap import config as configmod
from ringtrap.config import Config
from ringtrap.control import blockfiles
from ringtrap.control.blocklist import DAY, Policy, RecordWindow, Tally, compute, parse_received
from ringtrap.scan.record import iso_utc
from ringtrap.scan.results import file_name

LINES = Path(__file__).resolve().parent.parent / "scan" / "record_lines.txt"
NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def template(name: str = "spam") -> dict[str, Any]:
    for line in LINES.read_text().splitlines():
        key, _, text = line.partition("\t")
        if key == name:
            return json.loads(text)
    raise KeyError(name)


def hit(ip: str | None, ago: float = 3600.0, rcpt: str = "trap1@example.net",
        fingerprint: str | None = "f1", verdict: str = "spam") -> dict[str, Any]:
    r = template()
    r["received"] = iso_utc(NOW - ago)
    r["relay_ip"] = ip
    r["envelope"]["recipients"] = [rcpt]
    r["fingerprint"] = fingerprint
    r["verdict"] = verdict
    return r


def write_records(results: Path, records: list[dict[str, Any] | str]) -> None:
    """Each record into the file of its day; a str is written as a raw line into today's."""
    results.mkdir(parents=True, exist_ok=True)
    for r in records:
        if isinstance(r, str):
            path, line = results / file_name(NOW), r
        else:
            when = parse_received(r["received"])
            assert when is not None
            path, line = results / file_name(when), json.dumps(r)
        with open(path, "a") as f:
            f.write(line + "\n")


def cfg_for(tmp_path: Path, **blocklist: object) -> Config:
    cfg = configmod.defaults()
    return dataclasses.replace(
        cfg, results=dataclasses.replace(cfg.results, dir=tmp_path / "results"),
        blocklist=dataclasses.replace(cfg.blocklist, **blocklist))


def listed(cfg: Config) -> dict[str, int]:
    result, _ = compute(cfg, NOW)
    return {str(e.network): e.hits for e in result.listed}


# 203.0.113.0/24 and 2001:db8::/32 are documentation ranges: not global, so
# the tests that list them set list_reserved; 8.8.x and 2a00:: are global.


def test_an_address_is_listed_from_min_hits_on(tmp_path: Path) -> None:
    write_records(tmp_path / "results", [hit("8.8.4.4"), hit("8.8.8.8"), hit("8.8.8.8")])
    assert listed(cfg_for(tmp_path)) == {"8.8.8.8/32": 2}
    assert listed(cfg_for(tmp_path, min_hits=1)) == {"8.8.8.8/32": 2, "8.8.4.4/32": 1}


def test_distinct_recipients_are_a_threshold_of_their_own(tmp_path: Path) -> None:
    write_records(tmp_path / "results", [
        hit("8.8.8.8", rcpt="a@trap.example"), hit("8.8.8.8", rcpt="A@trap.example"),
        hit("9.9.9.9", rcpt="a@trap.example"), hit("9.9.9.9", rcpt="b@trap.example")])
    cfg = cfg_for(tmp_path, min_recipients=2)
    assert listed(cfg) == {"9.9.9.9/32": 2}
    result, _ = compute(cfg, NOW)
    assert result.below_threshold == 1
    [entry] = result.listed
    assert (len(entry.recipients), len(entry.campaigns)) == (2, 1)


def test_an_entry_expires_after_its_quiet_days_and_old_hits_leave_the_window(
        tmp_path: Path) -> None:
    write_records(tmp_path / "results", [
        # quiet for 4 days: expired with expire_days 3
        hit("8.8.8.8", ago=5 * DAY), hit("8.8.8.8", ago=4 * DAY),
        # one hit before the 7-day window, one inside: one hit counted
        hit("9.9.9.9", ago=7.2 * DAY), hit("9.9.9.9", ago=DAY),
        hit("1.1.1.1", ago=2.5 * DAY), hit("1.1.1.1", ago=10.0)])
    cfg = cfg_for(tmp_path)
    result, counts = compute(cfg, NOW)
    assert {str(e.network): (e.hits, e.first, e.last) for e in result.listed} == {
        "1.1.1.1/32": (2, NOW - 2.5 * DAY, NOW - 10.0)}
    assert (result.expired, result.below_threshold) == (1, 1)
    assert counts.before_window == 1
    assert listed(cfg_for(tmp_path, expire_days=5)) == {"1.1.1.1/32": 2, "8.8.8.8/32": 2}


def test_ipv6_is_counted_by_prefix_and_written_as_rbldnsd_wants_it(tmp_path: Path) -> None:
    write_records(tmp_path / "results", [
        hit("2a00:1450:4001:81a::1"), hit("2a00:1450:4001:81a:ffff::2"),
        hit("2a00:1450:4001:81b::1"), hit("2a00:1450:4001:81b::2")])
    cfg = cfg_for(tmp_path)
    assert listed(cfg) == {"2a00:1450:4001:81a::/64": 2, "2a00:1450:4001:81b::/64": 2}
    result, _ = compute(cfg, NOW)
    zone = blockfiles.render_rbldnsd(result, 6, "127.0.0.2", "x", NOW).splitlines()
    assert "(ip6tset)" in zone[0]
    assert zone[1:] == [":127.0.0.2:x", "2a00:1450:4001:81a", "2a00:1450:4001:81b"]
    wide = cfg_for(tmp_path, ipv6_prefix=48)
    assert listed(wide) == {"2a00:1450:4001::/48": 4}
    result, _ = compute(wide, NOW)
    zone = blockfiles.render_rbldnsd(result, 6, "127.0.0.2", "x", NOW).splitlines()
    assert "(ip6trie)" in zone[0] and zone[2:] == ["2a00:1450:4001::/48"]


def test_ipv4_by_prefix_and_ipv4_mapped_addresses(tmp_path: Path) -> None:
    write_records(tmp_path / "results", [hit("8.8.8.1"), hit("::ffff:8.8.8.2")])
    assert listed(cfg_for(tmp_path)) == {}
    assert listed(cfg_for(tmp_path, ipv4_prefix=24)) == {"8.8.8.0/24": 2}


def test_ranges_never_listed(tmp_path: Path) -> None:
    twice = [hit(ip) for ip in ("127.0.0.1", "::1", "10.1.2.3", "203.0.113.7", "8.8.8.8",
                                 "9.9.9.9", "1.1.1.1", "0.0.0.0", "224.0.0.5")
             for _ in range(2)]
    write_records(tmp_path / "results", twice)
    cfg = cfg_for(tmp_path, allow=("9.9.9.0/24",))
    cfg = dataclasses.replace(cfg, records=dataclasses.replace(
        cfg.records, trusted_networks=("1.1.1.1/32",)))
    assert listed(cfg) == {"8.8.8.8/32": 2}
    result, _ = compute(cfg, NOW)
    assert result.counted.never_listed == 16
    # private and documentation ranges only when asked for; loopback never
    cfg = dataclasses.replace(cfg, blocklist=dataclasses.replace(cfg.blocklist,
                                                                 list_reserved=True))
    assert listed(cfg) == {"8.8.8.8/32": 2, "10.1.2.3/32": 2, "203.0.113.7/32": 2}


def test_a_network_that_would_cover_an_allowed_address_is_not_listed(tmp_path: Path) -> None:
    write_records(tmp_path / "results", [hit("8.8.8.1"), hit("8.8.8.2"), hit("8.8.9.1"),
                                         hit("8.8.9.2")])
    cfg = cfg_for(tmp_path, ipv4_prefix=24, allow=("8.8.8.8/32",))
    assert listed(cfg) == {"8.8.9.0/24": 2}
    result, _ = compute(cfg, NOW)
    assert result.overlapping == 1


def test_which_verdicts_count(tmp_path: Path) -> None:
    q = template("quarantined")
    q["received"] = iso_utc(NOW - 60)
    write_records(tmp_path / "results", [
        hit("8.8.8.8", verdict="bounce"), hit("8.8.8.8", verdict="autoreply"),
        hit("8.8.8.8", verdict="duplicate"), hit("8.8.8.8", verdict="not_scanned"), q])
    result, _ = compute(cfg_for(tmp_path), NOW)
    assert {str(e.network): e.hits for e in result.listed} == {"8.8.8.8/32": 2}
    assert (result.counted.other_verdicts, result.counted.hits) == (3, 2)
    assert listed(cfg_for(tmp_path, verdicts=("bounce", "autoreply"))) == {"8.8.8.8/32": 2}


def test_malformed_and_old_lines_are_counted_never_fatal(tmp_path: Path) -> None:
    results = tmp_path / "results"
    # a record of the first version: the fourteen original keys, no relay_ip
    old = {k: template()[k] for k in list(template())[:14]}
    old["received"] = "2027-01-15T06:00:00"  # no offset: read as UTC
    older = dict(old, relay_ip="8.8.8.8", envelope="not an object", fingerprint=7)
    write_records(results, [
        hit("8.8.8.8"), "not json at all", "[1, 2]", '"a string"', "{}",
        '{"received": "yesterday", "verdict": "spam", "relay_ip": "8.8.8.8"}',
        '{"received": 17, "relay_ip": "8.8.8.8"}', json.dumps(old), json.dumps(older),
        json.dumps(dict(older, relay_ip="not an address")), "", "{\"received\": "])
    with open(results / file_name(NOW), "ab") as f:
        f.write(b'\xff\xfe binary \x00\n{"received": "2027-01-15T07:00:00+00:00", "relay_')
    result, counts = compute(cfg_for(tmp_path), NOW)
    # 6 lines that are no JSON object (binary one included), 3 objects with no usable time
    assert counts.skipped == 9
    assert counts.lines == 13  # the cut-off last line is not read
    assert result.counted.no_relay == 2
    assert {str(e.network): e.hits for e in result.listed} == {"8.8.8.8/32": 2}
    [entry] = result.listed
    assert entry.first == NOW - 2 * 3600  # the offset-less time, as UTC


def test_the_window_reads_only_its_days_files(tmp_path: Path) -> None:
    results = tmp_path / "results"
    write_records(results, [hit("8.8.8.8", ago=30 * DAY), hit("8.8.8.8")])
    window = RecordWindow(results, 7, NOW)
    assert [p.name for p in window.files()] == [file_name(NOW)]
    assert len(list(window)) == 1 and window.counts.files == 1


def test_formats(tmp_path: Path) -> None:
    write_records(tmp_path / "results", [hit("8.8.8.8", rcpt=f"t{i}@trap.example")
                                         for i in range(12)]
                  + [hit("2a00:1450:4001:81a::1"), hit("2a00:1450:4001:81a::2")])
    cfg = cfg_for(tmp_path, txt="listed by ringtrap trap, see https://rbl.example/?$")
    result, counts = compute(cfg, NOW)
    postfix = blockfiles.render_postfix(result, cfg.blocklist.txt, NOW).splitlines()
    assert postfix[1:] == [
        "8.8.8.8/32 REJECT listed by ringtrap trap, see https://rbl.example/?8.8.8.8: 12 hits",
        "2a00:1450:4001:81a::/64 REJECT listed by ringtrap trap, see"
        " https://rbl.example/?2a00:1450:4001:81a::: 2 hits"]
    assert blockfiles.render_plain(result) == "8.8.8.8/32\n2a00:1450:4001:81a::/64\n"
    zone = blockfiles.render_rbldnsd(result, 4, "127.0.0.3", cfg.blocklist.txt, NOW)
    assert zone.splitlines()[1:] == [
        ":127.0.0.3:listed by ringtrap trap, see https://rbl.example/?$", "8.8.8.8"]
    doc = json.loads(blockfiles.render_json(result, counts, Policy.from_config(cfg), NOW))
    assert doc["listed"] == 2 and doc["read"]["lines"] == 14
    assert doc["entries"][0] == {"network": "8.8.8.8/32", "hits": 12,
                                 "first": "2027-01-15T07:00:00+00:00",
                                 "last": "2027-01-15T07:00:00+00:00",
                                 "recipients": 12, "campaigns": 1, "addresses": ["8.8.8.8"]}


def test_a_line_break_in_the_text_cannot_end_an_entry(tmp_path: Path) -> None:
    write_records(tmp_path / "results", [hit("8.8.8.8"), hit("8.8.8.8")])
    result, _ = compute(cfg_for(tmp_path), NOW)
    zone = blockfiles.render_rbldnsd(result, 4, "127.0.0.2", "a\n1.2.3.4", NOW)
    assert zone.splitlines()[1:] == [":127.0.0.2:a 1.2.3.4", "8.8.8.8"]


def test_files_are_replaced_whole_and_the_state_says_what_was_written(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    write_records(tmp_path / "results", [hit("8.8.8.8"), hit("8.8.8.8")])
    cfg = cfg_for(tmp_path, plain=out / "list.txt", postfix=out / "trap.cidr")
    (out / "list.txt").write_text("the old list\n")
    reader = open(out / "list.txt")  # noqa: SIM115 - a reader that holds the old file
    done = blockfiles.write_all(cfg, NOW)
    assert (done.ipv4, done.ipv6) == (1, 0)
    assert (out / "list.txt").read_text() == "8.8.8.8/32\n"
    assert reader.read() == "the old list\n"  # renamed over, never rewritten in place
    reader.close()
    assert sorted(p.name for p in out.iterdir()) == ["list.txt", "trap.cidr"]
    assert oct((out / "list.txt").stat().st_mode & 0o777) == oct(0o640)
    state = blockfiles.read_state(blockfiles.state_path(cfg))
    assert state is not None
    assert (state["written"], state["entries"], state["ipv4"]) == (NOW, 1, 1)


def test_a_killed_writers_temporary_file_is_removed(tmp_path: Path) -> None:
    path = tmp_path / "list.txt"
    left = tmp_path / ".list.txt.4242.tmp"
    left.write_text("half")
    blockfiles.remove_temporary([path], 4242)
    assert not left.exists()
    # and one the same pid left is replaced, not refused
    own = tmp_path / f".list.txt.{os.getpid()}.tmp"
    own.write_text("half")
    blockfiles.write_atomic(path, b"x\n")
    assert path.read_bytes() == b"x\n" and not own.exists()


def test_a_record_without_recipients_counts_unless_recipients_are_asked_for() -> None:
    tally = Tally(Policy())
    tally.add({"verdict": "spam", "relay_ip": "8.8.8.8"}, NOW)
    tally.add({"verdict": "spam"}, NOW)
    tally.add({"verdict": "spam", "relay_ip": "8.8.8.8", "envelope": None}, NOW)
    result = tally.result(NOW)
    assert [str(e.network) for e in result.listed] == ["8.8.8.8/32"]
    assert result.counted.no_relay == 1
    tally.policy = Policy(min_recipients=2)
    assert tally.result(NOW).listed == []


@pytest.mark.parametrize("fmt", blockfiles.FORMATS)
def test_every_format_renders_an_empty_list(tmp_path: Path, fmt: str) -> None:
    cfg = cfg_for(tmp_path)
    result, counts = compute(cfg, NOW)
    assert blockfiles.render_one(cfg, fmt, result, counts, NOW) is not None
