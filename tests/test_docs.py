"""The README and docs/ hold true: snippets, commands, keys, links, generated tables.

* every ``<!-- snippet: PATH -->`` block is the shipped file PATH, byte for
  byte, and every MTA snippet in contrib/ is shown in the README;
* every command shown (``ringtrap ...``, ``ringtrap-deliver ...``,
  ``scripts/...``, ``./dev.sh``, ``perf/*.py``) exists and takes the options
  shown;
* every configuration key named exists; every relative link and anchor
  resolves;
* docs/reference.md's settings table is the generated one (regenerate with
  ``scripts/regen-docs``).
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from ringtrap import config as configmod
from ringtrap.command import cli

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SNIPPET = re.compile(r"<!-- snippet: (\S+) -->\n```\n(.*?)```\n", re.S)


def text(path: Path) -> str:
    return path.read_text()


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_snippets_are_the_shipped_files(doc: Path) -> None:
    for path, body in SNIPPET.findall(text(doc)):
        assert (ROOT / path).is_file(), f"{doc.name}: no file {path}"
        assert body == (ROOT / path).read_text(), f"{doc.name}: snippet {path} differs"


def test_the_readme_shows_every_mta_snippet() -> None:
    shown = {p for p, _ in SNIPPET.findall(text(ROOT / "README.md"))}
    shipped = {
        str(p.relative_to(ROOT))
        for d in ("postfix", "exim")
        for p in (ROOT / "contrib" / d).iterdir()
    }
    assert shipped and shipped <= shown, sorted(shipped - shown)


def code_lines(doc: Path) -> list[str]:
    """Indented code lines and backquoted spans, comments cut, continuations joined."""
    out = []
    lines = text(doc).splitlines()
    for i, line in enumerate(lines):
        if line.startswith("    ") and not line.startswith("     "):
            cmd = line.strip()
            while cmd.endswith("|") and i + 1 < len(lines):
                i += 1
                cmd = lines[i].strip()
            out.append(re.sub(r"\s+#.*$", "", cmd))
    out += re.findall(r"`([^`\n]+)`", text(doc))
    return out


def commands(prefix: str) -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        for line in code_lines(doc):
            if line.startswith(prefix) and "[" not in line and "..." not in line:
                found.append((doc.name, line))
    return found


def test_ringtrap_commands_shown_parse() -> None:
    parser = cli.build_parser()
    shown = commands("ringtrap ")
    assert len(shown) > 10
    for doc, line in shown:
        argv = shlex.split(line)[1:]
        if re.match(r"\d", argv[0]):
            continue  # status output ("ringtrap 0.1.0, supervisor pid ..."), not a command
        if argv[:1] == ["submit"]:
            continue  # its own parser: below
        if argv[:2] == ["run", "--log-format"] and len(argv) == 2:
            argv.append("json")  # the option named in prose, without its value
        try:
            parser.parse_args(argv)
        except SystemExit:
            raise AssertionError(f"{doc}: {line!r} does not parse") from None


def test_client_options_shown_exist() -> None:
    deliver = (ROOT / "scripts" / "ringtrap-deliver").read_text()
    submit = (ROOT / "ringtrap" / "command" / "submit.py").read_text()
    shown = commands("ringtrap-deliver ") + commands("ringtrap submit ")
    assert shown
    for doc, line in shown:
        for opt in re.findall(r"(?<![\w-])(--[a-z-]+)", line):
            source = deliver if line.startswith("ringtrap-deliver") else submit
            assert f'"{opt}' in source or f"{opt})" in source or f"{opt}=" in source, (
                doc,
                opt,
                line,
            )


def test_scripts_and_benchmarks_shown_exist_with_their_options() -> None:
    shown = (
        commands("scripts/")
        + commands("./dev.sh ")
        + commands(".venv/bin/python perf/")
        + commands("python3 perf/")
    )
    assert len(shown) >= 8
    helps: dict[str, str] = {}
    for doc, line in shown:
        words = shlex.split(line)
        script = next(w for w in words if w.startswith(("scripts/", "./dev.sh", "perf/")))
        path = ROOT / script.removeprefix("./")
        assert path.is_file(), (doc, line)
        options = [w.split("=")[0] for w in words if w.startswith("--")]
        if not options:
            continue
        if script.startswith("perf/"):
            if script not in helps:
                helps[script] = subprocess.run(
                    [sys.executable, str(path), "--help"],
                    capture_output=True,
                    text=True,
                    timeout=60,
                    cwd=ROOT,
                ).stdout
            source = helps[script]
        else:
            source = path.read_text()
        for opt in options:
            assert opt in source, (doc, opt, line)


def test_configuration_keys_named_exist() -> None:
    declared = {d.key for d in configmod.declarations()}
    sections = {k.split(".")[0] for k in declared}
    for doc in DOCS:
        for span in re.findall(r"`([^`\n]+)`", text(doc)):
            m = re.fullmatch(r"([a-z]+)\.([a-z_]+)(?:\s*=.*)?", span)
            if m and m.group(1) in sections and not span.endswith((".sock", ".toml", ".py")):
                assert f"{m.group(1)}.{m.group(2)}" in declared, (doc.name, span)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def test_links_and_anchors_resolve() -> None:
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", text(doc)):
            if target.startswith(("http://", "https://")):
                continue
            path, _, anchor = target.partition("#")
            dest = (doc.parent / path).resolve() if path else doc
            assert dest.exists(), (doc.name, target)
            if anchor:
                heads = {slug(h) for h in re.findall(r"(?m)^#+ (.*)$", dest.read_text())}
                assert anchor in heads, (doc.name, target, sorted(heads))


def test_the_reference_table_is_the_generated_one() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "regen-docs"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert configmod.docs_table() in text(ROOT / "docs" / "reference.md")


def test_the_readme_stays_an_operators_document() -> None:
    # the benchmarks, the stress guide and the internals live in docs/
    assert len(text(ROOT / "README.md").splitlines()) <= 460
