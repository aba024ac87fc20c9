"""ringtrap(8): the man page, written from the same declarations as the docs.

``ringtrap config --man`` prints it; the install writes it to
``/usr/local/share/man/man8/ringtrap.8``.  The commands come from the
argument parser the command line hands in, and the settings from
:func:`ringtrap.config.rendering.declarations`, so the page cannot drift from
the program it describes.
"""

from __future__ import annotations

import argparse
import re

from ringtrap import __version__
from ringtrap.config.rendering import DOCS_NOTES, declarations

_SIGNALS = (
    (
        "TERM",
        "Drain: stop accepting, let in-flight scans finish, move what is still in the"
        " ring to the overflow, remove the ring, exit 0. A second TERM stops at once.",
    ),
    (
        "INT, QUIT",
        "Stop fast: each worker finishes the scan it is in, records it and gives back what"
        " it had not begun; the ring stays in /dev/shm and the next start adopts it and"
        " requeues what was in flight.",
    ),
    (
        "HUP",
        "Reload the configuration; workers are replaced one at a time; a broken file is"
        " refused and the running configuration kept.",
    ),
    ("USR1", "Reopen the log file (logrotate)."),
)

_EXIT = (
    ("0", "success"),
    ("64", "usage error"),
    ("66", "report: no records for that day; report, blocklist: the fleet's database"
     " cannot be read"),
    ("69", "status, top: the trap is not running; report, blocklist: no psycopg for the"
     " fleet's database"),
    ("75", "submit: temporary failure, the MTA defers and retries"),
    ("78", "configuration error: every problem is named with its file and section.key"),
)

_FILES = (
    ("/etc/ringtrap/ringtrap.toml", "the configuration the systemd unit runs with"),
    ("/etc/default/ringtrap", "RINGTRAP_OPTS: extra options for ringtrap run under the unit"),
    ("/run/ringtrap/", "ingest.sock, submit.sock, lmtp.sock and the managed spamd's socket"),
    ("/dev/shm/ringtrap, /dev/shm/ringtrap.overflow/", "the ring and the overflow directory"),
    ("/var/lib/ringtrap/results/", "result records, one JSON line per message, one file a day"),
    ("/var/log/ringtrap/", "supervisor.log_file when set; rotated by /etc/logrotate.d/ringtrap"),
    ("/usr/local/share/doc/ringtrap/", "README.md, docs/, the alert rules and the dashboard"),
)


def _roff(text: str) -> str:
    """Markdown-ish help text as roff: backquotes bold, backslashes escaped."""
    text = text.replace("\\", "\\e")
    text = re.sub(r"`([^`]*)`", lambda m: "\\fB" + m.group(1) + "\\fR", text)
    # a line may not start with a control character
    return "\n".join("\\&" + ln if ln[:1] in (".", "'") else ln for ln in text.split("\n"))


def _opt(text: str) -> str:
    """An option or command line: bold, with real minus signs."""
    return "\\fB" + _roff(text).replace("-", "\\-") + "\\fR"


def _commands(parser: argparse.ArgumentParser) -> list[tuple[str, str]]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                # one line, without the -h every command has
                usage = " ".join(sub.format_usage().split()[1:]).replace(" [-h]", "")
                out.append((usage, helps.get(name, "")))
    return out


def man_page(parser: argparse.ArgumentParser) -> str:
    """The roff source of ringtrap(8), its COMMANDS read from ``parser``."""
    lines = [
        f'.TH RINGTRAP 8 "" "ringtrap {__version__}" "System Administration"',
        # keys and paths are looked up as written: never break them with a hyphen
        ".nh",
        ".SH NAME",
        "ringtrap \\- spam-trap backend: a shared-memory ring, a tmpfs overflow and a spamd"
        " worker pool",
        ".SH SYNOPSIS",
        ".B ringtrap",
        ".I command",
        "[\\fIoptions\\fR]",
        ".SH DESCRIPTION",
        "The MTA hands every message sent to a trap address to ringtrap over a Unix socket"
        " (LMTP, the submit socket used by \\fBringtrap\\-deliver\\fR and"
        " \\fBringtrap submit\\fR, or a raw socket). ringtrap answers as soon as the message"
        " is stored in the ring or the overflow directory, scans it later with spamd at the"
        " pace the CPU allows, and writes one JSON record per message.",
        ".PP",
        "\\fBringtrap run\\fR is the systemd unit's main process: a supervisor that forks the"
        " ingest, the worker pool and a managed spamd, restarts what dies and recovers what"
        " it held.",
        ".SH COMMANDS",
    ]
    for usage, help_ in _commands(parser):
        lines += [".TP", _opt(usage), _roff(help_)]
    lines.append(".SH SIGNALS")
    lines.append("Sent to the supervisor (\\fBsystemctl reload\\fR sends HUP):")
    for sig, what in _SIGNALS:
        lines += [".TP", f"\\fB{sig}\\fR", _roff(what)]
    lines.append(".SH EXIT STATUS")
    for code, what in _EXIT:
        lines += [".TP", f"\\fB{code}\\fR", _roff(what)]
    lines += [
        ".SH CONFIGURATION",
        "One TOML file (\\fB\\-c\\fR \\fIFILE\\fR); every key is optional, and without"
        " \\fB\\-c\\fR the built-in defaults apply. \\fBringtrap config \\-\\-sample\\fR"
        " prints them all with their help; \\fBringtrap config \\-\\-check\\fR \\fIFILE\\fR"
        " validates a file.",
    ]
    for note in DOCS_NOTES:
        lines += [".PP", _roff(note)]
    section = ""
    for d in declarations():
        head = d.key.split(".", 1)[0]
        if head != section:
            section = head
            lines.append(f".SS [{section}]")
        lines += [
            ".TP",
            f"\\fB{_roff(d.key)}\\fR ({_roff(d.kind)}; default {_roff(d.default)})",
            _roff(d.help),
        ]
    lines.append(".SH FILES")
    for path, what in _FILES:
        lines += [".TP", f"\\fI{_roff(path)}\\fR", _roff(what)]
    lines += [
        ".SH SEE ALSO",
        "\\fBspamd\\fR(8p), \\fBpostconf\\fR(5), \\fBpipe\\fR(8), \\fBlmtp\\fR(8),"
        " \\fBsystemd.exec\\fR(5), \\fBlogrotate\\fR(8);"
        " /usr/local/share/doc/ringtrap/README.md",
    ]
    return "\n".join(lines) + "\n"
