"""Promotion and fencing with a real nats-server: new epoch, old primary refuses appends."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from pathlib import Path

import pytest

from service.errors import FencedError
from service.replication.stream import HDR_EPOCH, HDR_SEQ
from tests.replication.helpers import (
    append_n,
    chain_of,
    publish_raw,
    raw_log,
    repl_settings,
    serve_standby,
    stream_messages,
    wait_until,
)
from tests.replication.natsserver import NatsServer
from tests.service.harness import ACKWAL, RawConnection, serve, short_socket_path
from tests.service.test_metrics import scrape, value
from wal.format import encode_records


def promote_cli(data_dir: Path, url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ACKWAL, "promote", "--data-dir", str(data_dir), "--log-format", "json",
         "--set", f"replication_nats_url={url}", "--set", "segment_size=1048576",
         "--set", "max_record_size=262144", *extra],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


async def test_promotion_then_a_revived_old_primary_refuses_appends(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    url = nats_server.url
    with short_socket_path() as psock, short_socket_path() as ssock:
        old_primary = repl_settings(tmp_path / "p", psock, url, replication_mode="sync")
        standby = repl_settings(tmp_path / "s", ssock, url)
        async with serve(old_primary) as psvc:
            async with serve_standby(standby) as ssvc:
                acked = await append_n(psvc.journals["main"], 400, batch=40)
                sj = ssvc.journals["main"]
                await wait_until(lambda: sj.wal.last_seq >= acked[-1], 30, "the standby")
            # the standby is stopped; the old primary goes on a little (sync: in the stream)
            acked += await append_n(psvc.journals["main"], 20)
        # the old primary is gone; promote the standby (it copies what it missed first)
        result = promote_cli(tmp_path / "s", url)
        assert result.returncode == 0, result.stderr
        assert "promoted journal main to epoch 2" in result.stdout
        new_primary = repl_settings(tmp_path / "s", ssock, url, replication_mode="sync")
        async with serve(new_primary) as nsvc:
            journal = nsvc.journals["main"]
            assert {s for s in acked} <= {r.seq for r in journal.read(1, 100_000)}
            assert nsvc.publishers[0].epoch == 2
            new_acked = await append_n(journal, 30)
            # the revived old primary sees the newer epoch and refuses appends
            revived = repl_settings(
                tmp_path / "p", psock, url, replication_mode="async", metrics_addr="127.0.0.1:0"
            )
            async with serve(revived) as rsvc:
                pub = rsvc.publishers[0]
                await wait_until(lambda: pub.fenced is not None, 30, "the old primary to fence")
                assert "epoch 2" in (pub.fenced or "")
                with pytest.raises(FencedError, match="is fenced"):
                    await append_n(rsvc.journals["main"], 1)
                conn = await RawConnection.open(psock)
                reply = await conn.request(
                    {"op": "append", "request_id": uuid.uuid4().bytes, "command_type": "t",
                     "command": b"x"}
                )  # fmt: skip
                assert reply["error"]["code"] == "fenced"
                status = (await conn.request({"op": "status"}))["status"]
                assert status["replication"]["fenced"]
                await conn.close()
                assert rsvc.metrics is not None
                samples = await asyncio.to_thread(scrape, rsvc.metrics.port)
                labels = {"journal": "main", "role": "primary"}
                assert value(samples, "ackwal_replication_fenced", **labels) == 1
                assert value(samples, "ackwal_appends_total", journal="main", result="fenced") == 2
                assert rsvc.readiness()[0] is False
            # the new primary is unaffected
            new_acked += await append_n(journal, 5)
        msgs = await stream_messages(url, "ackwal_main", "ackwal.main")
        assert [m.data for m in msgs] == raw_log(tmp_path / "s")
        epochs = [int(m.headers[HDR_EPOCH]) for m in msgs]
        assert epochs == sorted(epochs) and epochs[-1] == 2
        assert set(new_acked) <= {
            int(m.headers[HDR_SEQ]) for m in msgs if m.headers[HDR_EPOCH] == "2"
        }


async def test_a_standby_rejects_a_record_from_an_older_epoch(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    url = nats_server.url
    with short_socket_path() as psock, short_socket_path() as ssock:
        async with serve(repl_settings(tmp_path / "p", psock, url, replication_mode="async")) as p:
            await append_n(p.journals["main"], 50)
        assert promote_cli(tmp_path / "p", url).returncode == 0  # a primary can be re-epoched
        last, head = chain_of(tmp_path / "p")
        async with serve_standby(repl_settings(tmp_path / "s", ssock, url)) as ssvc:
            follower = ssvc.followers[0]
            await wait_until(lambda: follower.epoch == 2, 30, "the standby to learn epoch 2")
            assert chain_of(tmp_path / "s") == (last, head)
            stale, _ = encode_records([b"late record of epoch 1"], last + 1, head)
            await publish_raw(url, last + 1, bytes(stale), epoch=1)
            await wait_until(lambda: follower.diverged is not None, 30, "the rejection")
            assert follower.diverged_seq == last + 1
            assert "epoch 1 after epoch 2" in (follower.diverged or "")
            assert ssvc.journals["main"].wal.last_seq == last


def test_promote_without_nats_fails_in_one_line(tmp_path: Path) -> None:
    result = promote_cli(tmp_path / "s", "nats://127.0.0.1:1")
    assert result.returncode == 1
    assert "no NATS server answered" in result.stderr
    assert "Traceback" not in result.stderr


async def test_promote_refuses_while_the_standby_still_runs(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    with short_socket_path() as ssock:
        async with serve(
            repl_settings(tmp_path / "p", ssock, nats_server.url, replication_mode="async")
        ):
            pass
        async with serve_standby(repl_settings(tmp_path / "s", ssock, nats_server.url)):
            result = await asyncio.to_thread(promote_cli, tmp_path / "s", nats_server.url)
        assert result.returncode == 1
        assert "is locked by" in result.stderr
