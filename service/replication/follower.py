"""The standby side (``ackwal follow``): copy a journal's stream into a local WAL, verbatim.

A durable JetStream consumer (``replication_consumer``) is (re)created at every start from the
stream position right after this WAL's last record, so a standby restarted after a crash resumes
where its own log ends, whatever the consumer had acknowledged. Every message is checked before
it is written: its ``Ackwal-Seq`` continues the log (a redelivered record must equal the local
one), its epoch never goes back, and ``Wal.append_raw`` checks the record's CRC and its link to
the local chain head. The first misfit stops the follower for good and names the first seq that
differs (``ackwal_replication_diverged``, ``/readyz``); reads keep being served.

Records are written in units that never merge two of the primary's batches (wal/replica.py) and
acknowledged to JetStream (AckPolicy ALL) only after their fdatasync.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import time
from typing import TYPE_CHECKING, Any

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from service.entry import entry_request_id
from service.replication.epoch import FIRST_EPOCH, current_epoch, epoch_of_record, write_epoch_file
from service.replication.stream import (
    HDR_EPOCH,
    HDR_SEQ,
    close_quietly,
    connect,
    header_int,
    stream_of,
    subject_of,
)
from wal import RecordType
from wal.format import RECORD_HEADER_SIZE
from wal.replica import DivergenceError, split_batches

if TYPE_CHECKING:
    from service.journal import Journal

log = structlog.get_logger("ackwal.replication")

FETCH_BATCH = 1000


class CannotFollowError(Exception):
    """The stream cannot continue this log (records gone from the stream, or it is behind)."""


class Follower:
    """Follows one journal's stream into its (standby) WAL."""

    role = "standby"
    fenced = None

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.settings = journal.settings
        self.subject = subject_of(self.settings, journal.name)
        self.stream = stream_of(self.settings, journal.name)
        self.epoch = FIRST_EPOCH
        self.applied = 0
        self.failures = 0
        self.error: str | None = None
        self.diverged: str | None = None
        self.diverged_seq: int | None = None
        self.lag_records = 0
        self._last_stored_at: float | None = None  # wall time of the last applied record
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._sub: Any = None
        self._task: asyncio.Task[None] | None = None
        self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ackwal-follow")
        self._last_log = 0.0

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.epoch = await loop.run_in_executor(None, current_epoch, self.journal.wal)
        self.journal.replication = self
        self._task = asyncio.create_task(self._run(), name=f"follower-{self.journal.name}")
        log.info(
            "replication.follower_started",
            journal=self.journal.name,
            subject=self.subject,
            consumer=self.settings.replication_consumer,
            last_seq=self.journal.wal.last_seq,
            epoch=self.epoch,
        )

    async def close(self) -> None:
        """Stop after the write in progress (its records are durable; the ack may be lost)."""
        task = self._task
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        self._writer.shutdown(wait=True)
        if self._nc is not None:
            await close_quietly(self._nc)
            self._nc = None

    # -- state --------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    @property
    def records_total(self) -> int:
        return self.applied

    @property
    def connected_flag(self) -> int:
        return int(self.connected)

    fenced_flag = 0

    @property
    def diverged_flag(self) -> int:
        return int(self.diverged is not None)

    @property
    def lag_seconds(self) -> float:
        if not self.lag_records or self._last_stored_at is None:
            return 0.0
        return max(0.0, time.time() - self._last_stored_at)

    def status(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "subject": self.subject,
            "consumer": self.settings.replication_consumer,
            "epoch": self.epoch,
            "last_seq": self.journal.wal.last_seq,
            "lag_records": self.lag_records,
            "lag_seconds": round(self.lag_seconds, 6),
            "connected": self.connected,
            "diverged": self.diverged,
            "diverged_seq": self.diverged_seq,
            "error": self.error,
        }

    # -- the loop -----------------------------------------------------------------------------

    async def _run(self) -> None:
        retry = self.settings.replication_retry_interval
        while True:
            try:
                if self._js is None:
                    self._nc = await connect(self.settings, f"ackwal-follow-{self.journal.name}")
                    self._js = self._nc.jetstream()
                if self._sub is None:
                    self._sub = await self._subscribe(self._js)
                try:
                    msgs = await self._sub.fetch(FETCH_BATCH, timeout=1.0)
                except (NatsTimeoutError, TimeoutError):
                    self.lag_records = 0
                    continue
                await self._apply(msgs)
                self.error = None
            except asyncio.CancelledError:
                raise
            except DivergenceError as exc:
                self._diverge(exc.seq, exc.reason)
                return
            except CannotFollowError as exc:
                self._diverge(self.journal.wal.last_seq + 1, str(exc))
                return
            except Exception as exc:
                self.failures += 1
                self.error = f"{type(exc).__name__}: {exc}".rstrip(": ")
                self._sub = None  # re-subscribe from the WAL's end
                now = time.monotonic()
                if now - self._last_log >= 5.0:
                    self._last_log = now
                    log.warning(
                        "replication.follow_failed", journal=self.journal.name, error=self.error
                    )
                await asyncio.sleep(retry)

    def _diverge(self, seq: int, reason: str) -> None:
        self.diverged = f"seq {seq}: {reason}"
        self.diverged_seq = seq
        log.critical(
            "replication.diverged",
            journal=self.journal.name,
            seq=seq,
            reason=reason,
            detail="the standby stopped following; its WAL ends at the last good record",
        )

    async def _subscribe(self, js: JetStreamContext) -> Any:
        """A durable pull consumer starting at the stream message of this WAL's next seq."""
        wal = self.journal.wal
        want = wal.last_seq + 1
        info = await js.stream_info(self.stream)
        state = info.state
        first_stream = int(state.first_seq or 0)
        last_stream = int(state.last_seq or 0)
        if not state.messages:
            start = last_stream + 1
        else:
            first_msg = await js.get_msg(self.stream, first_stream)
            first_wal = header_int(first_msg.headers, HDR_SEQ)
            if first_wal is None:
                raise CannotFollowError(f"stream {self.stream} seq {first_stream} has no {HDR_SEQ}")
            start = first_stream + (want - first_wal)
            if start < first_stream:
                raise CannotFollowError(
                    f"the stream {self.stream} starts at seq {first_wal}, this standby needs "
                    f"{want}: seed the standby with a copy of the primary's data directory"
                )
            if start > last_stream + 1:
                raise CannotFollowError(
                    f"this standby holds seq {want - 1}, beyond the stream's last record "
                    f"(seq {first_wal + last_stream - first_stream}): it is not this stream's copy"
                )
            if want > 1 and start - 1 >= first_stream:
                prev = await js.get_msg(self.stream, start - 1)
                local = next(iter(wal.read_raw(want - 1, want - 1)), None)
                if header_int(prev.headers, HDR_SEQ) != want - 1 or local != prev.data:
                    raise DivergenceError(
                        want - 1, "the stream's record differs from this standby's last record"
                    )
        durable = self.settings.replication_consumer
        with contextlib.suppress(NotFoundError):
            await js.delete_consumer(self.stream, durable)
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=max(1, start),
            ack_policy=AckPolicy.ALL,
            max_ack_pending=FETCH_BATCH * 4,
            filter_subject=self.subject,
        )
        sub = await js.pull_subscribe(
            self.subject, durable=durable, stream=self.stream, config=config
        )
        log.info(
            "replication.subscribed",
            journal=self.journal.name,
            consumer=durable,
            from_seq=want,
            stream_seq=start,
        )
        return sub

    async def _apply(self, msgs: list[Msg]) -> None:
        wal = self.journal.wal
        pending: list[bytes] = []
        for msg in msgs:
            seq = header_int(msg.headers, HDR_SEQ)
            epoch = header_int(msg.headers, HDR_EPOCH) or FIRST_EPOCH
            expected = wal.last_seq + 1 + len(pending)
            if seq is None:
                raise DivergenceError(expected, f"a stream message without {HDR_SEQ}")
            if epoch < self.epoch:
                raise DivergenceError(
                    seq,
                    f"a record of epoch {epoch} after epoch {self.epoch} (a fenced primary's "
                    "record): rejected",
                )
            if seq < expected:
                if seq <= wal.last_seq:
                    local = next(iter(wal.read_raw(seq, seq)), None)
                    if local != msg.data:
                        raise DivergenceError(seq, "redelivered record differs from the local one")
                continue
            if seq > expected:
                raise DivergenceError(expected, f"gap: the stream delivered seq {seq} next")
            data = msg.data
            if len(data) > 24 and data[24] == RecordType.EPOCH:
                await self._write(pending)
                pending = []
                await self._write([data])
                new = epoch_of_record(data[RECORD_HEADER_SIZE:])
                if new < self.epoch:
                    raise DivergenceError(seq, f"an EPOCH record going back to {new}")
                await asyncio.get_running_loop().run_in_executor(
                    self._writer, write_epoch_file, wal.directory, new, seq, wal.fs
                )
                self.epoch = new
                log.info("replication.epoch", journal=self.journal.name, epoch=new, seq=seq)
                continue
            pending.append(data)
        await self._write(pending)
        if msgs:
            last = msgs[-1]
            meta = last.metadata
            self.lag_records = int(meta.num_pending or 0)
            stamp = meta.timestamp
            self._last_stored_at = stamp.timestamp() if stamp is not None else time.time()
            await last.ack()

    async def _write(self, records: list[bytes]) -> None:
        if not records:
            return
        loop = asyncio.get_running_loop()
        journal = self.journal
        for batch in split_batches(records):
            first = await loop.run_in_executor(self._writer, journal.wal.append_raw, batch)
            self.applied += len(batch)
            journal.last_seq = journal.wal.last_seq
            # lookups on the standby (and its promotion) know the entries as they arrive
            index = journal.index
            for i, record in enumerate(batch):
                if record[24] == RecordType.ENTRY:
                    rid, recv_ms = entry_request_id(record[RECORD_HEADER_SIZE:])
                    index.add(rid, first + i, recv_ms)
            # live subscribers: one push per run of records of one type
            start = 0
            for i in range(1, len(batch) + 1):
                if i == len(batch) or batch[i][24] != batch[start][24]:
                    journal.fanout.publish(
                        first + start,
                        [r[RECORD_HEADER_SIZE:] for r in batch[start:i]],
                        batch[start][24],
                    )
                    start = i
