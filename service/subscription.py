"""In-process subscriptions: the journal's durable entries as an async iterator.

This lives apart from ``journal.py`` because it is an async generator, which mypyc does not
compile: keeping it here lets the journal's hot path be compiled (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from service.entry import StoredEntry, decode_entry
from service.errors import AckwalError
from wal import Record, RecordType

if TYPE_CHECKING:
    from service.journal import Journal


async def entries(
    journal: Journal, from_seq: int | None, cursor: str | None
) -> AsyncIterator[StoredEntry]:
    """Durable entries from ``from_seq`` (default 1), or right after ``cursor``'s committed
    seq: history, then live, with no gap and no duplicate."""
    if cursor is not None:
        from_seq = journal.cursor_start(cursor, from_seq)
    sink = QueueSubscriber()
    sub = journal.fanout.subscribe(sink, 0, 1 if from_seq is None else from_seq)
    try:
        while True:
            item = await sink.queue.get()
            if isinstance(item, AckwalError):
                raise item
            seq, rtype, payload = item
            if rtype == RecordType.ENTRY:
                yield decode_entry(seq, payload)
    finally:
        journal.fanout.unsubscribe(sub)


class QueueSubscriber:
    """Subscriber sink for in-process iteration: an unbounded queue fed from the WAL's pace."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[int, int, bytes] | AckwalError] = asyncio.Queue()

    def push(self, sub_id: Any, first_seq: int, record_type: int, payloads: list[bytes]) -> None:
        seq = first_seq
        for payload in payloads:
            self.queue.put_nowait((seq, record_type, payload))
            seq += 1

    def push_records(self, sub_id: Any, records: list[Record]) -> None:
        for rec in records:
            self.queue.put_nowait((rec.seq, rec.type, rec.payload))

    def can_push(self) -> bool:
        return self.queue.qsize() < 10_000

    async def wait_writable(self) -> None:
        while self.queue.qsize() >= 1_000:
            await asyncio.sleep(0.001)

    def end(self, sub_id: Any, error: AckwalError) -> None:
        self.queue.put_nowait(error)
