"""sd_notify for the supervisor: silent outside systemd, never raises.

Only the unit's main process may notify (``NotifyAccess=main``), so children
never call this; the supervisor reports for all of them.  With
``WatchdogSec=`` systemd passes ``WATCHDOG_USEC``; :func:`watchdog_interval`
says how often the supervisor must send ``WATCHDOG=1``.
"""

from __future__ import annotations

import os
import socket


def notify(**fields: str | int) -> bool:
    """Send ``KEY=value`` lines to ``$NOTIFY_SOCKET``; False when not under systemd.

    Keys are given in lower case and sent upper case: ``notify(ready=1,
    status="4 workers")`` sends ``READY=1\\nSTATUS=4 workers``.
    """
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # an abstract-namespace socket
        address = "\0" + address[1:]
    payload = "\n".join(f"{k.upper()}={v}" for k, v in fields.items()).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(address)
            s.sendall(payload)
    except OSError:
        return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of ``$WATCHDOG_USEC``); None when off.

    None also when ``$WATCHDOG_PID`` names another process: the variables
    were inherited and the watchdog is not ours.
    """
    pid = os.environ.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 2e6
