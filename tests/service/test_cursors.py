"""Durable follower cursors: resume exactly after the committed seq, across restarts and crashes."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from service.client import JournalClient
from service.cursors import CURSOR_FILE, TMP_SUFFIX, CursorFileError, encode_cursor_file
from service.entry import StoredEntry
from service.errors import BadRequestError, OutOfRangeError
from service.metrics import AckwalCollector
from tests.service.conftest import RunningService
from tests.service.harness import command_for, new_rid


async def append_n(client: JournalClient, n: int) -> list[int]:
    seqs = []
    for _ in range(n):
        rid = new_rid()
        seqs.append((await client.append(rid, "Place", command_for(rid))).seq)
    return seqs


async def take(it: AsyncIterator[StoredEntry], n: int) -> list[int]:
    out = []
    for _ in range(n):
        out.append((await asyncio.wait_for(anext(it), 10)).seq)
    return out


async def test_subscribe_with_a_cursor_resumes_right_after_its_committed_seq(
    running_service: RunningService,
) -> None:
    async with running_service() as svc, JournalClient(svc.settings.socket_path) as client:
        seqs = await append_n(client, 10)
        assert await client.cursor_commit("fills", seqs[4]) == seqs[4]
        it = client.subscribe(cursor="fills")
        assert await take(it, 5) == seqs[5:]
        live = await append_n(client, 3)  # the hand-over to live: no gap, no duplicate
        assert await take(it, 3) == live
        await it.aclose()


async def test_a_cursor_never_committed_starts_at_from_seq_or_the_first_seq(
    running_service: RunningService,
) -> None:
    async with running_service() as svc, JournalClient(svc.settings.socket_path) as client:
        seqs = await append_n(client, 4)
        it = client.subscribe(cursor="new")
        assert await take(it, len(seqs)) == seqs
        await it.aclose()
        it = client.subscribe(seqs[2], cursor="other")
        assert await take(it, 2) == seqs[2:]
        await it.aclose()
        assert await client.cursors() == {}  # subscribing alone commits nothing


async def test_a_committed_cursor_survives_a_restart(running_service: RunningService) -> None:
    async with running_service() as svc, JournalClient(svc.settings.socket_path) as client:
        seqs = await append_n(client, 6)
        await client.cursor_commit("a", seqs[1])
        await client.cursor_commit("b", seqs[3])
    async with running_service() as svc:
        assert svc.journals["main"].cursors.lowest() == seqs[1]
        async with JournalClient(svc.settings.socket_path) as client:
            assert await client.cursors() == {"a": seqs[1], "b": seqs[3]}
            it = client.subscribe(cursor="b")
            assert await take(it, 2) == seqs[4:]
            await it.aclose()


async def test_a_cursor_never_moves_backwards_nor_beyond_the_last_seq(
    running_service: RunningService,
) -> None:
    async with running_service() as svc, JournalClient(svc.settings.socket_path) as client:
        seqs = await append_n(client, 3)
        await client.cursor_commit("c", seqs[2])
        with pytest.raises(BadRequestError, match="never moves backwards"):
            await client.cursor_commit("c", seqs[0])
        with pytest.raises(OutOfRangeError, match="last seq"):
            await client.cursor_commit("c", seqs[2] + 1)
        with pytest.raises(BadRequestError, match="cursor"):
            await client.cursor_commit("bad name/with slash", seqs[0])
        assert await client.cursor_commit("c", seqs[2]) == seqs[2]  # a retry: accepted
        assert await client.cursors() == {"c": seqs[2]}


async def test_recommitting_the_same_seq_writes_nothing(running_service: RunningService) -> None:
    async with running_service() as svc:
        journal = svc.journals["main"]
        seqs = [r.seq for r in [await journal.append(new_rid(), "T", b"x") for _ in range(2)]]
        await journal.cursor_commit("x", seqs[1])
        writes = journal.cursors.writes
        await journal.cursor_commit("x", seqs[1])
        assert journal.cursors.writes == writes


async def test_concurrent_commits_share_one_file_write(running_service: RunningService) -> None:
    async with running_service() as svc:
        journal = svc.journals["main"]
        seq = (await journal.append(new_rid(), "T", b"x")).seq
        await asyncio.gather(*(journal.cursor_commit(f"c{i}", seq) for i in range(100)))
        assert len(journal.cursors) == 100
        assert journal.cursors.writes < 100  # group commit: the first write carries one, the
        # second every commit that arrived meanwhile
        assert journal.cursors.lowest() == seq


async def test_lowest_is_none_without_cursors_and_follows_deletes(
    running_service: RunningService,
) -> None:
    async with running_service() as svc:
        journal = svc.journals["main"]
        assert journal.cursors.lowest() is None
        seqs = [(await journal.append(new_rid(), "T", b"x")).seq for _ in range(3)]
        await journal.cursor_commit("slow", seqs[0])
        await journal.cursor_commit("fast", seqs[2])
        assert journal.cursors.lowest() == seqs[0]
        assert await journal.cursor_delete("slow")
        assert not await journal.cursor_delete("slow")
        assert journal.cursors.lowest() == seqs[2]


async def test_in_process_subscribe_with_a_cursor_resumes_after_it(
    running_service: RunningService,
) -> None:
    async with running_service() as svc:
        journal = svc.journals["main"]
        seqs = [(await journal.append(new_rid(), "T", b"x")).seq for _ in range(5)]
        await journal.cursor_commit("p", seqs[2])
        it = journal.subscribe(cursor="p")
        assert await take(it, 2) == seqs[3:]
        await it.aclose()


async def test_a_damaged_cursor_file_refuses_the_start(
    running_service: RunningService, tmp_path: Path
) -> None:
    async with running_service() as svc:
        journal = svc.journals["main"]
        seq = (await journal.append(new_rid(), "T", b"x")).seq
        await journal.cursor_commit("d", seq)
    path = tmp_path / "data" / CURSOR_FILE
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CursorFileError, match="CRC"):
        async with running_service():
            pass


async def test_a_leftover_temp_file_of_an_interrupted_replace_is_ignored(
    running_service: RunningService, tmp_path: Path
) -> None:
    async with running_service() as svc:
        journal = svc.journals["main"]
        seqs = [(await journal.append(new_rid(), "T", b"x")).seq for _ in range(2)]
        await journal.cursor_commit("t", seqs[0])
    # A crash between writing the temp file and renaming it: the old file is the truth.
    tmp = tmp_path / "data" / (CURSOR_FILE + TMP_SUFFIX)
    tmp.write_bytes(encode_cursor_file({"t": seqs[1]})[:10])
    async with running_service() as svc:
        journal = svc.journals["main"]
        assert journal.cursors.get("t") == seqs[0]
        await journal.cursor_commit("t", seqs[1])
    assert not os.path.exists(tmp)
    async with running_service() as svc:
        assert svc.journals["main"].cursors.get("t") == seqs[1]


async def test_cursor_lag_is_exported_per_cursor(running_service: RunningService) -> None:
    async with running_service() as svc:
        journal = svc.journals["main"]
        seqs = [(await journal.append(new_rid(), "T", b"x")).seq for _ in range(4)]
        await journal.cursor_commit("lagging", seqs[0])
        registry = CollectorRegistry()
        registry.register(AckwalCollector(svc))

        text = generate_latest(registry).decode()
        samples = {
            s.labels.get("cursor"): s.value
            for fam in text_string_to_metric_families(text)
            if fam.name == "ackwal_cursor_lag_records"
            for s in fam.samples
        }
        assert samples == {"lagging": seqs[-1] - seqs[0]}
