"""The metrics endpoint of a running server under load, parsed with prometheus-client's parser."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.build import compiled_modules
from service.client import JournalClient
from service.errors import BadRequestError
from tests.service.harness import make_settings, serve, short_socket_path


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def http_status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


async def test_metrics_move_with_load_and_follow_prometheus_naming(tmp_path: Path) -> None:
    with short_socket_path() as sock:
        settings = make_settings(tmp_path / "data", sock, metrics_addr="127.0.0.1:0")
        async with serve(settings) as svc:
            assert svc.metrics is not None
            port = svc.metrics.port
            before = await asyncio.to_thread(scrape, port)
            assert value(before, "ackwal_appends_total", journal="main", result="ok") == 0
            assert value(before, "ackwal_last_seq", journal="main") == 1  # the RUN_STARTED record
            assert (
                value(
                    before,
                    "ackwal_build_info",
                    compiled_modules=str(len(compiled_modules())),
                    format_version="1",
                    protocol_version="1",
                    version="0.1.0",
                )
                == 1
            )
            async with JournalClient(sock) as client:
                rids = [uuid.uuid4() for _ in range(500)]
                await asyncio.gather(*(client.append(r, "T", b"x" * 100) for r in rids))
                await client.append(rids[0], "T", b"x")  # a duplicate
                with pytest.raises(BadRequestError):
                    await client.append(b"short", "T", b"x")
                after = await asyncio.to_thread(scrape, port)
            ok = value(after, "ackwal_appends_total", journal="main", result="ok")
            assert ok == 500
            assert value(after, "ackwal_appends_total", journal="main", result="duplicate") == 1
            assert value(after, "ackwal_appends_total", journal="main", result="bad_request") == 1
            assert value(after, "ackwal_request_errors_total", code="bad_request") == 1
            assert value(after, "ackwal_last_seq", journal="main") == 1 + 500
            assert value(after, "ackwal_append_latency_seconds_count", journal="main") == 500
            assert value(after, "ackwal_queue_wait_seconds_count", journal="main") == 500
            batches = value(after, "ackwal_batches_total", journal="main")
            assert 1 <= batches <= 500
            assert (
                value(after, "ackwal_fdatasync_duration_seconds_count", journal="main") == batches
            )
            assert value(after, "ackwal_batch_entries_sum", journal="main") == 500
            assert value(after, "ackwal_written_bytes_total", journal="main") > 500 * 100
            assert value(after, "ackwal_idempotency_entries", journal="main") == 500
            assert value(after, "ackwal_halted", journal="main") == 0
            assert value(after, "ackwal_wal_segments", journal="main") >= 1
            assert value(after, "ackwal_wal_bytes", journal="main") > 500 * 100
            assert value(after, "ackwal_queue_capacity", journal="main") == settings.queue_capacity
            # The 50 us bucket exists and the 1 s bucket holds every observation.
            assert (
                "ackwal_append_latency_seconds_bucket",
                (("journal", "main"), ("le", "5e-05")),
            ) in after
            assert (
                value(after, "ackwal_append_latency_seconds_bucket", journal="main", le="1.0")
                == 500
            )


async def test_health_and_readiness_endpoints(tmp_path: Path) -> None:
    with short_socket_path() as sock:
        settings = make_settings(tmp_path / "data", sock, metrics_addr="127.0.0.1:0")
        async with serve(settings) as svc:
            assert svc.metrics is not None
            port = svc.metrics.port
            assert await asyncio.to_thread(http_status, port, "/healthz") == 200
            assert await asyncio.to_thread(http_status, port, "/readyz") == 200
            svc.journals["main"].halt("test: simulated disk failure")
            assert await asyncio.to_thread(http_status, port, "/readyz") == 503
            assert await asyncio.to_thread(http_status, port, "/healthz") == 200
            samples = await asyncio.to_thread(scrape, port)
            assert value(samples, "ackwal_halted", journal="main") == 1
