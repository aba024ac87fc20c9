"""End to end: prefilters, records, dedupe, archive and the report through a running trap.

A real ``ringtrap run`` with a real spamd (the session's ``spamd_server``)
takes real, built and hostile messages over its socket; the records, the
counters in ``status``, the Maildir archive and ``ringtrap report`` must all
agree on what happened to each of them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mailbuild as mb
import pytest
from spamd_fixture import SPAMC, SpamdProcess, spamc_missing_reason
from trap_fixture import reply_id, running_trap, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.spamd]

COPIES = 30


def test_message_work_through_the_service(tmp_path: Path, spamd_server: SpamdProcess) -> None:
    if not mb.SPAM.exists():
        pytest.skip("Debian's spamassassin samples are not installed")
    archive = tmp_path / "archive"
    settings = {
        "spamd": {"address": spamd_server.unix_address},
        "workers": {"count": 2, "heartbeat_timeout": 400, "scan_limit_bytes": "64K"},
        "dedupe": {"skip_scan": True},
        "archive": {"dir": str(archive), "verdicts": ["spam", "ham", "duplicate", "virus"]},
    }
    expected = {
        "spam": mb.SPAM.read_bytes(),
        "ham": mb.HAM.read_bytes(),
        "bounce": mb.dsn(),
        "autoreply": mb.autoreply(),
        "virus": mb.with_attachment("eicar.com", mb.EICAR, "text/plain"),
        "oversize": mb.plain("padding line\n" * 6000),
    }
    # no header fields: scanned all the same, the parse failure noted
    garbage = os.urandom(3000).replace(b":", b"").replace(b"\n", b"")
    zipped = mb.with_attachment("docs.zip", mb.zip_bytes({"invoice.exe": mb.PE_HEAD}))
    with running_trap(tmp_path, settings) as trap:
        ids = {verdict: reply_id(trap.send(data)) for verdict, data in expected.items()}
        zip_id = reply_id(trap.send(zipped))
        garbage_id = reply_id(trap.send(garbage))
        # the campaign's first copy is scanned before the repeats arrive
        first = reply_id(trap.send(mb.campaign_copy(0)))
        trap.wait_records({first})
        repeats = {reply_id(trap.send(mb.campaign_copy(n))) for n in range(1, COPIES)}
        records = {r["id"]: r for r in trap.wait_records(
            set(ids.values()) | {zip_id, garbage_id, first} | repeats)}

        for verdict, msgid in ids.items():
            assert records[msgid]["verdict"] == verdict, records[msgid]
        assert records[zip_id]["verdict"] == "virus"
        assert records[zip_id]["reason"] == "executable 'invoice.exe' in archive 'docs.zip'"
        assert records[garbage_id]["verdict"] in ("spam", "ham")
        assert records[garbage_id]["parse_error"] == "no header fields"
        spam = records[ids["spam"]]
        assert "GTUBE" in spam["rules"] and spam["score"] >= spam["required"]
        assert spam["from_domain"] == "example.net" and spam["fingerprint"]
        ham = records[ids["ham"]]
        assert ham["relay_ip"] == "199.172.62.20" and "tbtf.com" in ham["url_domains"]
        head = records[first]
        assert head["verdict"] in ("spam", "ham")
        for msgid in repeats:
            r = records[msgid]
            assert (r["verdict"], r["duplicate_of"], r["score"], r["rules"]) == (
                "duplicate", first, head["score"], head["rules"])
        for msgid in [*ids.values(), zip_id]:
            if records[msgid]["verdict"] not in ("spam", "ham"):
                assert records[msgid]["scanned_ms"] is None, records[msgid]

        # archive: exactly the configured verdicts, each message whole
        archived = {r["id"]: r["archived"] for r in records.values() if r["archived"]}
        assert {records[i]["verdict"] for i in archived} == {"spam", "ham", "duplicate", "virus"}
        assert len(archived) == len(records) - 3  # not bounce, autoreply, oversize
        assert (archive / archived[ids["spam"]]).read_bytes() == expected["spam"]
        new_files = [p for p in archive.glob("*/*/new/*")]
        assert len(new_files) == len(archived)

        def totals() -> dict[str, int]:
            st = trap.status()
            assert st is not None
            return st["totals"]

        # the counters are folded per process: wait until every record is counted
        wait_until(lambda: totals()["processed"] == len(records), 10, "counters")
        t = totals()
        assert t["verdict_duplicate"] == COPIES - 1 == t["dedupe_hits"]
        assert (t["verdict_bounce"], t["verdict_autoreply"], t["verdict_virus"],
                t["verdict_oversize"], t["verdict_unparseable"]) == (1, 1, 2, 1, 0)
        assert t["archived"] == len(archived) and t["archive_errors"] == 0

        report = subprocess.run(
            [sys.executable, "-m", "ringtrap.command.cli", "report", "--json", "-c",
             str(trap.config_path), "--day", records[first]["received"][:10]],
            capture_output=True, check=True, timeout=60)
        summary = json.loads(report.stdout)
        assert summary["messages"] == len(records)
        assert summary["verdicts"]["duplicate"] == COPIES - 1
        assert summary["campaigns"]["top"][0]["messages"] == COPIES
        assert summary["campaigns"]["scans_saved"] == COPIES - 1
        assert summary["parse_errors"] == 1


GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
# what ringtrap's walk cannot read as a message, though spamd scores it
UNPARSEABLE = {
    "bsmtp": b"HELO relay.example.org\r\nMAIL FROM:<s@example.com>\r\nRCPT TO:<t@example.org>"
             b"\r\nDATA\r\nSubject: hi\r\n\r\n" + GTUBE + b"\r\n.\r\nQUIT\r\n",
    "lone newline": b"\n",
    "body without header": b"Cheap watches, best prices in town.\r\n\r\n" + GTUBE + b"\r\n",
}


def spamc_score(spamd: SpamdProcess, message: bytes) -> tuple[float, float]:
    """(score, required) as the spamc binary gets them from ``spamd``."""
    assert SPAMC is not None
    # -x: fail instead of spamc's "0/0" safe fallback
    out = subprocess.run([SPAMC, "-U", str(spamd.socket_path), "-x", "-c"], input=message,
                         capture_output=True, timeout=60)
    assert out.returncode in (0, 1), out
    score, required = out.stdout.decode().strip().split("/")
    return float(score), float(required)


def test_what_cannot_be_parsed_is_scanned_as_spamc_scans_it(
        tmp_path: Path, spamd_server: SpamdProcess) -> None:
    # before: recorded "unparseable" without a score, spamd never asked
    reason = spamc_missing_reason()
    if reason:
        pytest.skip(reason)
    settings = {"spamd": {"address": spamd_server.unix_address}}
    with running_trap(tmp_path, settings) as trap:
        ids = {name: reply_id(trap.send(data)) for name, data in UNPARSEABLE.items()}
        records = {r["id"]: r for r in trap.wait_records(set(ids.values()), timeout=60)}
    for name, msgid in ids.items():
        r = records[msgid]
        score, required = spamc_score(spamd_server, UNPARSEABLE[name])
        assert (r["score"], r["required"]) == (score, required), (name, r)
        assert r["verdict"] == ("spam" if score >= required else "ham"), (name, r)
        assert r["parse_error"] == "no header fields", (name, r)
    assert records[ids["bsmtp"]]["verdict"] == "spam"
