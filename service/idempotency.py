"""request_id -> seq for committed entries, bounded by a time window and an entry count.

Memory: one dict slot, one 16-byte bytes key (shared with the commit-order runs) and one int per
entry; docs/PROTOCOL.md states the measured bytes per entry. Outside the window a request id is
treated as new: the window must exceed the longest time a client may retry.

The map is split into 256 dicts by the request id's first byte. One dict of millions of keys
rebuilds its whole table when it grows, and again whenever deletions (evictions) have used up
its free slots: measured here, 125 ms for one insert at 2.8 million keys and ~12 ms every
~0.8 million appends at a steady 2 million, a pause every ACK in flight would wait out. A
shard holds 1/256 of the keys, so its rebuilds cost 1/256 as much (docs/PERFORMANCE.md).

Commit order (for eviction) is kept as runs: one tuple of ids per committed batch. A tuple of
bytes is untracked by the cyclic garbage collector once it has seen it, so a full collection
visits one item per run, not one per id: with 5 million ids held, a full collection of the
host process took 40 ms when the order was a deque of ids (docs/PERFORMANCE.md). That pause
lands on an embedded journal's host, and on the service before it settles its collector.
"""

from __future__ import annotations

from collections import deque

SHARDS = 256
RUN_MAX_IDS = 1024  # ids added one by one (rebuild, standby) close their run at this many
RUN_MAX_SPAN_MS = 1000  # ... or when their receive times span this long (the run's age)


class IdempotencyIndex:
    """Committed request ids in commit order; evicts the oldest by count and by age."""

    __slots__ = (
        "_count",
        "_head",
        "_runs",
        "_tail",
        "_tail_ms",
        "max_entries",
        "shards",
        "window_ms",
    )

    def __init__(self, window_ms: int, max_entries: int) -> None:
        self.window_ms = window_ms
        self.max_entries = max_entries
        # By the id's first byte. Read directly by the journal's hot path (a method call per
        # append cost more than the lookup): ``shards[rid[0]].get(rid)`` for a 16-byte id.
        self.shards: list[dict[bytes, int]] = [{} for _ in range(SHARDS)]
        self._count = 0
        # Oldest first: (ids, receive time in ms). A run is evicted by age when its receive
        # time (its newest id's) falls out of the window, so an id may outlive the window by
        # up to RUN_MAX_SPAN_MS, never the other way round.
        self._runs: deque[tuple[tuple[bytes, ...] | list[bytes], int]] = deque()
        self._head = 0  # ids of the oldest run already evicted by count
        self._tail: list[bytes] | None = None  # the newest run while add() still extends it
        self._tail_ms = 0  # the newest receive time in _tail

    def __len__(self) -> int:
        return self._count

    def get(self, request_id: bytes) -> int | None:
        """The seq committed for ``request_id`` (any bytes; the empty id is never stored)."""
        if not request_id:
            return None
        return self.shards[request_id[0]].get(request_id)

    def add_batch(self, request_ids: list[bytes], first_seq: int, recv_ms: int) -> None:
        """Record one committed batch: ``request_ids[i]`` got seq ``first_seq + i``."""
        shards = self.shards
        seq = first_seq
        clash = False
        for rid in request_ids:
            if shards[rid[0]].setdefault(rid, seq) != seq:
                clash = True  # already held: the journal answers those as duplicates instead
            seq += 1
        if clash:  # keep only the ids this batch added, each once
            request_ids = [
                rid for seq, rid in enumerate(request_ids, first_seq) if shards[rid[0]][rid] == seq
            ]
        self._close_tail()
        if request_ids:
            self._runs.append((tuple(request_ids), recv_ms))
            self._count += len(request_ids)
        self.evict(recv_ms)

    def add(self, request_id: bytes, seq: int, recv_ms: int) -> None:
        """Record one entry (rebuilding from the WAL, a standby applying records), oldest first."""
        shard = self.shards[request_id[0]]
        if request_id in shard:
            return
        shard[request_id] = seq
        self._count += 1
        tail = self._tail
        if tail is not None:
            if len(tail) < RUN_MAX_IDS and recv_ms - self._runs[-1][1] <= RUN_MAX_SPAN_MS:
                tail.append(request_id)
                self._tail_ms = max(self._tail_ms, recv_ms)
                return
            self._close_tail()
        self._tail = [request_id]
        self._tail_ms = recv_ms
        self._runs.append((self._tail, recv_ms))  # its first id's time, until closed

    def _close_tail(self) -> None:
        """Turn the run add() was extending into a tuple stamped with its newest id's time."""
        tail = self._tail
        if tail is None:
            return
        self._tail = None
        runs = self._runs
        if runs and runs[-1][0] is tail:
            runs[-1] = (tuple(tail), self._tail_ms)

    def _run_ms(self, run: tuple[tuple[bytes, ...] | list[bytes], int]) -> int:
        return self._tail_ms if run[0] is self._tail else run[1]

    def _drop_head_run(self) -> None:
        ids, _ = self._runs.popleft()
        self._head = 0
        if ids is self._tail:
            self._tail = None

    def evict(self, now_ms: int) -> None:
        """Forget the oldest ids beyond ``max_entries``, then whole runs older than the window."""
        runs = self._runs
        shards = self.shards
        excess = self._count - self.max_entries
        while excess > 0 and runs:
            ids = runs[0][0]
            take = min(excess, len(ids) - self._head)
            for rid in ids[self._head : self._head + take]:
                shards[rid[0]].pop(rid, None)
            self._count -= take
            excess -= take
            self._head += take
            if self._head >= len(ids):
                self._drop_head_run()
        cutoff = now_ms - self.window_ms
        while runs and self._run_ms(runs[0]) < cutoff:
            ids = runs[0][0]
            for rid in ids[self._head :]:
                shards[rid[0]].pop(rid, None)
            self._count -= len(ids) - self._head
            self._drop_head_run()

    def oldest_seq(self) -> int | None:
        """The seq of the oldest id still held (None if none)."""
        if not self._runs:
            return None
        rid = self._runs[0][0][self._head]
        return self.shards[rid[0]].get(rid)
