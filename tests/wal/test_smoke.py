"""A first end-to-end pass over the WAL API: append, reopen, read back, verify."""

from __future__ import annotations

import os
from pathlib import Path

from wal import Wal, WalOptions, verify


def test_appended_records_read_back_after_reopen(tmp_path: Path) -> None:
    opts = WalOptions(segment_size=64 * 1024)
    payloads = [os.urandom(50 + i % 200) for i in range(2000)]
    with Wal.open(str(tmp_path), opts) as wal:
        for i in range(0, len(payloads), 100):
            wal.append(payloads[i : i + 100])
        head = wal.chain_head
        assert len(wal.segments()) > 1
    with Wal.open(str(tmp_path), opts) as wal:
        assert wal.last_seq == 2000
        assert wal.chain_head == head
        assert [r.payload for r in wal.read(1)] == payloads
        assert wal.get(1234) is not None
        assert wal.get(1234).payload == payloads[1233]  # type: ignore[union-attr]
    report = verify(str(tmp_path))
    assert report.status == "clean"
    assert report.record_count == 2000
