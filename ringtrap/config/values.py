"""Value kinds: how one key's raw TOML value is parsed, checked and written back.

A kind turns what ``tomllib`` read into the stored value or raises
``InvalidValue`` saying what is wrong, describes itself for the docs table
and writes a value back as TOML.  The value types a kind produces
(``ListenAddress``, ``SpamdAddress``) and the byte-size units live here too.

Nothing here writes anything.  The MTA-facing client imports the package on
every delivery, so the modules a kind needs only for some values (grp, pwd,
ipaddress) are imported inside the functions that use them.
"""

import datetime
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeGuard

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


# sun_path holds 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107


class InvalidValue(Exception):
    """A raw value failed its kind's check; the text says what is wrong."""


def toml_str(text: str) -> str:
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


def toml_literal(raw: object) -> str:
    """A raw value (str, int, float, bool, list of those) as TOML."""
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, str):
        return toml_str(raw)
    if isinstance(raw, int | float):
        return repr(raw)
    if isinstance(raw, list | tuple):
        return "[" + ", ".join(toml_literal(item) for item in raw) + "]"
    raise TypeError(f"cannot write {type(raw).__name__} as TOML")


def show(raw: object) -> str:
    """A value read from TOML, quoted for an error message."""
    if isinstance(raw, str):
        shown = toml_str(raw)
        return shown if len(shown) <= 80 else shown[:76] + '..."'
    if isinstance(raw, dict):
        return "a table"
    if isinstance(raw, list):
        return (
            "[" + ", ".join(show(item) for item in raw[:8]) + (", ...]" if len(raw) > 8 else "]")
        )
    if isinstance(raw, bool | int | float):
        return toml_literal(raw)
    if isinstance(raw, datetime.datetime | datetime.date | datetime.time):
        return raw.isoformat()
    return repr(raw)


def is_int(raw: object) -> TypeGuard[int]:
    """True if ``raw`` is a TOML integer (not a boolean)."""
    # TOML booleans arrive as Python bool, a subclass of int.
    return isinstance(raw, int) and not isinstance(raw, bool)


def is_number(raw: object) -> TypeGuard[int | float]:
    """True if ``raw`` is a TOML integer or float."""
    return is_int(raw) or isinstance(raw, float)


_UNITS = {"": 1, "k": KiB, "m": MiB, "g": GiB, "t": 1024 * GiB}


def parse_size(value: object) -> int:
    """Bytes in ``value``: an integer, or a string such as "512M", "2G", "1GiB", "64 KiB".

    Units are binary whether written K, KB or KiB (K = 1024); a fraction such
    as "1.5G" is rounded down to whole bytes.  Raises ValueError.
    """
    if is_int(value):
        if value < 0:
            raise ValueError(f"a byte size cannot be negative, got {value}")
        return value
    if not isinstance(value, str):
        raise ValueError(f"not a byte size: {show(value)}")
    text = value.strip().lower()
    binary = text.endswith("ib")
    if binary:
        text = text[:-2]
    elif text.endswith("b"):
        text = text[:-1]
    unit = text[-1:] if text[-1:].isalpha() else ""
    if unit not in _UNITS or (binary and not unit):
        raise ValueError(f"not a byte size: {show(value)}")
    number = text[: len(text) - len(unit)].strip()
    whole, dot, frac = number.partition(".")
    digits = whole + frac
    if not (whole and digits.isascii() and digits.isdecimal()) or (dot and not frac):
        raise ValueError(f"not a byte size: {show(value)}")
    return int(digits) * _UNITS[unit] // 10 ** len(frac)


def format_size(n: int) -> str:
    """``n`` bytes in the largest binary unit that divides it exactly ("50MiB")."""
    for unit, factor in (("TiB", 1024 * GiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n and n % factor == 0:
            return f"{n // factor}{unit}"
    return str(n)


class Kind:
    """Parser, validator and renderer for one kind of setting.

    Kinds are plain slotted classes, set once in __init__ and never changed:
    the dataclass decorator would cost the client's import a millisecond each.
    """

    __slots__ = ()

    def describe(self) -> str:
        """The type column of the docs table."""
        raise NotImplementedError

    def parse(self, raw: object, base_dir: Path) -> Any:
        """The stored value for ``raw`` as read from TOML; raises InvalidValue."""
        raise NotImplementedError

    def dump(self, value: Any) -> object:
        """``value`` back as a raw TOML value that is also JSON-serialisable."""
        return value

    def toml(self, value: Any) -> str:
        """``value`` as it is written in a TOML file."""
        return toml_literal(self.dump(value))


class Integer(Kind):
    __slots__ = ("hi", "lo")

    def __init__(self, lo: int, hi: int | None = None) -> None:
        self.lo = lo
        self.hi = hi

    def describe(self) -> str:
        return "integer"

    def parse(self, raw: object, base_dir: Path) -> int:
        if is_int(raw) and self.lo <= raw and (self.hi is None or raw <= self.hi):
            return raw
        limits = f">= {self.lo}" + ("" if self.hi is None else f" and <= {self.hi}")
        raise InvalidValue(f"must be an integer {limits}, got {show(raw)}")


class Seconds(Kind):
    __slots__ = ()

    def describe(self) -> str:
        return "seconds"

    def parse(self, raw: object, base_dir: Path) -> float:
        # TOML admits inf and nan; neither is a usable timeout.
        if is_number(raw) and math.isfinite(raw) and raw > 0:
            return float(raw)
        raise InvalidValue(f"must be a number of seconds > 0, got {show(raw)}")


class Size(Kind):
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
            raise InvalidValue(
                f'must be {limits} (an integer or a string such as "512M" or "2GiB"),'
                f" got {show(raw)}"
            ) from None
        if (n == 0 and self.zero_unlimited) or (self.lo <= n and (self.hi is None or n <= self.hi)):
            return n
        in_bytes = f" ({n} bytes)" if isinstance(raw, str) else ""
        raise InvalidValue(f"must be {limits}, got {show(raw)}{in_bytes}")

    def toml(self, value: Any) -> str:
        text = format_size(value)
        return text if text.isdecimal() else toml_str(text)


class Mode(Kind):
    __slots__ = ("owner_rw",)

    def __init__(self, owner_rw: bool = False) -> None:
        self.owner_rw = owner_rw

    def describe(self) -> str:
        return "octal mode"

    def parse(self, raw: object, base_dir: Path) -> int:
        mode: int | None = None
        if is_int(raw):
            mode = raw
        elif isinstance(raw, str):
            digits = raw.strip().lower().removeprefix("0o")
            if digits and len(digits) <= 4 and all(c in "01234567" for c in digits):
                mode = int(digits, 8)
        if mode is None or not 0 <= mode <= 0o777:
            hint = ""
            # 660 written without 0o is decimal 660 = 0o1224, almost surely a mistake.
            if is_int(raw) and all(c in "01234567" for c in str(raw)):
                hint = f" (a decimal number; write 0o{raw})"
            raise InvalidValue(
                f'must be a file mode from 0o000 to 0o777 such as 0o660 or "0660",'
                f" got {show(raw)}{hint}"
            )
        if self.owner_rw and (mode & 0o600) != 0o600:
            raise InvalidValue(
                f"must give the owner read and write permission (0o600), got 0o{mode:03o}"
            )
        return mode

    def dump(self, value: Any) -> object:
        return f"0{value:03o}"

    def toml(self, value: Any) -> str:
        return f"0o{value:03o}"


class FilePath(Kind):
    __slots__ = ("optional", "unix_socket")

    def __init__(self, optional: bool = False, unix_socket: bool = False) -> None:
        self.optional = optional  # "" stands for "none" and is stored as None
        self.unix_socket = unix_socket

    def describe(self) -> str:
        return 'path or ""' if self.optional else "path"

    def parse(self, raw: object, base_dir: Path) -> Path | None:
        if not isinstance(raw, str):
            raise InvalidValue(f"must be a path string, got {show(raw)}")
        if raw == "":
            if self.optional:
                return None
            raise InvalidValue("must not be empty")
        return _resolve_path(raw, base_dir, self.unix_socket)

    def dump(self, value: Any) -> object:
        return "" if value is None else str(value)


def _resolve_path(raw: str, base_dir: Path, unix_socket: bool) -> Path:
    if "\0" in raw:
        raise InvalidValue(f"must not contain a NUL character, got {show(raw)}")
    expanded = os.path.expanduser(raw)
    if expanded.startswith("~"):
        raise InvalidValue(f"cannot expand ~ in {show(raw)}")
    path = base_dir / expanded  # an absolute `expanded` replaces base_dir
    if unix_socket and len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise InvalidValue(
            f"a Unix socket path must be at most {MAX_SOCKET_PATH} bytes,"
            f" got {show(str(path))} ({len(os.fsencode(path))} bytes)"
        )
    return path


class Text(Kind):
    __slots__ = ()

    def describe(self) -> str:
        return "string"

    def parse(self, raw: object, base_dir: Path) -> str:
        if isinstance(raw, str) and raw and "\0" not in raw:
            return raw
        raise InvalidValue(f"must be a non-empty string, got {show(raw)}")


class IPv4Text(Kind):
    """An IPv4 address kept as its text (a DNS A record's value)."""

    __slots__ = ()

    def describe(self) -> str:
        return "IPv4 address"

    def parse(self, raw: object, base_dir: Path) -> str:
        import ipaddress

        if isinstance(raw, str):
            try:
                return str(ipaddress.IPv4Address(raw.strip()))
            except ValueError:
                pass
        raise InvalidValue(f"must be an IPv4 address such as \"127.0.0.2\", got {show(raw)}")


class ShmName(Kind):
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
        raise InvalidValue(
            f"must be 1 to {self.max_len} characters from A-Z a-z 0-9 . _ -"
            f' (not "." or ".."), got {show(raw)}'
        )


class Account(Kind):
    """A user or group name that must exist on this machine; "" for none."""

    __slots__ = ("_lookup", "_what")

    def __init__(self, what: str, lookup: Callable[[str], object]) -> None:
        self._what = what
        self._lookup = lookup

    def describe(self) -> str:
        return f'{self._what} name or ""'

    def parse(self, raw: object, base_dir: Path) -> str:
        if not isinstance(raw, str) or "\0" in raw:
            raise InvalidValue(f"must be a {self._what} name, got {show(raw)}")
        if raw:
            try:
                self._lookup(raw)
            except KeyError:
                raise InvalidValue(f"no such {self._what} {show(raw)}") from None
        return raw


# imported on first use: the submit client reads configurations too
def lookup_group(name: str) -> object:
    """The group entry of ``name``; raises KeyError if there is none."""
    import grp

    return grp.getgrnam(name)


def lookup_user(name: str) -> object:
    """The passwd entry of ``name``; raises KeyError if there is none."""
    import pwd

    return pwd.getpwnam(name)


class ListenAddress(NamedTuple):
    """A TCP ``host:port`` to listen on (IPv6 hosts written in brackets)."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


class Listen(Kind):
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
        raise InvalidValue(
            'must be "host:port" with a port from 1 to 65535 (IPv6 as "[::1]:9809"),'
            f' or "" for off, got {show(raw)}'
        )

    def dump(self, value: Any) -> object:
        return "" if value is None else str(value)


class Choice(Kind):
    __slots__ = ("options",)

    def __init__(self, options: tuple[str, ...]) -> None:
        self.options = options

    def describe(self) -> str:
        return ", ".join(toml_str(o) for o in self.options)

    def parse(self, raw: object, base_dir: Path) -> str:
        if isinstance(raw, str) and raw.lower() in self.options:
            return raw.lower()
        raise InvalidValue(f"must be one of {self.describe()}, got {show(raw)}")


class TextList(Kind):
    __slots__ = ()

    def describe(self) -> str:
        return "list of strings"

    def parse(self, raw: object, base_dir: Path) -> tuple[str, ...]:
        if isinstance(raw, list) and all(isinstance(x, str) and "\0" not in x for x in raw):
            return tuple(raw)
        raise InvalidValue(f"must be a list of strings, got {show(raw)}")

    def dump(self, value: Any) -> object:
        return list(value)


class Bool(Kind):
    __slots__ = ()

    def describe(self) -> str:
        return "boolean"

    def parse(self, raw: object, base_dir: Path) -> bool:
        if isinstance(raw, bool):
            return raw
        raise InvalidValue(f"must be true or false, got {show(raw)}")


class ChoiceList(Kind):
    __slots__ = ("options",)

    def __init__(self, options: tuple[str, ...]) -> None:
        self.options = options

    def describe(self) -> str:
        return "list of " + ", ".join(toml_str(o) for o in self.options)

    def parse(self, raw: object, base_dir: Path) -> tuple[str, ...]:
        if isinstance(raw, list) and all(isinstance(x, str) for x in raw):
            bad = [x for x in raw if x.lower() not in self.options]
            if not bad:
                return tuple(dict.fromkeys(x.lower() for x in raw))
            raise InvalidValue(
                f"{show(bad[0])} is not one of {', '.join(toml_str(o) for o in self.options)}"
            )
        raise InvalidValue(f"must be a list of strings, got {show(raw)}")

    def dump(self, value: Any) -> object:
        return list(value)


class NetworkList(Kind):
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
                    raise InvalidValue(
                        f"{show(text)} is not an IP network such as"
                        ' "192.0.2.0/24" or "2001:db8::/32"'
                    ) from None
            return tuple(out)
        raise InvalidValue(f"must be a list of IP networks, got {show(raw)}")

    def dump(self, value: Any) -> object:
        return list(value)


class TimeOfDay(Kind):
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
        raise InvalidValue(f'must be a local time "HH:MM" from "00:00" to "23:59", got {show(raw)}')

    def dump(self, value: Any) -> object:
        return value.strftime("%H:%M")


@dataclass(frozen=True, slots=True)
class SpamdAddress:
    """Where workers reach spamd.

    ``managed``: the supervisor runs spamd on a private socket of its own;
    ``unix``: an existing spamd at ``path``; ``tcp``: an existing spamd at
    ``host``:``port``; ``tls``: the same over TLS; ``pool``: several of
    those (``members``), scanned in turn; ``off``: messages are recorded
    without a spamd score.
    """

    kind: Literal["managed", "unix", "tcp", "tls", "pool", "off"]
    path: Path | None = None
    host: str = ""
    port: int = 0
    members: tuple["SpamdAddress", ...] = ()

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        if self.kind in ("tcp", "tls"):
            host = f"[{self.host}]" if ":" in self.host else self.host
            return f"{self.kind}:{host}:{self.port}"
        if self.kind == "pool":
            return ", ".join(str(m) for m in self.members)
        return self.kind

    def hosts(self) -> tuple[str, ...]:
        """The address of each spamd to scan on; none for "managed" and "off"."""
        if self.kind == "pool":
            return tuple(str(m) for m in self.members)
        if self.kind in ("managed", "off"):
            return ()
        return (str(self),)


# hosts a pool may have: the cells a worker has in the ring's host table
MAX_POOL_HOSTS = 16


class SpamdAddressKind(Kind):
    __slots__ = ()

    def describe(self) -> str:
        return "spamd address, or a list of them"

    def parse(self, raw: object, base_dir: Path) -> SpamdAddress:
        if isinstance(raw, list):
            return self._parse_list(raw, base_dir)
        return self._parse_one(raw, base_dir)

    def _parse_list(self, raw: list[object], base_dir: Path) -> SpamdAddress:
        if not raw:
            raise InvalidValue("a list of spamd addresses cannot be empty")
        if len(raw) > MAX_POOL_HOSTS:
            raise InvalidValue(f"at most {MAX_POOL_HOSTS} spamd addresses, got {len(raw)}")
        members = []
        for n, item in enumerate(raw, 1):
            if item in ("managed", "off"):
                raise InvalidValue(f'element {n} {show(item)}: "managed" and "off" stand alone,'
                                   " not in a list")
            try:
                members.append(self._parse_one(item, base_dir))
            except InvalidValue as exc:
                raise InvalidValue(f"element {n} {show(item)}: {exc}") from None
        names = [str(m) for m in members]
        for n, name in enumerate(names, 1):
            if names.index(name) != n - 1:
                raise InvalidValue(f"element {n} {show(raw[n - 1])}: the same spamd twice")
        if len(members) == 1:
            return members[0]
        return SpamdAddress("pool", members=tuple(members))

    def _parse_one(self, raw: object, base_dir: Path) -> SpamdAddress:
        expected = ('"managed", "off", "unix:/path/to/socket", "tcp:host:port", "tls:host:port"'
                    " or a list of addresses")
        if not isinstance(raw, str):
            raise InvalidValue(f"must be {expected}, got {show(raw)}")
        scheme, colon, rest = raw.partition(":")
        if raw == "managed":
            return SpamdAddress("managed")
        if raw == "off":
            return SpamdAddress("off")
        if colon and scheme == "unix" and rest:
            return SpamdAddress("unix", path=_resolve_path(rest, base_dir, unix_socket=True))
        if colon and scheme in ("tcp", "tls"):
            host, colon, port = rest.rpartition(":")
            if host.startswith("[") and host.endswith("]"):
                host = host[1:-1]
            elif ":" in host:
                raise InvalidValue(
                    f"an IPv6 host must be in brackets ({scheme}:[::1]:783), got {show(raw)}"
                )
            if not (host and port.isascii() and port.isdecimal() and 1 <= int(port) <= 65535):
                raise InvalidValue(
                    f"must be {scheme}:host:port with a port from 1 to 65535, got {show(raw)}"
                )
            return SpamdAddress("tls" if scheme == "tls" else "tcp", host=host, port=int(port))
        raise InvalidValue(f"must be {expected}, got {show(raw)}")

    def dump(self, value: Any) -> object:
        if value.kind == "pool":
            return list(value.hosts())
        return str(value)


class RspamdAddressKind(SpamdAddressKind):
    """rspamd: "managed", "unix:/path", "tcp:host:port", or a list of the last two."""

    __slots__ = ()

    def describe(self) -> str:
        return "rspamd address, or a list of them"

    def _parse_list(self, raw: list[object], base_dir: Path) -> SpamdAddress:
        try:
            return super()._parse_list(raw, base_dir)
        except InvalidValue as exc:
            raise InvalidValue(str(exc).replace("spamd", "rspamd")) from None

    def _parse_one(self, raw: object, base_dir: Path) -> SpamdAddress:
        expected = '"managed", "unix:/path/to/socket", "tcp:host:port" or a list of addresses'
        if raw == "off":
            raise InvalidValue(
                f'must be {expected} (scanner.kind = "spamd" turns rspamd off), got "off"')
        if not isinstance(raw, str) or raw.startswith("tls:"):
            raise InvalidValue(f"must be {expected}, got {show(raw)}")
        try:
            return super()._parse_one(raw, base_dir)
        except InvalidValue as exc:
            if str(exc).startswith("must be \"managed\""):
                raise InvalidValue(f"must be {expected}, got {show(raw)}") from None
            raise


class StageAddressKind(SpamdAddressKind):
    __slots__ = ()

    def describe(self) -> str:
        return 'spamd address or ""'

    def parse(self, raw: object, base_dir: Path) -> SpamdAddress | None:
        if raw == "":
            return None
        address = self._parse_one(raw, base_dir)
        if address.kind not in ("unix", "tcp", "tls"):
            raise InvalidValue(
                f'must be "", "unix:/path", "tcp:host:port" or "tls:host:port", got {show(raw)}')
        return address

    def dump(self, value: Any) -> object:
        return "" if value is None else str(value)


# NATS subjects: tokens separated by dots; a token must not be empty or hold
# a wildcard (* >) or white space.  ringtrap's tokens are stricter still, so
# a subject is also a safe file and stream-name fragment.
_TOKEN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


def subject_token_ok(text: str) -> bool:
    """True if ``text`` is one subject token ringtrap accepts (A-Z a-z 0-9 - _)."""
    return bool(text) and len(text) <= 64 and all(c in _TOKEN_CHARS for c in text)


class SubjectPrefix(Kind):
    """A NATS subject prefix: one or more tokens joined by dots."""

    __slots__ = ("single",)

    def __init__(self, single: bool = False) -> None:
        self.single = single  # one token only (a host name)

    def describe(self) -> str:
        return "subject token" if self.single else "subject prefix"

    def parse(self, raw: object, base_dir: Path) -> str:
        if isinstance(raw, str):
            tokens = [raw] if self.single else raw.split(".")
            if all(subject_token_ok(t) for t in tokens):
                return raw
        what = ("one token of 1 to 64 characters from A-Z a-z 0-9 - _ (no dot)" if self.single
                else "tokens of 1 to 64 characters from A-Z a-z 0-9 - _ joined by dots")
        raise InvalidValue(f"must be {what}, got {show(raw)}")


class NatsServers(Kind):
    """A list of NATS server URLs: ``nats://host:port`` or ``tls://host:port``."""

    __slots__ = ()

    def describe(self) -> str:
        return 'list of "nats://host:port"'

    def parse(self, raw: object, base_dir: Path) -> tuple[str, ...]:
        if not (isinstance(raw, list) and raw and all(isinstance(x, str) for x in raw)):
            raise InvalidValue(
                f'must be a non-empty list of "nats://host:port" URLs, got {show(raw)}')
        for url in raw:
            scheme, sep, rest = url.partition("://")
            host, colon, port = rest.rpartition(":")
            if host.startswith("[") and host.endswith("]"):
                host = host[1:-1]
            if not (scheme in ("nats", "tls") and sep and host and colon
                    and "/" not in host and "@" not in host
                    and port.isascii() and port.isdecimal() and 1 <= int(port) <= 65535):
                raise InvalidValue(
                    f'{show(url)} is not "nats://host:port" or "tls://host:port"'
                    " (credentials go in forward.creds_file, not the URL)")
        return tuple(raw)

    def dump(self, value: Any) -> object:
        return list(value)
