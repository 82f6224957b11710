"""The publisher against a real nats-server: every committed record, exactly once, in order."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from service.errors import HaltedError
from service.replication.stream import HDR_EPOCH, HDR_MSG_ID, HDR_SEQ
from tests.replication.helpers import (
    append_n,
    chain_of,
    raw_log,
    repl_settings,
    serve_standby,
    stream_messages,
    wait_until,
)
from tests.replication.natsserver import NatsServer
from tests.service.harness import serve, short_socket_path


async def test_async_mode_publishes_every_record_with_its_bytes_and_ids(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    with short_socket_path() as sock:
        settings = repl_settings(
            tmp_path / "d",
            sock,
            nats_server.url,
            replication_mode="async",
            journals={"orders": str(tmp_path / "orders")},
        )
        async with serve(settings) as svc:
            journal = svc.journals["main"]
            await append_n(journal, 2000)
            await append_n(svc.journals["orders"], 30)
            pub = svc.publishers[0]
            await wait_until(lambda: pub.lag_records == 0, what="the publisher to catch up")
            assert pub.status()["published_seq"] == journal.last_seq
        # after the stop, the run's seal was published too
        local = raw_log(tmp_path / "d")
        msgs = await stream_messages(nats_server.url, "ackwal_main", "ackwal.main")
        assert [m.data for m in msgs] == local
        assert [int(m.headers[HDR_SEQ]) for m in msgs] == list(range(1, len(local) + 1))
        assert {m.headers[HDR_EPOCH] for m in msgs} == {"1"}
        assert msgs[5].headers[HDR_MSG_ID] == "main:1:6"
        # every journal has its own stream and subject
        orders = await stream_messages(nats_server.url, "ackwal_orders", "ackwal.orders")
        assert [m.data for m in orders] == raw_log(tmp_path / "orders")
        assert orders[3].headers[HDR_MSG_ID] == "orders:1:4"

        # a restart publishes only what is new (nothing twice)
        async with serve(settings) as svc:
            await append_n(svc.journals["main"], 10)
        local = raw_log(tmp_path / "d")
        msgs = await stream_messages(nats_server.url, "ackwal_main", "ackwal.main")
        assert [m.data for m in msgs] == local


async def test_async_appends_never_fail_while_nats_is_down_and_the_stream_catches_up(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    with short_socket_path() as sock, short_socket_path() as ssock:
        settings = repl_settings(tmp_path / "d", sock, nats_server.url, replication_mode="async")
        standby = repl_settings(tmp_path / "s", ssock, nats_server.url)
        async with serve(settings) as svc, serve_standby(standby) as ssvc:
            journal = svc.journals["main"]
            pub = svc.publishers[0]
            await append_n(journal, 500, batch=50)
            await asyncio.to_thread(nats_server.kill)
            # appends go on, ACKed after the local fdatasync, while the lag grows
            await append_n(journal, 1500, batch=50)
            assert pub.lag_records > 0
            await wait_until(lambda: pub.lag_seconds > 0.2, what="the lag in seconds to grow")
            await wait_until(lambda: not pub.connected, what="the publisher to see the outage")
            await asyncio.to_thread(nats_server.start)
            await append_n(journal, 500, batch=50)
            await wait_until(lambda: pub.lag_records == 0, what="the publisher to catch up")
            sj = ssvc.journals["main"]
            await wait_until(lambda: sj.wal.last_seq == journal.wal.last_seq, 30, "the standby")
            # the standby checked continuity record by record: same chain head, same bytes
            assert sj.wal.chain_head == journal.wal.chain_head
            assert ssvc.followers[0].diverged is None
        assert raw_log(tmp_path / "s") == raw_log(tmp_path / "d")[: chain_of(tmp_path / "s")[0]]
        local = raw_log(tmp_path / "d")
        msgs = await stream_messages(nats_server.url, "ackwal_main", "ackwal.main")
        # no gap, no duplicate: the stream is the log, record for record
        assert [int(m.headers[HDR_SEQ]) for m in msgs] == list(range(1, len(local) + 1))
        assert [m.data for m in msgs] == local


async def test_sync_appends_wait_through_a_short_outage_and_fail_stop_after_the_timeout(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    with short_socket_path() as sock:
        settings = repl_settings(
            tmp_path / "d",
            sock,
            nats_server.url,
            replication_mode="sync",
            replication_sync_timeout=4.0,
        )
        acked: list[int] = []
        async with serve(settings) as svc:
            journal = svc.journals["main"]
            acked += await append_n(journal, 300, batch=30)
            # a short outage: the append waits for JetStream and then succeeds
            await asyncio.to_thread(nats_server.kill)
            waiting = asyncio.ensure_future(append_n(journal, 1))
            await asyncio.sleep(0.5)
            assert not waiting.done()
            await asyncio.to_thread(nats_server.start)
            acked += await asyncio.wait_for(waiting, 10)
            # a long one: after replication_sync_timeout the journal fails stop, never ACKing
            await asyncio.to_thread(nats_server.kill)
            started = asyncio.get_running_loop().time()
            with pytest.raises(HaltedError, match="JetStream did not acknowledge"):
                await append_n(journal, 5)
            assert asyncio.get_running_loop().time() - started >= 3.5
            with pytest.raises(HaltedError):
                await append_n(journal, 1)
        await asyncio.to_thread(nats_server.start)
        # before ackwal runs again: every entry it ACKed is in JetStream already
        msgs = await stream_messages(nats_server.url, "ackwal_main", "ackwal.main")
        assert set(acked) <= {int(m.headers[HDR_SEQ]) for m in msgs}
        assert chain_of(tmp_path / "d")[0] > max(acked)  # the halted batch is only local
        # the restart publishes the unacknowledged tail before it accepts appends
        async with serve(settings) as svc:
            assert svc.publishers[0].lag_records == 0
            acked += await append_n(svc.journals["main"], 10)
        local = raw_log(tmp_path / "d")
        msgs = await stream_messages(nats_server.url, "ackwal_main", "ackwal.main")
        assert [m.data for m in msgs] == local
        in_stream = {int(m.headers[HDR_SEQ]) for m in msgs}
        assert set(acked) <= in_stream


async def test_retention_keeps_what_jetstream_does_not_hold_yet(tmp_path: Path) -> None:
    nats_server = NatsServer(tmp_path / "nats")  # not running yet
    try:
        with short_socket_path() as sock:
            settings = repl_settings(
                tmp_path / "d",
                sock,
                nats_server.url,
                replication_mode="async",
                retention="keep_last_segments",
                retention_segments=1,
                retention_interval=0.05,
                segment_size=256 * 1024,
                max_record_size=64 * 1024,
            )
            async with serve(settings) as svc:
                journal = svc.journals["main"]
                await append_n(journal, 8000)
                assert len(journal.wal.segments()) > 3
                await journal.retention.run_once()
                assert journal.wal.first_seq == 1  # nothing published: nothing deleted
                await asyncio.to_thread(nats_server.start)
                pub = svc.publishers[0]
                await wait_until(lambda: pub.lag_records == 0, 30, "the publisher to catch up")
                await journal.retention.run_once()
                assert journal.wal.first_seq > 1  # published: retention may delete now
        msgs = await stream_messages(nats_server.url, "ackwal_main", "ackwal.main")
        assert [int(m.headers[HDR_SEQ]) for m in msgs][:3] == [1, 2, 3]
    finally:
        nats_server.stop()
