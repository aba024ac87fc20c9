"""Model-based test of the shared-memory ring: random runs against a dict model.

One handle plays the producer, the claimers and the supervisor.  Claimers
are identities: this process (really alive, it never dies) and fake ones
made of this pid with another start time.  To /proc a fake identity is a
process whose pid was reused, so it is dead; the model treats it as alive
until a ``die`` rule says otherwise, and until then only the model-driven
supervisor (``recover(identity)``) acts on it.  :meth:`Ring.adopt` and
:meth:`Ring.recover_dead` ask /proc, so to them every fake claimer is dead:
the model applies those as "every fake claimer died".
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from uuid import uuid4

import pytest
import ringpeek
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from ringtrap import ring as ringmod
from ringtrap.base import ids, proc
from ringtrap.base.proc import Identity
from ringtrap.base.states import SlotState
from ringtrap.ring import Claim, PutResult, RecoverResult, Ring, RingOwnershipError
from ringtrap.store import segment as segmod
from ringtrap.store import stuck as stuckmod
from ringtrap.store.segment import token_identity, unlink_name

SHM = Path("/dev/shm")
PREFIX = f"rt-test-{os.getpid()}-model-"
SLOTS = 5
SLOT_BYTES = 48


def body(msgid: str, size: int) -> bytes:
    """Deterministic content for ``msgid`` so a reader can check every byte."""
    seed = msgid.encode()
    return (seed * (size // len(seed) + 1))[:size]


def slot_contents(r: Ring) -> dict[str, tuple[SlotState, int, int, Identity | None]]:
    """msgid -> (state, size, attempts, claimer) of every READY or CLAIMED slot.

    Test-only: reads the slot descriptors through the ring's internals.
    """
    out: dict[str, tuple[SlotState, int, int, Identity | None]] = {}
    for idx, state in enumerate(ringpeek.slot_states(r)):
        if state not in (SlotState.READY, SlotState.CLAIMED):
            continue
        owner, _seq, size, attempts, _enq, raw = ringmod._DESC.unpack_from(
            r._map, r._descs_off + idx * segmod.DESC_WORDS * 8 + 8
        )
        msgid = raw.rstrip(b"\0").decode()
        assert msgid not in out, f"{msgid} is in two slots"
        claimer = token_identity(owner) if state is SlotState.CLAIMED else None
        out[msgid] = (state, size, attempts, claimer)
    return out


@dataclass
class Msg:
    """The model's view of one accepted message."""

    order: int  # position in put order: the ring hands messages out oldest first
    size: int
    attempts: int  # deaths of a claimer while it held the message
    claimer: Identity | None = None
    claim: Claim | None = None
    taken_before: bool = False  # claimed once: now behind tail, a "stray" when ready


class RingMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.name = f"{PREFIX}{uuid4().hex[:8]}"
        self.ring = Ring.create(self.name, SLOTS, SLOT_BYTES)
        self.me = proc.self_identity()
        self.next_start = self.me.start
        self.live: list[Identity] = [self.me]  # who may claim, ack and release
        self.dead_holding: set[Identity] = set()  # died, not yet recovered
        self.msgs: dict[str, Msg] = {}
        self.acked: Counter[str] = Counter()
        self.stale: list[tuple[Claim, Identity]] = []  # claims voided by a recovery
        self.puts = 0
        self.requeued = 0
        self.adoptions = 0
        self.passed = 0  # fresh claims taken while an attempted message waited
        for _ in range(2):
            self.spawn()

    def teardown(self) -> None:
        self.ring.close()
        unlink_name(self.name)

    # -- model helpers ---------------------------------------------------------

    def fake(self) -> Identity:
        self.next_start += 1
        return Identity(self.me.pid, self.next_start)

    def ready(self) -> list[str]:
        return sorted((m for m, h in self.msgs.items() if h.claimer is None),
                      key=lambda m: self.msgs[m].order)

    def next_claim(self) -> str:
        """What the ring hands out next: a message given back unattempted, then
        fresh ones before any that was attempted (it may kill its claimer), but
        that one at least once every _SUSPECT_EVERY fresh claims."""
        ready = [(m, self.msgs[m]) for m in self.ready()]
        clean = [m for m, h in ready if h.taken_before and h.attempts == 0]
        suspects = [m for m, h in ready if h.taken_before and h.attempts > 0]
        fresh = [m for m, h in ready if not h.taken_before]
        if clean:
            return clean[0]
        if suspects and (self.passed >= ringmod._SUSPECT_EVERY or not fresh):
            self.passed = 0
            return suspects[0]
        if suspects:
            self.passed += 1
        return fresh[0]

    def held_by(self, ident: Identity) -> list[str]:
        return [m for m, h in self.msgs.items() if h.claimer == ident]

    def live_claims(self) -> list[str]:
        return sorted(m for m, h in self.msgs.items() if h.claimer in self.live)

    def requeue(self, msgids: list[str]) -> None:
        for m in msgids:
            h = self.msgs[m]
            assert h.claim is not None and h.claimer is not None
            self.stale.append((h.claim, h.claimer))
            h.claimer, h.claim = None, None
            h.attempts += 1
        self.requeued += len(msgids)

    def all_fakes_die(self) -> list[str]:
        """What /proc-based recovery does here: every fake claimer is dead."""
        held = sorted(m for m, h in self.msgs.items()
                      if h.claimer is not None and h.claimer != self.me)
        self.live = [self.me]
        self.dead_holding.clear()
        return held

    # -- rules ---------------------------------------------------------------------

    @precondition(lambda self: len(self.live) < 4)
    @rule()
    def spawn(self) -> None:
        self.live.append(self.fake())

    def do_put(self, size: int) -> None:
        msgid = ids.new_id()
        res = self.ring.put(msgid, body(msgid, size))
        if size > SLOT_BYTES:
            assert res is PutResult.TOO_LARGE
            return
        used = len(self.msgs)
        if res is PutResult.FULL:
            # FULL only when no slot is free or a READY one blocks the way: a
            # claim still held is stepped over (the ring is smaller than MAX_SKIP)
            assert used == SLOTS or self.ready(), "FULL with only claims in the way"
            return
        assert res is PutResult.OK
        assert used < SLOTS
        self.msgs[msgid] = Msg(self.puts, size, 0)
        self.puts += 1

    def do_claim(self, who: Identity) -> Claim | None:
        c = self.ring.claim(timeout=0, owner=who)
        ready = self.ready()
        if not ready:
            assert c is None
            return None
        assert c is not None, f"claim found nothing with {len(ready)} ready"
        assert c.msgid == self.next_claim(), "not the message the claim order says"
        h = self.msgs[c.msgid]
        assert h.claimer is None, f"{c.msgid} handed to {who} while {h.claimer} holds it"
        assert (c.data, c.attempts) == (body(c.msgid, h.size), h.attempts)
        h.claimer, h.claim = who, c
        h.taken_before = True
        return c

    @rule(size=st.integers(0, SLOT_BYTES + 8))
    def put(self, size: int) -> None:
        self.do_put(size)

    @rule(data=st.data())
    def claim(self, data: st.DataObject) -> None:
        self.do_claim(data.draw(st.sampled_from(self.live)))

    @rule(n=st.integers(1, 2 * SLOTS), size=st.integers(0, SLOT_BYTES))
    def turn(self, n: int, size: int) -> None:
        """The ring turns past whatever is held: n puts, each claimed and acked at once."""
        for _ in range(n):
            self.do_put(size)
            c = self.do_claim(self.me)
            if c is not None:
                self.ring.ack(c)
                self.acked[c.msgid] += 1
                del self.msgs[c.msgid]

    @precondition(lambda self: self.live_claims())
    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        m = data.draw(st.sampled_from(self.live_claims()))
        h = self.msgs[m]
        assert h.claim is not None and h.claimer is not None
        self.ring.ack(h.claim, owner=h.claimer)
        self.acked[m] += 1
        del self.msgs[m]

    @precondition(lambda self: self.live_claims())
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        m = data.draw(st.sampled_from(self.live_claims()))
        h = self.msgs[m]
        assert h.claim is not None and h.claimer is not None
        self.ring.release(h.claim, owner=h.claimer)
        h.claimer, h.claim = None, None

    @precondition(lambda self: self.live_claims() and len(self.live) > 1)
    @rule(data=st.data(), release=st.booleans())
    def finish_by_another(self, data: st.DataObject, release: bool) -> None:
        m = data.draw(st.sampled_from(self.live_claims()))
        h = self.msgs[m]
        assert h.claim is not None
        other = data.draw(st.sampled_from([i for i in self.live if i != h.claimer]))
        with pytest.raises(RingOwnershipError):
            if release:
                self.ring.release(h.claim, owner=other)
            else:
                self.ring.ack(h.claim, owner=other)

    @precondition(lambda self: self.stale)
    @rule(data=st.data(), release=st.booleans())
    def finish_a_voided_claim(self, data: st.DataObject, release: bool) -> None:
        # what a claimer declared dead would do if it were not: it must fail
        c, who = data.draw(st.sampled_from(self.stale))
        with pytest.raises(RingOwnershipError):
            if release:
                self.ring.release(c, owner=who)
            else:
                self.ring.ack(c, owner=who)

    @precondition(lambda self: len(self.live) > 1)
    @rule(data=st.data())
    def die(self, data: st.DataObject) -> None:
        who = data.draw(st.sampled_from(self.live[1:]))  # never this process
        self.live.remove(who)
        if self.held_by(who):
            self.dead_holding.add(who)

    @precondition(lambda self: self.dead_holding)
    @rule(data=st.data())
    def recover(self, data: st.DataObject) -> None:
        who = data.draw(st.sampled_from(sorted(self.dead_holding)))
        held = self.held_by(who)
        assert self.ring.recover(who) == RecoverResult(len(held), 0)
        self.dead_holding.discard(who)
        self.requeue(held)
        assert self.ring.recover(who) == RecoverResult(0, 0)

    @rule()
    def recover_dead(self) -> None:
        held = self.all_fakes_die()
        assert self.ring.recover_dead() == RecoverResult(len(held), 0)
        self.requeue(held)

    @rule(n=st.integers(1, 3))
    def wake(self, n: int) -> None:
        # posts with nothing behind them: each costs a claimer one empty look
        ringpeek.wake(self.ring, n)

    @rule()
    def adopt(self) -> None:
        self.ring.close()
        self.ring = Ring.adopt(self.name, slots=SLOTS, slot_bytes=SLOT_BYTES)
        self.adoptions += 1
        self.requeue(self.all_fakes_die())
        # "ready" was reset to the READY slots
        assert self.ring._ready_sem.value == len(self.ready())

    # -- invariants ------------------------------------------------------------------

    @invariant()
    def slots_match_model(self) -> None:
        expected = {
            m: (SlotState.READY if h.claimer is None else SlotState.CLAIMED, h.size, h.attempts,
                h.claimer)
            for m, h in self.msgs.items()
        }
        assert slot_contents(self.ring) == expected

    @invariant()
    def counts_match_model(self) -> None:
        s = self.ring.snapshot()
        ready = len(self.ready())
        claimed = len(self.msgs) - ready
        assert (s.free, s.filling, s.ready, s.claimed) == (
            SLOTS - len(self.msgs), 0, ready, claimed
        )
        assert (s.requeued, s.freed, s.generation) == (self.requeued, 0, self.adoptions)
        assert s.lock_holder is None and s.tail <= s.head
        assert sorted((o, st) for _, st, o in ringpeek.iter_held(self.ring)) == sorted(
            (h.claimer, SlotState.CLAIMED) for h in self.msgs.values() if h.claimer is not None
        )

    @invariant()
    def acked_once(self) -> None:
        assert all(n == 1 for n in self.acked.values())
        assert not set(self.acked) & set(self.msgs)


RingMachine.TestCase.settings = settings(
    max_examples=50, stateful_step_count=40, deadline=None, database=None
)
test_ring_model = RingMachine.TestCase


@pytest.fixture(scope="module", autouse=True)
def no_leftovers() -> Iterator[None]:
    yield
    assert sorted(n for n in os.listdir(SHM) if n.removeprefix("sem.").startswith(PREFIX)) == []


@pytest.fixture(autouse=True)
def claims_age_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The model has the producer step over every held claim at once, as it
    does over a stuck one; waiting for claims in progress is tested in
    test_ring.py."""
    monkeypatch.setattr(stuckmod, "SKIP_CLAIMS_OLDER_NS", 0)
