"""The idempotency index on its own: ids of committed batches, eviction by count and by age."""

from __future__ import annotations

import gc
import os

from service.idempotency import IdempotencyIndex


def ids(n: int) -> list[bytes]:
    return [os.urandom(16) for _ in range(n)]


def test_a_batch_maps_each_id_to_its_seq() -> None:
    index = IdempotencyIndex(window_ms=60_000, max_entries=100)
    batch = ids(5)
    index.add_batch(batch, 10, recv_ms=1_000)
    assert [index.get(r) for r in batch] == [10, 11, 12, 13, 14]
    assert len(index) == 5
    assert index.oldest_seq() == 10
    assert index.get(os.urandom(16)) is None
    assert index.get(b"") is None


def test_the_oldest_ids_go_first_when_the_count_is_exceeded() -> None:
    index = IdempotencyIndex(window_ms=60_000, max_entries=6)
    first, second = ids(4), ids(4)
    index.add_batch(first, 1, recv_ms=1_000)
    index.add_batch(second, 5, recv_ms=1_001)
    assert len(index) == 6
    assert [index.get(r) for r in first] == [None, None, 3, 4]
    assert [index.get(r) for r in second] == [5, 6, 7, 8]
    assert index.oldest_seq() == 3


def test_ids_older_than_the_window_are_forgotten_by_batch() -> None:
    index = IdempotencyIndex(window_ms=1_000, max_entries=100)
    old, mid, new = ids(3), ids(3), ids(3)
    index.add_batch(old, 1, recv_ms=1_000)
    index.add_batch(mid, 4, recv_ms=1_500)
    index.add_batch(new, 7, recv_ms=2_200)  # cutoff 1,200: the first batch goes
    assert all(index.get(r) is None for r in old)
    assert [index.get(r) for r in mid + new] == list(range(4, 10))
    assert len(index) == 6
    assert index.oldest_seq() == 4


def test_an_id_already_held_keeps_its_first_seq_and_is_counted_once() -> None:
    # The journal answers a held id as a duplicate and never commits it again; the index
    # still stays consistent if it is handed one (and an id twice in one batch).
    index = IdempotencyIndex(window_ms=60_000, max_entries=4)
    held = ids(2)
    index.add_batch(held, 1, recv_ms=1_000)
    fresh = os.urandom(16)
    index.add_batch([held[0], fresh, fresh], 3, recv_ms=1_001)
    assert index.get(held[0]) == 1
    assert index.get(fresh) == 4
    assert len(index) == 3
    # Count eviction walks the order once per held id: nothing is dropped twice or leaks.
    more = ids(3)
    index.add_batch(more, 6, recv_ms=1_002)
    assert len(index) == 4
    assert index.get(held[0]) is None and index.get(held[1]) is None
    assert [index.get(r) for r in [fresh, *more]] == [4, 6, 7, 8]
    assert index.oldest_seq() == 4


def test_rebuild_one_by_one_then_batches_continue_in_order() -> None:
    index = IdempotencyIndex(window_ms=60_000, max_entries=3)
    rebuilt = ids(2)
    index.add(rebuilt[0], 1, 500)
    index.add(rebuilt[1], 3, 500)  # seq 2 was a run record
    batch = ids(2)
    index.add_batch(batch, 4, recv_ms=1_000)
    assert index.get(rebuilt[0]) is None
    assert [index.get(r) for r in [rebuilt[1], *batch]] == [3, 4, 5]
    assert index.oldest_seq() == 3


def test_ids_added_one_by_one_age_out_by_their_runs_newest_time() -> None:
    index = IdempotencyIndex(window_ms=1_000, max_entries=100)
    added = ids(16)
    for i, rid in enumerate(added):  # 0, 100, ..., 1500 ms: a run spans at most 1,000 ms
        index.add(rid, i + 1, i * 100)
    index.evict(now_ms=2_050)  # cutoff 1,050: the run of 0..1,000 ms goes, 1,100.. stays
    assert [index.get(r) for r in added[:11]] == [None] * 11
    assert [index.get(r) for r in added[11:]] == [12, 13, 14, 15, 16]
    assert len(index) == 5 and index.oldest_seq() == 12
    index.evict(now_ms=2_499)  # the open run's newest id (1,500 ms) is still in the window
    assert len(index) == 5
    index.evict(now_ms=2_501)
    assert len(index) == 0 and index.oldest_seq() is None
    later = os.urandom(16)
    index.add(later, 20, 3_000)  # a new run starts after the last one was evicted
    assert index.get(later) == 20 and len(index) == 1


def test_the_order_is_not_traversed_by_the_garbage_collector() -> None:
    # One tuple of ids per batch: once the collector has seen a tuple of bytes it stops
    # tracking it, so a full collection no longer visits millions of held ids one by one.
    index = IdempotencyIndex(window_ms=60_000, max_entries=100_000)
    for b in range(20):
        index.add_batch(ids(1_000), 1 + b * 1_000, recv_ms=1_000 + b)
    for i, rid in enumerate(ids(2_000)):
        index.add(rid, 20_001 + i, 2_000)
    gc.collect()
    runs = list(index._runs)  # white box: what the collector would otherwise walk
    assert len(runs) == 22  # 20 batches, then 2,000 single ids in runs of at most 1,024
    assert not any(gc.is_tracked(ids) for ids, _ in runs[:-1])
    assert len(index) == 22_000
