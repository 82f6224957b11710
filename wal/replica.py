"""Copying records from another log verbatim: the standby side of replication.

A standby's log must be record-for-record identical to its primary's: same seq, type, payload
and ``batch_pos``, hence the same CRCs and the same chain head. So a standby never re-encodes
what it receives: it checks each record's exact bytes (CRC, seq continuity, link to its own
chain head) and writes them as they are. The first record that does not fit is a divergence,
reported with its seq and nothing of the batch is written.

One rule keeps recovery's torn-tail logic sound on the standby: a write batch here never holds
records of two of the primary's batches (a record with ``batch_pos`` 0 only opens a call). The
scan's test "a valid record of a later batch after a damaged one proves corruption" relies on
the next batch being written only after the previous one's sync; splitting a primary batch
over several writes keeps that true, merging two would not.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from wal.errors import WalError
from wal.format import RECORD_HEADER_SIZE, RecordView, check_record


class DivergenceError(WalError):
    """A replicated record does not continue this log; ``seq`` is the first seq that differs."""

    def __init__(self, seq: int, reason: str) -> None:
        self.seq = seq
        self.reason = reason
        super().__init__(f"wal: replica diverges at seq {seq}: {reason}")


class CheckedBatch(NamedTuple):
    """Records that continue the log, ready to be written as one batch."""

    data: bytes
    first_seq: int
    last_crc: int
    lengths: list[int]  # payload lengths, for the reader's index marks


def parse_record(data: bytes, max_record_size: int) -> RecordView | str:
    """The one record that ``data`` must be exactly, or why it is not."""
    rec = check_record(data, 0, max_record_size)
    if isinstance(rec, str):
        return rec
    if rec.end != len(data):
        return f"{len(data) - rec.end} bytes after the record"
    return rec


def check_continuation(
    records: Sequence[bytes], next_seq: int, chain_head: int, max_record_size: int
) -> CheckedBatch:
    """Check that ``records`` continue a log at ``next_seq`` / ``chain_head``, else raise
    :class:`DivergenceError` naming the first seq that does not fit."""
    if not records:
        raise ValueError("append_raw needs at least one record")
    link = chain_head
    expected = next_seq
    prev_pos = -1
    lengths: list[int] = []
    for i, data in enumerate(records):
        rec = parse_record(data, max_record_size)
        if isinstance(rec, str):
            raise DivergenceError(expected, f"the record received for it is invalid: {rec}")
        if rec.seq != expected:
            raise DivergenceError(expected, f"received seq {rec.seq} where {expected} was due")
        if rec.prev_crc != link:
            raise DivergenceError(
                expected,
                f"chain break: the record links to {rec.prev_crc:#010x}, this log's chain "
                f"head is {link:#010x}",
            )
        if i and rec.batch_pos != prev_pos + 1:
            raise ValueError(
                f"append_raw: seq {rec.seq} (batch_pos {rec.batch_pos}) starts another of the "
                "primary's batches; write it in a call of its own"
            )
        prev_pos = rec.batch_pos
        link = rec.crc
        lengths.append(rec.length)
        expected += 1
    return CheckedBatch(b"".join(records), next_seq, link, lengths)


def split_batches(records: Sequence[bytes]) -> list[list[bytes]]:
    """Cut a run of raw records where the primary started a new batch (``batch_pos`` 0)."""
    out: list[list[bytes]] = []
    for data in records:
        pos = int.from_bytes(data[20:24], "little") if len(data) >= RECORD_HEADER_SIZE else 0
        if pos == 0 or not out:
            out.append([data])
        else:
            out[-1].append(data)
    return out
