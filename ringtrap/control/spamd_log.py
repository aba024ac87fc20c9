"""A managed spamd's own lines, relogged through the trap's logging.

spamd writes its log to stderr (``--syslog=stderr``), four lines per message
at its ``info`` level, and they used to go straight to the supervisor's
standard error, past ``supervisor.log_file`` and the log format.  The
supervisor now gives spamd a pipe for stdout and stderr, and a thread reads
it and logs each line through the ``ringtrap.spamd`` logger: spamd's lines
go where the trap's go, in the trap's format, and the per-message ones at
DEBUG, so the default level shows spamd's start, warnings and errors only.

A managed rspamd's lines (``log_severity = true``: ``2026-12-03 08:49:37
[info] #1234(normal) <tag>; task; ...``) are relayed the same way through
``ringtrap.rspamd``, its per-message lines at DEBUG.

The thread only reads and logs; it never blocks the supervisor, and it ends
when the last process holding the pipe (spamd and its children) has exited.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable

log = logging.getLogger("ringtrap.spamd")
rspamd_log = logging.getLogger("ringtrap.rspamd")

# "Thu Dec  3 08:49:37 2026 [1234] info: spamd: connection from ..." (with --syslog=stderr)
_LINE = re.compile(r"^(?:.*?\[(?P<pid>\d+)\] )?(?P<level>[a-z]+): (?P<text>.*)$")
_LEVELS = {"dbg": logging.DEBUG, "debug": logging.DEBUG, "info": logging.INFO,
           "notice": logging.INFO, "warn": logging.WARNING, "warning": logging.WARNING,
           "error": logging.ERROR, "err": logging.ERROR, "crit": logging.CRITICAL}
# spamd's per-message info lines: the trap logs its own line per message
_PER_MESSAGE = re.compile(
    r"^(spamd: (connection from|got connection|setuid to|processing message|checking message"
    r"|identified spam"
    r"|clean message|result:|handled cleanup)|prefork: (child states|adjust:))")


def classify(line: str) -> tuple[int, str, int | None]:
    """The logging level, the text and spamd's pid of one spamd line."""
    m = _LINE.match(line)
    if m is None:
        # not spamd's own format: a Perl warning or a crash says something is wrong
        return logging.WARNING, line, None
    text = m.group("text")
    level = _LEVELS.get(m.group("level"), logging.INFO)
    if level == logging.INFO and _PER_MESSAGE.match(text):
        level = logging.DEBUG
    pid = int(m.group("pid")) if m.group("pid") else None
    return level, text, pid


# "2026-12-03 08:49:37 [info] #1234(normal) <1c5fe9>; task; text" (the first line has no level)
_RSPAMD_LINE = re.compile(
    r"^\S+ \S+ (?:\[(?P<level>[a-z]+)\] )?#(?P<pid>\d+)\([^)]*\) (?P<text>.*)$")
# rspamd's per-message lines: the task module, and its result line
_RSPAMD_PER_MESSAGE = re.compile(r"^(?:<[^>]*>; )?(task|proxy|http_context|re_cache);")
# what the managed configuration causes on purpose: modules it turned off, no controller
_RSPAMD_EXPECTED = re.compile(r"^(?:<[^>]*>; )?(symcache; process_deps: cannot find dependency"
                              r"|cfg; rspamd_config_post_load: controller worker is unconfigured)")


def classify_rspamd(line: str) -> tuple[int, str, int | None]:
    """The logging level, the text and rspamd's pid of one rspamd line."""
    m = _RSPAMD_LINE.match(line)
    if m is None:
        return logging.WARNING, line, None
    text = m.group("text")
    level = _LEVELS.get(m.group("level") or "info", logging.INFO)
    if (level == logging.INFO and _RSPAMD_PER_MESSAGE.match(text)) or _RSPAMD_EXPECTED.match(text):
        level = logging.DEBUG
    return level, text, int(m.group("pid"))


Classify = Callable[[str], tuple[int, str, int | None]]


def relay(fd: int, rspamd: bool = False) -> None:
    """Read spamd's (or rspamd's) lines from ``fd`` to end of file and log each; closes ``fd``."""
    how: Classify = classify_rspamd if rspamd else classify
    logger = rspamd_log if rspamd else log
    event = "rspamd" if rspamd else "spamd"
    with os.fdopen(fd, "rb", buffering=0) as pipe:
        pending = b""
        while chunk := pipe.read(65536):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                _emit(raw, how, logger, event)
        if pending:
            _emit(pending, how, logger, event)


def _emit(raw: bytes, how: Classify, logger: logging.Logger, event: str) -> None:
    line = raw.decode("utf-8", errors="replace").rstrip("\r")
    if not line.strip():
        return
    level, text, pid = how(line)
    if logger.isEnabledFor(level):
        logger.log(level, "%s", text, extra={"event": event, f"{event}_pid": pid})


def start(fd: int, rspamd: bool = False) -> threading.Thread:
    """Relay ``fd`` (the pipe's read end) on a daemon thread."""
    thread = threading.Thread(target=relay, args=(fd, rspamd),
                              name="rspamd-log" if rspamd else "spamd-log", daemon=True)
    thread.start()
    return thread
