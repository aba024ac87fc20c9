"""TOML configuration: every setting declared once, validated in one pass.

Each TOML section is a frozen dataclass and each key one of its fields; the
field's metadata carries the key's kind (parser, validation, rendering) and
its help text.  The loader, ``sample_config()``, ``docs_table()`` and
``to_dict()`` all walk those declarations, so a setting is described in
exactly one place.

Defaults that depend on who runs the trap (root or not, the XDG directories,
the number of CPUs, whether spamd is installed) are computed when a config is
built, never at import, so tests can monkeypatch ``os.geteuid`` and the
environment.

Relative paths in a file are relative to the directory of that file (the
daemon changes directory, so they are made absolute at load time); ``~``
expands to the home directory.

Nothing here writes anything: a process that dies mid-call leaves nothing to
recover.  The MTA-facing client imports this module on every delivery, so
modules needed only to load a file or report an error (tomllib, difflib,
shutil, grp, textwrap) are imported inside the functions that use them.
"""

import datetime
import math
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeGuard

from ringtrap.base.states import Verdict

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

# spamd's own default for --timeout-child: a child gives up on a message after
# this long, so a worker's spamd.timeout must be longer to hear the answer.
SPAMD_CHILD_TIMEOUT = 300.0

# Where Debian and source installs put spamd; a non-root PATH often lacks them.
SBIN_DIRS: tuple[str, ...] = ("/usr/sbin", "/usr/local/sbin")

# The whole ring is one shared-memory segment held in RAM.
MAX_RING_BYTES = 16 * GiB

# sun_path holds 108 bytes including the terminating NUL.
_MAX_SOCKET_PATH = 107

_META = "ringtrap.setting"


class ConfigError(Exception):
    """The configuration is unusable; ``problems`` holds every reason found."""

    def __init__(self, problems: list[str]) -> None:
        # The list itself is the only argument, so the error survives pickling.
        super().__init__(problems)
        self.problems = problems

    def __str__(self) -> str:
        return "\n".join(self.problems)


class _Invalid(Exception):
    """A raw value failed its kind's check; the text says what is wrong."""


# Set once a supervisor started as root has dropped its privileges: its
# defaults (ring name, paths) stay those of root, so a reload computes the
# same ones it started with.
_started_as_root = False


def keep_root_defaults() -> None:
    """Compute later defaults as root's, whatever the effective uid now is.

    The supervisor calls this after dropping to ``service.user``, so a HUP
    reload keeps the paths and ring name the trap started with.
    """
    global _started_as_root
    _started_as_root = True


def _euid() -> int:
    return 0 if _started_as_root else os.geteuid()


def runtime_dir() -> Path:
    """Directory for the ingest socket and the managed spamd's socket.

    ``/run/ringtrap`` as root, else ``$XDG_RUNTIME_DIR/ringtrap`` when that
    variable names a writable directory, else ``/tmp/ringtrap-<uid>``.
    """
    euid = _euid()
    if euid == 0:
        return Path("/run/ringtrap")
    xdg = os.environ.get("XDG_RUNTIME_DIR", "")
    # The XDG spec says to ignore a relative value.
    if os.path.isabs(xdg) and os.path.isdir(xdg) and os.access(xdg, os.W_OK | os.X_OK):
        return Path(xdg) / "ringtrap"
    return Path(f"/tmp/ringtrap-{euid}")


def _state_home() -> Path:
    xdg = os.environ.get("XDG_STATE_HOME", "")
    if os.path.isabs(xdg):
        return Path(xdg)
    return Path.home() / ".local" / "state"


def _default_socket() -> Path:
    return runtime_dir() / "ingest.sock"


# the default of ingest.submit_socket until IngestConfig puts it beside ingest.socket
_BESIDE_INGEST = Path("submit.sock")


def _beside_ingest() -> Path:
    return _BESIDE_INGEST


def _user_suffix() -> str:
    euid = _euid()
    return "" if euid == 0 else f"-{euid}"


def _default_ring_name() -> str:
    return "ringtrap" + _user_suffix()


def _default_overflow_dir() -> Path:
    # not "/dev/shm/<ring.name>": that path is the ring's own segment
    return Path("/dev/shm/ringtrap" + _user_suffix() + ".overflow")


def _default_results_dir() -> Path:
    if _euid() == 0:
        return Path("/var/lib/ringtrap/results")
    return _state_home() / "ringtrap" / "results"


def _default_bayes_dir() -> Path:
    if _euid() == 0:
        return Path("/var/lib/ringtrap/bayes")
    return _state_home() / "ringtrap" / "bayes"


def _default_worker_count() -> int:
    return os.cpu_count() or 2


def find_spamd(command: str) -> str | None:
    """Path of the spamd program ``command`` names, or None if it is not installed.

    A bare name is looked up on ``PATH`` and then in ``SBIN_DIRS``; the
    supervisor should execute the returned path, not ``command`` itself.
    """
    import shutil

    dirs = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d]
    dirs += [d for d in SBIN_DIRS if d not in dirs]
    return shutil.which(command, path=os.pathsep.join(dirs))


def _toml_str(text: str) -> str:
    """``text`` as a TOML basic string (also how error messages quote values)."""
    out = ['"']
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _toml_literal(raw: object) -> str:
    """A raw value (str, int, float, bool, list of those) as TOML."""
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, str):
        return _toml_str(raw)
    if isinstance(raw, int | float):
        return repr(raw)
    if isinstance(raw, list | tuple):
        return "[" + ", ".join(_toml_literal(item) for item in raw) + "]"
    raise TypeError(f"cannot write {type(raw).__name__} as TOML")


def _show(raw: object) -> str:
    """A value read from TOML, quoted for an error message."""
    if isinstance(raw, str):
        shown = _toml_str(raw)
        return shown if len(shown) <= 80 else shown[:76] + '..."'
    if isinstance(raw, dict):
        return "a table"
    if isinstance(raw, list):
        return (
            "[" + ", ".join(_show(item) for item in raw[:8]) + (", ...]" if len(raw) > 8 else "]")
        )
    if isinstance(raw, bool | int | float):
        return _toml_literal(raw)
    if isinstance(raw, datetime.datetime | datetime.date | datetime.time):
        return raw.isoformat()
    return repr(raw)


def _is_int(raw: object) -> TypeGuard[int]:
    # TOML booleans arrive as Python bool, a subclass of int.
    return isinstance(raw, int) and not isinstance(raw, bool)


def _is_number(raw: object) -> TypeGuard[int | float]:
    return _is_int(raw) or isinstance(raw, float)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


_UNITS = {"": 1, "k": KiB, "m": MiB, "g": GiB, "t": 1024 * GiB}


def parse_size(value: object) -> int:
    """Bytes in ``value``: an integer, or a string such as "512M", "2G", "1GiB", "64 KiB".

    Units are binary whether written K, KB or KiB (K = 1024); a fraction such
    as "1.5G" is rounded down to whole bytes.  Raises ValueError.
    """
    if _is_int(value):
        if value < 0:
            raise ValueError(f"a byte size cannot be negative, got {value}")
        return value
    if not isinstance(value, str):
        raise ValueError(f"not a byte size: {_show(value)}")
    text = value.strip().lower()
    binary = text.endswith("ib")
    if binary:
        text = text[:-2]
    elif text.endswith("b"):
        text = text[:-1]
    unit = text[-1:] if text[-1:].isalpha() else ""
    if unit not in _UNITS or (binary and not unit):
        raise ValueError(f"not a byte size: {_show(value)}")
    number = text[: len(text) - len(unit)].strip()
    whole, dot, frac = number.partition(".")
    digits = whole + frac
    if not (whole and digits.isascii() and digits.isdecimal()) or (dot and not frac):
        raise ValueError(f"not a byte size: {_show(value)}")
    return int(digits) * _UNITS[unit] // 10 ** len(frac)


def format_size(n: int) -> str:
    """``n`` bytes in the largest binary unit that divides it exactly ("50MiB")."""
    for unit, factor in (("TiB", 1024 * GiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n and n % factor == 0:
            return f"{n // factor}{unit}"
    return str(n)


class _Kind:
    """Parser, validator and renderer for one kind of setting.

    Kinds are plain slotted classes, set once in __init__ and never changed:
    the dataclass decorator would cost the client's import a millisecond each.
    """

    __slots__ = ()

    def describe(self) -> str:
        """The type column of the docs table."""
        raise NotImplementedError

    def parse(self, raw: object, base_dir: Path) -> Any:
        """The stored value for ``raw`` as read from TOML; raises _Invalid."""
        raise NotImplementedError

    def dump(self, value: Any) -> object:
        """``value`` back as a raw TOML value that is also JSON-serialisable."""
        return value

    def toml(self, value: Any) -> str:
        """``value`` as it is written in a TOML file."""
        return _toml_literal(self.dump(value))


class _Integer(_Kind):
    __slots__ = ("hi", "lo")

    def __init__(self, lo: int, hi: int | None = None) -> None:
        self.lo = lo
        self.hi = hi

    def describe(self) -> str:
        return "integer"

    def parse(self, raw: object, base_dir: Path) -> int:
        if _is_int(raw) and self.lo <= raw and (self.hi is None or raw <= self.hi):
            return raw
        limits = f">= {self.lo}" + ("" if self.hi is None else f" and <= {self.hi}")
        raise _Invalid(f"must be an integer {limits}, got {_show(raw)}")


class _Seconds(_Kind):
    __slots__ = ()

    def describe(self) -> str:
        return "seconds"

    def parse(self, raw: object, base_dir: Path) -> float:
        # TOML admits inf and nan; neither is a usable timeout.
        if _is_number(raw) and math.isfinite(raw) and raw > 0:
            return float(raw)
        raise _Invalid(f"must be a number of seconds > 0, got {_show(raw)}")


class _Size(_Kind):
    __slots__ = ("hi", "lo", "zero_unlimited")

    def __init__(self, lo: int, hi: int | None = None, zero_unlimited: bool = False) -> None:
        self.lo = lo
        self.hi = hi
        self.zero_unlimited = zero_unlimited

    def describe(self) -> str:
        return "byte size"

    def parse(self, raw: object, base_dir: Path) -> int:
        limits = f"a byte size >= {format_size(self.lo)}"
        if self.hi is not None:
            limits += f" and <= {format_size(self.hi)}"
        if self.zero_unlimited:
            limits = f"0 (unlimited) or {limits}"
        try:
            n = parse_size(raw)
        except ValueError:
            raise _Invalid(
                f'must be {limits} (an integer or a string such as "512M" or "2GiB"),'
                f" got {_show(raw)}"
            ) from None
        if (n == 0 and self.zero_unlimited) or (self.lo <= n and (self.hi is None or n <= self.hi)):
            return n
        in_bytes = f" ({n} bytes)" if isinstance(raw, str) else ""
        raise _Invalid(f"must be {limits}, got {_show(raw)}{in_bytes}")

    def toml(self, value: Any) -> str:
        text = format_size(value)
        return text if text.isdecimal() else _toml_str(text)


class _Mode(_Kind):
    __slots__ = ("owner_rw",)

    def __init__(self, owner_rw: bool = False) -> None:
        self.owner_rw = owner_rw

    def describe(self) -> str:
        return "octal mode"

    def parse(self, raw: object, base_dir: Path) -> int:
        mode: int | None = None
        if _is_int(raw):
            mode = raw
        elif isinstance(raw, str):
            digits = raw.strip().lower().removeprefix("0o")
            if digits and len(digits) <= 4 and all(c in "01234567" for c in digits):
                mode = int(digits, 8)
        if mode is None or not 0 <= mode <= 0o777:
            hint = ""
            # 660 written without 0o is decimal 660 = 0o1224, almost surely a mistake.
            if _is_int(raw) and all(c in "01234567" for c in str(raw)):
                hint = f" (a decimal number; write 0o{raw})"
            raise _Invalid(
                f'must be a file mode from 0o000 to 0o777 such as 0o660 or "0660",'
                f" got {_show(raw)}{hint}"
            )
        if self.owner_rw and (mode & 0o600) != 0o600:
            raise _Invalid(
                f"must give the owner read and write permission (0o600), got 0o{mode:03o}"
            )
        return mode

    def dump(self, value: Any) -> object:
        return f"0{value:03o}"

    def toml(self, value: Any) -> str:
        return f"0o{value:03o}"


class _Path(_Kind):
    __slots__ = ("optional", "unix_socket")

    def __init__(self, optional: bool = False, unix_socket: bool = False) -> None:
        self.optional = optional  # "" stands for "none" and is stored as None
        self.unix_socket = unix_socket

    def describe(self) -> str:
        return 'path or ""' if self.optional else "path"

    def parse(self, raw: object, base_dir: Path) -> Path | None:
        if not isinstance(raw, str):
            raise _Invalid(f"must be a path string, got {_show(raw)}")
        if raw == "":
            if self.optional:
                return None
            raise _Invalid("must not be empty")
        return _resolve_path(raw, base_dir, self.unix_socket)

    def dump(self, value: Any) -> object:
        return "" if value is None else str(value)


def _resolve_path(raw: str, base_dir: Path, unix_socket: bool) -> Path:
    if "\0" in raw:
        raise _Invalid(f"must not contain a NUL character, got {_show(raw)}")
    expanded = os.path.expanduser(raw)
    if expanded.startswith("~"):
        raise _Invalid(f"cannot expand ~ in {_show(raw)}")
    path = base_dir / expanded  # an absolute `expanded` replaces base_dir
    if unix_socket and len(os.fsencode(path)) > _MAX_SOCKET_PATH:
        raise _Invalid(
            f"a Unix socket path must be at most {_MAX_SOCKET_PATH} bytes,"
            f" got {_show(str(path))} ({len(os.fsencode(path))} bytes)"
        )
    return path


class _Text(_Kind):
    __slots__ = ()

    def describe(self) -> str:
        return "string"

    def parse(self, raw: object, base_dir: Path) -> str:
        if isinstance(raw, str) and raw and "\0" not in raw:
            return raw
        raise _Invalid(f"must be a non-empty string, got {_show(raw)}")


class _ShmName(_Kind):
    __slots__ = ()
    max_len = 200  # semaphore names add a prefix within NAME_MAX (255)

    def describe(self) -> str:
        return "name"

    def parse(self, raw: object, base_dir: Path) -> str:
        allowed = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-"
        if (
            isinstance(raw, str)
            and 0 < len(raw) <= self.max_len
            and all(c in allowed for c in raw)
            and raw not in (".", "..")
        ):
            return raw
        raise _Invalid(
            f"must be 1 to {self.max_len} characters from A-Z a-z 0-9 . _ -"
            f' (not "." or ".."), got {_show(raw)}'
        )


class _Account(_Kind):
    """A user or group name that must exist on this machine; "" for none."""

    __slots__ = ("_lookup", "_what")

    def __init__(self, what: str, lookup: Callable[[str], object]) -> None:
        self._what = what
        self._lookup = lookup

    def describe(self) -> str:
        return f'{self._what} name or ""'

    def parse(self, raw: object, base_dir: Path) -> str:
        if not isinstance(raw, str) or "\0" in raw:
            raise _Invalid(f"must be a {self._what} name, got {_show(raw)}")
        if raw:
            try:
                self._lookup(raw)
            except KeyError:
                raise _Invalid(f"no such {self._what} {_show(raw)}") from None
        return raw


# imported on first use: the submit client reads configurations too
def _getgrnam(name: str) -> object:
    import grp

    return grp.getgrnam(name)


def _getpwnam(name: str) -> object:
    import pwd

    return pwd.getpwnam(name)


class ListenAddress(NamedTuple):
    """A TCP ``host:port`` to listen on (IPv6 hosts written in brackets)."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


class _Listen(_Kind):
    __slots__ = ()

    def describe(self) -> str:
        return '"host:port" or ""'

    def parse(self, raw: object, base_dir: Path) -> ListenAddress | None:
        if raw == "":
            return None
        if isinstance(raw, str):
            host, colon, port = raw.strip().rpartition(":")
            bracketed = host.startswith("[") and host.endswith("]")
            if bracketed:
                host = host[1:-1]
            if (
                colon
                and host
                and (bracketed or ":" not in host)
                and port.isascii()
                and port.isdecimal()
                and 1 <= int(port) <= 65535
            ):
                return ListenAddress(host, int(port))
        raise _Invalid(
            'must be "host:port" with a port from 1 to 65535 (IPv6 as "[::1]:9809"),'
            f' or "" for off, got {_show(raw)}'
        )

    def dump(self, value: Any) -> object:
        return "" if value is None else str(value)


class _Choice(_Kind):
    __slots__ = ("options",)

    def __init__(self, options: tuple[str, ...]) -> None:
        self.options = options

    def describe(self) -> str:
        return ", ".join(_toml_str(o) for o in self.options)

    def parse(self, raw: object, base_dir: Path) -> str:
        if isinstance(raw, str) and raw.lower() in self.options:
            return raw.lower()
        raise _Invalid(f"must be one of {self.describe()}, got {_show(raw)}")


class _TextList(_Kind):
    __slots__ = ()

    def describe(self) -> str:
        return "list of strings"

    def parse(self, raw: object, base_dir: Path) -> tuple[str, ...]:
        if isinstance(raw, list) and all(isinstance(x, str) and "\0" not in x for x in raw):
            return tuple(raw)
        raise _Invalid(f"must be a list of strings, got {_show(raw)}")

    def dump(self, value: Any) -> object:
        return list(value)


class _Bool(_Kind):
    __slots__ = ()

    def describe(self) -> str:
        return "boolean"

    def parse(self, raw: object, base_dir: Path) -> bool:
        if isinstance(raw, bool):
            return raw
        raise _Invalid(f"must be true or false, got {_show(raw)}")


class _ChoiceList(_Kind):
    __slots__ = ("options",)

    def __init__(self, options: tuple[str, ...]) -> None:
        self.options = options

    def describe(self) -> str:
        return "list of " + ", ".join(_toml_str(o) for o in self.options)

    def parse(self, raw: object, base_dir: Path) -> tuple[str, ...]:
        if isinstance(raw, list) and all(isinstance(x, str) for x in raw):
            bad = [x for x in raw if x.lower() not in self.options]
            if not bad:
                return tuple(dict.fromkeys(x.lower() for x in raw))
            raise _Invalid(
                f"{_show(bad[0])} is not one of {', '.join(_toml_str(o) for o in self.options)}"
            )
        raise _Invalid(f"must be a list of strings, got {_show(raw)}")

    def dump(self, value: Any) -> object:
        return list(value)


class _NetworkList(_Kind):
    __slots__ = ()

    def describe(self) -> str:
        return "list of IP networks"

    def parse(self, raw: object, base_dir: Path) -> tuple[str, ...]:
        import ipaddress

        if isinstance(raw, list) and all(isinstance(x, str) for x in raw):
            out = []
            for text in raw:
                try:
                    out.append(str(ipaddress.ip_network(text.strip(), strict=False)))
                except ValueError:
                    raise _Invalid(
                        f"{_show(text)} is not an IP network such as"
                        ' "192.0.2.0/24" or "2001:db8::/32"'
                    ) from None
            return tuple(out)
        raise _Invalid(f"must be a list of IP networks, got {_show(raw)}")

    def dump(self, value: Any) -> object:
        return list(value)


class _TimeOfDay(_Kind):
    __slots__ = ()

    def describe(self) -> str:
        return 'local time "HH:MM"'

    def parse(self, raw: object, base_dir: Path) -> datetime.time:
        # A TOML local time (04:00:00) is accepted too, if it has no seconds.
        if isinstance(raw, datetime.time) and not (raw.second or raw.microsecond or raw.tzinfo):
            return datetime.time(raw.hour, raw.minute)
        if isinstance(raw, str):
            hours, colon, minutes = raw.strip().partition(":")
            digits = hours + minutes
            if (
                colon
                and 1 <= len(hours) <= 2
                and len(minutes) == 2
                and digits.isascii()
                and digits.isdecimal()
                and int(hours) <= 23
                and int(minutes) <= 59
            ):
                return datetime.time(int(hours), int(minutes))
        raise _Invalid(f'must be a local time "HH:MM" from "00:00" to "23:59", got {_show(raw)}')

    def dump(self, value: Any) -> object:
        return value.strftime("%H:%M")


@dataclass(frozen=True, slots=True)
class SpamdAddress:
    """Where workers reach spamd.

    ``managed``: the supervisor runs spamd on a private socket of its own;
    ``unix``: an existing spamd at ``path``; ``tcp``: an existing spamd at
    ``host``:``port``; ``off``: messages are recorded without a spamd score.
    """

    kind: Literal["managed", "unix", "tcp", "off"]
    path: Path | None = None
    host: str = ""
    port: int = 0

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        if self.kind == "tcp":
            host = f"[{self.host}]" if ":" in self.host else self.host
            return f"tcp:{host}:{self.port}"
        return self.kind


def _default_spamd_address() -> SpamdAddress:
    kind: Literal["managed", "off"] = "managed" if find_spamd("spamd") else "off"
    return SpamdAddress(kind)


class _SpamdAddressKind(_Kind):
    __slots__ = ()

    def describe(self) -> str:
        return "spamd address"

    def parse(self, raw: object, base_dir: Path) -> SpamdAddress:
        expected = '"managed", "off", "unix:/path/to/socket" or "tcp:host:port"'
        if not isinstance(raw, str):
            raise _Invalid(f"must be {expected}, got {_show(raw)}")
        scheme, colon, rest = raw.partition(":")
        if raw == "managed":
            return SpamdAddress("managed")
        if raw == "off":
            return SpamdAddress("off")
        if colon and scheme == "unix" and rest:
            return SpamdAddress("unix", path=_resolve_path(rest, base_dir, unix_socket=True))
        if colon and scheme == "tcp":
            host, colon, port = rest.rpartition(":")
            if host.startswith("[") and host.endswith("]"):
                host = host[1:-1]
            elif ":" in host:
                raise _Invalid(
                    f"an IPv6 host must be in brackets (tcp:[::1]:783), got {_show(raw)}"
                )
            if not (host and port.isascii() and port.isdecimal() and 1 <= int(port) <= 65535):
                raise _Invalid(
                    f"must be tcp:host:port with a port from 1 to 65535, got {_show(raw)}"
                )
            return SpamdAddress("tcp", host=host, port=int(port))
        raise _Invalid(f"must be {expected}, got {_show(raw)}")

    def dump(self, value: Any) -> object:
        return str(value)


class _StageAddressKind(_SpamdAddressKind):
    __slots__ = ()

    def describe(self) -> str:
        return 'spamd address or ""'

    def parse(self, raw: object, base_dir: Path) -> SpamdAddress | None:
        if raw == "":
            return None
        address = super().parse(raw, base_dir)
        if address.kind not in ("unix", "tcp"):
            raise _Invalid(f'must be "", "unix:/path" or "tcp:host:port", got {_show(raw)}')
        return address

    def dump(self, value: Any) -> object:
        return "" if value is None else str(value)


@dataclass(frozen=True, slots=True)
class _Setting:
    """What the loader, the sample file and the docs know about one key."""

    kind: _Kind
    help: str
    varies: str  # for the docs: how a host-dependent default is chosen
    # a HUP does not change it: what it sets up (a socket, the ring, a
    # directory handed to the service user, the log) lives as long as the trap
    restart: bool = False


def _about(
    kind: _Kind, help: str, *, varies: str = "", restart: bool = False
) -> dict[str, _Setting]:
    """Field metadata declaring one key.

    ``varies`` must describe a default computed by a ``default_factory``:
    the docs table shows that text, so it is the same on every host.
    ``restart``: the key takes effect at the next start only; every other key
    takes effect in every process on HUP.
    """
    return {_META: _Setting(kind, help, varies, restart)}


@dataclass(frozen=True, slots=True)
class IngestConfig:
    """[ingest]: the Unix socket the MTA delivers to."""

    socket: Path = field(
        default_factory=_default_socket,
        metadata=_about(
            _Path(unix_socket=True),
            "Unix socket of the raw protocol: socat or nc -U hand over a bare message, no"
            " envelope (MTAs should use the submit or LMTP socket).",
            varies="`<runtime>/ingest.sock`",
            restart=True,
        ),
    )
    socket_mode: int = field(
        default=0o660,
        metadata=_about(
            _Mode(),
            "Permissions of the ingest socket; a client needs write permission to connect.",
            restart=True,
        ),
    )
    socket_group: str = field(
        default="",
        metadata=_about(
            _Account("group", _getgrnam),
            "Group owning the ingest socket, to let the MTA's delivery user in;"
            ' "" keeps the group of the ringtrap process.',
            restart=True,
        ),
    )
    max_message_bytes: int = field(
        default=50 * MiB,
        metadata=_about(
            _Size(lo=KiB),
            "Largest message accepted; a larger one is read to its end, discarded and refused.",
        ),
    )
    idle_timeout: float = field(
        default=30.0,
        metadata=_about(
            _Seconds(), "Seconds a client connection may stay silent before it is closed."
        ),
    )
    message_timeout: float = field(
        default=300.0,
        metadata=_about(
            _Seconds(),
            "Seconds a connection may take over one message however steadily it sends;"
            " past them it is answered TEMPFAIL (LMTP 421) and closed.",
        ),
    )
    max_connections: int = field(
        default=256,
        metadata=_about(
            _Integer(lo=1),
            "Most connections the raw socket serves at once; the submit and LMTP sockets"
            " have budgets of their own, so the raw socket cannot starve them.",
        ),
    )
    submit_max_connections: int = field(
        default=256,
        metadata=_about(_Integer(lo=1), "Most connections the submit socket serves at once."),
    )
    lmtp_max_connections: int = field(
        default=64,
        metadata=_about(_Integer(lo=1), "Most connections the LMTP socket serves at once."),
    )
    submit_socket: Path | None = field(
        default_factory=_beside_ingest,
        metadata=_about(
            _Path(optional=True, unix_socket=True),
            "Unix socket for `ringtrap submit` and `ringtrap-deliver`: the MTA's envelope"
            " (sender, recipients, client, queue id) comes with each message, and a message"
            ' cut short is refused; same mode and group as ingest.socket; "" = off.',
            varies="`submit.sock` beside `ingest.socket`",
            restart=True,
        ),
    )
    lmtp_socket: Path | None = field(
        default=None,
        metadata=_about(
            _Path(optional=True, unix_socket=True),
            "Unix socket speaking LMTP (RFC 2033) for Postfix's lmtp client or Exim's lmtp"
            ' transport; same mode and group as ingest.socket; "" = off.',
            restart=True,
        ),
    )

    def __post_init__(self) -> None:
        # the default submit socket follows ingest.socket, so one setting moves both
        if self.submit_socket is _BESIDE_INGEST:
            object.__setattr__(self, "submit_socket", self.socket.parent / "submit.sock")


@dataclass(frozen=True, slots=True)
class RingConfig:
    """[ring]: the shared-memory ring of fixed-size slots."""

    name: str = field(
        default_factory=_default_ring_name,
        metadata=_about(
            _ShmName(),
            "Name of the POSIX shared-memory segment, also the prefix of its semaphores;"
            " two traps on one host need different names.",
            varies='`"ringtrap"` as root, else `"ringtrap-<uid>"`',
            restart=True,
        ),
    )
    slots: int = field(
        default=1024,
        metadata=_about(
            _Integer(lo=1, hi=1_000_000),
            "Number of slots: how many messages the ring holds before the ingest spills"
            " to the overflow directory.",
            restart=True,
        ),
    )
    slot_bytes: int = field(
        default=64 * KiB,
        metadata=_about(
            _Size(lo=KiB, hi=64 * MiB),
            "Size of one slot; a larger message skips the ring and goes to the overflow directory.",
            restart=True,
        ),
    )
    mode: int = field(
        default=0o600,
        metadata=_about(
            _Mode(owner_rw=True), "Permissions of the shared-memory segment and its semaphores.",
            restart=True,
        ),
    )


@dataclass(frozen=True, slots=True)
class OverflowConfig:
    """[overflow]: the tmpfs spill directory."""

    dir: Path = field(
        default_factory=_default_overflow_dir,
        metadata=_about(
            _Path(),
            "Spill directory for messages that find the ring full or do not fit a slot;"
            " keep it on tmpfs.",
            varies="`/dev/shm/ringtrap.overflow` as root, else `/dev/shm/ringtrap-<uid>.overflow`",
            restart=True,
        ),
    )
    max_bytes: int = field(
        default=GiB,
        metadata=_about(
            _Size(lo=MiB),
            "Cap on the bytes held in the overflow directory; past it new messages are"
            " refused rather than eat the host's memory.",
        ),
    )
    purge_at: datetime.time = field(
        default=datetime.time(4, 0),
        metadata=_about(
            _TimeOfDay(),
            "Local time of day when the overflow backlog is dropped, so a flood never"
            " leaves more than a day of backlog.",
        ),
    )
    max_attempts: int = field(
        default=3,
        metadata=_about(
            _Integer(lo=1),
            "A message that kills its worker this many times is quarantined, not retried.",
        ),
    )
    quarantine_max_bytes: int = field(
        default=64 * MiB,
        metadata=_about(
            _Size(lo=MiB),
            "Cap on the quarantined messages kept in failed/ (of the overflow and of the"
            " stage, each); past it the oldest are dropped. Quarantine never counts toward"
            " overflow.max_bytes, so it cannot block spills.",
        ),
    )
    quarantine_retention_days: int = field(
        default=1,
        metadata=_about(
            _Integer(lo=0),
            "Days a quarantined message is kept: the daily purge drops those that arrived"
            " more than this many days minus one before it (1 = all of them, with the"
            " backlog); 0 = never by age, only the cap and 'ringtrap purge --quarantine'.",
        ),
    )


@dataclass(frozen=True, slots=True)
class WorkersConfig:
    """[workers]: the static pool of processing workers."""

    count: int = field(
        default_factory=_default_worker_count,
        metadata=_about(
            _Integer(lo=1, hi=1024),
            "Number of worker processes draining the ring and the overflow directory.",
            varies="number of CPUs (`os.cpu_count()`, 2 if unknown)",
        ),
    )
    max_rss_bytes: int = field(
        default=256 * MiB,
        metadata=_about(
            _Size(lo=32 * MiB, zero_unlimited=True),
            "Resident memory above which a worker is replaced after its current message;"
            " 0 = unlimited.",
        ),
    )
    heartbeat_timeout: float = field(
        default=360.0,
        metadata=_about(
            _Seconds(),
            "Seconds without a heartbeat after which the supervisor takes a worker for hung"
            " and kills it; must exceed spamd.timeout.",
        ),
    )
    scan_limit_bytes: int = field(
        default=500 * KiB,
        metadata=_about(
            _Size(lo=KiB),
            "Larger messages are recorded without being sent to spamd (spamc's own limit"
            " is 500 KB).",
        ),
    )


@dataclass(frozen=True, slots=True)
class SpamdConfig:
    """[spamd]: how workers score messages."""

    address: SpamdAddress = field(
        default_factory=_default_spamd_address,
        metadata=_about(
            _SpamdAddressKind(),
            '"managed": the supervisor runs its own spamd on a private socket;'
            ' "unix:/path" or "tcp:host:port": use a running spamd;'
            ' "off": record messages without a spamd score.',
            varies='`"managed"` if spamd is installed (on `PATH`, in `/usr/sbin` or'
            ' `/usr/local/sbin`), else `"off"`',
            restart=True,
        ),
    )
    timeout: float = field(
        default=330.0,
        metadata=_about(
            _Seconds(),
            "Seconds a worker waits for spamd's answer to one message; must exceed spamd's"
            " child timeout (--timeout-child, 300 s by default) so spamd gives up first,"
            " and stay below workers.heartbeat_timeout.",
        ),
    )
    connect_timeout: float = field(
        default=10.0,
        metadata=_about(_Seconds(), "Seconds a worker waits to connect to spamd."),
    )
    children: int = field(
        default=0,
        metadata=_about(
            _Integer(lo=0, hi=1024),
            "Children of a managed spamd (--max-children); 0 = one per worker (workers.count).",
            restart=True,
        ),
    )
    extra_args: tuple[str, ...] = field(
        default=(),
        metadata=_about(
            _TextList(), "Further command-line arguments for a managed spamd.", restart=True
        ),
    )
    command: str = field(
        default="spamd",
        metadata=_about(
            _Text(),
            "Program run as a managed spamd: a path, or a name looked up on PATH and then"
            " in /usr/sbin and /usr/local/sbin.",
            restart=True,
        ),
    )
    bayes_dir: Path = field(
        default_factory=_default_bayes_dir,
        metadata=_about(
            _Path(),
            "Bayes database of a managed spamd when the stage learns through it"
            " (stage.learn): created and handed to the user spamd runs as (nobody when"
            " started as root without service.user); every directory above it must be"
            " searchable by that user.",
            varies="`/var/lib/ringtrap/bayes` as root, else `$XDG_STATE_HOME/ringtrap/bayes`"
            " (`~/.local/state/ringtrap/bayes` when unset)",
            restart=True,
        ),
    )


@dataclass(frozen=True, slots=True)
class ResultsConfig:
    """[results]: where result records go."""

    dir: Path = field(
        default_factory=_default_results_dir,
        metadata=_about(
            _Path(),
            "Directory for result records (JSON lines).",
            varies="`/var/lib/ringtrap/results` as root, else"
            " `$XDG_STATE_HOME/ringtrap/results` (`~/.local/state/ringtrap/results`"
            " when unset)",
            restart=True,
        ),
    )
    retention_days: int = field(
        default=0,
        metadata=_about(
            _Integer(lo=0),
            "Days of result files kept (today included); older files are removed;"
            " 0 = keep all.",
        ),
    )


# the verdicts of the messages a worker processed, as the configuration names
# them (a quarantined message is never archived or handed on: it is not read)
VERDICT_NAMES = tuple(v.value for v in Verdict if v is not Verdict.QUARANTINED)


@dataclass(frozen=True, slots=True)
class RecordsConfig:
    """[records]: what goes into a result record."""

    trusted_networks: tuple[str, ...] = field(
        default=(),
        metadata=_about(
            _NetworkList(),
            "The trap's own relays: Received hops from these networks (and loopback) are"
            " skipped when the relay IP and HELO are read from the message because the MTA"
            " gave none.",
        ),
    )


@dataclass(frozen=True, slots=True)
class PrefilterConfig:
    """[prefilter]: cheap checks that record a message without scanning it."""

    checks: tuple[str, ...] = field(
        default=("virus", "bounce", "autoreply"),
        metadata=_about(
            _ChoiceList(("virus", "bounce", "autoreply")),
            "Prefilters in force: mail they match is recorded with that verdict and not sent"
            " to spamd. Oversize mail (workers.scan_limit_bytes) is never scanned; mail"
            " ringtrap cannot parse is scanned, with a parse_error in its record.",
        ),
    )


@dataclass(frozen=True, slots=True)
class DedupeConfig:
    """[dedupe]: recognising campaign repeats by body fingerprint."""

    enabled: bool = field(
        default=True,
        metadata=_about(
            _Bool(),
            "Look each message's body fingerprint up among those scanned within"
            " dedupe.window (a SQLite file in results.dir shared by all workers) and record"
            " the first message's id as duplicate_of.",
        ),
    )
    skip_scan: bool = field(
        default=False,
        metadata=_about(
            _Bool(),
            'Do not scan a repeat: record it as verdict "duplicate" with the first'
            " message's score and rules.",
        ),
    )
    window: float = field(
        default=86400.0,
        metadata=_about(
            _Seconds(), "Seconds after its first scan during which a fingerprint counts as seen."
        ),
    )


@dataclass(frozen=True, slots=True)
class ArchiveConfig:
    """[archive]: the Maildir corpus of the messages themselves."""

    dir: Path | None = field(
        default=None,
        metadata=_about(
            _Path(optional=True),
            "Directory of the Maildir archive, one Maildir per UTC day and verdict"
            ' (<dir>/YYYY-MM-DD/<verdict>/new/); "" = no archive.',
            restart=True,
        ),
    )
    verdicts: tuple[str, ...] = field(
        default=("spam", "ham", "not_scanned", "error", "virus", "oversize", "unparseable",
                 "duplicate"),
        metadata=_about(
            _ChoiceList(VERDICT_NAMES),
            "Verdicts whose messages are archived.",
        ),
    )
    retention_days: int = field(
        default=30,
        metadata=_about(
            _Integer(lo=0),
            "Days of archive kept (today included); older days are removed; 0 = keep all.",
        ),
    )


@dataclass(frozen=True, slots=True)
class StageConfig:
    """[stage]: the slower stage that learns from and reports scanned mail."""

    workers: int = field(
        default=0,
        metadata=_about(
            _Integer(lo=0, hi=64),
            "Processes of the slower stage (learning, reporting); 0 = no stage. Scan workers"
            " hand messages to it through its own spill directory and never wait for it.",
            restart=True,
        ),
    )
    learn: bool = field(
        default=True,
        metadata=_about(
            _Bool(),
            "Teach spamd's Bayes that every handed-on message is spam (TELL, Set: local;"
            " spamd needs --allow-tell and a writable Bayes database).",
        ),
    )
    report: bool = field(
        default=False,
        metadata=_about(
            _Bool(),
            "Report every handed-on message as spam to the remote networks spamd is"
            " configured for (TELL, Set: remote: Razor, Pyzor, DCC, SpamCop).",
        ),
    )
    verdicts: tuple[str, ...] = field(
        default=("spam", "ham"),
        metadata=_about(
            _ChoiceList(VERDICT_NAMES),
            "Verdicts of the messages handed on (all trap mail is spam: a ham verdict is one"
            " spamd missed).",
        ),
    )
    address: SpamdAddress | None = field(
        default=None,
        metadata=_about(
            _StageAddressKind(),
            'spamd the stage talks to: "" = the scanning spamd (spamd.address), or'
            ' "unix:/path" / "tcp:host:port" for a separate one, e.g. one allowed to report.',
        ),
    )
    timeout: float = field(
        default=120.0,
        metadata=_about(
            _Seconds(),
            "Seconds one learn or report call may take; remote networks can be slow. Must stay"
            " below workers.heartbeat_timeout.",
        ),
    )
    dir: Path | None = field(
        default=None,
        metadata=_about(
            _Path(optional=True),
            'Spill directory the scan workers hand messages on through; "" ='
            ' "<overflow.dir>-stage2". Keep it on tmpfs; it is purged with the overflow.',
            restart=True,
        ),
    )
    max_bytes: int = field(
        default=256 * MiB,
        metadata=_about(
            _Size(lo=MiB),
            "Cap on the stage's backlog in bytes; past it messages are not handed on"
            " (counted as stage_dropped), so a dead stage never fills the host's memory.",
        ),
    )


def managed_spamd_tells(c: "Config") -> bool:
    """True if the stage sends TELL to the managed spamd, which then needs --allow-tell."""
    return (c.spamd.address.kind == "managed" and c.stage.workers > 0
            and c.stage.address is None and (c.stage.learn or c.stage.report))


def managed_spamd_learns(c: "Config") -> bool:
    """True if the stage learns through the managed spamd: it needs spamd.bayes_dir."""
    return managed_spamd_tells(c) and c.stage.learn


def stage_dir(c: "Config") -> Path:
    """The stage's spill directory: ``stage.dir`` or ``<overflow.dir>-stage2``."""
    if c.stage.dir is not None:
        return c.stage.dir
    return c.overflow.dir.with_name(c.overflow.dir.name + "-stage2")


@dataclass(frozen=True, slots=True)
class SupervisorConfig:
    """[supervisor]: the process that owns all the others."""

    graceful_timeout: float = field(
        default=30.0,
        metadata=_about(
            _Seconds(),
            "Seconds a graceful stop (SIGTERM) waits for children before killing them.",
        ),
    )
    pidfile: Path | None = field(
        default=None,
        metadata=_about(
            _Path(optional=True), 'File holding the supervisor\'s pid; "" = none.', restart=True
        ),
    )
    log_file: Path | None = field(
        default=None,
        metadata=_about(
            _Path(optional=True),
            'Log file, reopened on SIGUSR1; "" = standard error (the journal under systemd).',
            restart=True,
        ),
    )
    log_level: str = field(
        default="info",
        metadata=_about(
            _Choice(("debug", "info", "warning", "error")), "Least severe level that is logged.",
            restart=True,
        ),
    )
    log_format: str = field(
        default="human",
        metadata=_about(
            _Choice(("human", "json")),
            'Log line format: "human" (one readable line) or "json" (one JSON object per'
            " line with the message id, verdict, score and event as keys);"
            " `ringtrap run --log-format` overrides it.",
            restart=True,
        ),
    )


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """[metrics]: the Prometheus endpoint."""

    listen: ListenAddress | None = field(
        default=None,
        metadata=_about(
            _Listen(),
            "Address of the Prometheus metrics endpoint the supervisor serves"
            ' (e.g. "127.0.0.1:9809"); "" = off.',
            restart=True,
        ),
    )


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """[service]: who the trap runs as."""

    user: str = field(
        default="",
        metadata=_about(
            _Account("user", _getpwnam),
            "Started as root, the supervisor prepares its directories, ring and socket,"
            " then drops to this user before starting any child;"
            ' "" = keep running as the starting user.',
            restart=True,
        ),
    )
    group: str = field(
        default="",
        metadata=_about(
            _Account("group", _getgrnam),
            'Group to run as with service.user; "" = that user\'s primary group.',
            restart=True,
        ),
    )


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration: one attribute per TOML section."""

    ingest: IngestConfig = field(default_factory=IngestConfig)
    ring: RingConfig = field(default_factory=RingConfig)
    overflow: OverflowConfig = field(default_factory=OverflowConfig)
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    spamd: SpamdConfig = field(default_factory=SpamdConfig)
    results: ResultsConfig = field(default_factory=ResultsConfig)
    records: RecordsConfig = field(default_factory=RecordsConfig)
    prefilter: PrefilterConfig = field(default_factory=PrefilterConfig)
    dedupe: DedupeConfig = field(default_factory=DedupeConfig)
    archive: ArchiveConfig = field(default_factory=ArchiveConfig)
    stage: StageConfig = field(default_factory=StageConfig)
    supervisor: SupervisorConfig = field(default_factory=SupervisorConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    service: ServiceConfig = field(default_factory=ServiceConfig)


def _sections() -> Iterator[tuple[str, type]]:
    for f in fields(Config):
        assert isinstance(f.type, type)
        yield f.name, f.type


def _keys(section_cls: type) -> Iterator[tuple[str, _Setting]]:
    for f in fields(section_cls):
        yield f.name, f.metadata[_META]


def restart_only() -> frozenset[str]:
    """The keys (``section.key``) declared to take effect at the next start only."""
    return frozenset(
        f"{section}.{key}"
        for section, cls in _sections()
        for key, setting in _keys(cls)
        if setting.restart
    )


def changed_keys(old: "Config", new: "Config") -> list[str]:
    """The keys (``section.key``) whose values differ between ``old`` and ``new``."""
    return [
        f"{section}.{key}"
        for section, cls in _sections()
        for key, _ in _keys(cls)
        if getattr(getattr(old, section), key) != getattr(getattr(new, section), key)
    ]


def keep_restart_only(new: "Config", old: "Config") -> "Config":
    """``new`` with every restart-only key set back to its value in ``old``.

    What a HUP applies: the running trap keeps what it set up at its start.
    """
    import dataclasses

    sections = {}
    for section, cls in _sections():
        fixed = {key: getattr(getattr(old, section), key)
                 for key, setting in _keys(cls) if setting.restart}
        if fixed:
            sections[section] = dataclasses.replace(getattr(new, section), **fixed)
    return dataclasses.replace(new, **sections)


def _spamd_child_timeout(spamd: SpamdConfig) -> float:
    """The --timeout-child a managed spamd runs with (its default unless overridden)."""
    args = spamd.extra_args if spamd.address.kind == "managed" else ()
    value = None
    for i, arg in enumerate(args):
        if arg == "--timeout-child" and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith("--timeout-child="):
            value = arg.partition("=")[2]
    try:
        return float(value) if value is not None else SPAMD_CHILD_TIMEOUT
    except ValueError:
        return SPAMD_CHILD_TIMEOUT  # spamd itself will reject the argument


def _check_heartbeat(c: Config) -> str | None:
    if c.spamd.address.kind != "off" and c.spamd.timeout >= c.workers.heartbeat_timeout:
        return (
            f"must be less than workers.heartbeat_timeout ({_num(c.workers.heartbeat_timeout)} s),"
            f" or a worker waiting on spamd is taken for hung; got {_num(c.spamd.timeout)}"
        )
    return None


def _check_child_timeout(c: Config) -> str | None:
    child = _spamd_child_timeout(c.spamd)
    if c.spamd.address.kind != "off" and c.spamd.timeout <= child:
        return (
            f"must be greater than spamd's child timeout ({_num(child)} s, --timeout-child)"
            f" so spamd answers or gives up first; got {_num(c.spamd.timeout)}"
        )
    return None


def _check_connect_timeout(c: Config) -> str | None:
    if c.spamd.address.kind != "off" and c.spamd.connect_timeout > c.spamd.timeout:
        return (
            f"must not exceed spamd.timeout ({_num(c.spamd.timeout)} s),"
            f" got {_num(c.spamd.connect_timeout)}"
        )
    return None


def _check_spamd_installed(c: Config) -> str | None:
    if c.spamd.address.kind == "managed" and find_spamd(c.spamd.command) is None:
        return (
            f'"managed" needs spamd, but spamd.command {_toml_str(c.spamd.command)} is not'
            f" found (PATH, {', '.join(SBIN_DIRS)}); install spamassassin, set spamd.command"
            ' or set spamd.address = "off"'
        )
    return None


def _check_ring_size(c: Config) -> str | None:
    total = c.ring.slots * c.ring.slot_bytes
    if total > MAX_RING_BYTES:
        return (
            f"ring.slots * ring.slot_bytes = {c.ring.slots} * {format_size(c.ring.slot_bytes)}"
            f" = {total} bytes exceeds the {format_size(MAX_RING_BYTES)} limit on the"
            " shared-memory segment"
        )
    return None


def _check_overflow_cap(c: Config) -> str | None:
    if c.overflow.max_bytes < c.ingest.max_message_bytes:
        return (
            f"must be at least ingest.max_message_bytes ({c.ingest.max_message_bytes}),"
            f" or the largest messages could never be spilled; got {c.overflow.max_bytes}"
        )
    return None


def _check_results_outside_overflow(c: Config) -> str | None:
    results = Path(os.path.normpath(c.results.dir))
    overflow = Path(os.path.normpath(c.overflow.dir))
    if results.is_relative_to(overflow) or overflow.is_relative_to(results):
        return (
            f"{_toml_str(str(c.results.dir))} must not be inside overflow.dir or contain it:"
            " the daily purge would delete results"
        )
    return None


def _check_service_group(c: Config) -> str | None:
    if c.service.group and not c.service.user:
        return (
            f"{_toml_str(c.service.group)} needs service.user: the group is only taken"
            " when dropping to a user"
        )
    return None


def _check_archive_outside_overflow(c: Config) -> str | None:
    if c.archive.dir is None:
        return None
    archive = Path(os.path.normpath(c.archive.dir))
    overflow = Path(os.path.normpath(c.overflow.dir))
    if archive.is_relative_to(overflow) or overflow.is_relative_to(archive):
        return (
            f"{_toml_str(str(c.archive.dir))} must not be inside overflow.dir or contain it:"
            " the daily purge would delete the archive"
        )
    return None

def _check_stage_timeout(c: Config) -> str | None:
    if c.stage.workers and c.stage.timeout >= c.workers.heartbeat_timeout:
        return (
            f"must be less than workers.heartbeat_timeout ({_num(c.workers.heartbeat_timeout)}"
            f" s), or a stage worker waiting on spamd is taken for hung; got"
            f" {_num(c.stage.timeout)}"
        )
    return None


def _check_stage_spamd(c: Config) -> str | None:
    if c.stage.workers and c.stage.address is None and c.spamd.address.kind == "off":
        return 'needs a spamd: set stage.address, or spamd.address other than "off"'
    return None


def _check_distinct_sockets(c: Config) -> str | None:
    ing = c.ingest
    taken = {os.path.normpath(ing.socket): "ingest.socket"}
    for key, path in (("ingest.submit_socket", ing.submit_socket),
                      ("ingest.lmtp_socket", ing.lmtp_socket)):
        if path is None:
            continue
        other = taken.setdefault(os.path.normpath(path), key)
        if other != key:
            return f"{key} {_toml_str(str(path))} is also {other}; every socket needs its own path"
    return None


def _in_ring_path(key: str, d: Path, ring: str) -> str | None:
    """Why directory ``d`` cannot be, or be under, one of the ring's /dev/shm names."""
    shm = Path("/dev/shm")
    d = Path(os.path.normpath(d))
    for taken in (shm / ring, shm / f"sem.{ring}.lock", shm / f"sem.{ring}.ready"):
        if d.is_relative_to(taken):
            where = "is" if d == taken else "is inside"
            return (
                f"{_toml_str(str(d))} {where} {taken}, where the ring {ring!r} keeps its"
                f" shared memory: {key} cannot be there; choose another directory or ring.name"
            )
    return None


def _check_overflow_not_ring(c: Config) -> str | None:
    return _in_ring_path("overflow.dir", c.overflow.dir, c.ring.name)


def _check_stage_not_ring(c: Config) -> str | None:
    if not c.stage.workers:
        return None
    return _in_ring_path("the stage's directory", stage_dir(c), c.ring.name)


@dataclass(frozen=True, slots=True)
class _Rule:
    """A check across keys; skipped when one of ``keys`` is itself invalid."""

    keys: tuple[str, ...]  # the first one is named in the message
    check: Callable[[Config], str | None]


_RULES: tuple[_Rule, ...] = (
    _Rule(("spamd.timeout", "workers.heartbeat_timeout", "spamd.address"), _check_heartbeat),
    _Rule(("spamd.timeout", "spamd.extra_args", "spamd.address"), _check_child_timeout),
    _Rule(("spamd.connect_timeout", "spamd.timeout", "spamd.address"), _check_connect_timeout),
    _Rule(("spamd.address", "spamd.command"), _check_spamd_installed),
    _Rule(("ring.slots", "ring.slot_bytes"), _check_ring_size),
    _Rule(("overflow.max_bytes", "ingest.max_message_bytes"), _check_overflow_cap),
    _Rule(("results.dir", "overflow.dir"), _check_results_outside_overflow),
    _Rule(("overflow.dir", "ring.name"), _check_overflow_not_ring),
    _Rule(("stage.dir", "stage.workers", "overflow.dir", "ring.name"), _check_stage_not_ring),
    _Rule(("ingest.socket", "ingest.submit_socket", "ingest.lmtp_socket"), _check_distinct_sockets),
    _Rule(("archive.dir", "overflow.dir"), _check_archive_outside_overflow),
    _Rule(("stage.timeout", "stage.workers", "workers.heartbeat_timeout"), _check_stage_timeout),
    _Rule(("stage.workers", "stage.address", "spamd.address"), _check_stage_spamd),
    _Rule(("service.group", "service.user"), _check_service_group),
)


def _close(word: str, candidates: list[str]) -> str | None:
    import difflib

    matches = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return matches[0] if matches else None


def _unknown_section(name: str, raw: object) -> str:
    names = [s for s, _ in _sections()]
    if not isinstance(raw, dict):
        # A key written above the first [section] header.
        owners = [s for s, cls in _sections() if any(k == name for k, _ in _keys(cls))]
        if owners:
            where = owners[0]
            return f"unknown top-level key {name}; did you mean {where}.{name} (under [{where}])?"
        return f"unknown top-level key {name}; settings belong in sections such as [{names[0]}]"
    guess = _close(name, names)
    if guess:
        return f"unknown section [{name}]; did you mean [{guess}]?"
    return f"unknown section [{name}]; the sections are " + ", ".join(f"[{s}]" for s in names)


def _unknown_key(section: str, key: str, section_cls: type) -> str:
    keys = [k for k, _ in _keys(section_cls)]
    guess = _close(key, keys)
    if guess:
        return f"unknown key {section}.{key}; did you mean {section}.{guess}?"
    for other, cls in _sections():
        if any(k == key for k, _ in _keys(cls)):
            return f"unknown key {section}.{key}; did you mean {other}.{key}?"
    return f"unknown key {section}.{key}; [{section}] has " + ", ".join(keys)


def from_dict(
    data: Mapping[str, object],
    source: str = "<dict>",
    base_dir: str | os.PathLike[str] | None = None,
) -> Config:
    """Validate raw TOML-shaped ``data`` ({section: {key: value}}) into a Config.

    Missing keys take their defaults.  Every problem is collected before
    ConfigError is raised, each prefixed with ``source``.  Relative paths are
    resolved against ``base_dir`` (the current directory when None).
    """
    base = Path(base_dir if base_dir is not None else os.getcwd()).expanduser().absolute()
    problems: list[str] = []
    failed: set[str] = set()
    known = dict(_sections())
    for name, raw in data.items():
        if name not in known:
            problems.append(f"{source}: {_unknown_section(name, raw)}")
    built: dict[str, Any] = {}
    for section, cls in known.items():
        table = data.get(section, {})
        if not isinstance(table, dict):
            problems.append(f"{source}: {section}: must be a table [{section}], got {_show(table)}")
            failed.update(f"{section}.{k}" for k, _ in _keys(cls))
            table = {}
        declared = dict(_keys(cls))
        values: dict[str, Any] = {}
        for key, raw in table.items():
            if key not in declared:
                problems.append(f"{source}: {_unknown_key(section, key, cls)}")
                continue
            try:
                values[key] = declared[key].kind.parse(raw, base)
            except _Invalid as exc:
                problems.append(f"{source}: {section}.{key}: {exc}")
                failed.add(f"{section}.{key}")
        built[section] = cls(**values)
    config = Config(**built)
    for rule in _RULES:
        if failed.isdisjoint(rule.keys):
            problem = rule.check(config)
            if problem:
                problems.append(f"{source}: {rule.keys[0]}: {problem}")
    if problems:
        raise ConfigError(problems)
    return config


def load_text(
    text: str, source: str = "<string>", base_dir: str | os.PathLike[str] | None = None
) -> Config:
    """Parse and validate TOML ``text``; ``source`` names it in error messages.

    Relative paths are resolved against ``base_dir`` (the current directory
    when None).  Raises ConfigError listing every problem found.
    """
    import tomllib

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # The message carries "(at line N, column M)".
        raise ConfigError([f"{source}: TOML syntax error: {exc}"]) from None
    return from_dict(data, source, base_dir)


def load(path: str | os.PathLike[str]) -> Config:
    """Read and validate the TOML file at ``path``.

    Relative paths inside it are resolved against the file's own directory.
    Raises ConfigError naming the file, the key and every problem found.
    """
    source = os.fspath(path)
    file = Path(source).expanduser()
    try:
        text = file.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError([f"{source}: cannot read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{source}: not UTF-8 text (bad byte at offset {exc.start})"]) from None
    return load_text(text, source, file.absolute().parent)


def defaults() -> Config:
    """The built-in configuration for the calling user, computed now."""
    return Config()


def override(config: Config, changes: Mapping[str, object], source: str = "<override>") -> Config:
    """``config`` with ``{"section.key": raw value}`` changes, validated like a file.

    Raw values take the same forms as in TOML ("512M", "0660", ...); relative
    paths are resolved against the current directory.
    """
    data: dict[str, Any] = to_dict(config)
    problems = []
    for dotted, raw in changes.items():
        section, dot, key = dotted.partition(".")
        if not dot or not key:
            problems.append(f"{source}: {dotted}: expected section.key")
            continue
        table = data.setdefault(section, {})
        if isinstance(table, dict):
            table[key] = raw
    if problems:
        raise ConfigError(problems)
    return from_dict(data, source)


def to_dict(config: Config) -> dict[str, dict[str, object]]:
    """``config`` as {section: {key: value}} of JSON- and TOML-ready values.

    ``from_dict(to_dict(c)) == c``: modes are "0660" strings, times "HH:MM",
    paths absolute strings ("" for none).
    """
    out: dict[str, dict[str, object]] = {}
    for section, cls in _sections():
        values = getattr(config, section)
        out[section] = {key: s.kind.dump(getattr(values, key)) for key, s in _keys(cls)}
    return out


_SAMPLE_HEADER = """\
# ringtrap configuration (TOML).
#
# Every setting is listed with its help and its built-in default.  A line
# starting with "# key =" shows the default; remove the "# " to change it.
# Relative paths are relative to the directory of this file; "~" is the
# home directory.  Byte sizes are an integer or a string with a binary unit:
# "64K", "512M", "2GiB" (K = KB = KiB = 1024).  Modes are octal: 0o660.
"""


def sample_config(config: Config | None = None, *, commented: bool = True) -> str:
    """A complete, commented TOML file listing every key with its help.

    Values come from ``config`` (the defaults for the calling user when None);
    with ``commented`` every assignment is commented out.  Either way the
    text loads back (``load_text``) to the defaults, or to ``config`` when
    written uncommented.
    """
    import textwrap

    cfg = config if config is not None else defaults()
    lines = [_SAMPLE_HEADER.rstrip("\n")]
    for section, cls in _sections():
        values = getattr(cfg, section)
        lines += ["", "", f"[{section}]"]
        for key, s in _keys(cls):
            lines.append("")
            lines += textwrap.wrap(s.help, 76, initial_indent="# ", subsequent_indent="# ")
            lines.append(f"# Type: {s.kind.describe()}.")
            if s.varies:
                varies = s.varies.replace("`", "")
                lines += textwrap.wrap(
                    f"Default: {varies}", 76, initial_indent="# ", subsequent_indent="#   "
                )
            assignment = f"{key} = {s.kind.toml(getattr(values, key))}"
            lines.append(f"# {assignment}" if commented else assignment)
    return "\n".join(lines) + "\n"


class Declared(NamedTuple):
    """One setting as the docs show it: the README's table and the man page."""

    key: str  # "section.key"
    kind: str
    default: str  # Markdown: a TOML literal in backquotes, or how the default is chosen
    help: str


def declarations() -> Iterator[Declared]:
    """Every setting in declaration order, with host-independent texts."""
    for section, cls in _sections():
        for f in fields(cls):
            s: _Setting = f.metadata[_META]
            # A computed default has no value to show, only its description.
            default = s.varies if f.default is MISSING else f"`{s.kind.toml(f.default)}`"
            if not default:
                raise TypeError(f"{section}.{f.name}: a computed default needs `varies`")
            yield Declared(f"{section}.{f.name}", s.kind.describe(), default, s.help)


# what holds for every setting, below the table and in the man page
DOCS_NOTES = (
    "`<runtime>` is `/run/ringtrap` as root, else `$XDG_RUNTIME_DIR/ringtrap` when"
    " `XDG_RUNTIME_DIR` is a writable directory, else `/tmp/ringtrap-<uid>`.",
    "Relative paths are relative to the directory of the configuration file;"
    " `~` is the home directory.",
    'Byte sizes are an integer or a string with a binary unit: `"64K"`, `"512M"`,'
    ' `"2GiB"` (K = KB = KiB = 1024). Modes are octal: `0o660` or `"0660"`.',
)


def docs_table() -> str:
    """The configuration reference for the docs: a Markdown section and table.

    Host-dependent defaults are described, not computed, so the text is the
    same wherever it is generated.
    """
    rows = [
        "## Configuration",
        "",
        "ringtrap reads one TOML file; every key is optional. `ringtrap/config/__init__.py`"
        " declares each setting once and generates this table and the sample file.",
        "",
        "| section.key | type | default | meaning |",
        "|---|---|---|---|",
    ]
    for d in declarations():
        cells = [f"`{d.key}`", d.kind, d.default, d.help]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    rows += ["", *DOCS_NOTES, ""]
    return "\n".join(rows)
