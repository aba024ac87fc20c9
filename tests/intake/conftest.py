"""Fixtures of the intake tests: a private base directory and real servers on it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from delivery_harness import Server, servers, temp_base


@pytest.fixture
def base() -> Iterator[Path]:
    with temp_base() as path:
        yield path


@pytest.fixture
def serve(base: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Server]]:
    with servers(base, monkeypatch) as factory:
        yield factory
