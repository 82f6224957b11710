"""Retention: a background task that deletes whole WAL segments nobody needs any more.

Modes (setting ``retention``): ``full`` keeps everything; ``keep_last_segments`` keeps the newest
``retention_segments``; ``snapshot_anchored`` deletes the segments wholly below the newest
snapshot's anchor. Whatever the mode, nothing is deleted that is still needed by

* the newest snapshot (the records after its anchor rebuild the engine),
* a durable follower cursor (``floor_seq``: the lowest seq a cursor still needs), unless
  ``retention_ignore_cursors``,
* an open subscription or a ``recover`` in progress,

and never the active segment. Segments leave the reader's index on the event loop (where every
read runs to completion without yielding), then are unlinked and the directory fsynced on a
worker thread. The same task enforces ``max_journal_bytes``: when the WAL is at the limit after
a pass, appends get ``journal_full`` until a later pass finds it below.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import aiofiles.os
import structlog

if TYPE_CHECKING:
    from service.journal import Journal

log = structlog.get_logger("ackwal.retention")

FloorSeq = Callable[[], int | None]


def no_cursors() -> int | None:
    return None


class Retention:
    """One journal's retention task."""

    def __init__(self, journal: Journal, floor_seq: FloorSeq = no_cursors) -> None:
        self.journal = journal
        self.floor_seq = floor_seq
        self.deleted_segments = 0
        self.passes = 0
        self._kick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._running = asyncio.Lock()

    def start(self) -> None:
        name = f"retention-{self.journal.name}"
        self._task = asyncio.create_task(self._loop(), name=name)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def kick(self) -> None:
        """Run a pass soon (a snapshot was stored, the size limit was reached)."""
        self._kick.set()

    def note_commit(self) -> None:
        """After each batch: at the size limit, let a pass try to free space at once."""
        limit = self.journal.settings.max_journal_bytes
        if limit and self.journal.full is None and self.journal_bytes() >= limit:
            self.kick()

    def journal_bytes(self) -> int:
        return sum(s.bytes for s in self.journal.wal.segments())

    async def _loop(self) -> None:
        interval = self.journal.settings.retention_interval
        while True:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the cancellation that
            # stops this loop if it lands as the kick arrives (CPython gh-86296), and stop()
            # would then wait for this task forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._kick.wait()
            self._kick.clear()
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug costs this pass, never the journal
                log.exception("retention.pass_failed", journal=self.journal.name)

    def target_seq(self) -> int:
        """Whole segments whose records all lie below this seq may be deleted."""
        journal = self.journal
        settings = journal.settings
        wal = journal.wal
        mode = settings.retention
        if mode == "full":
            return 1
        newest = journal.snapshots.newest_anchor
        if mode == "keep_last_segments":
            segments = wal.segments()
            n = settings.retention_segments
            target = segments[-n].first_seq if len(segments) > n else 1
        else:  # snapshot_anchored
            target = newest + 1 if newest is not None else 1
        if newest is not None:
            target = min(target, newest + 1)
        if not settings.retention_ignore_cursors:
            floor = self.floor_seq()
            if floor is not None:
                target = min(target, floor)
        reading = journal.fanout.lowest_next_seq()
        if reading is not None:
            target = min(target, reading)
        pinned = journal.snapshots.lowest_pin()
        if pinned is not None:
            target = min(target, pinned)
        return target

    async def run_once(self) -> list[str]:
        """One pass: delete what may go, then re-evaluate the size limit."""
        async with self._running:
            journal = self.journal
            deleted: list[str] = []
            if journal.halted is None and not journal.wal.readonly:
                target = self.target_seq()
                if target > journal.wal.first_seq:
                    deleted = journal.wal.detach_segments_before(target)
                if deleted:
                    try:
                        await aiofiles.os.wrap(journal.wal.remove_segments)(deleted)
                    except OSError as exc:
                        journal.halt(f"deleting old segments failed: {exc}")
                        return deleted
                    self.deleted_segments += len(deleted)
                    log.info(
                        "retention.deleted",
                        journal=journal.name,
                        mode=journal.settings.retention,
                        segments=len(deleted),
                        first_seq=journal.wal.first_seq,
                    )
            self.passes += 1
            self._check_limit()
            return deleted

    def _check_limit(self) -> None:
        journal = self.journal
        limit = journal.settings.max_journal_bytes
        size = self.journal_bytes() if limit else 0
        if limit and size >= limit:
            if journal.full is None:
                journal.full = (
                    f"journal {journal.name} holds {size} bytes, at max_journal_bytes = {limit}, "
                    "and retention cannot free space: store a snapshot, move follower cursors "
                    "or raise the limit"
                )
                log.error(
                    "journal.full",
                    journal=journal.name,
                    bytes=size,
                    max_journal_bytes=limit,
                    retention=journal.settings.retention,
                    detail="appends get journal_full until space is freed",
                )
        elif journal.full is not None:
            journal.full = None
            log.warning(
                "journal.space_freed",
                journal=journal.name,
                bytes=size,
                max_journal_bytes=limit,
                detail="appends resume",
            )
