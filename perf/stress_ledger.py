"""The ledger of a stress run: every message that got ``OK`` must be accounted for.

A message the ingest answered ``OK <id>`` is *accepted*.  At the end of a
run each accepted id is either *recorded* (a result line carries its id),
*purged* (a purge the harness ran removed it, and said so by id) or
*quarantined* (in the overflow's ``failed/`` after killing workers too
often: kept, not processed).  Anything else is *lost*: accepted, yet neither
recorded, purged nor quarantined.  ringtrap promises lost = 0 whatever is
killed.  A message still queued when the ledger is closed counts as lost
too: the harness closes it only after the backlog is purged or drained.

Results without an ``OK`` are counted separately (``unacknowledged``): a
message stored in the instant before its ingest was killed is recorded
without its client ever hearing of it, which is allowed (the MTA retries it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

# the reasons of refusals reported beside the counts (ERR/TEMPFAIL/no reply)
MAX_REASONS = 8


class Ledger:
    """Accepted, recorded, purged and quarantined ids of one run, by phase."""

    def __init__(self) -> None:
        self.accepted: dict[str, str] = {}  # id -> phase it was accepted in
        self.recorded: set[str] = set()
        self.purged: set[str] = set()
        self.quarantined: set[str] = set()
        self.outcomes: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()
        self.duplicate_oks = 0

    def accept(self, msgid: str, phase: str) -> None:
        """Note an ``OK <id>`` reply."""
        if msgid in self.accepted:
            self.duplicate_oks += 1  # two clients told the same id: a bug worth seeing
        self.accepted[msgid] = phase

    def outcome(self, kind: str, detail: str, msgid: str | None, phase: str) -> None:
        """Note one delivery's outcome; ``msgid`` for ``OK``."""
        self.outcomes[f"{phase}:{kind}"] += 1
        if msgid is not None:
            self.accept(msgid, phase)
        elif detail:
            self.reasons[f"{kind} {detail}"] += 1

    def records(self, ids: Iterable[str]) -> None:
        """Note ids that have a result line."""
        self.recorded.update(ids)

    def purge(self, ids: Iterable[str]) -> None:
        """Note ids a purge dropped."""
        self.purged.update(ids)

    def quarantine(self, ids: Iterable[str]) -> None:
        """Note ids found in the overflow's failed/."""
        self.quarantined.update(ids)

    def count(self, kind: str, phase: str | None = None) -> int:
        """Deliveries with outcome ``kind`` (in ``phase``, or in all phases)."""
        return sum(n for k, n in self.outcomes.items()
                   if k.endswith(f":{kind}") and (phase is None or k.startswith(f"{phase}:")))

    def lost(self) -> list[str]:
        """Accepted ids neither recorded, purged nor quarantined, oldest first."""
        return sorted(m for m in self.accepted
                      if m not in self.recorded and m not in self.purged
                      and m not in self.quarantined)

    def summary(self) -> dict[str, Any]:
        """The ledger's figures as a JSON-ready dict (``lost_ids`` lists every lost id)."""
        acc = set(self.accepted)
        rec = acc & self.recorded
        purged_only = (acc & self.purged) - self.recorded
        quarantined_only = (acc & self.quarantined) - self.recorded - self.purged
        lost = self.lost()
        phases = sorted(set(self.accepted.values()))
        return {
            "accepted": len(acc),
            "recorded": len(rec),
            "purged": len(purged_only),
            "quarantined": len(quarantined_only),
            "lost": len(lost),
            "lost_ids": lost,
            "unacknowledged_records": len(self.recorded - acc),
            "duplicate_oks": self.duplicate_oks,
            "by_phase": {
                ph: {
                    "accepted": sum(1 for v in self.accepted.values() if v == ph),
                    "lost": sum(1 for m in lost if self.accepted[m] == ph),
                }
                for ph in phases
            },
            "outcomes": dict(sorted(self.outcomes.items())),
            "top_reasons": dict(self.reasons.most_common(MAX_REASONS)),
        }


__all__ = ["Ledger"]
