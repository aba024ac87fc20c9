"""The one claim shape: a ring claim and an overflow claim, driven by the same
verbs (read, peek, ack, release, quarantine) without asking which is which."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest

from ringtrap.base import ids, proc
from ringtrap.overflow import Overflow
from ringtrap.ring import PutResult, Ring
from ringtrap.store.claim import ClaimLost, StoreClaim
from ringtrap.store.segment import unlink_name

SHM = "/dev/shm" if os.path.isdir("/dev/shm") else None
BODY = b"From: a@example.org\r\n\r\npoison"


class Stores:
    """One ring and one overflow; ``put`` stores a message in the named one,
    ``claim`` takes the next from it."""

    def __init__(self, tmp: Path) -> None:
        self.name = f"rt-claim-{uuid4().hex[:8]}"
        self.ring = Ring.create(self.name, 4, 4096)
        self.overflow = Overflow(tmp / "ovf", 1 << 20)

    def put(self, where: str, msgid: str) -> None:
        if where == "ring":
            assert self.ring.put(msgid, BODY) is PutResult.OK
        else:
            self.overflow.spill(msgid, BODY)

    def claim(self, where: str) -> StoreClaim | None:
        if where == "ring":
            return self.ring.claim(timeout=0)
        return self.overflow.claim(proc.self_identity())

    def close(self) -> None:
        self.ring.close()
        unlink_name(self.name)


@pytest.fixture
def stores() -> Iterator[Stores]:
    tmp = Path(tempfile.mkdtemp(prefix="ringtrap-test-", dir=SHM))
    s = Stores(tmp)
    yield s
    s.close()
    shutil.rmtree(tmp, ignore_errors=True)


WHERE = ["ring", "overflow"]


@pytest.mark.parametrize("where", WHERE)
def test_a_claim_reads_and_names_its_store(stores: Stores, where: str) -> None:
    m = ids.new_id()
    stores.put(where, m)
    c = stores.claim(where)
    assert c is not None
    assert (c.msgid, c.size, c.attempts, c.store) == (m, len(BODY), 0, where)
    assert c.read() == BODY and c.peek(4) == BODY[:4]
    assert abs(c.received - ids.id_time(m)) < 1.0
    c.ack()
    assert stores.claim(where) is None


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("counted", [False, True])
def test_release_gives_it_back_with_the_attempt_counted_only_if_asked(
        stores: Stores, where: str, counted: bool) -> None:
    stores.put(where, ids.new_id())
    c = stores.claim(where)
    assert c is not None
    c.release(count_attempt=counted)
    again = stores.claim(where)
    assert again is not None and again.msgid == c.msgid
    assert again.attempts == int(counted)


@pytest.mark.parametrize("where", WHERE)
def test_quarantine_keeps_it_in_failed_and_lets_go_of_it(stores: Stores, where: str) -> None:
    stores.put(where, ids.new_id())
    c = stores.claim(where)
    assert c is not None
    done = c.quarantine("attempt limit", stores.overflow)
    assert done.kept and done.path.read_bytes() == BODY
    assert stores.claim(where) is None
    assert stores.ring.snapshot().free == stores.ring.slots


def test_a_ring_claim_recovered_meanwhile_is_lost_to_its_verbs(stores: Stores) -> None:
    stores.put("ring", ids.new_id())
    c = stores.claim("ring")
    assert c is not None
    stores.ring.recover(proc.self_identity())  # the supervisor judged the claimer dead
    for verb in (c.ack, c.release):
        with pytest.raises(ClaimLost):
            verb()


def test_an_overflow_claim_recovered_meanwhile_cannot_be_quarantined(stores: Stores) -> None:
    stores.put("overflow", ids.new_id())
    c = stores.claim("overflow")
    assert c is not None
    stores.overflow.recover(proc.self_identity())
    with pytest.raises(ClaimLost):
        c.quarantine("x", stores.overflow)
