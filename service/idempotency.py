"""request_id -> seq for committed entries, bounded by a time window and an entry count.

Memory: one dict slot, one 16-byte bytes key (shared with the deque) and one int per entry;
docs/PROTOCOL.md states the measured bytes per entry. Outside the window a request id is
treated as new: the window must exceed the longest time a client may retry.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable


class IdempotencyIndex:
    """Committed request ids in commit order; evicts the oldest by count and by age."""

    __slots__ = ("_batches", "_order", "_seqs", "lookup", "max_entries", "window_ms")

    def __init__(self, window_ms: int, max_entries: int) -> None:
        self.window_ms = window_ms
        self.max_entries = max_entries
        self._seqs: dict[bytes, int] = {}
        self._order: deque[bytes] = deque()
        self._batches: deque[tuple[int, int]] = deque()  # (last seq of a batch, its recv_ms)
        # The dict's own bound get: the append path looks up every request id, and a Python
        # method around it would double the cost of the lookup.
        self.lookup: Callable[[bytes], int | None] = self._seqs.get

    def __len__(self) -> int:
        return len(self._seqs)

    def get(self, request_id: bytes) -> int | None:
        return self._seqs.get(request_id)

    def add_batch(self, request_ids: list[bytes], first_seq: int, recv_ms: int) -> None:
        """Record one committed batch: ``request_ids[i]`` got seq ``first_seq + i``."""
        seqs = self._seqs
        order = self._order
        seq = first_seq
        for rid in request_ids:
            if rid not in seqs:
                seqs[rid] = seq
                order.append(rid)
            seq += 1
        self._batches.append((first_seq + len(request_ids) - 1, recv_ms))
        self.evict(recv_ms)

    def add(self, request_id: bytes, seq: int, recv_ms: int) -> None:
        """Record one entry (used while rebuilding from the WAL)."""
        if request_id not in self._seqs:
            self._seqs[request_id] = seq
            self._order.append(request_id)
            batches = self._batches
            if batches and batches[-1][1] == recv_ms:
                batches[-1] = (seq, recv_ms)
            else:
                batches.append((seq, recv_ms))

    def evict(self, now_ms: int) -> None:
        seqs = self._seqs
        order = self._order
        while len(seqs) > self.max_entries:
            seqs.pop(order.popleft(), None)
        cutoff = now_ms - self.window_ms
        batches = self._batches
        while batches and batches[0][1] < cutoff:
            last_seq, _ = batches.popleft()
            while order and seqs.get(order[0], 0) <= last_seq:
                seqs.pop(order.popleft(), None)
        while batches and order and batches[0][0] < seqs.get(order[0], 0):
            batches.popleft()  # batches whose entries were all evicted by count

    def oldest_seq(self) -> int | None:
        return self._seqs.get(self._order[0]) if self._order else None
