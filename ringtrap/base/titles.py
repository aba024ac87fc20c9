"""Process titles: what ``ps`` shows for every ringtrap process.

One helper, so every title has the same shape: ``ringtrap: <role> <activity>``,
e.g. ``ringtrap: worker 3 scanning 0640c3f1a2b3c-0004d2 (1532 done)``.  Callers
update it on a change of state only: setting a title costs a system call.
"""

from __future__ import annotations

try:
    from setproctitle import setproctitle as _set
except ImportError:  # pragma: no cover - a declared dependency; degrade quietly
    def _set(title: str) -> None:
        return None

_last = ""


def set_title(role: str, activity: str = "") -> None:
    """Set this process's title to ``ringtrap: <role> <activity>`` if it changed."""
    global _last
    title = f"ringtrap: {role} {activity}".rstrip()
    if title != _last:
        _last = title
        _set(title)
