"""request_id -> seq for committed entries, bounded by a time window and an entry count.

Memory: one dict slot, one 16-byte bytes key (shared with the deque) and one int per entry;
docs/PROTOCOL.md states the measured bytes per entry. Outside the window a request id is
treated as new: the window must exceed the longest time a client may retry.

The map is split into 256 dicts by the request id's first byte. One dict of millions of keys
rebuilds its whole table when it grows, and again whenever deletions (evictions) have used up
its free slots: measured here, 125 ms for one insert at 2.8 million keys and ~12 ms every
~0.8 million appends at a steady 2 million, a pause every ACK in flight would wait out. A
shard holds 1/256 of the keys, so its rebuilds cost 1/256 as much (docs/PERFORMANCE.md).
"""

from __future__ import annotations

from collections import deque

SHARDS = 256


class IdempotencyIndex:
    """Committed request ids in commit order; evicts the oldest by count and by age."""

    __slots__ = ("_batches", "_count", "_order", "max_entries", "shards", "window_ms")

    def __init__(self, window_ms: int, max_entries: int) -> None:
        self.window_ms = window_ms
        self.max_entries = max_entries
        # By the id's first byte. Read directly by the journal's hot path (a method call per
        # append cost more than the lookup): ``shards[rid[0]].get(rid)`` for a 16-byte id.
        self.shards: list[dict[bytes, int]] = [{} for _ in range(SHARDS)]
        self._count = 0
        self._order: deque[bytes] = deque()
        self._batches: deque[tuple[int, int]] = deque()  # (last seq of a batch, its recv_ms)

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
        self._order.extend(request_ids)
        self._count += len(request_ids)
        self._batches.append((first_seq + len(request_ids) - 1, recv_ms))
        self.evict(recv_ms)

    def add(self, request_id: bytes, seq: int, recv_ms: int) -> None:
        """Record one entry (used while rebuilding from the WAL)."""
        shard = self.shards[request_id[0]]
        if request_id not in shard:
            shard[request_id] = seq
            self._count += 1
            self._order.append(request_id)
            batches = self._batches
            if batches and batches[-1][1] == recv_ms:
                batches[-1] = (seq, recv_ms)
            else:
                batches.append((seq, recv_ms))

    def _pop_oldest(self) -> None:
        rid = self._order.popleft()
        if self.shards[rid[0]].pop(rid, None) is not None:
            self._count -= 1

    def _oldest(self) -> int:
        """The seq of the oldest id still held (0 if none)."""
        order = self._order
        return self.shards[order[0][0]].get(order[0], 0) if order else 0

    def evict(self, now_ms: int) -> None:
        while self._count > self.max_entries:
            self._pop_oldest()
        cutoff = now_ms - self.window_ms
        batches = self._batches
        order = self._order
        while batches and batches[0][1] < cutoff:
            last_seq, _ = batches.popleft()
            while order and self._oldest() <= last_seq:
                self._pop_oldest()
        while batches and order and batches[0][0] < self._oldest():
            batches.popleft()  # batches whose entries were all evicted by count

    def oldest_seq(self) -> int | None:
        return self._oldest() if self._order else None
