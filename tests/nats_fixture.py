"""A private, real NATS JetStream server for tests: one node or a three-node cluster.

``NatsServer`` runs Debian's ``nats-server`` with JetStream on free loopback
ports, its store in a directory of the test's own (``tmp_path``), waits until
its monitoring endpoint's ``/healthz`` says JetStream is up, and is stopped by
its pid (``stop``: TERM, then KILL; ``kill``: SIGKILL at once).  A stopped
node can be started again on the same ports and store, which is how a test
takes the broker away for a while and brings it back.  ``NatsCluster`` is
three such nodes routed to each other (one cluster name, every route listed
on every node), ready when each node's JetStream is.

Both are plain code, not fixtures, so a test module wraps them at any scope::

    @pytest.fixture
    def nats(tmp_path):
        reason = nats_missing_reason()
        if reason:
            pytest.skip(reason)
        with NatsServer(tmp_path / "nats") as server:
            yield server
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

NATS_SERVER = shutil.which("nats-server") or next(
    (p for p in ("/usr/sbin/nats-server", "/usr/bin/nats-server") if os.path.exists(p)), None)


def nats_missing_reason() -> str | None:
    """Why a real nats-server or the nats-py client cannot be used here, or None."""
    if NATS_SERVER is None:
        return "nats-server is not installed (Debian package 'nats-server')"
    try:
        import nats  # noqa: F401
    except ImportError:
        return "the NATS client is not installed (pip install 'ringtrap[fleet]')"
    return None


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports that were free a moment ago."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


class NatsServer:
    """One nats-server with JetStream; see the module docstring.

    ``routes`` and ``cluster_port`` make it a cluster node (``NatsCluster``
    sets them); ``name`` is its server name, also the cluster's node name;
    ``extra_config`` is appended to its configuration file.
    """

    def __init__(self, workdir: Path, *, name: str = "n0", port: int = 0,
                 monitor_port: int = 0, cluster_port: int = 0,
                 routes: tuple[int, ...] = (), cluster_name: str = "ringtrap-test",
                 extra_config: str = "") -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.name = name
        if not (port and monitor_port):
            port, monitor_port = free_ports(2)
        self.port = port
        self.monitor_port = monitor_port
        self.cluster_port = cluster_port
        self.routes = routes
        self.cluster_name = cluster_name
        self.extra_config = extra_config  # e.g. a tls {} or authorization {} block
        self.store_dir = self.workdir / "store"
        self.log_path = self.workdir / "nats.log"
        self.config_path = self.workdir / "nats.conf"
        self.proc: subprocess.Popen[bytes] | None = None
        self._write_config()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _write_config(self) -> None:
        lines = [
            f"server_name: {json.dumps(self.name)}",
            f"listen: 127.0.0.1:{self.port}",
            f"http: 127.0.0.1:{self.monitor_port}",
            # a store of the test's own, small limits: the box is shared
            "jetstream {",
            f"  store_dir: {json.dumps(str(self.store_dir))}",
            "  max_memory_store: 64MB",
            "  max_file_store: 1GB",
            "}",
        ]
        if self.cluster_port:
            routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in self.routes)
            lines += [
                "cluster {",
                f"  name: {json.dumps(self.cluster_name)}",
                f"  listen: 127.0.0.1:{self.cluster_port}",
                f"  routes: [{routes}]",
                "}",
            ]
        if self.extra_config:
            lines.append(self.extra_config)
        self.config_path.write_text("\n".join(lines) + "\n")

    def start(self, wait: bool = True, timeout: float = 30.0) -> None:
        """Start the server (again, on the same ports and store); wait for JetStream."""
        assert NATS_SERVER is not None
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"nats {self.name} is already running (pid {self.proc.pid})")
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [NATS_SERVER, "-c", str(self.config_path)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log,
        )
        log.close()
        if wait:
            self.wait_ready(timeout)

    def healthy(self) -> bool:
        """True when the monitoring endpoint says this node's JetStream is up."""
        url = f"http://127.0.0.1:{self.monitor_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=1.0) as r:
                return bool(json.loads(r.read()).get("status") == "ok")
        except (OSError, ValueError, urllib.error.URLError):
            return False

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"nats {self.name} exited {self.proc.returncode}:\n"
                                     f"{self.log_tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"nats {self.name} not ready after {timeout} s:\n"
                                     f"{self.log_tail()}")
            time.sleep(0.1)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """TERM by pid, SIGKILL after ``timeout``; a stopped server is left alone."""
        if not self.running():
            return
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL by pid and reap."""
        if not self.running():
            return
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return "(no log)"

    def __enter__(self) -> NatsServer:
        try:
            self.start()
        except BaseException:
            self.kill()
            raise
        return self

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class NatsCluster:
    """Three JetStream nodes on loopback, routed to each other; see the module docstring."""

    def __init__(self, workdir: Path, size: int = 3) -> None:
        ports = free_ports(3 * size)
        clients, monitors, routes = ports[:size], ports[size:2 * size], ports[2 * size:]
        self.nodes = [
            NatsServer(Path(workdir) / f"n{i}", name=f"n{i}", port=clients[i],
                       monitor_port=monitors[i], cluster_port=routes[i],
                       routes=tuple(p for j, p in enumerate(routes) if j != i))
            for i in range(size)
        ]

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def start(self, timeout: float = 60.0) -> None:
        # all at once: a node's JetStream is healthy only once a meta leader is elected
        for n in self.nodes:
            n.start(wait=False)
        for n in self.nodes:
            n.wait_ready(timeout)

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()

    def __enter__(self) -> NatsCluster:
        try:
            self.start()
        except BaseException:
            for n in self.nodes:
                n.kill()
            raise
        return self

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
