"""Shared helpers for replication tests: settings, stream contents, WAL comparison."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
from nats.js.api import AckPolicy, ConsumerConfig

from service.app import Service
from service.journal import Journal
from service.replication.stream import HDR_EPOCH, HDR_EXPECTED_LAST_SEQ, HDR_MSG_ID, HDR_SEQ
from service.settings import Settings
from tests.service.harness import RawConnection, make_settings
from wal import Wal


def repl_settings(data_dir: Path, sock: str, url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "replication_nats_url": url,
        "replication_retry_interval": 0.1,
        "exit_on_halt": False,
    }
    values.update(overrides)
    return make_settings(data_dir, sock, **values)


async def stream_messages(url: str, stream: str, subject: str) -> list[Any]:
    """Every message of ``stream`` in stream order (headers and data)."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        total = int(info.state.messages)
        sub = await js.pull_subscribe(
            subject, durable=None, stream=stream, config=ConsumerConfig(ack_policy=AckPolicy.NONE)
        )
        out: list[Any] = []
        while len(out) < total:
            batch = await sub.fetch(min(1000, total - len(out)), timeout=10)
            out.extend(batch)
        await sub.unsubscribe()
        return out
    finally:
        await nc.close()


async def append_n(journal: Journal, n: int, batch: int = 500) -> list[int]:
    """``n`` entries through the in-process API, ``batch`` per append_batch; their seqs."""
    seqs: list[int] = []
    while len(seqs) < n:
        k = min(batch, n - len(seqs))
        entries = [
            {"request_id": uuid.uuid4().bytes, "command_type": "t", "command": b"x" * 40}
            for _ in range(k)
        ]
        seqs.extend(r.seq for r in await journal.append_batch(entries))
    return seqs


def raw_log(directory: Path | str) -> list[bytes]:
    with Wal.open(str(directory), readonly=True) as wal:
        return list(wal.read_raw(1))


def chain_of(directory: Path | str) -> tuple[int, int]:
    with Wal.open(str(directory), readonly=True) as wal:
        return wal.last_seq, wal.chain_head


async def wait_until(predicate: Any, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def serve_standby(settings: Settings) -> AsyncIterator[Service]:
    """An in-process standby (``ackwal follow``) on the running loop."""
    service = Service(settings, standby=True)
    await service.start()
    try:
        yield service
    finally:
        await service.shutdown()


async def status_of(sock: str) -> dict[str, Any]:
    conn = await RawConnection.open(sock)
    try:
        reply = await conn.request({"op": "status"})
        status: dict[str, Any] = reply["status"]
        return status
    finally:
        await conn.close()


async def publish_raw(url: str, seq: int, data: bytes, epoch: int = 1) -> None:
    """Publish a record into the main journal's stream the way a (rogue) primary would."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        info = await js.stream_info("ackwal_main")
        await js.publish(
            "ackwal.main",
            data,
            headers={
                HDR_MSG_ID: f"main:{epoch}:{seq}:forged",
                HDR_EXPECTED_LAST_SEQ: str(info.state.last_seq),
                HDR_SEQ: str(seq),
                HDR_EPOCH: str(epoch),
            },
        )
    finally:
        await nc.close()
