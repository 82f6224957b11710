"""The primary side: publish every committed record of a journal to its JetStream stream.

The WAL is the source of truth and the publisher only ever reads it: it tails the log from the
last record the stream holds (found at start and after every NATS failure by reading the
stream's last message, whose body it compares with its own record of that seq), and publishes
records that are already durable, a window at a time, each with ``Nats-Expected-Last-Sequence``
so the stream can never interleave two primaries (see stream.py).

``async`` mode: the journal's batcher only wakes the publisher; NATS being slow or down never
blocks or fails an append, the lag grows and is exported. ``sync`` mode: the batcher awaits
:meth:`Publisher.after_batch` between the fdatasync and the ACKs; it returns once JetStream
acknowledged every record of the batch, or halts the journal after ``replication_sync_timeout``
(nothing of that batch is ever ACKed; the records are in the local WAL and are published after
the restart, before the service accepts appends again).

Fencing: a stream whose last record carries a newer epoch, is ahead of this log, or differs
from this log's record of the same seq means another primary took over. The journal then
refuses every append with ``fenced`` (metric ``ackwal_replication_fenced``).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import PubAck

from service.protocol import ErrorCode
from service.replication.epoch import FIRST_EPOCH, current_epoch
from service.replication.stream import (
    HDR_EPOCH,
    HDR_EXPECTED_LAST_SEQ,
    HDR_MSG_ID,
    HDR_SEQ,
    close_quietly,
    connect,
    ensure_stream,
    msg_id,
    stream_of,
    stream_tail,
    subject_of,
)
from wal.reader import SeqOutOfRangeError

if TYPE_CHECKING:
    from service.journal import Journal

log = structlog.get_logger("ackwal.replication")

MAX_CHUNK_BYTES = 8 * 1024 * 1024
ACK_TIMEOUT = 2.0  # seconds to wait for a window's JetStream acks before re-syncing


class Publisher:
    """Publishes one journal's records; attach with :meth:`start`, detach with :meth:`close`."""

    role = "primary"

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.settings = journal.settings
        self.mode = self.settings.replication_mode
        self.subject = subject_of(self.settings, journal.name)
        self.stream = stream_of(self.settings, journal.name)
        self.epoch = FIRST_EPOCH
        self.published_seq = 0  # the highest seq JetStream acknowledged (or held at start)
        self.stream_last = 0  # the stream seq of that record
        self.fenced: str | None = None
        self.error: str | None = None
        self.published = 0
        self.failures = 0
        self._synced = False
        self._closing = False
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._wake = asyncio.Event()
        self._waiters: list[tuple[int, asyncio.Future[bool]]] = []
        self._behind: deque[tuple[int, float]] = deque()
        self._task: asyncio.Task[None] | None = None
        self._last_log = 0.0

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.epoch = await loop.run_in_executor(None, current_epoch, self.journal.wal)
        self._note(self.journal.wal.last_seq)
        self.journal.replication = self
        self.journal.replicate = self.after_batch
        # Retention never deletes a record JetStream does not hold yet (the floor composes with
        # the durable cursors' one; retention_ignore_cursors lifts both).
        cursor_floor = self.journal.retention.floor_seq

        def floor() -> int | None:
            cursors = cursor_floor()
            unpublished = self.published_seq + 1
            return unpublished if cursors is None else min(cursors, unpublished)

        self.journal.retention.floor_seq = floor
        self._task = asyncio.create_task(self._run(), name=f"publisher-{self.journal.name}")
        log.info(
            "replication.publisher_started",
            journal=self.journal.name,
            mode=self.mode,
            subject=self.subject,
            epoch=self.epoch,
        )

    async def wait_caught_up(self) -> None:
        """Until every record of the log at this moment is in the stream (or fenced)."""
        target = self.journal.wal.last_seq
        while self.fenced is None and self.published_seq < target:
            await self.wait_published(target, None)

    async def close(self, timeout: float) -> None:
        """Publish what the log holds (the run's seal included) for up to ``timeout``, stop."""
        self._closing = True
        self._wake.set()
        task = self._task
        if task is not None:
            if not self.connected:  # NATS is down: do not hold the shutdown for it
                timeout = min(timeout, 2 * self.settings.replication_retry_interval)
            done, _ = await asyncio.wait([task], timeout=timeout)
            if not done:
                task.cancel()
                await asyncio.wait([task])
                log.warning(
                    "replication.close_unpublished",
                    journal=self.journal.name,
                    unpublished=self.lag_records,
                )
        self._resolve_waiters(final=True)
        if self._nc is not None:
            await close_quietly(self._nc)
            self._nc = None

    # -- the journal's hook -------------------------------------------------------------------

    async def after_batch(self, last_seq: int) -> None:
        """Called by the batcher after each batch's fdatasync, before its ACKs."""
        self._note(last_seq)
        self._wake.set()
        if self.mode != "sync":
            return
        timeout = self.settings.replication_sync_timeout
        if await self.wait_published(last_seq, timeout):
            return
        why = self.fenced or (
            f"JetStream did not acknowledge seq {last_seq} within replication_sync_timeout="
            f"{timeout}s ({self.error or 'no answer'}); nothing of the batch was ACKed"
        )
        self.journal.halt(f"replication (sync mode): {why}")

    async def wait_published(self, seq: int, timeout: float | None) -> bool:
        if self.published_seq >= seq:
            return True
        if self.fenced is not None:
            return False
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiters.append((seq, fut))
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            return False

    # -- state --------------------------------------------------------------------------------

    @property
    def records_total(self) -> int:
        return self.published

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    @property
    def connected_flag(self) -> int:
        return int(self.connected)

    @property
    def fenced_flag(self) -> int:
        return int(self.fenced is not None)

    diverged_flag = 0  # a primary does not diverge: a mismatch with the stream fences it

    @property
    def lag_records(self) -> int:
        return max(0, self.journal.wal.last_seq - self.published_seq)

    @property
    def lag_seconds(self) -> float:
        behind = self._behind
        while behind and behind[0][0] <= self.published_seq:
            behind.popleft()
        return time.monotonic() - behind[0][1] if behind and self.lag_records else 0.0

    def status(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "mode": self.mode,
            "subject": self.subject,
            "epoch": self.epoch,
            "published_seq": self.published_seq,
            "lag_records": self.lag_records,
            "lag_seconds": round(self.lag_seconds, 6),
            "connected": self.connected,
            "fenced": self.fenced,
            "error": self.error,
        }

    def _note(self, last_seq: int) -> None:
        """Remember when ``last_seq`` became durable (at most one mark per 5 ms)."""
        now = time.monotonic()
        behind = self._behind
        if last_seq > self.published_seq and (not behind or now - behind[-1][1] >= 0.005):
            behind.append((last_seq, now))

    def _resolve_waiters(self, final: bool = False) -> None:
        if not self._waiters:
            return
        keep = []
        for seq, fut in self._waiters:
            if fut.done():
                continue
            if seq <= self.published_seq:
                fut.set_result(True)
            elif self.fenced is not None or final:
                fut.set_result(False)
            else:
                keep.append((seq, fut))
        self._waiters = keep

    # -- the publishing loop ------------------------------------------------------------------

    async def _run(self) -> None:
        retry = self.settings.replication_retry_interval
        while True:
            try:
                if self._js is None:
                    self._nc = await connect(self.settings, f"ackwal-{self.journal.name}")
                    self._js = self._nc.jetstream(
                        publish_async_max_pending=self.settings.replication_publish_window
                    )
                if not self._synced:
                    await ensure_stream(self._js, self.settings, self.journal.name)
                    await self._resync()
                if self.fenced is not None:
                    return
                target = self.journal.wal.last_seq
                if self.published_seq >= target:
                    if self._closing:
                        return
                    self._wake.clear()
                    if self.journal.wal.last_seq <= self.published_seq:
                        await self._wake.wait()
                    continue
                await self._publish(target)
                self.error = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._failed(exc)
                if self._closing and self._nc is None:
                    return
                await asyncio.sleep(retry)

    def _failed(self, exc: BaseException) -> None:
        self.failures += 1
        self.error = f"{type(exc).__name__}: {exc}".rstrip(": ")
        self._synced = False
        now = time.monotonic()
        if now - self._last_log >= 5.0:
            self._last_log = now
            log.warning(
                "replication.publish_failed",
                journal=self.journal.name,
                error=self.error,
                published_seq=self.published_seq,
                lag_records=self.lag_records,
            )

    async def _resync(self) -> None:
        """Find where the stream ends and check that it is this log's record there."""
        assert self._js is not None
        tail = await stream_tail(self._js, self.settings, self.journal.name)
        wal = self.journal.wal
        if tail.seq is None:
            self.published_seq = wal.first_seq - 1
            self.stream_last = tail.stream_last_seq
        elif tail.epoch is not None and tail.epoch > self.epoch:
            self._fence(
                f"the stream {self.stream} holds seq {tail.seq} from epoch {tail.epoch}, newer "
                f"than this node's epoch {self.epoch}: another primary was promoted"
            )
        elif tail.seq > wal.last_seq:
            self._fence(
                f"the stream {self.stream} holds seq {tail.seq}, beyond this log's end "
                f"{wal.last_seq}: another primary published, or this data directory lost records"
            )
        else:
            try:
                local = next(iter(wal.read_raw(tail.seq, tail.seq)), None)
            except SeqOutOfRangeError:
                local = None
                if tail.seq + 1 < wal.first_seq:
                    self._fence(
                        f"the stream ends at seq {tail.seq} but this log starts at "
                        f"{wal.first_seq}: the records between are gone; cannot publish"
                    )
            if local is not None and local != tail.data:
                self._fence(
                    f"the stream's record of seq {tail.seq} differs from this log's: the "
                    "histories diverged (another primary wrote it)"
                )
            self.published_seq = tail.seq
            self.stream_last = tail.stream_last_seq
        self._synced = True
        self._resolve_waiters()

    def _fence(self, reason: str) -> None:
        if self.fenced is not None:
            return
        self.fenced = reason
        self.journal.refusal = (
            ErrorCode.FENCED,
            f"journal {self.journal.name} is fenced, it accepts no appends: {reason}",
        )
        log.critical("replication.fenced", journal=self.journal.name, reason=reason)
        self._resolve_waiters()

    async def _publish(self, target: int) -> None:
        assert self._js is not None
        js = self._js
        start = self.published_seq + 1
        records: list[bytes] = []
        nbytes = 0
        window = self.settings.replication_publish_window
        for data in self.journal.wal.read_raw(start, target):
            records.append(data)
            nbytes += len(data)
            if len(records) >= window or nbytes >= MAX_CHUNK_BYTES:
                break
        name = self.journal.name
        epoch = str(self.epoch)
        futs: list[asyncio.Future[PubAck]] = []
        loop = asyncio.get_running_loop()
        try:
            for i, data in enumerate(records):
                seq = start + i
                headers = {
                    HDR_MSG_ID: msg_id(name, self.epoch, seq),
                    HDR_EXPECTED_LAST_SEQ: str(self.stream_last + i),
                    HDR_SEQ: str(seq),
                    HDR_EPOCH: epoch,
                }
                futs.append(await js.publish_async(self.subject, data, headers=headers))
            # Acks lost with a connection or a stream leader (failover) never come: give up on
            # them early enough to find the stream's real end and re-publish within the sync
            # timeout (Nats-Msg-Id and the expected last sequence make that safe).
            deadline = loop.time() + min(ACK_TIMEOUT, self.settings.replication_sync_timeout / 2)
            for i, fut in enumerate(futs):
                # Acks come in order: while the first is awaited, most later ones arrive, and
                # a wait_for per record (a timer and a waiter each) cost the event loop more
                # than the publish itself.
                if fut.done():
                    ack = fut.result()
                else:
                    async with asyncio.timeout(max(0.001, deadline - loop.time())):
                        ack = await fut
                if ack.duplicate:  # stored before (an ack we missed): find the real end again
                    self._synced = False
                    return
                self.stream_last = ack.seq
                self.published_seq = start + i
                self.published += 1
                if i % 64 == 63:
                    self._resolve_waiters()
        finally:
            for fut in futs:
                if not fut.done():
                    fut.cancel()
            self._resolve_waiters()
