"""The scanner-host table: per process row, one cell per scanner host it uses.

Each worker keeps, for every host of its scanner pool, a cell in its own
row's part of the segment's HOSTS region (:mod:`ringtrap.store.segment`):
how many scans and errors, their time, how often its breaker opened, and
the breaker's state with the time it last changed or was used.  Only the
row's process writes its cells, so like the process table's counters they
need no lock; a scan adds five word writes.

Cells are keyed by the host's address, written into the cell.  They are not
cleared when the supervisor retires a row: the next process in the row finds
its hosts' cells and counts on, so totals survive restarts without folding.
A cell of a host no longer configured is reused for a new one (its numbers
are then lost, as a host removed from the pool should be).

Cell layout (words)::

    0 address length (0 = free; written last)    1 state (HostState)
    2 touched (monotonic ns: state change or use)    3 scans    4 errors
    5 scan time (us)    6 breaker opens    7 failed over (errors after
      which the message went on to another host)
    8..20 scans by time (SCAN_BUCKETS, the last everything slower)
    24..39 address (128 bytes, UTF-8)

A process that dies mid-write loses at most that one update.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ringtrap.base.counters import SCAN_BUCKETS
from ringtrap.base.states import HostState
from ringtrap.store.segment import CELL_WORDS, HOST_CELLS, Segment

W_LEN, W_STATE, W_TOUCHED, W_SCANS, W_ERRORS, W_SCAN_US, W_OPENS, W_FAILOVERS = range(8)
W_BUCKETS = 8
NBUCKETS = len(SCAN_BUCKETS) + 1
W_NAME = 24
NAME_BYTES = (CELL_WORDS - W_NAME) * 8
assert W_BUCKETS + NBUCKETS <= W_NAME


def _bucket(seconds: float) -> int:
    for i, bound in enumerate(SCAN_BUCKETS):
        if seconds <= bound:
            return i
    return NBUCKETS - 1


class HostCells:
    """One process's cells for the hosts of its pool, in pool order.

    ``clock_ns`` is the monotonic clock the touched times come from.
    Raises ValueError if a host's address is longer than a cell holds or
    the pool has more hosts than a row has cells.
    """

    __slots__ = ("_base", "_clock", "_q", "names")

    def __init__(self, seg: Segment, row: int, names: Sequence[str],
                 clock_ns: Callable[[], int]) -> None:
        if len(names) > HOST_CELLS:
            raise ValueError(f"a scanner pool has at most {HOST_CELLS} hosts")
        self._q = seg.q
        self._clock = clock_ns
        self.names = tuple(names)
        row_w = seg.hosts_w + row * HOST_CELLS * CELL_WORDS
        cells = [_cell_name(seg, row_w + c * CELL_WORDS) for c in range(HOST_CELLS)]
        found = {name: c for c, name in enumerate(cells) if name is not None}
        wanted = set(self.names)
        # empty cells first, then those of hosts this pool no longer has
        free = [c for c, name in enumerate(cells) if name is None]
        free += [c for c, name in enumerate(cells) if name is not None and name not in wanted]
        bases = []
        for name in self.names:
            if name in found:
                cell = found[name]
            else:
                cell = free.pop(0)
                _assign(seg, row_w + cell * CELL_WORDS, name)
            bases.append(row_w + cell * CELL_WORDS)
        self._base = tuple(bases)

    def _now(self) -> int:
        return self._clock()

    def scanned(self, host: int, seconds: float) -> None:
        """Count one scan of ``seconds`` on ``host`` (its pool index)."""
        q, b = self._q, self._base[host]
        q[b + W_SCANS] += 1
        q[b + W_SCAN_US] += int(seconds * 1e6)
        q[b + W_BUCKETS + _bucket(seconds)] += 1
        q[b + W_TOUCHED] = self._now()

    def failed(self, host: int, *, failed_over: bool) -> None:
        """Count one failed scan or probe on ``host``; ``failed_over``: the message went on."""
        q, b = self._q, self._base[host]
        q[b + W_ERRORS] += 1
        if failed_over:
            q[b + W_FAILOVERS] += 1
        q[b + W_TOUCHED] = self._now()

    def state(self, host: int, state: HostState) -> None:
        """Publish ``host``'s breaker state; an opening counts in its opens."""
        q, b = self._q, self._base[host]
        if state is HostState.OPEN and q[b + W_STATE] != HostState.OPEN:
            q[b + W_OPENS] += 1
        q[b + W_STATE] = state
        q[b + W_TOUCHED] = self._now()


def _cell_name(seg: Segment, base: int) -> str | None:
    n = int(seg.q[base + W_LEN])
    if not 0 < n <= NAME_BYTES:
        return None
    o = (base + W_NAME) * 8
    return seg.mv[o : o + n].tobytes().decode("utf-8", "replace")


def _assign(seg: Segment, base: int, name: str) -> None:
    raw = name.encode()
    if len(raw) > NAME_BYTES:
        raise ValueError(f"scanner address longer than {NAME_BYTES} bytes: {name!r}")
    q = seg.q
    q[base + W_LEN] = 0  # a reader skips the cell while it changes hands
    for i in range(1, W_NAME):
        q[base + i] = 0
    o = (base + W_NAME) * 8
    seg.mv[o : o + NAME_BYTES] = raw.ljust(NAME_BYTES, b"\0")
    q[base + W_LEN] = len(raw)


@dataclass(frozen=True, slots=True)
class HostReading:
    """One host's numbers summed over every row, and its state as last seen.

    ``state`` is that of the cell touched last (the worker that used or
    judged the host most recently); ``open_in`` counts the cells, of live
    and exited processes alike, whose breaker is open now.
    """

    host: str
    state: HostState
    touched_ns: int
    scans: int
    errors: int
    failovers: int
    opens: int
    scan_us: int
    buckets: tuple[int, ...]
    open_in: int

    @property
    def up(self) -> bool:
        return self.state is not HostState.OPEN


def read_hosts(seg: Segment, rows: Sequence[int] | None = None) -> list[HostReading]:
    """Every host with a cell in ``rows`` (default: all), in order of first appearance."""
    q = seg.q
    acc: dict[str, list[int]] = {}
    seen: dict[str, tuple[int, int]] = {}
    open_in: dict[str, int] = {}
    for row in range(seg.rows) if rows is None else rows:
        row_w = seg.hosts_w + row * HOST_CELLS * CELL_WORDS
        for c in range(HOST_CELLS):
            b = row_w + c * CELL_WORDS
            name = _cell_name(seg, b)
            if name is None:
                continue
            words = q[b : b + W_BUCKETS + NBUCKETS].tolist()
            sums = acc.setdefault(name, [0] * len(words))
            for i in range(W_SCANS, len(words)):
                sums[i] += words[i]
            state, touched = words[W_STATE], words[W_TOUCHED]
            if state and touched >= seen.get(name, (0, -1))[1]:
                seen[name] = (state, touched)
            open_in[name] = open_in.get(name, 0) + (state == HostState.OPEN)
    out = []
    for name, s in acc.items():
        state, touched = seen.get(name, (HostState.UNUSED, 0))
        out.append(HostReading(
            host=name, state=HostState(state), touched_ns=touched, scans=s[W_SCANS],
            errors=s[W_ERRORS], failovers=s[W_FAILOVERS], opens=s[W_OPENS],
            scan_us=s[W_SCAN_US], buckets=tuple(s[W_BUCKETS:W_BUCKETS + NBUCKETS]),
            open_in=open_in[name]))
    return out
