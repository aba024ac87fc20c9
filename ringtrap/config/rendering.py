"""Rendering the declarations: the sample file and the docs table.

Both walk the declarations in order; the docs describe host-dependent
defaults instead of computing them, so they read the same on every host.
The man page (``manpage.py``) is written from ``declarations()`` too.
"""

from collections.abc import Iterator
from dataclasses import MISSING, fields
from typing import NamedTuple

from ringtrap.config.loading import defaults
from ringtrap.config.sections import SETTING_META, Config, Setting, each_key, each_section

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
    for section, cls in each_section():
        values = getattr(cfg, section)
        lines += ["", "", f"[{section}]"]
        for key, s in each_key(cls):
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
    for section, cls in each_section():
        for f in fields(cls):
            s: Setting = f.metadata[SETTING_META]
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
        "ringtrap reads one TOML file; every key is optional. `ringtrap/config/sections.py`"
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
