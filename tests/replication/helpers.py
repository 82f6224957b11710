"""Shared helpers for replication tests: settings, stream contents, WAL comparison."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import nats
from nats.js.api import AckPolicy, ConsumerConfig

from service.journal import Journal
from service.settings import Settings
from tests.service.harness import make_settings
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
