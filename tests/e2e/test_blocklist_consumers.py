"""The blocklist files as their consumers read them: rbldnsd (queried with dig) and postmap.

``ringtrap blocklist`` writes the files from result records; Debian's
rbldnsd serves the two zones on a loopback port, started by the test and
stopped by its pid, and Postfix's ``postmap -q`` looks addresses up in the
cidr map as smtpd's check_client_access would.
"""

from __future__ import annotations

import grp
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ringtrap.scan.record import iso_utc
from ringtrap.scan.results import file_name

ROOT = Path(__file__).resolve().parent.parent.parent
LINES = ROOT / "tests" / "scan" / "record_lines.txt"
ZONE = "bl.ringtrap.test"


def _tool(name: str) -> str | None:
    """A program on PATH or in /usr/sbin (where Debian puts rbldnsd and postmap)."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin")
TXT = "listed by ringtrap trap, see https://rbl.example/?$"


def _spam() -> dict[str, object]:
    for line in LINES.read_text().splitlines():
        key, _, text = line.partition("\t")
        if key == "spam":
            return dict(json.loads(text))
    raise KeyError("spam")


@pytest.fixture
def written(tmp_path: Path) -> Iterator[Path]:
    """Records of three relays, and the files ``ringtrap blocklist`` wrote from them."""
    # rbldnsd reads the zones as its own user: a directory it may enter, files of its group
    out = Path(tempfile.mkdtemp(prefix="rt-bl-", dir="/tmp"))
    os.chmod(out, 0o755)
    results = tmp_path / "results"
    results.mkdir()
    now = time.time()
    lines = []
    hits = {"203.0.113.7": 12, "2001:db8:1:2::5": 3, "198.51.100.9": 1}
    for ip, n in hits.items():
        for i in range(n):
            r = _spam()
            r["received"] = iso_utc(now - 60 * (i + 1))
            r["relay_ip"] = ip
            r["envelope"] = {"recipients": [f"trap{i}@trap.example"]}
            lines.append(json.dumps(r))
    (results / file_name(now - 60)).write_text("\n".join(lines) + "\nnot a record\n")
    config = tmp_path / "ringtrap.toml"
    config.write_text(
        f'[results]\ndir = "{results}"\n'
        "[blocklist]\nlist_reserved = true\n"  # the documentation ranges are not global
        f'txt = "{TXT}"\na_value = "127.0.0.3"\n'
        f'rbldnsd_ip4 = "{out}/ip4set"\nrbldnsd_ip6 = "{out}/ip6tset"\n'
        f'postfix = "{out}/trap.cidr"\n')
    proc = subprocess.run([sys.executable, "-m", "ringtrap.command.cli", "blocklist", "-c",
                           str(config)], capture_output=True, text=True, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[1].split()[:2] == ["203.0.113.7/32", "12"]
    assert ", 1 line skipped (not a record)," in proc.stderr
    try:
        yield out
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dig(port: int, name: str, rtype: str) -> tuple[str, list[str]]:
    """The status and the answer lines (type and data) of one query."""
    proc = subprocess.run(["dig", "@127.0.0.1", "-p", str(port), "+time=1", "+tries=1",
                           "+norecurse", name, rtype], capture_output=True, text=True,
                          check=False)
    status = re.search(r"status: (\w+)", proc.stdout)
    answers = []
    section = False
    for line in proc.stdout.splitlines():
        if line.startswith(";; ANSWER SECTION"):
            section = True
        elif section and not line.strip():
            section = False
        elif section:
            answers.append(" ".join(line.split()[3:]))
    return (status.group(1) if status else proc.stdout + proc.stderr), answers


@pytest.fixture
def rbldnsd(written: Path) -> Iterator[int]:
    """rbldnsd serving both zones on a loopback port; yields the port."""
    program = _tool("rbldnsd")
    if program is None or _tool("dig") is None:
        pytest.skip("rbldnsd or dig missing (dev.sh installs Debian's rbldnsd and dnsutils)")
    user: list[str] = []
    if os.geteuid() == 0:  # rbldnsd refuses root: it reads the zones as nobody
        gid = grp.getgrnam("nogroup").gr_gid
        for f in written.iterdir():
            os.chown(f, -1, gid)
        user = ["-u", "nobody"]
    port = _free_udp_port()
    proc = subprocess.Popen(
        [program, "-n", *user, "-b", f"127.0.0.1/{port}",
         f"{ZONE}:ip4set:{written}/ip4set", f"{ZONE}:ip6tset:{written}/ip6tset"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while dig(port, f"7.113.0.203.{ZONE}", "A")[0] != "NOERROR":
            assert proc.poll() is None, "rbldnsd exited"
            assert time.monotonic() < deadline, "rbldnsd did not answer"
            time.sleep(0.1)
        yield port
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def reverse6(address: str) -> str:
    import ipaddress

    return ".".join(reversed(ipaddress.IPv6Address(address).exploded.replace(":", "")))


def test_rbldnsd_answers_a_listed_address_and_nxdomain_for_others(rbldnsd: int) -> None:
    port = rbldnsd
    assert dig(port, f"7.113.0.203.{ZONE}", "A") == ("NOERROR", ["A 127.0.0.3"])
    assert dig(port, f"7.113.0.203.{ZONE}", "TXT") == (
        "NOERROR", ['TXT "listed by ringtrap trap, see https://rbl.example/?203.0.113.7"'])
    # one hit is below blocklist.min_hits; .8 never hit the trap
    assert dig(port, f"9.100.51.198.{ZONE}", "A") == ("NXDOMAIN", [])
    assert dig(port, f"8.113.0.203.{ZONE}", "A") == ("NXDOMAIN", [])
    # the /64 is listed: any address in it answers
    assert dig(port, f"{reverse6('2001:db8:1:2::ffff')}.{ZONE}", "A") == (
        "NOERROR", ["A 127.0.0.3"])
    assert dig(port, f"{reverse6('2001:db8:1:3::5')}.{ZONE}", "A") == ("NXDOMAIN", [])


def _postmap(postmap: str, confdir: Path, key: str, table: Path) -> tuple[int, str]:
    proc = subprocess.run([postmap, "-c", str(confdir), "-q", key, f"cidr:{table}"],
                          capture_output=True, text=True, check=False)
    return proc.returncode, proc.stdout.strip()


def test_postmap_finds_a_listed_address_in_the_cidr_map(written: Path, tmp_path: Path) -> None:
    postmap = _tool("postmap")
    if postmap is None:
        pytest.skip("postmap missing (dev.sh installs Debian's postfix)")
    confdir = tmp_path / "postfix"
    confdir.mkdir()
    (confdir / "main.cf").write_text("")  # postmap reads a main.cf, this one says nothing
    table = written / "trap.cidr"
    assert _postmap(postmap, confdir, "203.0.113.7", table) == (
        0, "REJECT listed by ringtrap trap, see https://rbl.example/?203.0.113.7: 12 hits")
    assert _postmap(postmap, confdir, "2001:db8:1:2::1234", table) == (
        0, "REJECT listed by ringtrap trap, see https://rbl.example/?2001:db8:1:2::: 3 hits")
    assert _postmap(postmap, confdir, "198.51.100.9", table) == (1, "")
    assert _postmap(postmap, confdir, "203.0.113.8", table) == (1, "")
