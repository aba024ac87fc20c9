"""A real running trap for end-to-end tests: ``ringtrap run`` as a subprocess.

``Trap`` writes a configuration into a temporary directory (unique ring name,
overflow under /dev/shm, short socket path), starts the supervisor, waits for
readiness with a monotonic deadline, delivers messages through real clients
(socat, nc, a plain socket), reads the result records, and stops the trap by
signalling only the supervisor.  Whatever happens, ``close()`` kills what is
left and removes the ring and overflow it created.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
from prometheus_client.parser import text_string_to_metric_families

from ringtrap import config as configmod
from ringtrap.base import proc
from ringtrap.command.status import gather_status
from ringtrap.store.segment import unlink_name

ROOT = Path(__file__).resolve().parent.parent


def wait_until(pred: Callable[[], Any], timeout: float, what: str, step: float = 0.05) -> Any:
    """Poll ``pred`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)


def message(n: int, size: int = 0, subject: str = "trap test") -> bytes:
    """A small well-formed message, padded to about ``size`` bytes when given."""
    body = f"Message number {n}.\r\n".encode()
    head = (
        f"From: Sender {n} <sender{n}@example.com>\r\n"
        f"To: trap@example.org\r\n"
        f"Subject: {subject} {n}\r\n"
        f"Message-ID: <{n}.{uuid.uuid4().hex}@example.com>\r\n"
        f"Date: Fri, 27 Nov 2026 10:00:00 +0000\r\n\r\n"
    ).encode()
    msg = head + body
    if size > len(msg):
        line = b"padding " * 9 + b"\r\n"
        msg += line * ((size - len(msg)) // len(line) + 1)
    return msg


class Trap:
    """One ``ringtrap run`` under test."""

    def __init__(self, workdir: Path, settings: dict[str, dict[str, Any]] | None = None) -> None:
        self.workdir = workdir
        tag = uuid.uuid4().hex[:8]
        # socket paths are limited to 107 bytes: keep the runtime dir short
        self.rundir = Path(tempfile.mkdtemp(prefix=f"rt-{tag}-", dir="/tmp"))
        self.ring_name = f"rt-e2e-{tag}"
        self.overflow_dir = Path(f"/dev/shm/rt-e2e-{tag}.overflow")
        self.results_dir = workdir / "results"
        self.log_path = workdir / "ringtrap.log"
        base: dict[str, dict[str, Any]] = {
            "ingest": {"socket": str(self.rundir / "ingest.sock"), "idle_timeout": 5},
            "ring": {"name": self.ring_name, "slots": 64, "slot_bytes": "64K"},
            "overflow": {"dir": str(self.overflow_dir), "max_bytes": "256M"},
            "workers": {"count": 2, "heartbeat_timeout": 400},
            "spamd": {"address": "off"},
            "results": {"dir": str(self.results_dir)},
            "supervisor": {"graceful_timeout": 20, "log_level": "debug"},
        }
        for section, values in (settings or {}).items():
            base.setdefault(section, {}).update(values)
        self.settings = base
        self.config_path = workdir / "ringtrap.toml"
        self.write_config()
        self.proc: subprocess.Popen[bytes] | None = None
        # the program started as ``<command> run -c <config>``: an installed one may replace it
        self.command = [sys.executable, "-m", "ringtrap.command.cli"]

    # -- configuration -------------------------------------------------------

    def write_config(self, settings: dict[str, dict[str, Any]] | None = None) -> None:
        s = settings or self.settings
        lines = []
        for section, values in s.items():
            lines.append(f"[{section}]")
            for k, v in values.items():
                lines.append(f"{k} = {json.dumps(v)}")
            lines.append("")
        self.config_path.write_text("\n".join(lines))
        # status reads the ring with the last valid configuration, even after a
        # test writes a broken file to see the trap refuse it
        self.cfg = configmod.load(self.config_path)

    @property
    def socket_path(self) -> Path:
        return Path(self.settings["ingest"]["socket"])

    # -- lifecycle --------------------------------------------------------------

    def start(self, wait: bool = True, env_extra: dict[str, str] | None = None) -> None:
        """Start the supervisor; ``env_extra`` adds to its environment (e.g. NOTIFY_SOCKET)."""
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        env = dict(os.environ)
        # the test runner's own systemd notification socket is never the trap's
        env.pop("NOTIFY_SOCKET", None)
        env.pop("WATCHDOG_USEC", None)
        env.pop("WATCHDOG_PID", None)
        env.update(env_extra or {})
        self.proc = subprocess.Popen(
            [*self.command, "run", "-c", str(self.config_path)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=ROOT, env=env,
        )
        log.close()
        if wait:
            self.wait_ready()

    def wait_ready(self, workers: int | None = None, timeout: float = 30.0) -> None:
        want = self.settings["workers"]["count"] if workers is None else workers

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"ringtrap exited {self.proc.returncode}:\n{self.log_tail()}")
            if not self.socket_path.exists():
                return False
            st = self.status()
            if st is None:
                return False
            roles = [p["role"] for p in st["processes"] if p["alive"]]
            return roles.count("worker") >= want and "ingest" in roles

        wait_until(ready, timeout, "ringtrap to be ready")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait_exit(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"ringtrap did not exit:\n{self.log_tail()}") from None

    def children(self, recursive: bool = False) -> list[psutil.Process]:
        try:
            return psutil.Process(self.pid).children(recursive=recursive)
        except psutil.NoSuchProcess:
            return []

    def child_pids(self, role: str) -> list[int]:
        st = self.status()
        if st is None:
            return []
        return [p["pid"] for p in st["processes"] if p["role"] == role and p["alive"]]

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # a managed spamd's children too: they would outlive their parent
            proc.kill_family(self.proc.pid)
            self.proc.wait(10)
        unlink_name(self.ring_name)
        shutil.rmtree(self.overflow_dir, ignore_errors=True)
        shutil.rmtree(configmod.stage_dir(self.cfg), ignore_errors=True)
        shutil.rmtree(configmod.forward_dir(self.cfg), ignore_errors=True)
        shutil.rmtree(self.rundir, ignore_errors=True)

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return "(no log)"

    # -- observing ----------------------------------------------------------------

    def status(self) -> dict[str, Any] | None:
        return gather_status(self.cfg)

    def records(self) -> list[dict[str, Any]]:
        out = []
        if not self.results_dir.exists():
            return out
        for f in sorted(self.results_dir.glob("*.jsonl")):
            for line in f.read_text().splitlines():
                if line.strip():
                    out.append(json.loads(line))
        return out

    def wait_records(self, ids: set[str], timeout: float = 120.0) -> list[dict[str, Any]]:
        def have_all() -> list[dict[str, Any]] | None:
            recs = self.records()
            got = {r["id"] for r in recs}
            return recs if ids <= got else None

        try:
            return wait_until(have_all, timeout, f"{len(ids)} records", step=0.2)
        except AssertionError:
            got = {r["id"] for r in self.records()}
            raise AssertionError(
                f"missing {len(ids - got)} of {len(ids)} records\n{self.log_tail()}"
            ) from None

    # -- delivering ---------------------------------------------------------------

    def send(self, data: bytes, timeout: float = 30.0) -> bytes:
        """Deliver with a plain socket: send, half-close, read the reply line."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(self.socket_path))
            try:
                s.sendall(data)
                s.shutdown(socket.SHUT_WR)
            except (BrokenPipeError, ConnectionResetError):
                pass  # answered (and closed) before we finished: read the answer
            reply = b""
            try:
                while chunk := s.recv(4096):
                    reply += chunk
            except ConnectionResetError:
                pass
        return reply

    def send_with(self, tool: str, data: bytes) -> subprocess.CompletedProcess[bytes]:
        """Deliver through a real client: ``socat`` (bidirectional), ``socat-u`` or ``nc``."""
        path = str(self.socket_path)
        argv = {
            "socat": ["socat", "-t", "5", "-", f"UNIX-CONNECT:{path}"],
            "socat-u": ["socat", "-u", "-", f"UNIX-CONNECT:{path}"],
            "nc": ["nc", "-U", "-N", path],
        }[tool]
        return subprocess.run(argv, input=data, capture_output=True, timeout=30)


class NotifyListener:
    """A datagram socket standing in for systemd's; collects every field sent."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[dict[str, str]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            self.messages.append(fields)

    def count(self, key: str, value: str | None = None) -> int:
        return sum(1 for m in list(self.messages)
                   if key in m and (value is None or m[key] == value))

    def keys_in_order(self) -> list[str]:
        """READY/RELOADING/STOPPING as sent, in order (the events of the unit)."""
        out = []
        for m in list(self.messages):
            out += [k for k in ("READY", "RELOADING", "STOPPING") if m.get(k) == "1"]
        return out

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()


@contextlib.contextmanager
def running_trap(workdir: Path, settings: dict[str, dict[str, Any]] | None = None,
                 start: bool = True) -> Iterator[Trap]:
    trap = Trap(workdir, settings)
    try:
        if start:
            trap.start()
        yield trap
    finally:
        trap.close()


def reply_id(reply: bytes) -> str:
    """The id from an ``OK <id>`` reply; fails the test on anything else."""
    line = reply.decode(errors="replace").strip()
    assert line.startswith("OK "), f"expected OK <id>, got {line!r}"
    return line[3:]


def shm_leftovers(ring_name: str) -> list[str]:
    names = {ring_name, f"sem.{ring_name}.lock", f"sem.{ring_name}.ready"}
    return sorted(n for n in os.listdir("/dev/shm") if n in names)


def kill_quietly(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def free_port() -> int:
    """A loopback TCP port nobody listens on now (for a trap's metrics.listen)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[str, float]:
    """Every sample of a trap's metrics endpoint as {'name{label="v",...}': value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out
