"""The process table's own way in: rows and counters without the ring's slots.

The stage, the command line, ``top`` and metrics need only rows, counters and
the header's counts; they attach the table (:meth:`ProcTable.attach`), and
the ring module holds the slots, not other modules' names.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest

from ringtrap.base.counters import C
from ringtrap.base.states import ProcState, Role
from ringtrap.ring import PutResult, Ring
from ringtrap.store.proctable import ProcTable
from ringtrap.store.segment import RingMissing, unlink_name
from ringtrap.store.snapshot import read_snapshot

PACKAGE = Path(__file__).resolve().parents[2] / "ringtrap"


@pytest.fixture
def ring() -> Iterator[Ring]:
    name = f"rt-table-{uuid4().hex[:8]}"
    r = Ring.create(name, 8, 4096)
    yield r
    r.close()
    unlink_name(name)


def test_a_table_attached_alone_shares_rows_and_totals_with_the_ring(ring: Ring) -> None:
    assert ring.put("0640c3f1a2b3c-0004d2", b"x") is PutResult.OK
    with ProcTable.attach(ring.name) as table:
        row = table.register(Role.STAGE, 2)
        row.set_state(ProcState.BUSY, "0640c3f1a2b3c-0004d2")
        row.add(C.PROCESSED, 3)
        table.add_totals({C.PURGED_FILES: 5})
        [seen] = ring.table.read_rows()
        assert (seen.role, seen.index, seen.state) == (Role.STAGE, 2, ProcState.BUSY)
        assert seen.counters[C.PROCESSED] == 3
        # the header's counts read through the table are the ring's own
        assert read_snapshot(table) == ring.snapshot()
        assert read_snapshot(table).used == 1
        ring.table.retire_row(row.row)
    # closing the table lets go of its mapping only: the ring's stays usable
    assert ring.snapshot().retired[C.PROCESSED] == 3
    assert ring.snapshot().retired[C.PURGED_FILES] == 5
    c = ring.claim(timeout=0)
    assert c is not None and c.data == b"x"
    c.ack()


def test_attaching_the_table_of_a_missing_segment_fails() -> None:
    with pytest.raises(RingMissing):
        ProcTable.attach(f"rt-table-missing-{uuid4().hex[:8]}")


def _imports(path: Path) -> Iterator[tuple[str, str]]:
    """(module, name) for every ``from ringtrap... import name`` in ``path``."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ringtrap"):
            for alias in node.names:
                yield node.module or "", alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, ""


def _defined_in(path: Path) -> set[str]:
    """The names a module defines itself (classes, functions, assignments)."""
    out = set()
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            out.add(node.name)
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                for n in ast.walk(t):
                    if isinstance(n, ast.Name):
                        out.add(n.id)
    return out


def test_what_only_reads_rows_does_not_attach_the_ring() -> None:
    for module in ("work/stage.py", "work/child.py", "command/status.py", "command/top.py",
                   "command/cli.py", "control/metrics.py"):
        imported = {(m, n) for m, n in _imports(PACKAGE / module)}
        assert not {(m, n) for m, n in imported
                    if m == "ringtrap.ring" or (m == "ringtrap" and n == "ring")}, module


def test_names_imported_from_the_ring_are_the_rings_own() -> None:
    own = _defined_in(PACKAGE / "ring.py")
    borrowed = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for module, name in _imports(path):
            if module == "ringtrap.ring" and name not in own:
                borrowed.append((str(path.relative_to(PACKAGE)), name))
    assert borrowed == []
