"""epoch.acke and the epoch of a log (no NATS needed)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from service.replication.epoch import (
    EPOCH_FILE,
    EpochFileError,
    current_epoch,
    epoch_payload,
    read_epoch_file,
    write_epoch_file,
)
from tests.service.harness import ACKWAL, short_socket_path
from wal import RecordType, Wal


def test_a_log_without_epoch_file_is_epoch_1_and_the_file_round_trips(tmp_path: Path) -> None:
    assert read_epoch_file(str(tmp_path)) == 1
    write_epoch_file(str(tmp_path), 3, 17)
    assert read_epoch_file(str(tmp_path)) == 3
    assert not list(tmp_path.glob("*.tmp"))


def test_an_epoch_record_not_yet_in_the_file_still_counts(tmp_path: Path) -> None:
    with Wal.open(str(tmp_path)) as wal:
        wal.append([b"x"])
        write_epoch_file(wal.directory, 2, 1)
        # a crash between the EPOCH record and the file update
        wal.append([epoch_payload(3, wal.last_seq)], RecordType.EPOCH)
        assert current_epoch(wal) == 3


def test_a_damaged_epoch_file_refuses_the_start_in_one_line(tmp_path: Path) -> None:
    write_epoch_file(str(tmp_path), 2, 5)
    data = bytearray((tmp_path / EPOCH_FILE).read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / EPOCH_FILE).write_bytes(bytes(data))
    with pytest.raises(EpochFileError, match="checksum mismatch"):
        read_epoch_file(str(tmp_path))
    with short_socket_path() as sock:
        result = subprocess.run(
            [ACKWAL, "serve", "--data-dir", str(tmp_path), "--socket", sock, "--log-format",
             "json", "--metrics-addr", "", "--set", "replication_mode=async",
             "--set", "replication_nats_url=nats://127.0.0.1:1"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert result.returncode == 1
    assert "checksum mismatch" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
