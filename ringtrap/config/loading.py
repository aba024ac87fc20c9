"""Loading: TOML text or a file into a validated ``Config``, and back to a dict.

Every problem is collected before ``ConfigError`` is raised, each naming the
file (or other source), ``section.key`` and what is wrong.  Relative paths in
a file are relative to the directory of that file (the daemon changes
directory, so they are made absolute at load time); ``~`` expands to the
home directory.

Nothing here writes anything: a process that dies mid-call leaves nothing to
recover.  The MTA-facing client imports the package on every delivery, so
modules needed only to load a file or report an error (tomllib, difflib) are
imported inside the functions that use them.
"""

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ringtrap.config.rules import cross_key_problems
from ringtrap.config.sections import Config, each_key, each_section
from ringtrap.config.values import InvalidValue, show


class ConfigError(Exception):
    """The configuration is unusable; ``problems`` holds every reason found."""

    def __init__(self, problems: list[str]) -> None:
        # The list itself is the only argument, so the error survives pickling.
        super().__init__(problems)
        self.problems = problems

    def __str__(self) -> str:
        return "\n".join(self.problems)


def _close(word: str, candidates: list[str]) -> str | None:
    import difflib

    matches = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return matches[0] if matches else None


def _unknown_section(name: str, raw: object) -> str:
    names = [s for s, _ in each_section()]
    if not isinstance(raw, dict):
        # A key written above the first [section] header.
        owners = [s for s, cls in each_section() if any(k == name for k, _ in each_key(cls))]
        if owners:
            where = owners[0]
            return f"unknown top-level key {name}; did you mean {where}.{name} (under [{where}])?"
        return f"unknown top-level key {name}; settings belong in sections such as [{names[0]}]"
    guess = _close(name, names)
    if guess:
        return f"unknown section [{name}]; did you mean [{guess}]?"
    return f"unknown section [{name}]; the sections are " + ", ".join(f"[{s}]" for s in names)


def _unknown_key(section: str, key: str, section_cls: type) -> str:
    keys = [k for k, _ in each_key(section_cls)]
    guess = _close(key, keys)
    if guess:
        return f"unknown key {section}.{key}; did you mean {section}.{guess}?"
    for other, cls in each_section():
        if any(k == key for k, _ in each_key(cls)):
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
    known = dict(each_section())
    for name, raw in data.items():
        if name not in known:
            problems.append(f"{source}: {_unknown_section(name, raw)}")
    built: dict[str, Any] = {}
    for section, cls in known.items():
        table = data.get(section, {})
        if not isinstance(table, dict):
            problems.append(f"{source}: {section}: must be a table [{section}], got {show(table)}")
            failed.update(f"{section}.{k}" for k, _ in each_key(cls))
            table = {}
        declared = dict(each_key(cls))
        values: dict[str, Any] = {}
        for key, raw in table.items():
            if key not in declared:
                problems.append(f"{source}: {_unknown_key(section, key, cls)}")
                continue
            try:
                values[key] = declared[key].kind.parse(raw, base)
            except InvalidValue as exc:
                problems.append(f"{source}: {section}.{key}: {exc}")
                failed.add(f"{section}.{key}")
        built[section] = cls(**values)
    config = Config(**built)
    problems += [f"{source}: {problem}" for problem in cross_key_problems(config, failed)]
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
    for section, cls in each_section():
        values = getattr(config, section)
        out[section] = {key: s.kind.dump(getattr(values, key)) for key, s in each_key(cls)}
    return out
