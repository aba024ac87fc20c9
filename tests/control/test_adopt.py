"""Persisting the ring at a drain (control.adopt.close_ring) against the overflow's cap."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from uuid import uuid4

from ringtrap.base import ids
from ringtrap.control.adopt import close_ring
from ringtrap.overflow import Overflow
from ringtrap.ring import PutResult, Ring
from ringtrap.store.segment import unlink_name

SHM = Path("/dev/shm")


def test_a_drain_into_a_full_overflow_keeps_the_rest_in_the_ring_for_the_next_start() -> None:
    name = f"rt-adopt-{uuid4().hex[:8]}"
    msgs = [(ids.new_id(), b"x" * 600) for _ in range(3)]
    with tempfile.TemporaryDirectory(dir=SHM) as tmp:
        overflow = Overflow(Path(tmp) / "ovf", 1000)  # room for one of the three
        ring = Ring.create(name, 8, 4096)
        try:
            for msgid, data in msgs:
                assert ring.put(msgid, data) is PutResult.OK
            close_ring(name, ring, overflow, None, persist=True)
            # one moved; the two the cap refused are neither dropped nor
            # quarantined: the ring stays, and the next start adopts them
            assert len(os.listdir(Path(tmp) / "ovf" / "new")) == 1
            assert os.listdir(Path(tmp) / "ovf" / "failed") == []
            adopted = Ring.attach(name)
            try:
                left = []
                while (c := adopted.claim(timeout=0)) is not None:
                    left.append((c.msgid, bytes(c.data)))
                    adopted.ack(c)
            finally:
                adopted.close()
            stored = {n.split(",")[0] for n in os.listdir(Path(tmp) / "ovf" / "new")}
            assert sorted(left + [(m, d) for m, d in msgs if m in stored]) == sorted(msgs)
        finally:
            unlink_name(name)
