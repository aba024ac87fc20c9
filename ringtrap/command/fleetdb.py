"""Reading the fleet's database (``collect.database``): one place that says why it cannot.

``report --database``, ``report --campaigns --database`` and ``blocklist
--database`` read the rows ``ringtrap collect`` loaded.  Without psycopg
they exit 69 (EX_UNAVAILABLE); when the database cannot be read (no
server, no such database, no schema yet) 66 (EX_NOINPUT).  Only psycopg's
own errors are taken for the database's: a bug elsewhere still shows.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

from ringtrap.base.exits import EX_NOINPUT, EX_UNAVAILABLE

T = TypeVar("T")


class DatabaseUnavailable(Exception):
    """The fleet's database cannot be read: ``code`` is the exit code, ``text`` why."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text

    def report(self) -> int:
        """Say why on stderr; the exit code."""
        print(f"ringtrap: {self.text}", file=sys.stderr)
        return self.code


def reading(work: Callable[[], T]) -> T:
    """``work()``, which reads the database; its failures as DatabaseUnavailable."""
    try:
        import psycopg
    except ImportError:
        raise DatabaseUnavailable(
            EX_UNAVAILABLE, "--database needs psycopg: pip install 'ringtrap[hub]'") from None
    try:
        return work()
    except psycopg.Error as e:
        raise DatabaseUnavailable(EX_NOINPUT, f"collect.database: {e}") from e
