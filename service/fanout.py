"""Subscriptions: history from the WAL, then live records, with no gap and no duplicate.

A subscription is either *catching up* (a task reads durable records from the WAL and pushes
them while the subscriber's buffer has room) or *live* (each committed batch is pushed as it is
acknowledged). The switch happens with no ``await`` between "I have read up to ``last_seq``"
and "I am live", so no batch can slip between the two. A live subscriber whose buffer fills up
is demoted back to catching up: a slow reader costs WAL reads later, never unbounded memory.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from service.errors import AckwalError, ShuttingDownError
from service.protocol import ErrorCode
from service.turn import read_budget
from wal import Record

if TYPE_CHECKING:
    from service.journal import Journal

log = structlog.get_logger("ackwal.fanout")

# One catch-up step reads at most this much from the WAL on the event loop, and steps of all
# subscriptions take turns, one per loop iteration (``Fanout._step``): 20 subscribers catching
# up at once used to read 20 MiB in one iteration and hold every ACK for hundreds of ms.
CATCH_UP_RECORDS = 512
CATCH_UP_BYTES = 256 * 1024


class SubscriberSink(Protocol):
    """Where a subscription's records go (a connection, or an in-process queue).

    A protocol, not a base class: the in-process sink is interpreted Python, and interpreted
    classes cannot inherit from mypyc-compiled ones."""

    def push(self, sub_id: Any, first_seq: int, record_type: int, payloads: list[bytes]) -> None:
        """Live records of one committed batch, seqs ``first_seq`` onwards."""
        ...

    def push_records(self, sub_id: Any, records: list[Record]) -> None:
        """Records read back from the WAL while catching up."""
        ...

    def can_push(self) -> bool:
        """False when the subscriber's buffer is full (it is then demoted to catching up)."""
        ...

    async def wait_writable(self) -> None:
        """Return once the buffer has room again."""
        ...

    def end(self, sub_id: Any, error: AckwalError) -> None:
        """The server ended the subscription."""
        ...


class Subscription:
    __slots__ = ("closed", "live", "next_seq", "sink", "sub_id", "task")

    def __init__(self, sink: SubscriberSink, sub_id: Any, next_seq: int) -> None:
        self.sink = sink
        self.sub_id = sub_id
        self.next_seq = next_seq
        self.live = False
        self.closed = False
        self.task: asyncio.Task[None] | None = None


class Fanout:
    """The journal's subscriptions."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self._subs: set[Subscription] = set()
        self._live: list[Subscription] = []
        self._step = asyncio.Lock()  # one catch-up read per loop iteration, in turn
        self._reads = read_budget(asyncio.get_running_loop())  # shared with read replies

    @property
    def count(self) -> int:
        return len(self._subs)

    def lags(self) -> list[int]:
        """Records each subscriber is behind the journal's last seq."""
        last = self.journal.last_seq
        return [max(0, last - s.next_seq + 1) for s in self._subs]

    def lowest_next_seq(self) -> int | None:
        """The lowest seq an open subscription has yet to receive (retention keeps it)."""
        return min((s.next_seq for s in self._subs), default=None)

    def subscribe(self, sink: SubscriberSink, sub_id: Any, from_seq: int) -> Subscription:
        first = self.journal.wal.first_seq
        from_seq = max(from_seq, 1)
        if from_seq < first:
            raise AckwalError(
                f"seq {from_seq} is no longer retained; the first available seq is {first}",
                ErrorCode.OUT_OF_RANGE,
            )
        sub = Subscription(sink, sub_id, from_seq)
        self._subs.add(sub)
        self._start_catch_up(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub.closed:
            return
        sub.closed = True
        self._subs.discard(sub)
        if sub.live:
            sub.live = False
            self._live.remove(sub)
        if sub.task is not None and sub.task is not asyncio.current_task():
            sub.task.cancel()

    def close(self) -> None:
        for sub in list(self._subs):
            self.unsubscribe(sub)
            sub.sink.end(sub.sub_id, ShuttingDownError("the journal is shutting down"))

    def publish(self, first_seq: int, payloads: list[bytes], record_type: int) -> None:
        """Push a committed (durable) batch to every live subscriber."""
        if not self._live:
            return
        end = first_seq + len(payloads)
        for sub in list(self._live):
            skip = sub.next_seq - first_seq
            if skip < 0 or not sub.sink.can_push():
                self._demote(sub)
                continue
            if skip < len(payloads):
                sub.sink.push(
                    sub.sub_id, sub.next_seq, record_type, payloads[skip:] if skip else payloads
                )
                sub.next_seq = end

    def _demote(self, sub: Subscription) -> None:
        sub.live = False
        self._live.remove(sub)
        self._start_catch_up(sub)

    def _start_catch_up(self, sub: Subscription) -> None:
        sub.task = asyncio.create_task(self._catch_up(sub), name="subscription-catch-up")

    async def _catch_up(self, sub: Subscription) -> None:
        journal = self.journal
        try:
            while not sub.closed:
                if not sub.sink.can_push():
                    await sub.sink.wait_writable()
                    continue
                if sub.next_seq > journal.last_seq:
                    # Caught up: go live with no await in between (no batch can slip past).
                    sub.live = True
                    sub.task = None
                    self._live.append(sub)
                    return
                async with self._step:
                    while self._reads.exhausted:  # this turn's reading is done: next turn
                        await asyncio.sleep(0)
                    # Things may have changed while waiting for our turn: if so, look again
                    # (a flag, not `continue`: mypyc compiles no `continue` out of a `with`).
                    moved = sub.closed or not sub.sink.can_push() or sub.next_seq > journal.last_seq
                    if not moved:
                        records = journal.read_records(
                            sub.next_seq, CATCH_UP_RECORDS, CATCH_UP_BYTES
                        )
                        self._reads.spend(sum(len(r.payload) for r in records))
                        sub.sink.push_records(sub.sub_id, records)
                        sub.next_seq = records[-1].seq + 1
                if not moved:
                    await asyncio.sleep(0)
        except AckwalError as exc:
            self.unsubscribe(sub)
            sub.sink.end(sub.sub_id, exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a broken WAL read must end this subscription, loudly
            log.error("fanout.catch_up_failed", error=str(exc), next_seq=sub.next_seq)
            self.unsubscribe(sub)
            sub.sink.end(sub.sub_id, AckwalError(f"subscription failed: {exc}", ErrorCode.INTERNAL))
