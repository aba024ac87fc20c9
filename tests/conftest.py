"""Shared fixtures: a real spamd and a real rspamd for the whole session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from rspamd_fixture import RspamdProcess, rspamd_missing_reason
from spamd_fixture import SpamdProcess, spamd_missing_reason


@pytest.fixture(scope="session")
def spamd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SpamdProcess]:
    """One private spamd (Unix socket and 127.0.0.1) shared by every test that needs it."""
    reason = spamd_missing_reason()
    if reason:
        pytest.skip(reason)
    with SpamdProcess(log_path=tmp_path_factory.mktemp("spamd") / "spamd.log") as proc:
        yield proc


@pytest.fixture(scope="session")
def rspamd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RspamdProcess]:
    """One private offline rspamd (Unix socket) shared by every test that needs it."""
    reason = rspamd_missing_reason()
    if reason:
        pytest.skip(reason)
    with RspamdProcess(log_path=tmp_path_factory.mktemp("rspamd") / "rspamd.log") as proc:
        yield proc
