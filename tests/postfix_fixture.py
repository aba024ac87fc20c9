"""A private Postfix instance for end-to-end tests: Debian's Postfix, our own config.

``PostfixInstance`` writes a configuration directory, a queue and a data
directory under a temporary directory, listens for SMTP on 127.0.0.1 only (a
free port), logs to a file (``maillog_file``, no syslog), and is started and
stopped with ``postfix -c DIR``.  Every service runs unchrooted, so socket
paths mean what they say.  Relay and recipient restrictions are Postfix's
defaults, and the test client is not in ``mynetworks``: only what the caller
adds to ``main.cf``, ``master.cf`` and the maps before :meth:`start` makes a
domain one Postfix accepts mail for.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

POSTFIX = "/usr/sbin/postfix"
POSTQUEUE = "/usr/sbin/postqueue"
POSTALIAS = "/usr/sbin/postalias"
SYSTEM_PYTHON = "/usr/bin/python3"
ROOT = Path(__file__).resolve().parent.parent
SNIPPETS = ROOT / "contrib" / "postfix"

# the services a small instance needs, none chrooted (the "n" in column 5)
_MASTER = """\
{listen} inet n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def missing_reason() -> str | None:
    """Why a private Postfix cannot run here, or None."""
    if not os.path.exists(POSTFIX):
        return "Postfix is not installed (dev.sh installs Debian's postfix package)"
    if os.geteuid() != 0:
        return "starting Postfix needs root"
    return None


def snippet(name: str) -> str:
    """One of the shipped Postfix snippets, ``contrib/postfix/<name>``."""
    return (SNIPPETS / name).read_text()


def main_cf(text: str) -> dict[str, str]:
    """The ``key = value`` lines of a main.cf snippet."""
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition("=")
        out[key.strip()] = value.strip()
    return out


def install_clients(root: Path) -> Path:
    """A copy of the package and both clients where ``nobody`` can run them; their bin dir.

    Postfix runs pipe(8) commands as an unprivileged user, who cannot read a
    checkout under a private home: the copy goes under ``root`` (which must be
    traversable), ``ringtrap`` as a launcher on Debian's python3 with ``-S``
    (what an installed console script does, minus the site packages submit
    never needs).
    """
    lib, bin_ = root / "lib", root / "bin"
    shutil.copytree(ROOT / "ringtrap", lib / "ringtrap",
                    ignore=shutil.ignore_patterns("__pycache__"))
    bin_.mkdir(exist_ok=True)
    launcher = bin_ / "ringtrap"
    launcher.write_text(f"#!{SYSTEM_PYTHON} -S\nimport sys\nsys.path.insert(0, {str(lib)!r})\n"
                        "from ringtrap.command.launcher import main\nsys.exit(main())\n")
    shutil.copy(ROOT / "scripts" / "ringtrap-deliver", bin_ / "ringtrap-deliver")
    for p in (launcher, bin_ / "ringtrap-deliver"):
        p.chmod(0o755)
    for d in (lib, bin_):
        for dirpath, _dirs, filenames in os.walk(d):
            os.chmod(dirpath, 0o755)
            for f in filenames:
                os.chmod(os.path.join(dirpath, f), 0o755 if dirpath == str(bin_) else 0o644)
    return bin_


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostfixInstance:
    """One private Postfix under ``root`` (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.etc = root / "etc"
        self.queue = root / "spool"
        self.data = root / "data"
        self.maillog = root / "maillog"
        self.port = free_port()
        for d in (self.etc, self.queue, self.data):
            d.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.data, "postfix", "postfix")
        self.main: dict[str, str] = {
            "compatibility_level": "3.6",
            "config_directory": str(self.etc),
            "queue_directory": str(self.queue),
            "data_directory": str(self.data),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "myhostname": "mta.trap.test",
            "mydomain": "trap.test",
            "mydestination": "",
            # the test's SMTP client (127.0.0.1) is a stranger, as a trap's senders are:
            # relaying for it is refused unless the snippets make the domain one Postfix
            # accepts (the default smtpd_relay_restrictions end in defer_unauth_destination)
            "mynetworks": "127.0.0.2/32",
            "alias_maps": "",
            "alias_database": "",
            "biff": "no",
            "maillog_file": str(self.maillog),
            "maillog_file_prefixes": str(root),
            "smtputf8_enable": "no",
            # retries come fast: the test flushes the queue anyway
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
            "delay_warning_time": "0",
            "notify_classes": "",
        }
        self.master = _MASTER.format(listen=f"127.0.0.1:{self.port}")
        self.files: dict[str, str] = {}  # name -> text, written into the config directory
        self.alias_files: list[str] = []  # of those, the ones to index with postalias

    def write(self) -> None:
        main = "".join(f"{k} = {v}\n" for k, v in self.main.items())
        (self.etc / "main.cf").write_text(main)
        (self.etc / "master.cf").write_text(self.master)
        for name, text in self.files.items():
            (self.etc / name).write_text(text)
        # the tools read the dynamic map list from the configuration directory
        for name in ("dynamicmaps.cf", "postfix-files"):
            if os.path.exists(f"/etc/postfix/{name}"):
                shutil.copy(f"/etc/postfix/{name}", self.etc / name)
        if os.path.isdir("/etc/postfix/dynamicmaps.cf.d"):
            shutil.copytree("/etc/postfix/dynamicmaps.cf.d", self.etc / "dynamicmaps.cf.d",
                            dirs_exist_ok=True)
        for name in self.alias_files:
            subprocess.run([POSTALIAS, "-c", str(self.etc), f"hash:{self.etc / name}"],
                           check=True, capture_output=True, timeout=30)

    def postfix(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([POSTFIX, "-c", str(self.etc), *args], capture_output=True,
                              text=True, timeout=60, check=check, stdin=subprocess.DEVNULL)

    def start(self) -> None:
        self.write()
        done = self.postfix("start", check=False)
        if done.returncode != 0:
            raise AssertionError(f"postfix start failed:\n{done.stdout}{done.stderr}\n"
                                 f"{self.log()}")
        deadline = time.monotonic() + 20
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"Postfix does not listen on {self.port}:\n{self.log()}")
            time.sleep(0.1)

    def flush(self) -> None:
        subprocess.run([POSTQUEUE, "-c", str(self.etc), "-f"], capture_output=True, timeout=30,
                       check=False, stdin=subprocess.DEVNULL)

    def stop(self) -> None:
        self.postfix("stop", check=False)
        pidfile = self.queue / "pid" / "master.pid"
        deadline = time.monotonic() + 10
        while pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        with contextlib.suppress(OSError, ValueError):
            pid = int(pidfile.read_text().split()[0])
            os.kill(pid, 9)

    def log(self) -> str:
        try:
            return self.maillog.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def statuses(self) -> dict[str, list[str]]:
        """Queue id -> the ``status=`` words logged for it, in order."""
        out: dict[str, list[str]] = {}
        for m in re.finditer(r" ([0-9A-F]{6,}): .*? status=(\w+)", self.log()):
            out.setdefault(m.group(1), []).append(m.group(2))
        return out
