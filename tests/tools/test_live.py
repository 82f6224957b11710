"""Every tool is safe on a directory a running server holds, and the server never notices.

The server runs in this process under continuous load (its writer thread appending and rotating
segments) while verify, dump and stat read its data directory from another thread. They must
take no lock, change nothing, and see a clean log; repair must refuse.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from pathlib import Path

from service.client import JournalClient
from service.tools.common import lock_holder
from tests.service.harness import make_settings, serve, short_socket_path
from tests.tools.helpers import run_cli
from tests.tools.test_top import load


def segment_and_lock_files(data: Path) -> set[str]:
    return {n for n in os.listdir(data) if n.endswith(".wal") or n == "LOCK"}


async def test_read_only_tools_are_safe_while_a_server_holds_the_directory(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    with short_socket_path() as sock:
        # Small segments: the server rotates while the tools read.
        settings = make_settings(data, sock, segment_size=32 * 1024, max_record_size=8192)
        async with serve(settings), load(sock, clients=6) as acked:
            files_before = segment_and_lock_files(data)
            for _ in range(3):
                verified = await asyncio.to_thread(run_cli, "verify", str(data), "--json")
                assert verified.code == 0, verified.out + verified.err
                report = json.loads(verified.out)
                assert report["held_by_pid"] == os.getpid()
                assert report["records"] > 0

                dumped = await asyncio.to_thread(
                    run_cli, "dump", str(data), "--last", "5", "--json"
                )
                assert dumped.code == 0, dumped.err
                assert len(dumped.out.splitlines()) == 5

                ranged = await asyncio.to_thread(run_cli, "dump", str(data), "--from", "1")
                assert ranged.code == 0, ranged.err

                stat = await asyncio.to_thread(run_cli, "stat", str(data), "--json")
                assert stat.code == 0, stat.err
                doc = json.loads(stat.out)
                assert doc["held_by_pid"] == os.getpid()
                assert doc["last_seq"] > 0
                # every record but the run's RUN_STARTED is an entry
                assert doc["idempotency"]["request_ids"] == doc["records"] - 1

                refused = await asyncio.to_thread(run_cli, "repair", str(data), "--yes")
                assert refused.code == 4, refused.err
            # The server still holds its lock, and still appends.
            assert lock_holder(str(data)) == os.getpid()
            assert segment_and_lock_files(data) > files_before  # it rotated during the reads
            # The load keeps appending meanwhile: compare with what was acknowledged before
            # this append was sent (later ACKs of the load may carry higher seqs).
            before = max(acked)
            async with JournalClient(sock) as client:
                result = await client.append(uuid.uuid4(), "after", b"still working")
            assert result.seq > before
            final = [*acked, result.seq]
    # Every acknowledged seq is in the log, intact: the tools disturbed nothing.
    res = run_cli("verify", str(data), "--json")
    assert res.code == 0
    last = json.loads(res.out)["last_seq"]
    assert last >= max(final)
    seqs = [
        json.loads(line)["seq"] for line in run_cli("dump", str(data), "--json").out.splitlines()
    ]
    assert seqs == list(range(1, last + 1))
    assert lock_holder(str(data)) is None


async def test_stat_names_the_process_that_holds_the_directory(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with short_socket_path() as sock:
        async with serve(make_settings(data, sock)):
            res = await asyncio.to_thread(run_cli, "stat", str(data))
    assert res.code == 0
    assert f"lock         held by pid {os.getpid()}: a live log" in res.out
    assert "lock         not held by a running server" in run_cli("stat", str(data)).out
