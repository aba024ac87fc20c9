"""Message work is linear in its input and reads a bounded amount of it.

Every hostile shape of ``perf/linearity.py`` goes through a worker's message
step (``Processor.process`` without spamd) at size n and 8n in this one run;
the CPU-time ratio must look linear (near 8), never quadratic (near 64).
The faster normalization must also give exactly what the regular
expressions it replaces gave: its output feeds the dedupe fingerprints.
"""

from __future__ import annotations

import io
import re
import sys
import time
import zipfile
from pathlib import Path

import mailbuild as mb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from spamd_fixture import SpamdProcess
from trap_fixture import reply_id, running_trap

from ringtrap.scan import extract
from ringtrap.scan.processing import Processor

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "perf"))

import linearity

# a linear step measures near 8; quadratic near 64
MAX_RATIO = 24


@pytest.mark.parametrize("shape", list(linearity.SHAPES))
def test_message_step_is_linear(shape: str) -> None:
    row = linearity.measure(shape, linearity.SIZES[shape], reps=5)
    assert row.get("error") is None, row
    assert row["ratio"] is not None and row["ratio"] < MAX_RATIO, row


# -- the normalization gives what the old regular expressions gave ----------------

_OLD_TAG = re.compile(r"<[^>]{0,4096}>")
_OLD_SKIP = re.compile(r"(?is)<(script|style)\b.{0,65536}?</\1\s*>")
_OLD_DIGIT_TOKEN = re.compile(r"\S*\d\S*")
_OLD_LONG_TOKEN = re.compile(r"\S{26,}")


def old_normalize(text: str, is_html: bool) -> str:
    """normalize() as it was: right, but quadratic on a long token."""
    if is_html:
        text = _OLD_TAG.sub(" ", _OLD_SKIP.sub(" ", text))
    text = extract._URL.sub(" ", text)
    text = _OLD_LONG_TOKEN.sub(" ", _OLD_DIGIT_TOKEN.sub(" ", text))
    return " ".join(extract._NOT_WORD.sub(" ", text.lower()).split())


FRAGMENTS = [
    "<", ">", "<b>", "</b>", "<script", "<script>", "</script>", "</SCRIPT >", "<Style ",
    "</style\n>", "</styles>", "<scripts>", " ", "\n", "\t", "\u00a0", "\u2003", "a", "Ab",
    "word", "1", "x9", "\u0663", "\u00e9t\u00e9", "_", "-", ".", "'", "&amp;",
    "http://a.example/p?q=1", "www.example.com", "HTTPS://x.y", "a" * 30, "b" * 25,
    "\u0130", "\u00df",
]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=60), st.booleans())
def test_normalize_is_unchanged(pieces: list[str], is_html: bool) -> None:
    text = "".join(pieces)
    assert extract.normalize(text, is_html) == old_normalize(text, is_html)


@pytest.mark.parametrize("text", [
    "<" + "a" * 4096 + ">tail", "<" + "a" * 4097 + ">tail", "<<" + "a" * 4096 + ">tail",
    "x<" + "a" * 4095 + "<b" + "c" * 4094 + ">d", "<" * 5000 + ">after", ">" * 10 + "<a>",
    # 65536 characters between "<script" and "</script>" at most (">" included)
    "<script>" + ("x " * 40_000)[:65535] + "</script>kept",
    "<script>" + ("x " * 40_000)[:65536] + "</script>kept",
    "<style>a</script>b</style>c", "<script>a<script>b</script>c</script>d",
    "<script " * 3 + "</script>e" + "<style>" * 2, "<SCRIPT>x</script  \t>y",
])
def test_normalize_is_unchanged_at_the_limits(text: str) -> None:
    assert extract.normalize(text, True) == old_normalize(text, True)
    assert extract.normalize(text, False) == old_normalize(text, False)


def test_a_huge_decimal_reference_does_not_raise() -> None:
    # int() refuses more than 4300 digits: html.unescape raised ValueError
    rec = Processor(scanner=None, scan_limit_bytes=500 * 1024).process(
        "0640c3f1a2b3c-0004d2", linearity.SHAPES["&# and digits (html)"](10_000), 0.0, 1).to_dict()
    assert rec["verdict"] == "not_scanned" and rec["fingerprint"] is None
    assert extract.unescape("&#65;&#" + "9" * 5000 + ";&#66;") == "A\ufffdB"


def _nested_zips(members: int) -> bytes:
    """A zip of ``members`` zips, each 4 MiB of zeros: small to send, big to read."""
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w", zipfile.ZIP_STORED) as z:
        z.writestr("zeros.bin", bytes(4 * 1024 * 1024))
    outer = io.BytesIO()
    with zipfile.ZipFile(outer, "w", zipfile.ZIP_DEFLATED) as z:
        for i in range(members):
            z.writestr(f"part{i}.zip", inner.getvalue())
    return outer.getvalue()


def test_nested_archives_are_read_within_one_budget() -> None:
    # every inner archive was read whole (4 MiB each): 8x the members, 8x the work
    proc = Processor(scanner=None, scan_limit_bytes=500 * 1024)
    few, many = (mb.with_attachment("a.zip", _nested_zips(k)) for k in (4, 32))

    def cost(message: bytes) -> float:
        best = float("inf")
        for _ in range(3):
            t0 = time.process_time()
            proc.process("0640c3f1a2b3c-0004d2", message, 0.0, 1)
            best = min(best, time.process_time() - t0)
        return best

    cost(few)
    assert cost(many) / cost(few) < 3


# -- through a running trap ---------------------------------------------------------


@pytest.mark.slow
@pytest.mark.spamd
def test_a_5_mb_line_is_recorded_at_once(tmp_path: Path, spamd_server: SpamdProcess) -> None:
    # before: the fingerprint held the worker past the heartbeat kill, three
    # times, and the message ended in quarantine without a record
    size = 5 * 1024 * 1024
    lines = {"letters": linearity.SHAPES["letters"](size),
             "html <": linearity.SHAPES["run of < (html)"](size)}
    settings = {"spamd": {"address": spamd_server.unix_address},
                "workers": {"count": 2, "heartbeat_timeout": 400}}
    with running_trap(tmp_path, settings) as trap:
        ids = {name: reply_id(trap.send(data)) for name, data in lines.items()}
        records = {r["id"]: r for r in trap.wait_records(set(ids.values()), timeout=60)}
    for name, msgid in ids.items():
        r = records[msgid]
        assert (r["verdict"], r["attempts"], r["size"]) == ("oversize", 0, len(lines[name])), r
