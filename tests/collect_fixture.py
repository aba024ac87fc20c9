"""``ringtrap collect`` for tests: the process, and what its database and consumer hold.

``CollectProcess`` runs ``ringtrap collect`` with a ``[collect]`` section of
the test's own, logging to a file, stopped by its pid (TERM, or SIGKILL with
:meth:`CollectProcess.kill`).  ``rows`` and ``row_count`` read the
collector's PostgreSQL; ``wait_fetching`` waits until a collector is pulling
from its durable consumer, i.e. running.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from pg_fixture import PgServer
from trap_fixture import ROOT, wait_until


class CollectProcess:
    """``ringtrap collect`` as a subprocess, logging to a file; stopped by pid."""

    def __init__(self, workdir: Path, settings: dict[str, Any]) -> None:
        self.config = workdir / "collect.toml"
        self.config.write_text("[collect]\n" + "".join(
            f"{k} = {json.dumps(v)}\n" for k, v in settings.items()))
        self.log_path = workdir / "collect.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ringtrap.command.cli", "collect", "-c", str(self.config)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=ROOT)
        log.close()

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        return self.proc.wait(30)


async def _waiting(url: str, durable: str) -> int:
    import nats

    nc = await nats.connect(url, allow_reconnect=False)
    try:
        return int((await nc.jetstream().consumer_info("RINGTRAP", durable)).num_waiting or 0)
    except Exception:
        return 0
    finally:
        await nc.close()


def wait_fetching(url: str, durable: str = "ringtrap-collect") -> None:
    """Until a collector waits on ``durable`` with a pull request: it is running."""
    wait_until(lambda: asyncio.run(_waiting(url, durable)) > 0, 30, "a collector fetching",
               step=0.2)


def rows(pg: PgServer, sql: str) -> list[tuple[Any, ...]]:
    import psycopg

    try:
        with psycopg.connect(pg.conninfo) as c:
            return c.execute(sql).fetchall()
    except psycopg.errors.UndefinedTable:
        return []


def row_count(pg: PgServer) -> int:
    got = rows(pg, "SELECT count(*) FROM messages")
    return int(got[0][0]) if got else 0
