"""dev.sh installs only what is missing or changed, and starts offline.

The script runs in a copy of the checkout's files it reads, with a fake
``dpkg-query`` that reports every package installed and a fake virtual
environment whose ``pip`` records each call (and fails, as it does with the
package index unreachable, when told to).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def checkout(tmp_path: Path) -> Path:
    root = tmp_path / "co"
    (root / "scripts").mkdir(parents=True)
    for name in ("dev.sh", "pyproject.toml", "scripts/ringtrap-deliver"):
        shutil.copy(ROOT / name, root / name)
    bin_ = root / ".venv" / "bin"
    bin_.mkdir(parents=True)
    log = tmp_path / "calls"
    # pip: logs its arguments; exits 1 while $PIP_OFFLINE is set
    (bin_ / "python").write_text(
        f'#!/bin/sh\necho "python $*" >> {log}\n[ -z "${{PIP_OFFLINE:-}}" ] || exit 1\n'
    )
    (bin_ / "ringtrap").write_text(f'#!/bin/sh\necho "ringtrap $*" >> {log}\n')
    fake = tmp_path / "fakebin"
    fake.mkdir()
    (fake / "dpkg-query").write_text("#!/bin/sh\nprintf 'install ok installed'\n")
    for p in (bin_ / "python", bin_ / "ringtrap", fake / "dpkg-query"):
        p.chmod(0o755)
    return root


def dev_run(root: Path, tmp_path: Path, offline: bool = False) -> tuple[int, list[str]]:
    log = tmp_path / "calls"
    log.unlink(missing_ok=True)
    env = {**os.environ, "PATH": f"{tmp_path / 'fakebin'}:{os.environ['PATH']}"}
    if offline:
        env["PIP_OFFLINE"] = "1"
    done = subprocess.run(
        ["sh", str(root / "dev.sh"), "run", "--log-format", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    calls = log.read_text().splitlines() if log.exists() else []
    return done.returncode, calls


def pip_calls(calls: list[str]) -> list[str]:
    return [c for c in calls if " pip install " in c]


def test_dev_sh_installs_only_when_the_declaration_changed(tmp_path: Path) -> None:
    root = checkout(tmp_path)
    code, calls = dev_run(root, tmp_path)
    assert code == 0 and len(pip_calls(calls)) == 1
    assert calls[-1] == "ringtrap run --log-format json"
    # a second start: nothing changed, nothing installed
    code, calls = dev_run(root, tmp_path)
    assert code == 0 and pip_calls(calls) == [] and calls == ["ringtrap run --log-format json"]
    # offline with a complete .venv: starts all the same
    code, calls = dev_run(root, tmp_path, offline=True)
    assert code == 0 and calls == ["ringtrap run --log-format json"]
    # a new dependency: installed once
    with (root / "pyproject.toml").open("a") as f:
        f.write("\n# changed\n")
    code, calls = dev_run(root, tmp_path)
    assert code == 0 and len(pip_calls(calls)) == 1
    code, calls = dev_run(root, tmp_path)
    assert code == 0 and pip_calls(calls) == []


def test_dev_sh_retries_an_install_that_failed(tmp_path: Path) -> None:
    root = checkout(tmp_path)
    code, calls = dev_run(root, tmp_path, offline=True)
    # nothing installed yet and no index: it fails, and tries again next time
    assert code != 0 and len(pip_calls(calls)) == 1
    code, calls = dev_run(root, tmp_path)
    assert code == 0 and len(pip_calls(calls)) == 1
