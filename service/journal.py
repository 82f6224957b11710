"""The journal: bounded queue, group-commit batcher, commit acks, idempotency, fail-stop.

One ``Journal`` owns one WAL. Everything here runs on the event loop except ``Wal.append``,
which runs on a dedicated writer thread so that batch k+1 fills while batch k is in fdatasync.
Acknowledgements are delivered through :class:`AckSink` objects (a connection, or a future for
in-process callers), only after the batch's fdatasync returned and in seq order.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import os
import time
import uuid
from collections import deque
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Sequence,
)
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from service.cursors import CursorStore, check_name
from service.entry import (
    AppendResult,
    Event,
    PreparedEntry,
    StoredEntry,
    decode_entry,
    entry_map,
    entry_request_id,
    event_policy,
    prepare_entry,
)
from service.errors import AckwalError, error_from_code
from service.fanout import Fanout
from service.idempotency import IdempotencyIndex
from service.metrics import JournalMetrics
from service.protocol import ErrorCode
from service.retention import Retention
from service.runs import RunStartTimeoutError, last_run, run_sealed_payload, run_started_payload
from service.settings import Settings, parse_type_list
from service.snapshots import Recovery, Snapshot, SnapshotInfo, Snapshots
from service.subscription import entries
from service.turn import turn_flusher
from service.writer_thread import WriterThread
from wal import Record, RecordType, Wal, WalError, WalOptions
from wal.aio import LinuxAio
from wal.crc import IMPLEMENTATION as CRC_IMPLEMENTATION
from wal.fileio import OS_FILES, FileLayer
from wal.reader import SeqOutOfRangeError
from wal.writer import StagedBatch

log = structlog.get_logger("ackwal.journal")


class AckSink(Protocol):
    """Receives the outcome of an append. Called on the event loop, at most once per token."""

    def acked(self, token: Any, seq: int, duplicate: bool, response: bytes | None) -> None: ...

    def failed(self, token: Any, code: str, message: str) -> None: ...


class Pending:
    """An entry waiting in the queue or in the batch being written."""

    __slots__ = ("dups", "entry", "group", "sink", "t", "token")

    def __init__(
        self, entry: PreparedEntry, sink: AckSink, token: Any, t: float, group: int = 1
    ) -> None:
        self.entry = entry
        self.sink = sink
        self.token = token
        self.t = t  # perf_counter() when the request was received
        self.group = group  # entries that must go into the same batch, counted on the first one
        self.dups: list[tuple[AckSink, Any]] | None = None


# A batch handed to the writer thread: its entries, their payloads, when each arrived
# (perf_counter), when the write started, and the writer's future (the first seq).
_Write = tuple[list[Pending], list[bytes], list[float], float, asyncio.Future[int]]


@dataclass(slots=True)
class JournalStats:
    """Counters the metrics module exports (plain ints: cheap on the hot path)."""

    appended: int = 0
    duplicates: int = 0
    errors: int = 0
    batches: int = 0
    bytes_written: int = 0
    backpressure_events: int = 0
    last_batch_entries: int = 0
    last_sync_seconds: float = 0.0


class FutureSink:
    """AckSink for in-process callers: resolves one future per token."""

    __slots__ = ()

    def acked(self, token: Any, seq: int, duplicate: bool, response: bytes | None) -> None:
        if not token.done():
            token.set_result(AppendResult(seq, duplicate, response))

    def failed(self, token: Any, code: str, message: str) -> None:
        if not token.done():
            token.set_exception(error_from_code(code, message))


FUTURE_SINK = FutureSink()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Journal:
    """A journal over one WAL directory. Create with :meth:`open`; use from one event loop."""

    def __init__(self, name: str, wal: Wal, settings: Settings) -> None:
        self.name = name
        self.wal = wal
        self.settings = settings
        self.stats = JournalStats()
        self.metrics = JournalMetrics()
        self.index = IdempotencyIndex(
            int(settings.idempotency_window * 1000), settings.idempotency_max_entries
        )
        self.fanout = Fanout(self)
        self.cursors = CursorStore(
            wal.directory, wal.fs, last_seq=lambda: self.last_seq, read_only=wal.readonly
        )
        self.event_policy = event_policy(
            settings.event_persistence, parse_type_list(settings.critical_event_types)
        )
        self.snapshots = Snapshots(self)
        self.retention = Retention(self, floor_seq=self._cursor_floor)
        self.full: str | None = None  # why appends get journal_full (max_journal_bytes)
        self.halted: str | None = None
        self.closing = False
        self.last_seq = wal.last_seq
        self.last_batch_at = time.monotonic()
        self._write_started = self.last_batch_at
        self._queue: deque[Pending] = deque()
        self._inflight: dict[bytes, Pending] = {}
        self._writing: list[Pending] = []
        # Linux AIO for the batch syncs when available (see _start_write); the batch whose
        # sync is in flight there, with the future its batcher awaits.
        self._aio: LinuxAio | None = None
        self._aio_batch: tuple[StagedBatch, asyncio.Future[int]] | None = None
        self._capacity = settings.queue_capacity
        self._wake: asyncio.Event = asyncio.Event()
        self._space: asyncio.Event = asyncio.Event()
        self._space.set()
        self._on_space: list[Callable[[], None]] = []
        self._on_halt: list[Callable[[str], None]] = []
        loop = asyncio.get_running_loop()
        self._writer = WriterThread(loop, f"ackwal-writer-{name}")
        self._turn = turn_flusher(loop)
        self._tasks: list[asyncio.Task[None]] = []
        self._last_backpressure_log = 0.0
        self._closed = asyncio.Event()
        self.writer_stuck = False  # close() left a write that never returned (see close)
        self.run_started_seq = 0  # this run's RUN_STARTED record (0 until it is durable)
        # Replication hooks (service/replication): ``replicate`` is awaited after each batch's
        # fdatasync, before its ACKs (sync mode waits there for JetStream's ack); ``refusal``
        # (code, message) refuses every append (a standby, a fenced old primary).
        self.replicate: Callable[[int], Awaitable[None]] | None = None
        self.refusal: tuple[str, str] | None = None
        self.replication: Any = None  # its status() goes into status()["replication"]

    # -- lifecycle ----------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        settings: Settings,
        name: str = "main",
        *,
        fs: FileLayer = OS_FILES,
        standby: bool = False,
    ) -> Journal:
        """Open and recover the WAL off the loop, rebuild the idempotency index, start batching.

        ``fs`` is the WAL's file layer: tests pass :class:`wal.faultfs.FaultyFileLayer` to inject
        disk faults below the WAL; everything above it runs for real. ``standby``: the WAL is
        writable for the replication follower only; no run record, appends refused.
        """
        options = WalOptions(
            segment_size=settings.segment_size,
            max_record_size=settings.max_record_size,
            sync_mode=settings.sync_mode,  # type: ignore[arg-type]
            preallocate=settings.preallocate,
        )
        if settings.sync_mode == "none":
            log.warning(
                "journal.unsafe_sync_mode",
                sync_mode="none",
                detail="ACKs are NOT durable: for tests and benchmarks only",
            )
        loop = asyncio.get_running_loop()
        wal = await loop.run_in_executor(
            None,
            functools.partial(
                Wal.open, settings.data_dir, options, fs=fs, readonly=settings.read_only
            ),
        )
        journal = cls(name, wal, settings)
        try:
            await loop.run_in_executor(None, journal._rebuild_index)
            await loop.run_in_executor(None, journal.cursors.load)
            await journal.snapshots.open()
            if standby:
                journal.refusal = (
                    ErrorCode.READ_ONLY,
                    f"journal {name} is a standby (ackwal follow): send appends to the primary",
                )
                journal.cursors.read_only = True
            elif not wal.readonly:  # read-only: no run, nothing written
                await journal._begin_run()
        except BaseException:
            if not journal.writer_stuck:
                wal.close()
            journal._writer.shutdown(wait=not journal.writer_stuck)
            raise
        journal._start()
        rec = wal.recovery
        log.info(
            "journal.opened",
            journal=name,
            data_dir=wal.directory,
            last_seq=wal.last_seq,
            segments=len(wal.segments()),
            index_entries=len(journal.index),
            recovery_seconds=round(rec.duration_seconds, 4),
            torn_bytes_dropped=rec.dropped_bytes,
            crc=CRC_IMPLEMENTATION,
        )
        return journal

    async def _begin_run(self) -> None:
        """Log the run we recover from, then make this run's RUN_STARTED record durable.

        Nothing is appended before it: the batcher starts (and the socket is bound) only after.
        A disk that does not complete the write within ``run_started_timeout`` refuses the start.
        """
        loop = asyncio.get_running_loop()
        previous = await loop.run_in_executor(None, last_run, self.wal)
        if previous is not None:
            fields = previous.to_json()
            if previous.sealed:
                log.info("journal.previous_run", journal=self.name, **fields)
            else:
                log.warning(
                    "journal.recovering_from_run",
                    journal=self.name,
                    detail="the previous run ended without a seal (crash, kill or fail-stop)",
                    **fields,
                )
        payload = run_started_payload(self.settings)
        write = self._writer.run(self.wal.append, [payload], RecordType.RUN_STARTED)
        timeout = self.settings.run_started_timeout
        try:
            seq = await asyncio.wait_for(write, timeout)
        except TimeoutError:
            self.writer_stuck = True  # the write may never return: never wait for it
            self._writer.shutdown(wait=False)
            raise RunStartTimeoutError(
                f"the run_started record was not durable within run_started_timeout="
                f"{timeout}s: the disk under {self.wal.directory} does not complete writes; "
                f"start refused"
            ) from None
        self.run_started_seq = seq
        self.last_seq = self.wal.last_seq

    def _rebuild_index(self) -> None:
        """Re-learn committed request ids in the window from the tail of the WAL."""
        wal = self.wal
        want = self.index.max_entries
        if wal.last_seq == 0 or want <= 0:
            return
        cutoff = now_ms() - self.index.window_ms
        # Run records take seqs too: widen the window back until it holds ``want`` entries.
        chunks: list[list[tuple[bytes, int, int]]] = []
        end = wal.last_seq
        start = max(wal.first_seq, end - want + 1)
        found = 0
        while True:
            chunk = []
            for rec in wal.read(start, end):
                if rec.type == RecordType.ENTRY:
                    rid, recv_ms = entry_request_id(rec.payload)
                    chunk.append((rid, rec.seq, recv_ms))
            chunks.append(chunk)
            found += len(chunk)
            if found >= want or start <= wal.first_seq:
                break
            end = start - 1
            start = max(wal.first_seq, end - (want - found) + 1)
        index = self.index
        for chunk in reversed(chunks):
            for rid, seq, recv_ms in chunk:
                if recv_ms >= cutoff:
                    index.add(rid, seq, recv_ms)

    def _start(self) -> None:
        if not self.wal.readonly and self.settings.sync_mode != "none":
            self._aio = LinuxAio.open()
            if self._aio is not None:
                asyncio.get_running_loop().add_reader(self._aio.fileno(), self._aio_completed)
        log.info("journal.sync_path", journal=self.name, path=self.sync_path)
        self._tasks.append(asyncio.create_task(self._batch_loop(), name=f"batcher-{self.name}"))
        self._tasks.append(asyncio.create_task(self._watchdog(), name=f"watchdog-{self.name}"))
        self.retention.start()

    async def close(self) -> None:
        """Commit everything queued, then stop the batcher and close the WAL."""
        if self.closing:
            await self._closed.wait()
            return
        self.closing = True
        self._wake.set()
        batcher, watchdog = self._tasks
        watchdog.cancel()
        if self.halted is not None and not batcher.done():
            # Halted while a write or fdatasync is still running: on a failing disk it may
            # never return. Waiting for it, or queueing the WAL's close behind it on the writer
            # thread, would keep a fail-stop from ever stopping.
            batcher.cancel()
            self.writer_stuck = True
        else:
            # asyncio.wait, not `await batcher`: if this close is cancelled (shutdown timeout),
            # the cancellation must reach our caller instead of being taken for the batcher's.
            await asyncio.wait([batcher])
            if not batcher.cancelled():
                batcher.result()  # a batcher that died of a bug says so here
        await self.retention.stop()
        self.fanout.close()
        self._fail_queued(ErrorCode.SHUTTING_DOWN, "the journal is shutting down")
        await self.cursors.close()
        if not self.writer_stuck and self.halted is None and self.run_started_seq:
            await self._seal_run()
        self._close_aio()
        if self.writer_stuck:
            self._writer.shutdown(wait=False)
        else:
            await self._writer.run(self.wal.close)
            self._writer.shutdown(wait=True)
        self._closed.set()
        log.info("journal.closed", journal=self.name, last_seq=self.last_seq)

    async def _seal_run(self) -> None:
        """A clean stop: RUN_SEALED after everything this run committed."""
        payload = run_sealed_payload(self.run_started_seq, self.stats.appended)
        try:
            seq = await self._writer.run(self.wal.append, [payload], RecordType.RUN_SEALED)
        except WalError as exc:
            log.error("journal.run_seal_failed", journal=self.name, error=str(exc))
            return
        self.last_seq = seq
        log.info("journal.run_sealed", journal=self.name, started_seq=self.run_started_seq, seq=seq)

    def on_halt(self, callback: Callable[[str], None]) -> None:
        self._on_halt.append(callback)

    def on_space(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once when the queue next has room (connections resume reading)."""
        self._on_space.append(callback)

    # -- state --------------------------------------------------------------------------------

    @property
    def sync_path(self) -> str:
        """How batches are synced: "linux-aio" from the event loop, or "writer-thread"."""
        return "linux-aio" if self._aio is not None else "writer-thread"

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def queue_capacity(self) -> int:
        return self._capacity

    @property
    def queue_full(self) -> bool:
        return len(self._queue) >= self._capacity

    def status(self) -> dict[str, Any]:
        return {
            "journal": self.name,
            "first_seq": self.wal.first_seq,
            "journal_full": self.full is not None,
            "snapshot_anchor_seq": self.snapshots.newest_anchor,
            "last_seq": self.last_seq,
            "chain_head": self.wal.chain_head,
            "queue_depth": len(self._queue),
            "queue_capacity": self._capacity,
            "halted": self.halted is not None,
            "halt_reason": self.halted,
            "subscribers": self.fanout.count,
            "idempotency_entries": len(self.index),
            "segments": len(self.wal.segments()),
            "appended": self.stats.appended,
            "duplicates": self.stats.duplicates,
            "batches": self.stats.batches,
            "bytes_written": self.stats.bytes_written,
            "backpressure_events": self.stats.backpressure_events,
            "cursors": self.cursors.all(),
            "read_only": self.wal.readonly or self.refusal is not None,
            **({"replication": self.replication.status()} if self.replication else {}),
        }

    # -- appending (core, non-blocking) -------------------------------------------------------

    def submit(
        self, entry: PreparedEntry, sink: AckSink, token: Any, t: float | None = None
    ) -> None:
        """Queue one validated entry, or answer at once (duplicate, halted, shutting down).

        Never waits: callers check :attr:`queue_full` and apply backpressure themselves. ``t``
        is when the request arrived (``time.perf_counter()``), for the latency histograms.
        """
        if self.refusal is not None:  # replication: a standby, or a fenced old primary
            self._refuse(sink, token, *self.refusal)
            return
        if self.wal.readonly:
            message = f"journal {self.name} is served read-only: appends are not accepted"
            self._refuse(sink, token, ErrorCode.READ_ONLY, message)
            return
        if self.halted is not None:
            self._refuse(
                sink, token, ErrorCode.HALTED, f"journal {self.name} is halted: {self.halted}"
            )
            return
        if self.closing:
            self._refuse(sink, token, ErrorCode.SHUTTING_DOWN, "the journal is shutting down")
            return
        rid = entry.request_id
        inflight = self._inflight
        known = self.index.shards[rid[0]]
        if (rid in inflight or rid in known) and self._answer_duplicate(rid, sink, token):
            return
        if self.full is not None:  # after the duplicate check: a retry of a stored entry is fine
            self._refuse(sink, token, ErrorCode.JOURNAL_FULL, self.full)
            return
        pending = Pending(entry, sink, token, time.perf_counter() if t is None else t)
        inflight[rid] = pending
        self._queue.append(pending)
        if not self._wake.is_set():
            self._wake.set()

    def submit_group(
        self,
        entries: list[PreparedEntry],
        sink: AckSink,
        tokens: Sequence[Any],
        t: float | None = None,
    ) -> None:
        """Queue entries that must be committed in the same batch (``append_batch``); entry
        ``i`` is answered through ``sink`` with ``tokens[i]``."""
        if t is None:
            t = time.perf_counter()
        if (
            self.halted is not None
            or self.closing
            or self.full is not None
            or self.wal.readonly
            or self.refusal is not None
        ):
            for entry, token in zip(entries, tokens, strict=True):
                self.submit(entry, sink, token, t)
            return
        fresh: list[Pending] = []
        inflight = self._inflight
        shards = self.index.shards
        try:
            for entry, token in zip(entries, tokens, strict=True):
                rid = entry.request_id
                if (rid in inflight or rid in shards[rid[0]]) and self._answer_duplicate(
                    rid, sink, token
                ):
                    continue
                pending = Pending(entry, sink, token, t)
                inflight[rid] = pending
                fresh.append(pending)
        except BaseException:
            # Reading a duplicate's stored response failed: none of the group is queued, so
            # none of it may stay in flight (a retry would wait for it forever).
            for pending in fresh:
                self._inflight.pop(pending.entry.request_id, None)
            raise
        if fresh:
            fresh[0].group = len(fresh)
            self._queue.extend(fresh)
            if not self._wake.is_set():
                self._wake.set()

    def _refuse(self, sink: AckSink, token: Any, code: str, message: str) -> None:
        self.stats.errors += 1
        self.metrics.append_errors[code] += 1
        sink.failed(token, code, message)

    def count_rejected(self, code: str) -> None:
        """An append refused before it reached the journal (validation), for the metrics."""
        self.stats.errors += 1
        self.metrics.append_errors[code] += 1

    def _answer_duplicate(self, rid: bytes, sink: AckSink, token: Any) -> bool:
        pending = self._inflight.get(rid)
        if pending is not None:
            if pending.dups is None:
                pending.dups = []
            pending.dups.append((sink, token))
            self.stats.duplicates += 1
            return True
        seq = self.index.get(rid)
        if seq is None:
            return False
        stored = self._stored_entry(seq)
        self.stats.duplicates += 1
        sink.acked(token, seq, True, stored.response if stored is not None else None)
        return True

    def note_backpressure(self) -> None:
        """Count a backpressure event; log at most once a second."""
        self.stats.backpressure_events += 1
        now = time.monotonic()
        if now - self._last_backpressure_log >= 1.0:
            self._last_backpressure_log = now
            log.warning(
                "journal.backpressure",
                journal=self.name,
                queue_depth=len(self._queue),
                queue_capacity=self._capacity,
                events=self.stats.backpressure_events,
            )

    # -- the batcher --------------------------------------------------------------------------

    def _take_batch(self) -> list[Pending]:
        queue = self._queue
        max_entries = self.settings.max_batch_entries
        max_bytes = self.settings.max_batch_bytes
        batch: list[Pending] = []
        nbytes = 0
        while queue:
            group = queue[0].group
            if batch and (len(batch) + group > max_entries or nbytes >= max_bytes):
                break
            for _ in range(group):
                pending = queue.popleft()
                nbytes += len(pending.entry.payload)
                batch.append(pending)
        return batch

    def _start_write(self) -> _Write:
        """Take the next batch off the queue and hand it to the writer thread."""
        batch = self._take_batch()
        self._writing = batch
        payloads = [p.entry.payload for p in batch]
        self._signal_space()
        self._write_started = time.monotonic()
        started = time.perf_counter()
        arrived = [p.t for p in batch]
        self.metrics.queue_wait.observe_since(started, arrived)
        if self._aio is not None:
            done = self._start_aio_write(payloads)
            if done is not None:
                return batch, payloads, arrived, started, done
        return batch, payloads, arrived, started, self._writer.run(self.wal.append, payloads)

    def _start_aio_write(self, payloads: list[bytes]) -> asyncio.Future[int] | None:
        """Write the batch from this thread and submit its sync as Linux AIO: the writer
        thread would first have to win the GIL from this busy loop (~0.2 ms median at 64
        clients), then wake it again. None: the batch needs a new segment, so the writer
        thread appends it (rotation syncs files and the directory, which must not block here).

        The write itself is a ``pwrite`` into the page cache. The WAL's rules hold unchanged:
        the batch becomes readable and its ACKs leave only after the sync completed, and a
        sync that completes with an error fails the writer for good (``complete_append``).
        """
        assert self._aio is not None
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        try:
            staged = self.wal.stage_append(payloads)
        except WalError as exc:  # the write failed: the writer is failed for good
            done.set_exception(exc)
            return done
        if staged is None:
            return None
        try:
            self._aio.submit_sync(staged.fd, staged.datasync)
        except OSError as exc:
            # Not started, so not failed either: this batch's sync, and every later one,
            # runs on the writer thread instead.
            log.warning("journal.aio_unavailable", journal=self.name, error=str(exc))
            self._close_aio()
            return self._writer.run(self.wal.sync_and_complete_append, staged)
        self._aio_batch = (staged, done)
        return done

    def _aio_completed(self) -> None:
        """The AIO eventfd is readable: complete the batch whose sync finished."""
        assert self._aio is not None
        error: OSError | None = None
        try:
            results = self._aio.reap()
        except OSError as exc:  # the context failed: the sync's outcome is unknown
            results, error = [-(exc.errno or errno.EIO)], exc
        if not results or self._aio_batch is None:
            return
        staged, done = self._aio_batch
        self._aio_batch = None
        if error is None and results[0] < 0:
            error = OSError(-results[0], os.strerror(-results[0]))
        try:
            first = self.wal.complete_append(staged, error)
        except WalError as exc:
            if not done.done():
                done.set_exception(exc)
            return
        if not done.done():
            done.set_result(first)

    def _close_aio(self) -> None:
        """Stop polling the AIO eventfd and release the context (left to the process's exit
        if a sync is still in flight: see LinuxAio.close)."""
        aio, self._aio = self._aio, None
        if aio is not None:
            asyncio.get_running_loop().remove_reader(aio.fileno())
            aio.close()

    async def _batch_loop(self) -> None:
        latency = self.settings.max_batch_latency
        write: _Write | None = None
        while True:
            if write is None:
                if not self._queue:
                    if self.closing or self.halted is not None:
                        return
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                if (
                    latency > 0
                    and len(self._queue) < self.settings.max_batch_entries
                    and not self.closing
                ):
                    await asyncio.sleep(latency)
                write = self._start_write()
            batch, payloads, arrived, started, done = write
            write = None
            try:
                first = await done
            except WalError as exc:
                self._writing = []
                self.halt(f"write failed: {exc}")
                for p in batch:
                    self._fail_pending(p, ErrorCode.HALTED, f"journal {self.name} is halted: {exc}")
                return
            if self.replicate is not None:  # replication hook: may halt (sync mode, no ack)
                await self.replicate(first + len(batch) - 1)
            self._writing = []
            if self.halted is not None:
                # Halted (e.g. by the watchdog) while this batch was in fdatasync: its
                # waiters were already told "halted"; never ACK after a halt.
                return
            synced = time.perf_counter()
            if self._queue and latency == 0:
                # Batch k is durable: the writer starts on k+1 (it releases the GIL in its
                # pwrite and fdatasync) while this thread commits k and sends its replies.
                write = self._start_write()
            self.stats.last_sync_seconds = synced - started
            nbytes = sum(map(len, payloads))
            metrics = self.metrics
            metrics.fdatasync.observe(synced - started)
            metrics.batch_entries.observe(len(batch))
            metrics.batch_bytes.observe(nbytes)
            self._commit(batch, payloads, first, nbytes)
            # The batch's replies leave now, not at the end of this loop turn (after the reads
            # the turn still has to handle): clients send their next requests sooner, which
            # then fill the next batch. Interleaved rounds at 64 clients: +7.5% acked/s, p99
            # lower in each (docs/PERFORMANCE.md).
            self._turn.flush_now()
            metrics.append_latency.observe_since(synced, arrived)

    def _commit(self, batch: list[Pending], payloads: list[bytes], first: int, nbytes: int) -> None:
        """Resolve a durable batch in seq order, feed subscribers, free the idempotency slots."""
        recv = now_ms()
        inflight = self._inflight
        rids = [p.entry.request_id for p in batch]
        self.index.add_batch(rids, first, recv)
        seq = first
        for rid, p in zip(rids, batch, strict=True):
            del inflight[rid]
            p.sink.acked(p.token, seq, False, None)
            if p.dups is not None:
                response = p.entry.response
                for sink, token in p.dups:
                    sink.acked(token, seq, True, response)
            seq += 1
        self.last_seq = seq - 1
        self.last_batch_at = time.monotonic()
        stats = self.stats
        stats.appended += len(batch)
        stats.batches += 1
        stats.bytes_written += nbytes
        stats.last_batch_entries = len(batch)
        self.fanout.publish(first, payloads, RecordType.ENTRY)
        self.retention.note_commit()

    def _signal_space(self) -> None:
        if len(self._queue) < self._capacity:
            self._space.set()
            if self._on_space:
                callbacks, self._on_space = self._on_space, []
                for callback in callbacks:
                    callback()

    async def _watchdog(self) -> None:
        """Fail stop if the queue stays full while no batch completes for ``halt_threshold``."""
        threshold = self.settings.halt_threshold
        while True:
            await asyncio.sleep(min(0.25, threshold / 4))
            # Measured from the start of the write in progress, not from the last commit: after
            # an idle spell the last commit is old, yet the writer is not stalled.
            stalled = time.monotonic() - self._write_started
            if self._writing and self.queue_full and stalled > threshold:
                self.halt(
                    f"writer stalled: no batch completed for {stalled:.1f}s with a full queue"
                )
                return

    # -- fail-stop ----------------------------------------------------------------------------

    def halt(self, reason: str) -> None:
        """Stop for good: fail every pending append, refuse new ones, keep reads working."""
        if self.halted is not None:
            return
        self.halted = reason
        log.critical("journal.halted", journal=self.name, reason=reason, last_seq=self.last_seq)
        message = f"journal {self.name} is halted: {reason}"
        for p in self._writing:
            self._fail_pending(p, ErrorCode.HALTED, message)
        self._fail_queued(ErrorCode.HALTED, message)
        self._wake.set()
        self._space.set()
        for callback in self._on_halt:
            callback(reason)

    def _fail_queued(self, code: str, message: str) -> None:
        while self._queue:
            self._fail_pending(self._queue.popleft(), code, message)

    def _fail_pending(self, p: Pending, code: str, message: str) -> None:
        self._inflight.pop(p.entry.request_id, None)
        self.stats.errors += 1
        self.metrics.append_errors[code] += 1
        p.sink.failed(p.token, code, message)
        if p.dups is not None:
            for sink, token in p.dups:
                sink.failed(token, code, message)
            p.dups = None

    # -- reading ------------------------------------------------------------------------------

    def _stored_entry(self, seq: int) -> StoredEntry | None:
        try:
            rec = self.wal.get(seq)
        except SeqOutOfRangeError:
            return None  # deleted by retention: the seq is still known, the record is not
        if rec is None or rec.type != RecordType.ENTRY:
            return None
        return decode_entry(rec.seq, rec.payload)

    def wait_inflight(self, request_id: bytes, sink: AckSink, token: Any) -> bool:
        """If ``request_id`` is in flight, answer ``sink`` when it commits and return True."""
        pending = self._inflight.get(request_id)
        if pending is None:
            return False
        if pending.dups is None:
            pending.dups = []
        pending.dups.append((sink, token))
        return True

    def lookup_seq(self, request_id: bytes) -> int | None:
        return self.index.get(request_id)

    def read_records(self, from_seq: int, limit: int, max_bytes: int) -> list[Record]:
        """Up to ``limit`` durable records from ``from_seq`` (at least one if any exists)."""
        out: list[Record] = []
        total = 0
        try:
            for rec in self.wal.read(from_seq, self.last_seq):
                total += len(rec.payload) + 32
                if out and total > max_bytes:
                    break
                out.append(rec)
                if len(out) >= limit:
                    break
        except SeqOutOfRangeError as exc:
            raise AckwalError(str(exc), ErrorCode.OUT_OF_RANGE) from None
        return out

    # -- the in-process API -------------------------------------------------------------------

    async def wait_for_space(self) -> None:
        while self.queue_full and self.halted is None and not self.closing:
            self.note_backpressure()
            self._space.clear()
            await self._space.wait()

    async def append(
        self,
        request_id: uuid.UUID | bytes,
        command_type: str,
        command: bytes,
        *,
        response: bytes | None = None,
        events: Iterable[Event | dict[str, Any]] = (),
        ts_ms: int | None = None,
        pre_digest: bytes | None = None,
        post_digest: bytes | None = None,
        duration_us: int | None = None,
    ) -> AppendResult:
        """Append one entry in-process; returns once it is durable (or the original's answer)."""
        entry = prepare_entry(
            entry_map(
                request_id,
                command_type,
                command,
                response,
                events,
                ts_ms,
                pre_digest,
                post_digest,
                duration_us,
            ),
            now_ms(),
            self.settings.max_record_size,
            policy=self.event_policy,
        )
        await self.wait_for_space()
        fut: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        self.submit(entry, FUTURE_SINK, fut)
        return await fut

    async def append_batch(self, entries: list[dict[str, Any]]) -> list[AppendResult]:
        """Append entry maps (fields as in :meth:`append`) committed in one batch."""
        recv = now_ms()
        prepared = [
            prepare_entry(
                _normalise(e), recv, self.settings.max_record_size, policy=self.event_policy
            )
            for e in entries
        ]
        await self.wait_for_space()
        loop = asyncio.get_running_loop()
        futs: list[asyncio.Future[AppendResult]] = [loop.create_future() for _ in prepared]
        self.submit_group(prepared, FUTURE_SINK, futs)
        return list(await asyncio.gather(*futs))

    async def lookup(self, request_id: uuid.UUID | bytes) -> StoredEntry | None:
        """The stored entry for ``request_id`` (waiting for it if in flight), or None."""
        rid = request_id.bytes if isinstance(request_id, uuid.UUID) else request_id
        fut: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        if self.wait_inflight(rid, FUTURE_SINK, fut):
            await fut
        seq = self.index.get(rid)
        return self._stored_entry(seq) if seq is not None else None

    def read(self, from_seq: int, limit: int = 1000) -> list[StoredEntry]:
        """Durable entries from ``from_seq`` (non-entry records are skipped)."""
        return [
            decode_entry(r.seq, r.payload)
            for r in self.read_records(from_seq, limit, 1 << 62)
            if r.type == RecordType.ENTRY
        ]

    def cursor_start(self, cursor: str, from_seq: int | None) -> int:
        """Where ``subscribe(cursor=...)`` starts: right after the cursor's committed seq; for a
        cursor never committed, ``from_seq`` or else the first retained seq."""
        committed = self.cursors.get(check_name(cursor))
        if committed is not None:
            return committed + 1
        return from_seq if from_seq is not None else self.wal.first_seq

    async def cursor_commit(self, name: str, seq: int) -> int:
        """Durably move cursor ``name`` to ``seq`` (the last seq its consumer has processed)."""
        return await self.cursors.commit(name, seq)

    async def cursor_delete(self, name: str) -> bool:
        """Remove cursor ``name`` (it then no longer holds back retention)."""
        return await self.cursors.delete(name)

    def _cursor_floor(self) -> int | None:
        """The lowest seq a durable cursor still needs (retention keeps it and everything after)."""
        lowest = self.cursors.lowest()
        return lowest + 1 if lowest is not None else None

    async def snapshot_put(
        self, anchor_seq: int, data: bytes | AsyncIterable[bytes]
    ) -> SnapshotInfo:
        """Store the engine's state as of ``anchor_seq`` (bytes, or an async iterator of chunks)."""
        return await self.snapshots.put(anchor_seq, data)

    async def snapshot_get(self) -> Snapshot | None:
        """The newest valid snapshot (a corrupt newer one is passed over with a warning)."""
        return await self.snapshots.get()

    async def recover(self) -> Recovery:
        """The newest valid snapshot and every entry after its anchor (history, then live)."""
        return await self.snapshots.recover()

    def subscribe(
        self, from_seq: int | None = None, *, cursor: str | None = None
    ) -> AsyncIterator[StoredEntry]:
        """Durable entries from ``from_seq`` (default 1), or right after ``cursor``'s committed
        seq: history, then live, with no gap and no duplicate."""
        return entries(self, from_seq, cursor)


def _normalise(entry: dict[str, Any]) -> dict[str, Any]:
    rid = entry.get("request_id")
    if isinstance(rid, uuid.UUID):
        entry = {**entry, "request_id": rid.bytes}
    return entry
