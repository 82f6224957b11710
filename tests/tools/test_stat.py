"""``ackwal stat``: segments, seq range, bytes, time range, chain head, idempotency window."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from tests.tools.helpers import journal_log, run_cli, wal_entries
from wal import Wal

HOUR_MS = 3_600_000


async def test_stat_reports_segments_seqs_bytes_and_chain_head_as_the_wal_sees_them(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    await journal_log(data, 400, batch=9)
    res = run_cli("stat", str(data), "--json")
    assert res.code == 0, res.err
    doc = json.loads(res.out)
    with Wal.open(str(data), readonly=True) as wal:
        segments = wal.segments()
        # 400 entries between the run's RUN_STARTED (seq 1) and RUN_SEALED (seq 402) records
        assert (doc["first_seq"], doc["last_seq"], doc["records"]) == (1, 402, 402)
        assert doc["chain_head"] == f"{wal.chain_head:#010x}"
    assert len(segments) > 2
    assert [s["name"] for s in doc["segments"]] == [os.path.basename(s.path) for s in segments]
    assert [(s["first_seq"], s["last_seq"]) for s in doc["segments"]] == [
        (s.first_seq, s.last_seq) for s in segments
    ]
    assert [s["valid_bytes"] for s in doc["segments"]] == [s.bytes for s in segments]
    assert doc["valid_bytes"] == sum(s.bytes for s in segments)
    assert doc["file_bytes"] == sum(os.path.getsize(s.path) for s in segments)
    assert "spare.wal.tmp" in {f["name"] for f in doc["other_files"]}


def test_stat_time_range_is_the_receive_time_of_the_first_and_last_entry(tmp_path: Path) -> None:
    wal_entries(tmp_path, [1_000_000, 1_500_000, 2_000_000])
    doc = json.loads(run_cli("stat", str(tmp_path), "--json").out)
    assert doc["first_entry"] == {
        "seq": 1,
        "recv_ms": 1_000_000,
        "recv_time": "1970-01-01T00:16:40.000Z",
    }
    assert doc["last_entry"]["seq"] == 3
    assert doc["last_entry"]["recv_ms"] == 2_000_000


def test_stat_counts_the_request_ids_a_restart_would_remember(tmp_path: Path) -> None:
    now = time.time_ns() // 1_000_000
    old = [now - 50 * HOUR_MS, now - 30 * HOUR_MS]
    recent = [now - 20 * HOUR_MS, now - 2 * HOUR_MS, now - 60_000]
    wal_entries(tmp_path, old + recent)
    idem = json.loads(run_cli("stat", str(tmp_path), "--json").out)["idempotency"]
    assert idem["window_seconds"] == 86400
    assert idem["request_ids"] == 3
    assert (idem["oldest_seq"], idem["oldest_recv_ms"]) == (3, recent[0])
    assert (idem["newest_seq"], idem["newest_recv_ms"]) == (5, recent[-1])
    narrow = json.loads(run_cli("stat", str(tmp_path), "--json", "--window", "3600").out)
    assert narrow["idempotency"]["request_ids"] == 1
    capped = json.loads(run_cli("stat", str(tmp_path), "--json", "--max-entries", "2").out)
    assert capped["idempotency"]["request_ids"] == 2
    assert capped["idempotency"]["oldest_seq"] == 4


async def test_stat_text_fits_in_80_columns(tmp_path: Path) -> None:
    await journal_log(tmp_path / "data", 200, batch=20)
    res = run_cli("stat", str(tmp_path / "data"))
    assert res.code == 0
    lines = res.out.splitlines()
    assert all(len(line) <= 80 for line in lines if not line.startswith("log "))
    assert lines[2] == "records      202 (seq 1..202)"  # 200 entries and two run records
    assert any(line.startswith("idempotency  200 request ids in the 1d window") for line in lines)
    assert "stat: 202 records" in res.err


def test_stat_of_an_empty_directory_reports_an_empty_log(tmp_path: Path) -> None:
    res = run_cli("stat", str(tmp_path), "--json")
    assert res.code == 0
    doc = json.loads(res.out)
    assert (doc["records"], doc["first_seq"], doc["last_seq"]) == (0, None, 0)
    assert doc["first_entry"] is None
    assert doc["segments"] == []
