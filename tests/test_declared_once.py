"""Sets the package declares once: exit codes and verdicts have one home each.

Read from the source with ``ast``: a module that spells out an exit code of
its own, or a verdict set of its own, fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "ringtrap"

# Integer codes declared outside base/exits.py; an entry whose constants are
# gone fails too.
ALLOWED_EXIT_CODES = {
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


VERDICT_VALUES = {"spam", "ham", "not_scanned", "error", "bounce", "autoreply", "virus",
                  "oversize", "unparseable", "duplicate", "quarantined"}


def verdict_literals(path: Path) -> list[tuple[int, str]]:
    """Module-level constants that spell verdicts out: a verdict string, or a
    tuple, set or dict keyed by two or more (one alone is a word like "error")."""
    out = []
    for node in ast.parse(path.read_text()).body:
        if not isinstance(node, ast.Assign | ast.AnnAssign) or node.value is None:
            continue
        value = node.value
        items = (value.elts if isinstance(value, ast.Tuple | ast.List | ast.Set)
                 else value.keys if isinstance(value, ast.Dict) else [value])
        named = [(node.lineno, item.value) for item in items
                 if isinstance(item, ast.Constant) and item.value in VERDICT_VALUES]
        if len(named) >= (1 if items == [value] else 2):
            out += named
    return out


def test_verdicts_are_declared_in_the_enum_only() -> None:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = str(path.relative_to(PACKAGE.parent))
        if rel != "ringtrap/base/states.py" and verdict_literals(path):
            found[rel] = verdict_literals(path)
    assert found == {}


def test_every_verdict_has_its_counter_and_a_configuration_name() -> None:
    from ringtrap import config as configmod
    from ringtrap.base.counters import VERDICT_COUNTERS, C
    from ringtrap.base.states import Verdict

    assert {v.value for v in Verdict} == VERDICT_VALUES
    assert VERDICT_COUNTERS[Verdict.ERROR] == C.VERDICT_ERROR
    assert VERDICT_COUNTERS[Verdict.QUARANTINED] == C.QUARANTINED
    assert set(VERDICT_COUNTERS) == set(Verdict)
    # what an operator can archive or hand on: every verdict of a message that was read
    assert set(configmod.VERDICT_NAMES) == VERDICT_VALUES - {"quarantined"}
