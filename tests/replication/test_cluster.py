"""A three-node NATS cluster with an R3 stream: a node killed during load loses no ACKed entry."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats

from tests.replication.helpers import (
    append_n,
    raw_log,
    repl_settings,
    serve_standby,
    wait_until,
)
from tests.replication.natsserver import NatsServer, free_port
from tests.service.harness import serve, short_socket_path


async def stream_leader(url: str, stream: str) -> str:
    nc = await nats.connect(url)
    try:
        info = await nc.jetstream().stream_info(stream)
        assert info.cluster is not None
        return str(info.cluster.leader)
    finally:
        await nc.close()


async def jetstream_ready(url: str, timeout: float = 30.0) -> None:
    """Until the cluster elected its JetStream meta leader (streams can be created)."""
    nc = await nats.connect(url)
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                await nc.jetstream().account_info()
                return
            except Exception:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.1)
    finally:
        await nc.close()


async def test_a_node_killed_during_load_loses_no_acked_entry(tmp_path: Path) -> None:
    cluster_ports = [free_port() for _ in range(3)]
    nodes = [
        NatsServer(
            tmp_path / "nats",
            name=f"n{i + 1}",
            cluster_port=cluster_ports[i],
            routes=[p for j, p in enumerate(cluster_ports) if j != i],
        )
        for i in range(3)
    ]
    try:
        for node in nodes:
            node.start(wait=False)
        for node in nodes:
            node.wait_listening()
        await jetstream_ready(nodes[0].url)
        urls = ",".join(n.url for n in nodes)
        with short_socket_path() as psock, short_socket_path() as ssock:
            primary = repl_settings(
                tmp_path / "p",
                psock,
                urls,
                replication_mode="sync",
                replication_stream_replicas=3,
                replication_sync_timeout=30.0,
            )
            standby = repl_settings(tmp_path / "s", ssock, urls)
            async with serve(primary) as psvc:
                journal = psvc.journals["main"]
                async with serve_standby(standby) as ssvc:
                    acked = await append_n(journal, 2000, batch=100)
                    loading = asyncio.ensure_future(append_n(journal, 6000, batch=100))
                    await asyncio.sleep(0.3)
                    # kill the stream's leader: JetStream elects another among the two left
                    leader = await stream_leader(nodes[0].url, "ackwal_main")
                    victim = next(n for n in nodes if n.name == leader)
                    await asyncio.to_thread(victim.kill)
                    acked += await asyncio.wait_for(loading, 120)
                    acked += await append_n(journal, 500, batch=100)
                    assert journal.halted is None
                    sj = ssvc.journals["main"]
                    await wait_until(
                        lambda: sj.wal.last_seq >= acked[-1], 60, "the standby to catch up"
                    )
                    held = {r.seq for r in sj.read(1, 1_000_000)}
                    assert set(acked) <= held
                    assert sj.wal.last_seq == journal.wal.last_seq
                    assert sj.wal.chain_head == journal.wal.chain_head
        standby_log = raw_log(tmp_path / "s")
        assert standby_log == raw_log(tmp_path / "p")[: len(standby_log)]
    finally:
        for node in nodes:
            node.stop()
