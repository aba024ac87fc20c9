"""Sets the package declares once: exit codes and verdicts have one home each.

Read from the source with ``ast``: a module that spells out an exit code of
its own, or a verdict set of its own, fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "ringtrap"

# Exit codes still declared beside base/exits.py by code another refactor is
# rewriting (the worker and the stage get one child loop); the list only
# shrinks, an entry whose constants are gone fails too.
ALLOWED_EXIT_CODES = {
    "ringtrap/worker.py": {"EXIT_OK", "EXIT_CRASH", "EXIT_SETUP"},
    "ringtrap/work/stage.py": {"EXIT_OK", "EXIT_CRASH", "EXIT_SETUP"},
    # not an exit code of ours: the status spamd replies with when it timed out
    "ringtrap/scan/spamd.py": {"EX_TIMEOUT"},
}


def int_constants(path: Path, prefixes: tuple[str, ...]) -> set[str]:
    """Module-level names starting with ``prefixes`` bound to an int literal."""
    out = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign | ast.AnnAssign) and isinstance(node.value, ast.Constant):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if type(node.value.value) is int:
                out |= {t.id for t in targets
                        if isinstance(t, ast.Name) and t.id.startswith(prefixes)}
    return out


def test_exit_codes_are_declared_in_base_exits_only() -> None:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = str(path.relative_to(PACKAGE.parent))
        names = int_constants(path, ("EX_", "EXIT_"))
        if names and rel != "ringtrap/base/exits.py":
            found[rel] = names
    assert found == ALLOWED_EXIT_CODES
