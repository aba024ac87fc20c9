"""Chaos while the flood runs: kill what ringtrap promises to survive, and fill its overflow.

One action at a time runs in a thread of its own, so the sampling loop keeps
its one-second beat while a supervisor restarts; the next action starts
``every`` seconds after the previous one recovered.  Actions:

=============  ===================================================================
worker         SIGKILL a worker, preferably one scanning a message (it holds a claim)
ingest         SIGKILL the ingest (clients mid-message get no reply)
supervisor     SIGKILL the supervisor and start a new one: it adopts the ring and
               stops the old generation's children
spamd-child    SIGKILL a spamd child mid-scan (the worker gets a 0-byte reply)
spamd          SIGKILL spamd and all its children, start it again after 2 s
overflow-full  send the largest accepted message until the ingest answers
               ``TEMPFAIL overflow full``, then let the flood meet the full cap
=============  ===================================================================

Each event records what was hit and how long the trap took to be whole
again (the killed child replaced, spamd answering, the trap ready).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from stress_flood import OK, TEMPFAIL, deliver
from stress_trap import StressSpamd, StressTrap, wait_until

ACTIONS = ("worker", "ingest", "supervisor", "spamd-child", "spamd", "overflow-full")
# actions that need the harness to own the process it kills
OWNED = {"supervisor": "trap", "spamd-child": "spamd", "spamd": "spamd"}
RECOVERY_TIMEOUT = 90.0


class Chaos:
    """Runs chaos actions on a schedule; ``events`` is what happened, in order."""

    def __init__(self, trap: StressTrap, spamd: StressSpamd | None, actions: list[str],
                 every: float, rng: random.Random, clock: Callable[[], float],
                 hold: float = 10.0, fixed_order: bool = False,
                 filler: bytes = b"") -> None:
        self.trap = trap
        self.spamd = spamd
        self.actions = actions
        self.every = every
        self.rng = rng
        self.clock = clock  # seconds since the flood started
        self.hold = hold
        self.fixed_order = fixed_order
        self.filler = filler  # the overflow-full action's message
        self.events: list[dict[str, Any]] = []
        self.deliveries: list[tuple[str, str]] = []  # (outcome, id or reason) of the fill
        self.next_at = every
        self._plan: list[str] = []
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- scheduling ----------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """True while an action (or its recovery) is running."""
        return self._thread is not None and self._thread.is_alive()

    def tick(self, until: float) -> None:
        """Start the next action if it is due and would begin before ``until``."""
        t = self.clock()
        if not self.actions or self.busy or t < self.next_at or t >= until:
            return
        if not self._plan:
            # every action once per round, in a new order each round
            self._plan = list(self.actions)
            if not self.fixed_order:
                self.rng.shuffle(self._plan)
            self.fixed_order = False  # a fixed first round only
        action = self._plan.pop(0)
        self._thread = threading.Thread(target=self._run, args=(action,), daemon=True,
                                        name=f"chaos-{action}")
        self._thread.start()

    def wait(self, timeout: float = 180.0) -> None:
        """Wait for the running action to finish and recover."""
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self, action: str) -> None:
        t = self.clock()
        event: dict[str, Any] = {"t": round(t, 1), "action": action}
        try:
            event.update(getattr(self, "_" + action.replace("-", "_"))())
        except Exception as e:  # an action that failed is an event too, not a dead harness
            event["error"] = f"{type(e).__name__}: {e}"
        with self._lock:
            self.events.append(event)
        self.next_at = self.clock() + self.every

    # -- actions ----------------------------------------------------------------------

    def _alive(self, role: str) -> list[dict[str, Any]]:
        st = self.trap.fresh_status()
        if st is None:
            return []
        return [p for p in st["processes"] if p["role"] == role and p["alive"]]

    def _kill_child(self, role: str) -> dict[str, Any]:
        procs = self._alive(role)
        if not procs:
            return {"detail": f"no {role} alive to kill"}
        busy = [p for p in procs if p["state"] in ("scanning", "busy", "processing")]
        victim = self.rng.choice(busy or procs)
        t0 = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim["pid"], signal.SIGKILL)

        def replaced() -> bool:
            return any(p["index"] == victim["index"] and p["pid"] != victim["pid"]
                       for p in self._alive(role))

        wait_until(replaced, RECOVERY_TIMEOUT, f"a new {role}", step=0.05)
        what = f"{role} {victim['index']}" if role == "worker" else role
        msg = f" holding {victim['message']}" if victim.get("message") else ""
        return {"pid": victim["pid"], "detail": f"{what} {victim['state']}{msg}",
                "recovered_s": round(time.monotonic() - t0, 2)}

    def _worker(self) -> dict[str, Any]:
        return self._kill_child("worker")

    def _ingest(self) -> dict[str, Any]:
        return self._kill_child("ingest")

    def _supervisor(self) -> dict[str, Any]:
        old, took = self.trap.kill_supervisor_and_restart()
        return {"pid": old, "detail": "supervisor killed, new one started and ready",
                "recovered_s": round(took, 2)}

    def _spamd_child(self) -> dict[str, Any]:
        assert self.spamd is not None
        n = len(self.spamd.children_pids())
        t0 = time.monotonic()
        pid = self.spamd.kill_child(self.rng)
        if pid is None:
            return {"detail": "no spamd child to kill"}
        wait_until(lambda: len(self.spamd.children_pids()) >= n and  # type: ignore[union-attr]
                   pid not in self.spamd.children_pids(),  # type: ignore[union-attr]
                   RECOVERY_TIMEOUT, "spamd to replace its child")
        return {"pid": pid, "detail": "spamd child killed; spamd forked a new one",
                "recovered_s": round(time.monotonic() - t0, 2)}

    def _spamd(self) -> dict[str, Any]:
        assert self.spamd is not None
        pid = self.spamd.pid
        t0 = time.monotonic()
        self.spamd.kill_and_restart(down_for=2.0)
        return {"pid": pid, "detail": "spamd and its children killed, down 2 s, restarted",
                "recovered_s": round(time.monotonic() - t0, 2)}

    def _overflow_full(self) -> dict[str, Any]:
        """Fill the overflow to its byte cap through the front door, then hold.

        The largest message the ingest accepts is sent again and again until
        the ingest answers ``TEMPFAIL overflow full``; every one that got
        ``OK`` is an accepted message like any other (the ledger counts it;
        the workers reach it in turn or a purge drops it).  The flood then
        meets the full cap for ``hold`` seconds, or until a purge makes room.
        """
        if not self.filler:
            return {"detail": "no filler message"}
        sent = 0
        full = ""
        limit = self.trap.cfg.overflow.max_bytes // len(self.filler) + 64
        for n in range(limit):
            prefix = f"X-Stress-Fill: {n}\r\n".encode()
            outcome, detail = deliver(str(self.trap.socket_path), prefix, self.filler)
            with self._lock:
                self.deliveries.append((outcome, detail))
            if outcome == OK:
                sent += 1
            elif outcome == TEMPFAIL:
                full = detail
                break
        t0 = time.monotonic()
        time.sleep(self.hold)
        what = (f"sent {sent} messages of {len(self.filler) / 1048576:.1f} MiB until "
                f"TEMPFAIL {full}" if full else f"sent {sent} messages without reaching the cap")
        return {"detail": f"{what}; held {self.hold:g} s",
                "recovered_s": round(time.monotonic() - t0, 2)}

    def take_deliveries(self) -> list[tuple[str, str]]:
        """The fill's deliveries since the last call, for the ledger."""
        with self._lock:
            out, self.deliveries = self.deliveries, []
        return out


__all__ = ["ACTIONS", "OWNED", "Chaos"]
