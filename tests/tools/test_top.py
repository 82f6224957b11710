"""``ackwal top``: a running service's status (and, with --metrics, latencies) at 80 columns."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from service.client import JournalClient
from service.entry import entry_map
from service.errors import HaltedError
from service.tools.top import quantile
from tests.service.harness import make_settings, serve, short_socket_path
from tests.tools.helpers import run_cli
from wal.faultfs import FaultyFileLayer


@contextlib.asynccontextmanager
async def load(socket_path: str, clients: int = 4) -> AsyncIterator[list[int]]:
    """Clients appending small batches until the block ends; yields the acknowledged seqs."""
    client = await JournalClient.connect(socket_path)
    stop = asyncio.Event()
    acked: list[int] = []

    async def worker() -> None:
        while not stop.is_set():
            entries = [entry_map(uuid.uuid4(), "load", b"x" * 64) for _ in range(4)]
            acked.extend(r.seq for r in await client.append_batch(entries))

    tasks = [asyncio.create_task(worker()) for _ in range(clients)]
    try:
        while not acked:
            await asyncio.sleep(0.01)
        yield acked
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        await client.close()


async def test_top_once_shows_a_running_service_in_80_columns(tmp_path: Path) -> None:
    with short_socket_path() as sock:
        async with serve(make_settings(tmp_path / "data", sock)), load(sock):
            res = await asyncio.to_thread(
                run_cli, "top", "--socket", sock, "--once", "--interval", "0.3"
            )
    assert res.code == 0, res.err
    lines = res.out.splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert lines[0].startswith("ackwal top")
    assert lines[1] == "state         running"
    appends = lines[2].split()
    assert appends[0] == "appends/s"
    assert int(appends[1].replace(",", "")) > 0
    assert any(line.startswith("latency       not in the status op") for line in lines)
    assert "top: 1 frame(s)" in res.err


async def test_top_with_metrics_shows_latency_percentiles_of_the_last_interval(
    tmp_path: Path,
) -> None:
    with short_socket_path() as sock:
        settings = make_settings(tmp_path / "data", sock, metrics_addr="127.0.0.1:0")
        async with serve(settings) as svc, load(sock):
            assert svc.metrics is not None
            args = ["top", "--socket", sock, "--metrics", f"127.0.0.1:{svc.metrics.port}"]
            res = await asyncio.to_thread(run_cli, *args, "--once", "--interval", "0.3", "--json")
            text = await asyncio.to_thread(run_cli, *args, "--once", "--interval", "0.2")
    assert res.code == 0, res.err
    frame = json.loads(res.out)
    rates = frame["rates"]
    assert rates["appends_per_s"] > 0
    assert rates["batches_per_s"] > 0
    assert rates["mean_batch"] >= 1
    assert 0 < rates["latency_p50_s"] <= rates["latency_p99_s"] <= rates["latency_p999_s"]
    assert rates["fdatasync_p99_s"] > 0
    assert frame["subscriber_lag"] == 0
    assert frame["status"]["halted"] is False
    assert text.code == 0
    assert any(line.startswith("latency       p50 ") for line in text.out.splitlines())


def test_interval_percentiles_interpolate_within_histogram_buckets() -> None:
    inf = math.inf
    prev = [(0.001, 100.0), (0.002, 100.0), (0.004, 100.0), (inf, 100.0)]
    cur = [(0.001, 110.0), (0.002, 120.0), (0.004, 130.0), (inf, 130.0)]
    # 30 new observations: 10 below 1 ms, 10 in 1-2 ms, 10 in 2-4 ms.
    assert quantile(0.5, cur, prev) == pytest.approx(0.0015)
    assert quantile(1.0, cur, prev) == pytest.approx(0.004)
    assert quantile(0.5, prev, prev) is None  # nothing observed in the interval
    assert quantile(0.5, [(0.001, 0.0), (inf, 4.0)], None) == 0.001  # beyond the last bound


def test_top_once_exits_3_when_no_service_answers(tmp_path: Path) -> None:
    res = run_cli("top", "--socket", str(tmp_path / "none.sock"), "--once", "--interval", "0.1")
    assert res.code == 3
    assert "cannot reach the service" in res.err


async def test_top_once_exits_1_and_shows_a_halted_service(tmp_path: Path) -> None:
    fs = FaultyFileLayer()
    with short_socket_path() as sock:
        settings = make_settings(tmp_path / "data", sock, exit_on_halt=False)
        async with serve(settings, fs=fs):
            client = await JournalClient.connect(sock)
            try:
                fs.fail_always("fdatasync")
                with pytest.raises(HaltedError):
                    await client.append(uuid.uuid4(), "doomed", b"x")
                res = await asyncio.to_thread(
                    run_cli, "top", "--socket", sock, "--once", "--interval", "0.1"
                )
            finally:
                fs.clear_faults()
                await client.close()
    assert res.code == 1
    assert res.out.splitlines()[1].startswith("state         HALTED: write failed")
    assert "(HALTED)" in res.err
