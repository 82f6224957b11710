"""``ackwal verify``: exit 0 clean, 1 torn tail only, 2 corruption; every problem is named."""

from __future__ import annotations

import json
from pathlib import Path

from service.tools.progress import Progress
from service.tools.verify import verify_live
from tests.tools.helpers import journal_log, run_cli
from tests.wal.surgery import (
    PLAIN,
    build_log,
    flip_bit,
    records_in,
    segment_paths,
    snapshot,
    truncate,
)
from wal import WalOptions
from wal.format import DEFAULT_MAX_RECORD_SIZE

SMALL = WalOptions(segment_size=2048, preallocate=False)


async def test_verify_exits_0_on_a_clean_log_and_reports_its_figures(tmp_path: Path) -> None:
    results = await journal_log(tmp_path / "data", 300, batch=7)
    res = run_cli("verify", str(tmp_path / "data"), "--json")
    assert res.code == 0, res.err
    doc = json.loads(res.out)
    assert doc["status"] == "clean"
    assert doc["exit_code"] == 0
    assert doc["records"] == 300 + 2  # and the run's RUN_STARTED and RUN_SEALED records
    assert (doc["first_seq"], doc["last_seq"]) == (1, results[-1].seq + 1)
    assert doc["segments"] > 1
    assert doc["problems"] == []
    assert doc["held_by_pid"] is None
    assert "verify: clean" in res.err


def test_verify_exits_1_on_a_torn_tail_and_names_its_file_and_offset(tmp_path: Path) -> None:
    build_log(tmp_path, [3, 4, 5])
    last = records_in(segment_paths(tmp_path)[-1])[-1]
    truncate(last.path, last.offset + 10)
    res = run_cli("verify", str(tmp_path))
    assert res.code == 1, res.out + res.err
    assert "TORN TAIL" in res.out
    assert f"torn tail in {last.path} at offset {last.offset}" in res.out


def test_verify_exits_2_on_corruption_and_lists_every_damaged_spot(tmp_path: Path) -> None:
    build_log(tmp_path, [5] * 40, SMALL)
    segments = segment_paths(tmp_path)
    assert len(segments) >= 4
    damaged = [records_in(segments[0])[2], records_in(segments[2])[1]]
    for rec in damaged:
        flip_bit(rec.path, (rec.offset + 30) * 8)
    res = run_cli("verify", str(tmp_path), "--json")
    assert res.code == 2, res.err
    doc = json.loads(res.out)
    assert doc["status"] == "corrupt"
    found = {(p["file"], p["offset"]) for p in doc["problems"] if p["kind"] == "corruption"}
    for rec in damaged:
        assert (rec.path.name, rec.offset) in found
    text = run_cli("verify", str(tmp_path))
    assert text.code == 2
    for rec in damaged:
        assert f"corruption in {rec.path} at offset {rec.offset}" in text.out


def test_verify_changes_nothing_in_a_damaged_directory(tmp_path: Path) -> None:
    build_log(tmp_path, [3, 4, 5], PLAIN)
    last = records_in(segment_paths(tmp_path)[-1])[-1]
    truncate(last.path, last.end - 1)
    before = snapshot(tmp_path)
    assert run_cli("verify", str(tmp_path)).code == 1
    assert snapshot(tmp_path) == before


def test_verify_of_a_missing_directory_exits_3(tmp_path: Path) -> None:
    res = run_cli("verify", str(tmp_path / "nowhere"))
    assert res.code == 3
    assert "is not a directory" in res.err


def test_a_usage_error_exits_64_and_never_reads_as_a_verify_status(tmp_path: Path) -> None:
    assert run_cli("verify").code == 64
    assert run_cli("verify", str(tmp_path), "--no-such-flag").code == 64
    assert run_cli("verify", str(tmp_path), "--max-record-size", "lots").code == 64


class LiveWriter(Progress):
    """Finishes writing the last batch right after the first scan read it, as a server would."""

    def __init__(self, path: Path, full: bytes) -> None:
        super().__init__("verifying", 0, enabled=False)
        self.path = path
        self.full = full
        self.reads = 0

    def advance(self, n: float) -> None:
        super().advance(n)
        self.reads += 1
        if self.reads == 1:
            self.path.write_bytes(self.full)


def test_a_half_written_batch_on_a_live_log_is_not_reported_once_it_completes(
    tmp_path: Path,
) -> None:
    build_log(tmp_path, [3, 4, 5])
    path = segment_paths(tmp_path)[0]
    full = path.read_bytes()
    last = records_in(path)[-1]
    truncate(path, last.offset + 20)  # the batch is being written while verify reads
    report, flux = verify_live(str(tmp_path), DEFAULT_MAX_RECORD_SIZE, LiveWriter(path, full), True)
    assert report.status == "clean"
    assert flux == ()
    assert report.last_seq == 12


def test_a_torn_tail_that_stays_on_a_live_log_is_reported(tmp_path: Path) -> None:
    build_log(tmp_path, [3, 4, 5])
    path = segment_paths(tmp_path)[0]
    last = records_in(path)[-1]
    truncate(path, last.offset + 20)
    progress = Progress("verifying", 0, enabled=False)
    report, flux = verify_live(str(tmp_path), DEFAULT_MAX_RECORD_SIZE, progress, True)
    assert report.status == "torn_tail"
    assert [(p.path, p.offset) for p in report.problems] == [(str(path), last.offset)]
    assert flux == ()
