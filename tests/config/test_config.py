"""Tests for ringtrap.config: declarations, defaults, validation and generated text."""

import dataclasses
import datetime
import grp
import json
import os
import pickle
import pwd
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from ringtrap import config
from ringtrap.config import (
    Config,
    ConfigError,
    GiB,
    KiB,
    MiB,
    SpamdAddress,
    defaults,
    docs_table,
    format_size,
    from_dict,
    hostdefaults,
    load,
    load_text,
    override,
    parse_size,
    rules,
    sample_config,
    to_dict,
)

USER_UID = 4321
OWN_GROUP = grp.getgrgid(os.getegid()).gr_name
OWN_USER = pwd.getpwuid(os.getuid()).pw_name
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A predictable host: an ordinary user, a private HOME, a fake spamd and rspamd on PATH.

    Returns the directory holding the fake spamd.
    """
    home = tmp_path / "home"
    home.mkdir()
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in ("spamd", "rspamd"):
        fake = bindir / name
        fake.write_text("#!/bin/sh\nexit 0\n")
        fake.chmod(0o755)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("PATH", str(bindir))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    # The real /usr/sbin/spamd of this machine must not decide the outcome.
    monkeypatch.setattr(hostdefaults, "SBIN_DIRS", ())
    monkeypatch.setattr(os, "geteuid", lambda: USER_UID)
    return bindir


def as_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)


def declared_keys() -> list[str]:
    """Every section.key, found from the dataclasses independently of the module."""
    return [
        f"{section.name}.{key.name}"
        for section in dataclasses.fields(Config)
        for key in dataclasses.fields(section.type)  # type: ignore[arg-type]
    ]


def toml_for(dotted: str, value: str) -> str:
    section, key = dotted.split(".")
    return f"[{section}]\n{key} = {value}\n"


def problems_of(text: str, source: str = "trap.toml") -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_text(text, source)
    return info.value.problems


# -- defaults -----------------------------------------------------------------


def test_defaults_as_root(monkeypatch: pytest.MonkeyPatch) -> None:
    as_root(monkeypatch)
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/tmp")  # ignored for root
    c = defaults()
    assert config.runtime_dir() == Path("/run/ringtrap")
    assert c.ingest.socket == Path("/run/ringtrap/ingest.sock")
    assert c.ring.name == "ringtrap"
    assert c.overflow.dir == Path("/dev/shm/ringtrap.overflow")
    assert c.results.dir == Path("/var/lib/ringtrap/results")


def test_defaults_as_user_without_xdg(host: Path) -> None:
    c = defaults()
    assert c.ingest.socket == Path(f"/tmp/ringtrap-{USER_UID}/ingest.sock")
    assert c.ring.name == f"ringtrap-{USER_UID}"
    assert c.overflow.dir == Path(f"/dev/shm/ringtrap-{USER_UID}.overflow")
    home = Path(os.environ["HOME"])
    assert c.results.dir == home / ".local/state/ringtrap/results"


def test_defaults_as_user_with_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "xdg-run").mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "xdg-run"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    c = defaults()
    assert c.ingest.socket == tmp_path / "xdg-run/ringtrap/ingest.sock"
    assert c.results.dir == tmp_path / "state/ringtrap/results"


@pytest.mark.parametrize("xdg", ["/nonexistent/run/user", "relative/run"])
def test_unusable_xdg_runtime_dir_falls_back_to_tmp(
    xdg: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", xdg)
    monkeypatch.setenv("XDG_STATE_HOME", "relative/state")
    c = defaults()
    assert c.ingest.socket == Path(f"/tmp/ringtrap-{USER_UID}/ingest.sock")
    assert c.results.dir == Path(os.environ["HOME"]) / ".local/state/ringtrap/results"


def test_defaults_are_computed_per_call(monkeypatch: pytest.MonkeyPatch) -> None:
    user = defaults()
    as_root(monkeypatch)
    assert defaults().ring.name == "ringtrap" != user.ring.name


@pytest.mark.parametrize(("cpus", "expected"), [(7, 7), (None, 2)])
def test_worker_count_follows_cpus(
    cpus: int | None, expected: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: cpus)
    assert defaults().workers.count == expected


def test_spamd_managed_when_installed() -> None:
    assert defaults().spamd.address == SpamdAddress("managed")


def test_spamd_off_when_not_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert defaults().spamd.address == SpamdAddress("off")
    assert load_text("").spamd.address == SpamdAddress("off")


def test_spamd_found_in_sbin_off_path(host: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(hostdefaults, "SBIN_DIRS", (str(host),))
    assert config.find_spamd("spamd") == str(host / "spamd")
    assert defaults().spamd.address.kind == "managed"


def test_static_defaults_match_the_interface() -> None:
    c = defaults()
    assert c.ingest.socket_mode == 0o660
    assert c.ingest.socket_group == ""
    assert c.ingest.max_message_bytes == 52428800
    assert c.ingest.idle_timeout == 30.0
    assert c.ingest.max_connections == 256
    assert (c.ring.slots, c.ring.slot_bytes, c.ring.mode) == (1024, 65536, 0o600)
    assert c.overflow.max_bytes == GiB
    assert c.overflow.purge_at == datetime.time(4, 0)
    assert c.overflow.max_attempts == 3
    assert c.workers.max_rss_bytes == 256 * MiB
    assert c.workers.heartbeat_timeout == 360.0
    assert c.workers.scan_limit_bytes == 512000
    assert (c.spamd.timeout, c.spamd.connect_timeout, c.spamd.children) == (330.0, 10.0, 0)
    assert (c.spamd.extra_args, c.spamd.command) == ((), "spamd")
    assert c.supervisor.graceful_timeout == 30.0
    assert (c.supervisor.pidfile, c.supervisor.log_file) == (None, None)
    assert c.supervisor.log_level == "info"


@pytest.mark.parametrize("root", [False, True])
def test_defaults_pass_their_own_validation(root: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if root:
        as_root(monkeypatch)
    assert load_text("") == defaults()
    # Through to_dict every default value goes through its key's parser too.
    assert from_dict(to_dict(defaults())) == defaults()


def test_config_is_frozen() -> None:
    c = defaults()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.ring.slots = 2  # type: ignore[misc]
    changed = dataclasses.replace(c, ring=dataclasses.replace(c.ring, slots=2))
    assert changed.ring.slots == 2 and c.ring.slots == 1024


# -- every key: good and bad values -------------------------------------------

GOOD: list[tuple[str, str, object]] = [
    ("ingest.socket", '"/srv/trap/in.sock"', Path("/srv/trap/in.sock")),
    ("ingest.socket_mode", "0o640", 0o640),
    ("ingest.socket_mode", '"0640"', 0o640),
    ("ingest.socket_group", f'"{OWN_GROUP}"', OWN_GROUP),
    ("ingest.socket_group", '""', ""),
    ("ingest.max_message_bytes", '"10M"', 10 * MiB),
    ("ingest.max_message_bytes", "1024", 1024),
    ("ingest.idle_timeout", "0.5", 0.5),
    ("ingest.idle_timeout", "5", 5.0),
    ("ingest.message_timeout", "600", 600.0),
    ("ingest.max_connections", "1", 1),
    ("ingest.submit_max_connections", "8", 8),
    ("ingest.lmtp_max_connections", "2", 2),
    ("ingest.submit_socket", '"/srv/trap/submit.sock"', Path("/srv/trap/submit.sock")),
    ("ingest.submit_socket", '""', None),
    ("ingest.lmtp_socket", '"/srv/trap/lmtp.sock"', Path("/srv/trap/lmtp.sock")),
    ("ingest.lmtp_socket", '""', None),
    ("ring.name", '"trap_2.test-X"', "trap_2.test-X"),
    ("ring.name", '"' + "n" * 200 + '"', "n" * 200),
    ("ring.slots", "200000", 200000),
    ("ring.slots", "1", 1),
    ("ring.slot_bytes", '"8M"', 8 * MiB),
    ("ring.slot_bytes", "1024", 1024),
    ("ring.mode", "0o660", 0o660),
    ("ring.mode", '"600"', 0o600),
    ("overflow.dir", '"/srv/spill"', Path("/srv/spill")),
    ("overflow.max_bytes", '"2G"', 2 * GiB),
    ("overflow.max_bytes", '"64MiB"', 64 * MiB),
    ("overflow.purge_at", '"23:59"', datetime.time(23, 59)),
    ("overflow.purge_at", '"0:05"', datetime.time(0, 5)),
    ("overflow.purge_at", "04:30:00", datetime.time(4, 30)),
    ("overflow.max_attempts", "1", 1),
    ("overflow.quarantine_max_bytes", '"1G"', GiB),
    ("overflow.quarantine_retention_days", "0", 0),
    ("overflow.drain_order", '"newest"', "newest"),
    ("overflow.drain_order", '"Oldest"', "oldest"),
    ("workers.count", "1", 1),
    ("workers.max_rss_bytes", "0", 0),
    ("workers.max_rss_bytes", '"1G"', GiB),
    ("workers.heartbeat_timeout", "400", 400.0),
    ("workers.scan_limit_bytes", '"1M"', MiB),
    ("spamd.address", '"off"', SpamdAddress("off")),
    ("spamd.address", '"managed"', SpamdAddress("managed")),
    ("spamd.address", '"unix:/run/spamd.sock"', SpamdAddress("unix", Path("/run/spamd.sock"))),
    ("spamd.address", '"tcp:127.0.0.1:783"', SpamdAddress("tcp", host="127.0.0.1", port=783)),
    ("spamd.address", '"tcp:[::1]:783"', SpamdAddress("tcp", host="::1", port=783)),
    ("spamd.address", '"tls:spamd.example:783"',
     SpamdAddress("tls", host="spamd.example", port=783)),
    ("spamd.address", '["tcp:10.0.0.1:783"]', SpamdAddress("tcp", host="10.0.0.1", port=783)),
    ("spamd.address", '["tcp:10.0.0.1:783", "tls:[::1]:784", "unix:/run/spamd.sock"]',
     SpamdAddress("pool", members=(SpamdAddress("tcp", host="10.0.0.1", port=783),
                                   SpamdAddress("tls", host="::1", port=784),
                                   SpamdAddress("unix", Path("/run/spamd.sock"))))),
    ("spamd.tls_ca", '""', None),
    ("spamd.tls_ca", '"/etc/ringtrap/spamd-ca.pem"', Path("/etc/ringtrap/spamd-ca.pem")),
    ("scanner.kind", '"RSPAMD"', "rspamd"),
    ("scanner.breaker_errors", "1", 1),
    ("scanner.breaker_window", "2.5", 2.5),
    ("scanner.breaker_revive", "30", 30.0),
    ("scanner.hung_after", "2.5", 2.5),
    ("spamd.timeout", "301", 301.0),
    ("spamd.connect_timeout", "2.5", 2.5),
    ("spamd.children", "0", 0),
    ("spamd.children", "5", 5),
    ("spamd.extra_args", '["--nouser-config", "-L"]', ("--nouser-config", "-L")),
    ("spamd.extra_args", "[]", ()),
    ("spamd.command", '"spamd"', "spamd"),
    ("spamd.bayes_dir", '"/srv/bayes"', Path("/srv/bayes")),
    ("rspamd.address", '"managed"', SpamdAddress("managed")),
    ("rspamd.address", '"unix:/run/rspamd/normal.sock"',
     SpamdAddress("unix", Path("/run/rspamd/normal.sock"))),
    ("rspamd.address", '"tcp:127.0.0.1:11333"',
     SpamdAddress("tcp", host="127.0.0.1", port=11333)),
    ("rspamd.address", '["unix:/a.sock", "tcp:10.0.0.2:11333"]',
     SpamdAddress("pool", members=(SpamdAddress("unix", Path("/a.sock")),
                                   SpamdAddress("tcp", host="10.0.0.2", port=11333)))),
    ("rspamd.timeout", "30", 30.0),
    ("rspamd.connect_timeout", "2", 2.0),
    ("rspamd.workers", "0", 0),
    ("rspamd.workers", "3", 3),
    ("rspamd.network", "true", True),
    ("rspamd.nameservers", '["127.0.0.1:53"]', ("127.0.0.1:53",)),
    ("rspamd.nameservers", "[]", ()),
    ("rspamd.command", '"/usr/bin/rspamd"', "/usr/bin/rspamd"),
    ("rspamd.db_dir", '"/srv/rspamd"', Path("/srv/rspamd")),
    ("results.dir", '"/srv/results"', Path("/srv/results")),
    ("results.retention_days", "0", 0),
    ("results.retention_days", "14", 14),
    ("records.trusted_networks", '["192.0.2.7/24", "2001:db8::/32"]',
     ("192.0.2.0/24", "2001:db8::/32")),
    ("records.trusted_networks", "[]", ()),
    ("prefilter.checks", '["Virus", "bounce", "virus"]', ("virus", "bounce")),
    ("prefilter.checks", "[]", ()),
    ("dedupe.enabled", "false", False),
    ("dedupe.skip_scan", "true", True),
    ("dedupe.skip_scan", "false", False),
    ("dedupe.window", "3600", 3600.0),
    ("dedupe.store", '"NATS"', "nats"),
    ("dedupe.bucket", '"fleet_dedupe-1"', "fleet_dedupe-1"),
    ("archive.dir", '"/srv/corpus"', Path("/srv/corpus")),
    ("archive.dir", '""', None),
    ("archive.verdicts", '["spam", "duplicate"]', ("spam", "duplicate")),
    ("archive.retention_days", "0", 0),
    ("archive.trace_headers", "true", True),
    ("archive.trace_headers", "false", False),
    ("stage.workers", "2", 2),
    ("stage.learn", "false", False),
    ("stage.report", "true", True),
    ("stage.verdicts", '["spam"]', ("spam",)),
    ("stage.address", '"tcp:127.0.0.1:783"', SpamdAddress("tcp", host="127.0.0.1", port=783)),
    ("stage.address", '""', None),
    ("stage.address", '"tls:10.0.0.1:783"', SpamdAddress("tls", host="10.0.0.1", port=783)),
    ("stage.timeout", "30", 30.0),
    ("stage.dir", '"/dev/shm/stage"', Path("/dev/shm/stage")),
    ("stage.max_bytes", '"16M"', 16 * MiB),
    ("forward.enabled", "true", True),
    ("forward.servers", '["nats://10.0.0.1:4222", "tls://[2001:db8::1]:4222"]',
     ("nats://10.0.0.1:4222", "tls://[2001:db8::1]:4222")),
    ("forward.subject_prefix", '"trap.eu-1"', "trap.eu-1"),
    ("forward.host", '"mx_7-b"', "mx_7-b"),
    ("forward.stream", '"TRAPS"', "TRAPS"),
    ("forward.replicas", "3", 3),
    ("forward.duplicate_window", "120", 120.0),
    ("forward.ack_timeout", "2.5", 2.5),
    ("forward.tls_ca_file", '"/etc/ringtrap/ca.pem"', Path("/etc/ringtrap/ca.pem")),
    ("forward.tls_ca_file", '""', None),
    ("forward.tls_cert_file", '""', None),
    ("forward.tls_key_file", '""', None),
    ("forward.creds_file", '"/etc/ringtrap/trap.creds"', Path("/etc/ringtrap/trap.creds")),
    ("forward.nkey_seed_file", '"/etc/ringtrap/trap.nk"', Path("/etc/ringtrap/trap.nk")),
    ("forward.raw", "true", True),
    ("forward.raw_max_bytes", '"8M"', 8 * MiB),
    ("forward.spill_dir", '"/dev/shm/fwd"', Path("/dev/shm/fwd")),
    ("forward.spill_dir", '""', None),
    ("forward.spill_max_bytes", '"1G"', GiB),
    ("collect.servers", '["nats://hub1:4222", "nats://hub2:4222"]',
     ("nats://hub1:4222", "nats://hub2:4222")),
    ("collect.stream", '"TRAPS"', "TRAPS"),
    ("collect.subject_prefix", '"trap.eu"', "trap.eu"),
    ("collect.durable", '"hub-1"', "hub-1"),
    ("collect.database", '"host=/run/postgresql dbname=traps"',
     "host=/run/postgresql dbname=traps"),
    ("collect.batch", "1000", 1000),
    ("collect.batch_wait", "0.2", 0.2),
    ("collect.ack_wait", "5", 5.0),
    ("collect.creds_file", '"/etc/ringtrap/hub.creds"', Path("/etc/ringtrap/hub.creds")),
    ("collect.raw_dir", '"/srv/fleet/raw"', Path("/srv/fleet/raw")),
    ("collect.raw_dir", '""', None),
    ("supervisor.graceful_timeout", "5", 5.0),
    ("supervisor.pidfile", '"/run/ringtrap.pid"', Path("/run/ringtrap.pid")),
    ("supervisor.pidfile", '""', None),
    ("supervisor.log_file", '"/var/log/ringtrap.log"', Path("/var/log/ringtrap.log")),
    ("supervisor.log_file", '""', None),
    ("supervisor.log_level", '"DEBUG"', "debug"),
    ("supervisor.log_level", '"error"', "error"),
    ("supervisor.log_format", '"JSON"', "json"),
    ("supervisor.log_format", '"human"', "human"),
    ("metrics.listen", '"127.0.0.1:9809"', config.ListenAddress("127.0.0.1", 9809)),
    ("metrics.listen", '"[::1]:9809"', config.ListenAddress("::1", 9809)),
    ("metrics.listen", '""', None),
    ("blocklist.interval", "600", 600),
    ("blocklist.interval", "0", 0),
    ("blocklist.window_days", "14", 14),
    ("blocklist.min_hits", "1", 1),
    ("blocklist.min_recipients", "3", 3),
    ("blocklist.expire_days", "2", 2),
    ("blocklist.ipv4_prefix", "24", 24),
    ("blocklist.ipv6_prefix", "48", 48),
    ("blocklist.allow", '["198.51.100.0/24", "2001:db8::1"]',
     ("198.51.100.0/24", "2001:db8::1/128")),
    ("blocklist.list_reserved", "true", True),
    ("blocklist.verdicts", '["SPAM", "bounce"]', ("spam", "bounce")),
    ("blocklist.a_value", '" 127.0.0.4"', "127.0.0.4"),
    ("blocklist.txt", '"listed: see https://trap.example/?$"', "listed: see https://trap.example/?$"),
    ("blocklist.rbldnsd_ip4", '"/srv/rbl/ip4"', Path("/srv/rbl/ip4")),
    ("blocklist.rbldnsd_ip6", '""', None),
    ("blocklist.postfix", '"/etc/postfix/trap.cidr"', Path("/etc/postfix/trap.cidr")),
    ("blocklist.plain", '"/srv/rbl/list.txt"', Path("/srv/rbl/list.txt")),
    ("blocklist.json", '"/srv/rbl/list.json"', Path("/srv/rbl/list.json")),
    ("service.user", f'"{OWN_USER}"', OWN_USER),
    ("service.user", '""', ""),
    ("service.group", '""', ""),
]

BAD: list[tuple[str, str, str]] = [
    ("ingest.socket", '""', "must not be empty"),
    ("ingest.socket", "5", "must be a path string, got 5"),
    ("ingest.socket", '"/' + "x" * 120 + '"', "at most 107 bytes"),
    ("ingest.socket_mode", "660", "(a decimal number; write 0o660)"),
    ("ingest.socket_mode", '"0990"', 'such as 0o660 or "0660", got "0990"'),
    ("ingest.socket_mode", "true", "got true"),
    ("ingest.socket_group", '"no-such-group-for-ringtrap"', 'no such group "no-such-group'),
    ("ingest.socket_group", "0", "must be a group name, got 0"),
    ("ingest.max_message_bytes", "1023", "must be a byte size >= 1KiB, got 1023"),
    ("ingest.max_message_bytes", '"lots"', 'got "lots"'),
    ("ingest.max_message_bytes", "-1", "got -1"),
    ("ingest.idle_timeout", "0", "must be a number of seconds > 0, got 0"),
    ("ingest.idle_timeout", "nan", "got nan"),
    ("ingest.idle_timeout", "inf", "got inf"),
    ("ingest.idle_timeout", '"30"', 'got "30"'),
    ("ingest.max_connections", "0", "must be an integer >= 1, got 0"),
    ("ingest.max_connections", "1.5", "got 1.5"),
    ("ingest.max_connections", "true", "got true"),
    ("ingest.message_timeout", "0", "must be a number of seconds > 0, got 0"),
    ("ingest.submit_max_connections", "0", "must be an integer >= 1, got 0"),
    ("ingest.lmtp_max_connections", "-2", "must be an integer >= 1, got -2"),
    ("ingest.submit_socket", "5", "must be a path string, got 5"),
    ("ingest.submit_socket", '"/' + "x" * 120 + '"', "at most 107 bytes"),
    ("ingest.lmtp_socket", "true", "must be a path string, got true"),
    ("ingest.lmtp_socket", '"/' + "x" * 120 + '"', "at most 107 bytes"),
    ("ring.name", '""', "must be 1 to 200 characters"),
    ("ring.name", '"a/b"', 'got "a/b"'),
    ("ring.name", '".."', 'got ".."'),
    ("ring.name", '"' + "n" * 201 + '"', "must be 1 to 200 characters"),
    ("ring.slots", '"abc"', 'must be an integer >= 1 and <= 1000000, got "abc"'),
    ("ring.slots", "0", "got 0"),
    ("ring.slots", "1000001", "got 1000001"),
    ("ring.slot_bytes", "1023", "must be a byte size >= 1KiB and <= 64MiB, got 1023"),
    ("ring.slot_bytes", '"65M"', 'got "65M" (68157440 bytes)'),
    ("ring.mode", "0o400", "owner read and write permission (0o600), got 0o400"),
    ("ring.mode", '"rw"', 'got "rw"'),
    ("overflow.dir", '""', "must not be empty"),
    ("overflow.dir", "1", "must be a path string"),
    ("overflow.max_bytes", '"1023K"', "must be a byte size >= 1MiB"),
    ("overflow.purge_at", '"24:00"', 'must be a local time "HH:MM" from "00:00" to "23:59"'),
    ("overflow.purge_at", '"12:60"', 'got "12:60"'),
    ("overflow.purge_at", '"4"', 'got "4"'),
    ("overflow.purge_at", "400", "got 400"),
    ("overflow.purge_at", "04:00:30", "got 04:00:30"),
    ("overflow.max_attempts", "0", "must be an integer >= 1, got 0"),
    ("overflow.quarantine_max_bytes", '"10K"', "must be a byte size >= 1MiB"),
    ("overflow.quarantine_retention_days", "-1", "must be an integer >= 0, got -1"),
    ("overflow.drain_order", '"lifo"', 'must be one of "oldest", "newest", got "lifo"'),
    ("workers.count", "0", "must be an integer >= 1 and <= 1024, got 0"),
    ("workers.count", "1025", "got 1025"),
    ("workers.max_rss_bytes", '"1M"', "must be 0 (unlimited) or a byte size >= 32MiB"),
    ("workers.heartbeat_timeout", "0", "must be a number of seconds > 0"),
    ("workers.scan_limit_bytes", "10", "must be a byte size >= 1KiB, got 10"),
    (
        "spamd.address",
        '"on"',
        'must be "managed", "off", "unix:/path/to/socket", "tcp:host:port", "tls:host:port"'
        " or a list of addresses",
    ),
    ("spamd.address", "[]", "a list of spamd addresses cannot be empty"),
    ("spamd.address", '["tcp:a:783", "managed"]',
     'element 2 "managed": "managed" and "off" stand alone, not in a list'),
    ("spamd.address", '["off"]', 'element 1 "off": "managed" and "off" stand alone'),
    ("spamd.address", '["tcp:a:783", "tcp:b"]',
     'element 2 "tcp:b": must be tcp:host:port with a port from 1 to 65535'),
    ("spamd.address", '["tls:a:783", 7]', "element 2 7: must be"),
    ("spamd.address", '["tcp:a:783", "tcp:a:783"]', 'element 2 "tcp:a:783": the same spamd twice'),
    ("spamd.address", '"tls:host"', "must be tls:host:port with a port from 1 to 65535"),
    ("spamd.address", "[" + ", ".join(f'"tcp:h{i}:783"' for i in range(17)) + "]",
     "at most 16 spamd addresses, got 17"),
    ("spamd.tls_ca", "7", "must be a path string, got 7"),
    ("spamd.address", '"tcp:localhost"', "must be tcp:host:port with a port from 1 to 65535"),
    ("spamd.address", '"tcp:localhost:0"', 'got "tcp:localhost:0"'),
    ("spamd.address", '"tcp:::1:783"', "an IPv6 host must be in brackets"),
    ("spamd.address", '"unix:"', 'got "unix:"'),
    ("spamd.address", "5", "got 5"),
    ("rspamd.address", '"off"', 'scanner.kind = "spamd" turns rspamd off'),
    ("rspamd.address", '"tcp:localhost"', "must be tcp:host:port with a port from 1 to 65535"),
    ("rspamd.address", '["unix:/a.sock", "managed"]',
     'element 2 "managed": "managed" and "off" stand alone'),
    ("rspamd.address", '["unix:/a.sock", "tls:10.0.0.2:11333"]',
     'element 2 "tls:10.0.0.2:11333": must be "managed", "unix:/path/to/socket",'),
    ("rspamd.address", '["unix:/a.sock", "unix:/a.sock"]', "the same rspamd twice"),
    ("rspamd.address", "[]", "a list of rspamd addresses cannot be empty"),
    ("rspamd.address", '"tls:127.0.0.1:11333"', 'got "tls:127.0.0.1:11333"'),
    ("rspamd.address", '"on"', 'must be "managed", "unix:/path/to/socket", "tcp:host:port" or'
     ' a list of addresses, got "on"'),
    ("rspamd.timeout", "0", "must be a number of seconds > 0, got 0"),
    ("rspamd.connect_timeout", '"1s"', 'got "1s"'),
    ("rspamd.workers", "-1", "must be an integer >= 0 and <= 1024, got -1"),
    ("rspamd.network", '"yes"', 'got "yes"'),
    ("rspamd.nameservers", '"127.0.0.1"', 'got "127.0.0.1"'),
    ("rspamd.command", "1", "got 1"),
    ("rspamd.db_dir", '""', "must not be empty"),
    ("scanner.kind", '"clamd"', 'must be one of "spamd", "rspamd", got "clamd"'),
    ("scanner.breaker_errors", "0", "must be an integer >= 1 and <= 1000, got 0"),
    ("scanner.breaker_window", "0", "must be a number of seconds > 0, got 0"),
    ("scanner.breaker_revive", '"1m"', 'got "1m"'),
    ("scanner.hung_after", "0", "must be a number of seconds > 0, got 0"),
    ("spamd.timeout", "-1", "must be a number of seconds > 0, got -1"),
    ("spamd.connect_timeout", '"10s"', 'got "10s"'),
    ("spamd.children", "-1", "must be an integer >= 0 and <= 1024, got -1"),
    ("spamd.extra_args", '"--nouser-config"', "must be a list of strings"),
    ("spamd.extra_args", "[1]", "must be a list of strings, got [1]"),
    ("spamd.command", '""', 'must be a non-empty string, got ""'),
    ("spamd.bayes_dir", '""', "must not be empty"),
    ("results.dir", '""', "must not be empty"),
    ("results.dir", '"~no-such-user-for-ringtrap/x"', "cannot expand ~"),
    ("results.retention_days", "-1", "must be an integer >= 0, got -1"),
    ("records.trusted_networks", '["10.0.0.0/33"]', '"10.0.0.0/33" is not an IP network'),
    ("records.trusted_networks", '"10.0.0.0/8"', "must be a list of IP networks"),
    ("prefilter.checks", '["spam"]', '"spam" is not one of "virus", "bounce", "autoreply"'),
    ("prefilter.checks", '"virus"', "must be a list of strings"),
    ("dedupe.enabled", "1", "must be true or false, got 1"),
    ("dedupe.skip_scan", '"yes"', 'must be true or false, got "yes"'),
    ("dedupe.window", "0", "must be a number of seconds > 0"),
    ("dedupe.store", '"redis"', 'must be one of "sqlite", "nats", got "redis"'),
    ("dedupe.bucket", '"a.b"', 'got "a.b"'),
    ("archive.dir", "1", "must be a path string"),
    ("archive.verdicts", '["junk"]', '"junk" is not one of "spam", "ham"'),
    ("archive.retention_days", "1.5", "must be an integer >= 0, got 1.5"),
    ("archive.trace_headers", '"yes"', "must be true or false"),
    ("stage.workers", "65", "must be an integer >= 0 and <= 64, got 65"),
    ("stage.learn", '"no"', 'must be true or false, got "no"'),
    ("stage.report", "0", "must be true or false, got 0"),
    ("stage.verdicts", '["virus", "maybe"]', '"maybe" is not one of'),
    ("stage.address", '"off"',
     'must be "", "unix:/path", "tcp:host:port" or "tls:host:port", got "off"'),
    ("stage.address", '["tcp:a:783", "tcp:b:783"]', "must be"),
    ("stage.timeout", "-5", "must be a number of seconds > 0"),
    ("stage.dir", "[]", "must be a path string"),
    ("stage.max_bytes", '"1K"', "must be a byte size >= 1MiB"),
    ("forward.enabled", '"yes"', 'must be true or false, got "yes"'),
    ("forward.servers", "[]", 'must be a non-empty list of "nats://host:port" URLs'),
    ("forward.servers", '["http://hub:4222"]', '"http://hub:4222" is not "nats://host:port"'),
    ("forward.servers", '["nats://u:p@hub:4222"]', "credentials go in forward.creds_file"),
    ("forward.servers", '["nats://hub"]', 'is not "nats://host:port"'),
    ("forward.subject_prefix", '"trap.>"', "tokens of 1 to 64 characters"),
    ("forward.subject_prefix", '"a..b"', 'got "a..b"'),
    ("forward.host", '"mx.example.org"', "one token of 1 to 64 characters"),
    ("forward.host", '""', 'got ""'),
    ("forward.stream", '"A B"', 'got "A B"'),
    ("forward.replicas", "6", "must be an integer >= 1 and <= 5, got 6"),
    ("forward.duplicate_window", "0", "must be a number of seconds > 0"),
    ("forward.ack_timeout", "-1", "must be a number of seconds > 0"),
    ("forward.tls_ca_file", "1", "must be a path string, got 1"),
    ("forward.tls_cert_file", '"/etc/c.pem"', "and forward.tls_key_file go together"),
    ("forward.tls_key_file", "[]", "must be a path string"),
    ("forward.creds_file", "true", "must be a path string, got true"),
    ("forward.nkey_seed_file", "2", "must be a path string, got 2"),
    ("forward.raw", "1", "must be true or false, got 1"),
    ("forward.raw_max_bytes", '"65M"', "must be a byte size >= 1KiB and <= 64MiB"),
    ("forward.spill_dir", "5", "must be a path string, got 5"),
    ("forward.spill_max_bytes", '"100K"', "must be a byte size >= 1MiB"),
    ("collect.servers", '["redis://hub:6379"]', 'is not "nats://host:port"'),
    ("collect.stream", '"A.B"', 'got "A.B"'),
    ("collect.subject_prefix", '"*"', "tokens of 1 to 64 characters"),
    ("collect.durable", '"a b"', 'got "a b"'),
    ("collect.database", '""', 'must be a non-empty string, got ""'),
    ("collect.batch", "0", "must be an integer >= 1 and <= 10000, got 0"),
    ("collect.batch_wait", "0", "must be a number of seconds > 0"),
    ("collect.ack_wait", '"1m"', 'got "1m"'),
    ("collect.creds_file", "3", "must be a path string, got 3"),
    ("collect.raw_dir", "[]", "must be a path string"),
    ("supervisor.graceful_timeout", "0", "must be a number of seconds > 0"),
    ("supervisor.pidfile", "5", "must be a path string, got 5"),
    ("supervisor.log_file", '["a"]', 'must be a path string, got ["a"]'),
    ("supervisor.log_level", '"verbose"', 'must be one of "debug", "info", "warning", "error"'),
    ("supervisor.log_format", '"text"', 'must be one of "human", "json", got "text"'),
    ("metrics.listen", '"9809"', 'must be "host:port" with a port from 1 to 65535'),
    ("metrics.listen", '"localhost:0"', 'got "localhost:0"'),
    ("metrics.listen", '"::1:9809"', 'IPv6 as "[::1]:9809"'),
    ("metrics.listen", "9809", "got 9809"),
    ("blocklist.interval", "-1", "must be an integer >= 0"),
    ("blocklist.window_days", "0", "must be an integer >= 1 and <= 366"),
    ("blocklist.min_hits", "0", "must be an integer >= 1"),
    ("blocklist.min_recipients", '"2"', "must be an integer >= 1"),
    ("blocklist.expire_days", "9", "longer than blocklist.window_days (7)"),
    ("blocklist.ipv4_prefix", "33", "must be an integer >= 8 and <= 32"),
    ("blocklist.ipv6_prefix", "8", "must be an integer >= 16 and <= 128"),
    ("blocklist.allow", '["10.0.0.300"]', '"10.0.0.300" is not an IP network'),
    ("blocklist.list_reserved", '"yes"', "must be true or false"),
    ("blocklist.verdicts", '["spam", "bad"]', '"bad" is not one of'),
    ("blocklist.a_value", '"::1"', 'must be an IPv4 address such as "127.0.0.2", got "::1"'),
    ("blocklist.txt", '""', "must be a non-empty string"),
    ("blocklist.rbldnsd_ip4", "1", "must be a path string"),
    ("blocklist.rbldnsd_ip6", "[]", "must be a path string"),
    ("blocklist.postfix", "true", "must be a path string"),
    ("blocklist.plain", "2", "must be a path string"),
    ("blocklist.json", "{}", "must be a path string"),
    ("service.user", '"no-such-user-for-ringtrap"', 'no such user "no-such-user-for-ringtrap"'),
    ("service.user", "0", "must be a user name, got 0"),
    ("service.group", '"no-such-group-for-ringtrap"', 'no such group "no-such-group'),
]


def test_good_and_bad_values_cover_every_key() -> None:
    keys = set(declared_keys())
    assert {dotted for dotted, _, _ in GOOD} == keys
    assert {dotted for dotted, _, _ in BAD} == keys


@pytest.mark.parametrize(("dotted", "value", "expected"), GOOD)
def test_good_value_is_accepted(dotted: str, value: str, expected: object) -> None:
    c = load_text(toml_for(dotted, value))
    section, key = dotted.split(".")
    assert getattr(getattr(c, section), key) == expected


@pytest.mark.parametrize(("dotted", "value", "fragment"), BAD)
def test_bad_value_names_file_key_and_problem(dotted: str, value: str, fragment: str) -> None:
    problems = problems_of(toml_for(dotted, value), "trap.toml")
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"trap.toml: {dotted}: ")
    assert fragment in problems[0]


def test_service_group_needs_a_user() -> None:
    problems = problems_of(f'[service]\ngroup = "{OWN_GROUP}"\n', "trap.toml")
    assert problems == [
        f'trap.toml: service.group: "{OWN_GROUP}" needs service.user: the group is only'
        " taken when dropping to a user"
    ]
    c = load_text(f'[service]\nuser = "{OWN_USER}"\ngroup = "{OWN_GROUP}"\n')
    assert (c.service.user, c.service.group) == (OWN_USER, OWN_GROUP)


def test_forward_key_pairs_and_spill_dir_rules() -> None:
    both = '[forward]\ncreds_file = "/a.creds"\nnkey_seed_file = "/a.nk"\n'
    assert problems_of(both, "trap.toml") == [
        "trap.toml: forward.creds_file: and forward.nkey_seed_file exclude each other: a"
        " creds file already holds the nkey seed"]
    key_only = '[forward]\ntls_key_file = "/k.pem"\n'
    assert problems_of(key_only, "trap.toml")[0].startswith(
        "trap.toml: forward.tls_cert_file: and forward.tls_key_file go together")
    c = load_text('[forward]\ntls_cert_file = "/c.pem"\ntls_key_file = "/k.pem"\n')
    assert (c.forward.tls_cert_file, c.forward.tls_key_file) == (Path("/c.pem"), Path("/k.pem"))
    inside = ('[overflow]\ndir = "/dev/shm/spill"\n[forward]\nenabled = true\nraw = true\n'
              'spill_dir = "/dev/shm/spill/fwd"\n')
    assert problems_of(inside, "trap.toml") == [
        'trap.toml: forward.spill_dir: the forwarder\'s spill directory "/dev/shm/spill/fwd"'
        " must not be inside overflow.dir or contain it"]
    # without raw forwarding the directory is never made, so nothing to refuse
    assert load_text(inside.replace("raw = true", "raw = false")).forward.raw is False
    c = load_text('[overflow]\ndir = "/dev/shm/spill"\n')
    assert config.forward_dir(c) == Path("/dev/shm/spill-forward")


def test_root_defaults_survive_a_privilege_drop(monkeypatch: pytest.MonkeyPatch) -> None:
    as_root(monkeypatch)
    root = config.defaults()
    monkeypatch.setattr(os, "geteuid", lambda: USER_UID)
    assert config.defaults() != root  # an ordinary user's defaults differ
    monkeypatch.setattr(hostdefaults, "started_as_root", False)
    config.keep_root_defaults()
    assert config.defaults() == root


def test_error_message_format() -> None:
    with pytest.raises(ConfigError) as info:
        load_text('[ring]\nslots = "abc"\n', "ringtrap.toml")
    expected = 'ringtrap.toml: ring.slots: must be an integer >= 1 and <= 1000000, got "abc"'
    assert info.value.problems == [expected]
    assert str(info.value) == expected


def test_config_error_survives_pickling() -> None:
    error = ConfigError(["a.toml: ring.slots: bad", "a.toml: ring.mode: bad"])
    copy = pickle.loads(pickle.dumps(error))
    assert copy.problems == error.problems
    assert str(copy) == "a.toml: ring.slots: bad\na.toml: ring.mode: bad"


def test_load_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "ringtrap.toml"
    path.write_text("[ring]\nslots = 0\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.problems[0].startswith(f"{path}: ring.slots: ")


def test_load_reports_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.toml: cannot read: No such file"):
        load(tmp_path / "missing.toml")
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b'[supervisor]\nlog_file = "caf\xe9"\n')
    with pytest.raises(ConfigError, match=r"latin\.toml: not UTF-8"):
        load(latin)


def test_long_values_are_shortened_in_messages() -> None:
    [problem] = problems_of(toml_for("ring.slots", '"' + "9" * 500 + '"'))
    assert len(problem) < 200


# -- unknown names, several problems, syntax errors ---------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[ingest]\nsockett = 1\n", "unknown key ingest.sockett; did you mean ingest.socket?"),
        ("[ingset]\n", "unknown section [ingset]; did you mean [ingest]?"),
        ("[workers]\nslots = 3\n", "unknown key workers.slots; did you mean ring.slots?"),
        ("slots = 3\n", "unknown top-level key slots; did you mean ring.slots (under [ring])?"),
        ("ring = 3\n", "ring: must be a table [ring], got 3"),
        ("[ring.extra]\n", "unknown key ring.extra; [ring] has name, slots, slot_bytes, mode"),
        ("[zzz]\n", "unknown section [zzz]; the sections are [ingest], [ring],"),
        ("zzz = 1\n", "unknown top-level key zzz; settings belong in sections"),
    ],
)
def test_unknown_names_are_errors_with_suggestions(text: str, message: str) -> None:
    [problem] = problems_of(text, "trap.toml")
    assert problem.startswith(f"trap.toml: {message}")


def test_all_problems_are_reported_in_one_pass() -> None:
    text = """
[ingest]
sockett = "/x"
idle_timeout = 0

[ring]
slots = "abc"

[overflow]
max_bytes = "2M"

[supervisor]
log_level = "loud"
"""
    problems = problems_of(text, "trap.toml")
    assert len(problems) == 5, problems
    named = {p.split(": ")[1].split(";")[0] for p in problems}
    assert named == {
        "unknown key ingest.sockett",
        "ingest.idle_timeout",
        "ring.slots",
        "supervisor.log_level",
        "overflow.max_bytes",  # a cross-field check, reported alongside the others
    }
    assert all(p.startswith("trap.toml: ") for p in problems)


def test_syntax_error_names_file_and_line() -> None:
    [problem] = problems_of('[ring]\nslots = 8\nslot_bytes = "64K\n', "trap.toml")
    assert problem.startswith("trap.toml: TOML syntax error: ")
    assert "line 3" in problem


def test_syntax_error_from_a_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "ringtrap.toml"
    path.write_text("[ring\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.problems[0].startswith(f"{path}: TOML syntax error")
    assert "line 1" in info.value.problems[0]


# -- cross-field rules --------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "start"),
    [
        (
            "[workers]\nheartbeat_timeout = 320\n",
            "spamd.timeout: must be less than workers.heartbeat_timeout (320 s)",
        ),
        (
            "[spamd]\ntimeout = 300\n",
            "spamd.timeout: must be greater than spamd's child timeout (300 s, --timeout-child)",
        ),
        (
            '[spamd]\ntimeout = 200\nextra_args = ["--timeout-child", "250"]\n',
            "spamd.timeout: must be greater than spamd's child timeout (250 s",
        ),
        (
            '[spamd]\naddress = "tcp:127.0.0.1:783"\ntimeout = 200\n'
            'extra_args = ["--timeout-child=120"]\n',  # not ours to run: spamd's default applies
            "spamd.timeout: must be greater than spamd's child timeout (300 s",
        ),
        (
            "[spamd]\nconnect_timeout = 331\n",
            "spamd.connect_timeout: must not exceed spamd.timeout (330 s), got 331",
        ),
        (
            '[spamd]\naddress = "managed"\ncommand = "/nonexistent/spamd"\n',
            'spamd.address: "managed" needs spamd, but spamd.command "/nonexistent/spamd"',
        ),
        (
            '[scanner]\nkind = "rspamd"\n[rspamd]\ncommand = "/nonexistent/rspamd"\n',
            'rspamd.address: "managed" needs rspamd, but rspamd.command "/nonexistent/rspamd"'
            " is not found",
        ),
        (
            '[scanner]\nkind = "rspamd"\n[workers]\nheartbeat_timeout = 50\n',
            "rspamd.timeout: must be less than workers.heartbeat_timeout (50 s)",
        ),
        (
            '[scanner]\nkind = "rspamd"\n[rspamd]\ntimeout = 8\nconnect_timeout = 1\n',
            "rspamd.timeout: must be greater than rspamd's task_timeout (8 s)",
        ),
        (
            '[scanner]\nkind = "rspamd"\n[rspamd]\nconnect_timeout = 61\n',
            "rspamd.connect_timeout: must not exceed rspamd.timeout (60 s), got 61",
        ),
        (
            '[scanner]\nkind = "rspamd"\n[stage]\nworkers = 1\n',
            "stage.address: the stage learns and reports through spamd only",
        ),
        (
            "[ring]\nslots = 300000\n",
            "ring.slots: ring.slots * ring.slot_bytes = 300000 * 64KiB = 19660800000 bytes"
            " exceeds the 16GiB limit",
        ),
        (
            '[overflow]\nmax_bytes = "10M"\n',
            "overflow.max_bytes: must be at least ingest.max_message_bytes (52428800)",
        ),
        (
            '[overflow]\ndir = "/srv/spill"\n[results]\ndir = "/srv/spill/results"\n',
            'results.dir: "/srv/spill/results" must not be inside overflow.dir or contain it',
        ),
        (
            '[overflow]\ndir = "/srv/spill/tmp"\n[results]\ndir = "/srv/spill"\n',
            'results.dir: "/srv/spill" must not be inside overflow.dir or contain it',
        ),
        (
            '[ingest]\nsocket = "/srv/t/a.sock"\nsubmit_socket = "/srv/t/a.sock"\n',
            'ingest.socket: ingest.submit_socket "/srv/t/a.sock" is also ingest.socket',
        ),
        (
            '[ingest]\nsocket = "/srv/t/a.sock"\nlmtp_socket = "/srv/t/submit.sock"\n',
            'ingest.socket: ingest.lmtp_socket "/srv/t/submit.sock" is also'
            " ingest.submit_socket",
        ),
        (
            '[spamd]\naddress = ["tcp:10.0.0.1:783", "tcp:10.0.0.2:783"]\n'
            "[stage]\nworkers = 1\nlearn = true\n",
            "stage.address: spamd.address is a list: set stage.address to the one spamd",
        ),
    ],
)
def test_cross_field_rules(text: str, start: str) -> None:
    [problem] = problems_of(text, "trap.toml")
    assert problem.startswith(f"trap.toml: {start}")


@pytest.mark.parametrize(
    "text",
    [
        # spamd's timeouts do not matter when there is no spamd.
        '[workers]\nheartbeat_timeout = 60\n[spamd]\naddress = "off"\ntimeout = 5\n',
        '[spamd]\naddress = "off"\ncommand = "/nonexistent/spamd"\n',
        # A managed spamd with a shorter child timeout allows a shorter wait.
        '[spamd]\ntimeout = 200\nextra_args = ["--timeout-child=120"]\n',
        '[ring]\nslots = 262144\nslot_bytes = "64K"\n',  # exactly 16 GiB
        '[overflow]\nmax_bytes = "50M"\n',
        '[overflow]\ndir = "/srv/spill"\n[results]\ndir = "/srv/spill-results"\n',
        # an LMTP socket beside the other two, and the submit socket off
        '[ingest]\nsocket = "/srv/t/a.sock"\nlmtp_socket = "/srv/t/lmtp.sock"\n',
        '[ingest]\nsubmit_socket = ""\n',
        # rspamd's keys matter only when it scans; a running one may answer faster
        '[rspamd]\ncommand = "/nonexistent/rspamd"\ntimeout = 5\nconnect_timeout = 9\n',
        '[scanner]\nkind = "rspamd"\n[rspamd]\naddress = "tcp:127.0.0.1:11333"\n'
        'command = "/nonexistent/rspamd"\ntimeout = 5\nconnect_timeout = 5\n',
        '[scanner]\nkind = "rspamd"\n[stage]\nworkers = 1\naddress = "tcp:127.0.0.1:783"\n',
        # a pool's stage learns through the spamd it is told
        '[spamd]\naddress = ["tcp:10.0.0.1:783", "tcp:10.0.0.2:783"]\n'
        '[stage]\nworkers = 1\nlearn = true\naddress = "tcp:10.0.0.1:783"\n',
    ],
)
def test_cross_field_rules_accept_the_boundaries(text: str) -> None:
    load_text(text)


def test_submit_socket_follows_the_ingest_socket() -> None:
    assert load_text('[ingest]\nsocket = "/srv/t/in.sock"\n').ingest.submit_socket == Path(
        "/srv/t/submit.sock"
    )
    assert defaults().ingest.submit_socket == defaults().ingest.socket.parent / "submit.sock"
    assert defaults().ingest.lmtp_socket is None


def test_cross_field_rules_name_declared_keys() -> None:
    # A misspelt key here would stop the rule from being skipped after a bad value.
    keys = set(declared_keys())
    for rule in rules.RULES:
        assert set(rule.keys) <= keys, rule


def test_cross_field_rule_skipped_when_a_key_is_invalid() -> None:
    # slot_bytes is invalid by itself; the ring-size rule must not pile on.
    problems = problems_of('[ring]\nslots = 1000000\nslot_bytes = "65M"\n')
    assert len(problems) == 1 and "ring.slot_bytes: " in problems[0]


# -- byte sizes and modes -----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (0, 0),
        (1500, 1500),
        ("0", 0),
        ("512", 512),
        ("512B", 512),
        ("1K", KiB),
        ("1k", KiB),
        ("1KB", KiB),
        ("1KiB", KiB),
        ("64 KiB", 64 * KiB),
        ("512M", 512 * MiB),
        ("2G", 2 * GiB),
        ("1GiB", GiB),
        ("1T", 1024 * GiB),
        ("1.5G", 3 * GiB // 2),
        ("0.5K", 512),
        (" 2g ", 2 * GiB),
    ],
)
def test_parse_size_accepts(text: int | str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "text", ["", "abc", "1X", "-1", -1, "1.", ".5K", "1iB", "KiB", "1 2M", "1e6", "٣K", True, 1.5]
)
def test_parse_size_rejects(text: object) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0"),
        (1000, "1000"),
        (KiB, "1KiB"),
        (512000, "500KiB"),
        (50 * MiB, "50MiB"),
        (GiB, "1GiB"),
    ],
)
def test_format_size(n: int, text: str) -> None:
    assert format_size(n) == text
    assert parse_size(text) == n


@pytest.mark.parametrize(
    ("value", "mode"),
    [
        ("0o660", 0o660),
        ('"0660"', 0o660),
        ('"660"', 0o660),
        ('"0o660"', 0o660),
        ("0", 0),
        ('"0777"', 0o777),
        ("0o777", 0o777),
    ],
)
def test_octal_mode_forms(value: str, mode: int) -> None:
    assert load_text(toml_for("ingest.socket_mode", value)).ingest.socket_mode == mode


@pytest.mark.parametrize(
    "value", ["660", '"0o1777"', "0o1000", '"0888"', '""', '"0o"', '"06600"', "-1", '"-660"']
)
def test_octal_mode_rejects(value: str) -> None:
    [problem] = problems_of(toml_for("ingest.socket_mode", value))
    assert "ingest.socket_mode: must be a file mode from 0o000 to 0o777" in problem


# -- paths --------------------------------------------------------------------


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    etc = tmp_path / "etc" / "ringtrap"
    etc.mkdir(parents=True)
    (etc / "ringtrap.toml").write_text(
        """
[ingest]
socket = "run/in.sock"
[overflow]
dir = "../spill"
[results]
dir = "/srv/results"
[spamd]
address = "unix:spamd.sock"
[supervisor]
pidfile = "~/trap.pid"
log_file = "./log/trap.log"
"""
    )
    c = load(etc / "ringtrap.toml")
    assert c.ingest.socket == etc / "run/in.sock"
    assert c.overflow.dir == etc / "../spill"
    assert c.results.dir == Path("/srv/results")
    assert c.spamd.address == SpamdAddress("unix", etc / "spamd.sock")
    assert c.supervisor.pidfile == Path(os.environ["HOME"]) / "trap.pid"
    assert c.supervisor.log_file == etc / "log/trap.log"


def test_relative_config_path_still_gives_absolute_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "ringtrap.toml").write_text('[ingest]\nsocket = "in.sock"\n')
    monkeypatch.chdir(tmp_path)
    c = load("ringtrap.toml")
    # The daemon changes directory later, so the path must not stay relative.
    assert c.ingest.socket == tmp_path / "in.sock"
    assert c.ingest.socket.is_absolute()


def test_load_text_resolves_against_base_dir_or_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = '[results]\ndir = "out"\n'
    assert load_text(text, base_dir=tmp_path / "conf").results.dir == tmp_path / "conf/out"
    monkeypatch.chdir(tmp_path)
    assert load_text(text).results.dir == tmp_path / "out"


def test_spamd_address_text_round_trip() -> None:
    for text in ["managed", "off", "unix:/run/spamd.sock", "tcp:127.0.0.1:783", "tcp:[::1]:783"]:
        c = load_text(toml_for("spamd.address", f'"{text}"'))
        assert str(c.spamd.address) == text


# -- generated text -----------------------------------------------------------


@pytest.mark.parametrize("root", [False, True])
def test_sample_config_round_trips_to_defaults(root: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if root:
        as_root(monkeypatch)
    commented = sample_config()
    assert load_text(commented) == defaults()
    # Commented out, every line must still be right: load it uncommented too.
    live = sample_config(commented=False)
    assert load_text(live) == defaults()
    assert live.replace("\n# ", "\n").count(" = ") >= len(declared_keys())


def test_sample_config_commented_sets_nothing() -> None:
    parsed = tomllib.loads(sample_config())
    assert parsed == {section.name: {} for section in dataclasses.fields(Config)}


def test_sample_config_lists_every_key_with_its_help() -> None:
    text = sample_config()
    comments = " ".join(
        line.removeprefix("#").strip() for line in text.splitlines() if line.startswith("#")
    )
    parsed = tomllib.loads(sample_config(commented=False))
    for section in dataclasses.fields(Config):
        for key in dataclasses.fields(section.type):  # type: ignore[arg-type]
            assert key.name in parsed[section.name]
            assert f"\n# {key.name} = " in text
            assert key.metadata["ringtrap.setting"].help in comments
    # Values are written the way a person would write them.
    assert "\n# socket_mode = 0o660\n" in text
    assert '\n# max_message_bytes = "50MiB"\n' in text
    assert '\n# purge_at = "04:00"\n' in text


def test_sample_config_renders_any_config() -> None:
    custom = override(
        defaults(),
        {
            "ring.slots": 16,
            "ingest.socket_mode": "0640",
            "overflow.purge_at": "23:15",
            "spamd.address": "tcp:[::1]:1783",
            "spamd.extra_args": ["--nouser-config", 'quote"and\\back'],
            "supervisor.pidfile": "/run/trap.pid",
            "workers.max_rss_bytes": 0,
            "ingest.max_message_bytes": 123457,
        },
    )
    assert load_text(sample_config(custom, commented=False)) == custom


def test_docs_table_lists_every_key() -> None:
    table = docs_table()
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert len(rows) == len(declared_keys())
    for dotted, row in zip(declared_keys(), rows, strict=True):
        assert row.startswith(f"| `{dotted}` | ")
        assert row.count(" | ") == 3
    assert "| section.key | type | default | meaning |" in table
    assert "| `ring.slots` | integer | `1024` |" in table
    assert "| `ingest.socket_mode` | octal mode | `0o660` |" in table
    assert '| `ingest.max_message_bytes` | byte size | `"50MiB"` |' in table


def test_docs_table_does_not_depend_on_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    user = docs_table()
    as_root(monkeypatch)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert docs_table() == user
    assert str(USER_UID) not in user and "/home" not in user


# -- to_dict, from_dict, override ---------------------------------------------


def test_to_dict_is_json_and_round_trips() -> None:
    c = defaults()
    d = to_dict(c)
    assert json.loads(json.dumps(d)) == d
    assert d["ingest"]["socket_mode"] == "0660"
    assert d["overflow"]["purge_at"] == "04:00"
    assert d["spamd"]["address"] == "managed"
    assert d["supervisor"]["pidfile"] == ""
    assert d["ingest"]["socket"] == f"/tmp/ringtrap-{USER_UID}/ingest.sock"
    assert from_dict(d) == c


def test_override_validates_like_a_file() -> None:
    c = override(defaults(), {"ring.slots": 8, "overflow.max_bytes": "64M"})
    assert (c.ring.slots, c.overflow.max_bytes) == (8, 64 * MiB)
    assert c.ingest == defaults().ingest
    with pytest.raises(ConfigError) as info:
        override(defaults(), {"ring.slots": 0, "ring.slotz": 1, "nodot": 1})
    assert info.value.problems == ["<override>: nodot: expected section.key"]
    with pytest.raises(ConfigError) as info:
        override(defaults(), {"ring.slots": 0, "ring.slotz": 1})
    assert {p.split(": ")[1] for p in info.value.problems} == {
        "unknown key ring.slotz; did you mean ring.slots?",
        "ring.slots",
    }


# -- import cost ----------------------------------------------------------------


def test_import_stays_light() -> None:
    # The MTA-facing client imports this module on every delivery.
    code = "import sys, ringtrap.config; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-S", "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    assert "ringtrap.config" in out
    for heavy in ("tomllib", "difflib", "shutil", "grp", "textwrap", "json"):
        assert heavy not in out


def test_overflow_dir_may_not_be_the_rings_segment(tmp_path: Path) -> None:
    text = '[ring]\nname = "trap1"\n[overflow]\ndir = "/dev/shm/trap1"\n'
    with pytest.raises(config.ConfigError) as e:
        config.load_text(text, "t.toml")
    assert any("overflow.dir" in p and "trap1" in p for p in e.value.problems)


@pytest.mark.parametrize(("text", "key"), [
    # the ring's /dev/shm path would be a parent of the overflow
    ('[ring]\nname = "trap1"\n[overflow]\ndir = "/dev/shm/trap1/overflow"\n', "overflow.dir"),
    ('[ring]\nname = "trap1"\n[overflow]\ndir = "/dev/shm/sem.trap1.lock"\n', "overflow.dir"),
    # the stage's default folder, beside the overflow, is the ring's segment
    ('[ring]\nname = "q-stage2"\n[overflow]\ndir = "/dev/shm/q"\n'
     '[stage]\nworkers = 1\naddress = "unix:/run/s.sock"\n', "stage.dir"),
    ('[ring]\nname = "trap1"\n[stage]\nworkers = 1\naddress = "unix:/run/s.sock"\n'
     'dir = "/dev/shm/trap1/stage"\n', "stage.dir"),
])
def test_no_spill_folder_may_be_at_or_under_the_rings_shm_names(text: str, key: str) -> None:
    with pytest.raises(config.ConfigError) as e:
        config.load_text(text, "t.toml")
    [problem] = e.value.problems
    assert problem.startswith(f"t.toml: {key}: ") and "ring.name" in problem


def test_a_spill_folder_beside_the_ring_is_fine() -> None:
    text = ('[ring]\nname = "trap1"\n[overflow]\ndir = "/dev/shm/trap1.overflow"\n'
            '[stage]\nworkers = 1\naddress = "unix:/run/s.sock"\n')
    assert config.load_text(text, "t.toml").overflow.dir == Path("/dev/shm/trap1.overflow")
