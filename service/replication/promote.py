"""``ackwal promote``: turn a stopped, caught-up standby into the primary of a new epoch.

Per journal: follow the stream until this WAL holds the stream's last record (the standby must
be stopped: the directory lock says so otherwise), check that nothing else was published since
(an old primary still running would be), then append an EPOCH record with the next epoch,
record it in ``epoch.acke`` and publish it with ``Nats-Expected-Last-Sequence`` set to the
stream's last message. From then on the stream's tail carries the new epoch: a revived old
primary reads it at start and fences itself, and every standby rejects older epochs.

If the EPOCH record cannot be published because the stream moved on (the old primary published
in between), promotion fails loudly; the local EPOCH record then differs from the stream's
record of that seq, so a primary started on this directory fences itself rather than forking
the history (docs/REPLICATION.md, "When promotion fails").
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass

import structlog
from nats.js.errors import APIError

from service.journal import Journal
from service.replication.epoch import current_epoch, epoch_payload, write_epoch_file
from service.replication.follower import Follower
from service.replication.stream import (
    HDR_EPOCH,
    HDR_EXPECTED_LAST_SEQ,
    HDR_MSG_ID,
    HDR_SEQ,
    WRONG_LAST_SEQUENCE,
    StreamTail,
    connect,
    msg_id,
    stream_tail,
    subject_of,
)
from service.settings import Settings
from wal import RecordType, Wal, WalOptions

log = structlog.get_logger("ackwal.replication")


class PromoteError(Exception):
    """Promotion refused; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class Promoted:
    journal: str
    epoch: int
    seq: int


async def promote(settings: Settings, names: list[str], timeout: float) -> list[Promoted]:
    """Promote each journal in ``names`` (every journal when empty), in order."""
    dirs = settings.journal_dirs()
    unknown = [n for n in names if n not in dirs]
    if unknown:
        raise PromoteError(f"unknown journal {', '.join(unknown)}; configured: {', '.join(dirs)}")
    return [
        await _promote_one(settings.replace(data_dir=dirs[name]), name, timeout)
        for name in (names or list(dirs))
    ]


async def _catch_up(settings: Settings, name: str, timeout: float) -> StreamTail:
    """Follow until this WAL holds the stream's last record; return that tail."""
    nc = await connect(settings, f"ackwal-promote-{name}")
    try:
        js = nc.jetstream()
        tail = await stream_tail(js, settings, name)
        journal = await Journal.open(settings, name, standby=True)
        follower = Follower(journal)
        try:
            await follower.start()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while journal.wal.last_seq < (tail.seq or 0) and follower.diverged is None:
                if loop.time() > deadline:
                    raise PromoteError(
                        f"journal {name}: not caught up within {timeout}s (at seq "
                        f"{journal.wal.last_seq}, the stream ends at {tail.seq}; "
                        f"{follower.error or 'no error'})"
                    )
                await asyncio.sleep(0.02)
            if follower.diverged is not None:
                raise PromoteError(
                    f"journal {name}: the standby diverged from the stream at "
                    f"{follower.diverged}; it cannot become the primary"
                )
        finally:
            await follower.close()
            await journal.close()
        again = await stream_tail(js, settings, name)
        if again.stream_last_seq != tail.stream_last_seq:
            raise PromoteError(
                f"journal {name}: the stream grew while catching up (seq {tail.seq} -> "
                f"{again.seq}): the old primary is still publishing; stop it, then promote"
            )
        return tail
    finally:
        await nc.close()


async def _promote_one(settings: Settings, name: str, timeout: float) -> Promoted:
    tail = await _catch_up(settings, name, timeout)
    loop = asyncio.get_running_loop()
    options = WalOptions(
        segment_size=settings.segment_size,
        max_record_size=settings.max_record_size,
        sync_mode=settings.sync_mode,  # type: ignore[arg-type]
        preallocate=settings.preallocate,
    )
    wal = await loop.run_in_executor(None, functools.partial(Wal.open, settings.data_dir, options))
    nc = await connect(settings, f"ackwal-promote-{name}")
    try:
        if wal.last_seq != (tail.seq or 0):
            raise PromoteError(
                f"journal {name}: this WAL ends at seq {wal.last_seq}, the stream at {tail.seq}"
            )
        old = await loop.run_in_executor(None, current_epoch, wal)
        epoch = max(old, tail.epoch or 0) + 1
        payload = epoch_payload(epoch, wal.last_seq)
        seq = await loop.run_in_executor(None, wal.append, [payload], RecordType.EPOCH)
        await loop.run_in_executor(None, write_epoch_file, wal.directory, epoch, seq, wal.fs)
        raw = next(iter(wal.read_raw(seq, seq)))
        js = nc.jetstream()
        try:
            await js.publish(
                subject_of(settings, name),
                raw,
                timeout=max(settings.replication_sync_timeout, 2.0),
                headers={
                    HDR_MSG_ID: msg_id(name, epoch, seq),
                    HDR_EXPECTED_LAST_SEQ: str(tail.stream_last_seq),
                    HDR_SEQ: str(seq),
                    HDR_EPOCH: str(epoch),
                },
            )
        except APIError as exc:
            if exc.err_code == WRONG_LAST_SEQUENCE:
                raise PromoteError(
                    f"journal {name}: lost the race with the old primary, which published after "
                    f"the catch-up; this directory now holds an EPOCH record the stream does not "
                    f"(seq {seq}): stop the old primary, then re-seed this standby "
                    "(docs/REPLICATION.md)"
                ) from None
            raise
        log.info("replication.promoted", journal=name, epoch=epoch, seq=seq, previous_epoch=old)
        return Promoted(name, epoch, seq)
    finally:
        await nc.close()
        await loop.run_in_executor(None, wal.close)
