"""``ackwal disk-check``: write + fdatasync latency and rate, group-commit ceiling, warnings."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.tools.helpers import run_cli


def test_disk_check_json_reports_latency_and_rate_for_each_size(tmp_path: Path) -> None:
    res = run_cli("disk-check", str(tmp_path), "--seconds", "0.4", "--json")
    assert res.code in (0, 1), res.err
    doc = json.loads(res.out)
    assert doc["exit_code"] == res.code == (1 if doc["warnings"] else 0)
    assert doc["sync_mode"] == "fdatasync"
    assert doc["filesystem"]["type"]
    results = doc["results"]
    assert [(m["mode"], m["size"]) for m in results] == [
        ("overwrite", 4096),
        ("overwrite", 65536),
        ("overwrite", 1048576),
        ("append", 4096),
    ]
    for m in results:
        assert m["ops"] >= 5
        assert 0 < m["p50_us"] <= m["p99_us"] <= m["max_us"]
        assert m["ops_per_s"] > 0
    commit = doc["group_commit"]
    assert [c["batch_entries"] for c in commit] == [16, 256, 4096]
    for c, m in zip(commit, results, strict=False):
        assert c["entries_per_s"] == round(m["ops_per_s"] * c["batch_entries"])
    fast = results[0]["p50_us"] < 20
    assert fast == any("implausibly fast" in w for w in doc["warnings"])
    assert "disk-check: fdatasync p50" in res.err
    assert os.listdir(tmp_path) == []  # the test file is gone


def test_disk_check_warns_when_sync_is_slower_than_the_target(tmp_path: Path) -> None:
    res = run_cli("disk-check", str(tmp_path), "--seconds", "0.2", "--max-p99-ms", "0.000001")
    assert res.code == 1
    assert "warnings:" in res.out
    assert "ACK p99 targets of a few ms are out of reach" in res.out


def test_disk_check_warns_when_sync_is_implausibly_fast(tmp_path: Path) -> None:
    res = run_cli("disk-check", str(tmp_path), "--seconds", "0.2", "--min-sync-us", "1e9", "--json")
    assert res.code == 1
    warnings = json.loads(res.out)["warnings"]
    assert any("write cache or a RAM-backed filesystem" in w for w in warnings)


def test_disk_check_text_fits_in_80_columns(tmp_path: Path) -> None:
    res = run_cli("disk-check", str(tmp_path), "--seconds", "0.2", "--sync-mode", "fsync")
    assert res.code in (0, 1)
    lines = res.out.splitlines()
    assert lines[1] == "write + fsync, 0.2 s"
    assert all(len(line) <= 80 for line in lines if not line.startswith(("disk-check", "  !")))
