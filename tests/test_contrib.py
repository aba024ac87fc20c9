"""What contrib/ ships for monitoring and systemd, checked against the real thing.

The alert rules pass ``promtool check rules``; every metric the rules and the
Grafana dashboard name (and every label their selectors use) is one a live
trap's /metrics exports; the unit makes writable every path the shipped
configuration and the docs put the trap's files in.
"""

from __future__ import annotations

import configparser
import json
import re
import shutil
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest
from trap_fixture import message, reply_id, running_trap

from ringtrap import config as configmod
from ringtrap.config import hostdefaults

ROOT = Path(__file__).resolve().parent.parent
CONTRIB = ROOT / "contrib"
RULES = CONTRIB / "ringtrap.rules.yml"
DASHBOARD = CONTRIB / "grafana-dashboard.json"
# labels Prometheus itself adds to every scraped series
TARGET_LABELS = {"instance", "job"}


def tool(name: str) -> str | None:
    local = ROOT / ".tools" / "bin" / name
    return str(local) if local.exists() else shutil.which(name)


def test_alert_rules_pass_promtool() -> None:
    promtool = tool("promtool")
    if promtool is None:
        pytest.skip("promtool is missing (dev.sh test unpacks it into .tools/bin)")
    done = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def rule_exprs() -> list[str]:
    # the file's own structure: "expr:" either inline or as a folded block
    text = RULES.read_text()
    out = []
    for m in re.finditer(r"expr: (>\n((?: {10}.*\n)+)|.*)", text):
        out.append(m.group(2) if m.group(2) else m.group(1))
    return out


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    exprs += [v["definition"] for v in dash["templating"]["list"] if "definition" in v]
    return exprs


def scrape(port: int) -> dict[str, set[str]]:
    """Metric name -> the label names it is exported with."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, set[str]] = {}
    for line in text.splitlines():
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})? ", line)
        if m and not line.startswith("#"):
            labels = set(re.findall(r'(\w+)="', m.group(3) or ""))
            out.setdefault(m.group(1), set()).update(labels)
    return out


def test_dashboard_and_rules_name_only_metrics_a_live_trap_exports(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with running_trap(tmp_path, {"metrics": {"listen": f"127.0.0.1:{port}"}}) as trap:
        msgid = reply_id(trap.send(message(1)))
        trap.wait_records({msgid})
        exported = scrape(port)
    assert exported, "nothing scraped"
    exprs = {"rules": rule_exprs(), "dashboard": dashboard_exprs()}
    assert len(exprs["rules"]) >= 5 and len(exprs["dashboard"]) >= 20
    for where, found in exprs.items():
        for expr in found:
            used = re.findall(r"\b(ringtrap_\w+)(\{[^}]*\})?", expr)
            assert used, (where, expr)
            for name, selector in used:
                assert name in exported, (where, name, expr)
                keys = set(re.findall(r"(\w+)\s*=~?", selector)) - TARGET_LABELS
                assert keys <= exported[name], (where, name, keys, expr)


def unit() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(CONTRIB / "ringtrap.service")
    return parser


def test_the_unit_makes_the_documented_paths_writable(monkeypatch: pytest.MonkeyPatch) -> None:
    svc = unit()["Service"]
    writable = [
        Path("/run") / svc["RuntimeDirectory"],
        Path("/var/lib") / svc["StateDirectory"],
        Path("/var/log") / svc["LogsDirectory"],
    ]
    writable += [Path(p) for p in svc["ReadWritePaths"].split()]
    assert svc["ProtectSystem"] == "strict"
    assert svc["EnvironmentFile"] == "-/etc/default/ringtrap"
    assert "$RINGTRAP_OPTS" in svc["ExecStart"].split()
    assert "man:ringtrap(8)" in unit()["Unit"]["Documentation"].split()
    # the configuration the unit runs with, as root, plus the log file the shipped
    # configuration and the logrotate file name
    text = (CONTRIB / "ringtrap.toml").read_text().replace('user = "ringtrap"', "")
    text = text.replace("# log_file =", "log_file =")
    # the defaults the unit gets: root's, whoever runs the test
    monkeypatch.setattr(hostdefaults, "started_as_root", True)
    cfg = configmod.load_text(text)
    paths = {
        "ingest.socket": cfg.ingest.socket,
        "ingest.submit_socket": cfg.ingest.submit_socket,
        "overflow.dir": cfg.overflow.dir,
        "results.dir": cfg.results.dir,
        "stage.dir": configmod.stage_dir(cfg),
        "supervisor.log_file": cfg.supervisor.log_file,
        "archive under results' parent": cfg.results.dir.parent / "archive",
    }
    for key, path in paths.items():
        assert path is not None, key
        assert any(Path(path).is_relative_to(w) for w in writable), (key, path, writable)
    rotated = re.search(r"^(/\S+) \{", (CONTRIB / "ringtrap.logrotate").read_text(), re.M)
    assert rotated and Path(rotated.group(1)).parent == Path("/var/log") / svc["LogsDirectory"]


def test_the_man_page_renders_without_warnings_and_lists_every_setting(tmp_path: Path) -> None:
    if shutil.which("man") is None:
        pytest.skip("man is missing (dev.sh installs man-db)")
    from ringtrap.command.cli import build_parser
    from ringtrap.config import manpage

    page = tmp_path / "ringtrap.8"
    page.write_text(manpage.man_page(build_parser()))
    done = subprocess.run(
        ["man", "--warnings", "-l", str(page)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"MANWIDTH": "80", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    text = re.sub(r".\x08", "", done.stdout)
    flat = " ".join(text.split())
    for d in configmod.declarations():
        assert d.key in flat, d.key
    for command in ("ringtrap run", "ringtrap status", "ringtrap report", "ringtrap config"):
        assert command in flat
