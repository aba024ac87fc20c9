"""``ringtrap export --misp``: the feed loaded back with PyMISP, every attribute checked."""

from __future__ import annotations

import datetime
import email.utils
import hashlib
import json
import re
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from ringtrap.command import cli
from ringtrap.scan.record import iso_utc
from ringtrap.scan.results import day_name, file_name

pymisp = pytest.importorskip("pymisp")

LINES = Path(__file__).resolve().parent.parent / "scan" / "record_lines.txt"


def template(name: str) -> dict[str, Any]:
    for line in LINES.read_text().splitlines():
        key, _, text = line.partition("\t")
        if key == name:
            return dict(json.loads(text))
    raise KeyError(name)


def records(now: float) -> list[dict[str, Any]]:
    """Two days of varied records: relays public, private and trusted, URLs, attachments."""
    start = now - now % 86400
    today, yesterday = start + (now - start) / 2, start - 43200
    out = []

    def add(name: str, when: float, **fields: Any) -> None:
        r = template(name)
        r.update(fields, received=iso_utc(when))
        out.append(r)

    att = {"name": "invoice.zip", "type": "application/zip", "size": 10,
           "sha256": "AB" * 32}
    for i in range(3):
        add("spam", today + i, relay_ip="8.8.8.8",
            urls=["http://spam.example.com/a", f"http://x{i}.example.net/"],
            url_domains=["example.com", "example.net"], attachments=[att])
    add("ham", today - 5, relay_ip="2a00:1450:4001:81a::1")  # one hit: not an indicator
    add("spam", today, relay_ip="10.0.0.1")  # private: never published
    add("spam", today, relay_ip="192.0.2.44")  # trusted below
    add("bounce", today, relay_ip="9.9.9.9", urls=["http://bounce.example/"])  # not counted
    add("quarantined", today)
    add("duplicate", yesterday, relay_ip="9.9.9.9", urls=["http://old.example.org/"],
        url_domains=["example.org"],
        envelope={"sender": "Bounce@Spammer.example", "recipients": ["t@trap.example"]},
        **{"from": "Boss <boss@spammer.example>"})
    return out


def write_results(results: Path, recs: list[dict[str, Any]]) -> None:
    results.mkdir()
    for r in recs:
        when = datetime.datetime.fromisoformat(r["received"]).timestamp()
        with open(results / file_name(when), "a") as f:
            f.write(json.dumps(r) + "\n")
    with open(results / file_name(time.time()), "a") as f:
        f.write("{not a record\n")


def expected(recs: list[dict[str, Any]]) -> dict[str, dict[tuple[str, str], list[float]]]:
    """By day, (type, value) -> the times of the messages that carry it: worked out anew."""
    out: dict[str, dict[tuple[str, str], list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in recs:
        if r["verdict"] in ("bounce", "autoreply", "quarantined"):
            continue
        when = datetime.datetime.fromisoformat(r["received"]).timestamp()
        values = set()
        if r["relay_ip"] in ("8.8.8.8", "9.9.9.9", "2a00:1450:4001:81a::1"):
            values.add(("ip-src", r["relay_ip"]))
        values |= {("url", u) for u in r["urls"] or ()}
        values |= {("domain", d) for d in r["url_domains"] or ()}
        values |= {("sha256", a["sha256"].lower()) for a in r["attachments"] or ()}
        sender = (r["envelope"] or {}).get("sender")
        if sender:
            values.add(("email-src", sender.lower()))
        if r["from"]:
            values.add(("email-src", email.utils.parseaddr(r["from"])[1].lower()))
        for v in values:
            out[day_name(when)][v].append(when)
    return out


def test_the_feed_holds_every_value_seen_with_its_count(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    now = time.time()
    recs = records(now)
    write_results(tmp_path / "results", recs)
    conf = tmp_path / "t.toml"
    conf.write_text(f'[results]\ndir = "{tmp_path / "results"}"\n'
                    '[records]\ntrusted_networks = ["192.0.2.0/24"]\n')
    feed = tmp_path / "feed"
    assert cli.main(["export", "-c", str(conf), "--misp", str(feed), "--days", "2",
                     "--tlp", "green", "--org", "Trap Org"]) == 0
    err = capsys.readouterr().err
    assert "2 events written" in err and "1 skipped" in err

    manifest = json.loads((feed / "manifest.json").read_text())
    assert {f"{u}.json" for u in manifest} == {
        p.name for p in feed.glob("*.json")} - {"manifest.json"}
    want = expected(recs)
    assert sorted(m["date"] for m in manifest.values()) == sorted(want)
    hashes = set((feed / "hashes.csv").read_text().splitlines())
    seen_hashes = set()
    for event_uuid, meta in manifest.items():
        event = pymisp.MISPEvent()
        event.load_file(str(feed / f"{event_uuid}.json"))
        assert event.uuid == event_uuid and event.Orgc.name == "Trap Org"
        assert {t.name for t in event.tags} == {"tlp:green", "ringtrap"}
        assert {t["name"] for t in meta["Tag"]} == {"tlp:green", "ringtrap"}
        day = event.date.isoformat()
        got = {}
        for a in event.attributes:
            m = re.fullmatch(r"seen in (\d+) messages? to the spam trap( \(.*\))?", a.comment)
            assert m, a.comment
            got[(a.type, a.value)] = (int(m.group(1)), a.first_seen.timestamp(),
                                      a.last_seen.timestamp(), a.to_ids)
            seen_hashes.add(f"{hashlib.md5(a.value.encode()).hexdigest()},{event_uuid}")
        assert got == {k: (len(times), pytest.approx(min(times), abs=1e-5),
                           pytest.approx(max(times), abs=1e-5),
                           k[0] == "sha256" or (k[0] == "ip-src" and len(times) >= 2))
                       for k, times in want[day].items()}
    assert hashes == seen_hashes
    attachment = next(a for e in manifest for a in _event(feed, e).attributes
                      if a.type == "sha256")
    assert attachment.comment == "seen in 3 messages to the spam trap (file invoice.zip)"

    # again: the same events, replaced in place
    assert cli.main(["export", "-c", str(conf), "--misp", str(feed), "--days", "2",
                     "--tlp", "green", "--org", "Trap Org"]) == 0
    assert json.loads((feed / "manifest.json").read_text()).keys() == manifest.keys()
    assert len(list(feed.glob("*.json"))) == 3


def _event(feed: Path, event_uuid: str) -> Any:
    event = pymisp.MISPEvent()
    event.load_file(str(feed / f"{event_uuid}.json"))
    return event


def test_without_pymisp_it_says_what_to_install(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pymisp", None)  # import fails as when not installed
    conf = tmp_path / "t.toml"
    conf.write_text(f'[results]\ndir = "{tmp_path / "results"}"\n')
    assert cli.main(["export", "-c", str(conf), "--misp", str(tmp_path / "feed")]) == 69
    assert "pip install 'ringtrap[misp]'" in capsys.readouterr().err
    assert not (tmp_path / "feed").exists()
