"""Snapshot files: atomic, CRC-checked, several kept; a power cut at any step loses nothing old.

Real files throughout; the power cuts come from the fault-injecting file layer (the one fake
allowed), cutting at every operation of a snapshot write, before and after it, under each loss
model of the WAL's power-cut tests.
"""

from __future__ import annotations

import contextlib
import os
import random
from pathlib import Path

import pytest

from tests.wal.crashsim import LOSS_MODELS, LossModel, cut_power
from wal.crc import crc32c
from wal.faultfs import FaultyFileLayer, FsCall, Phase, PowerLossError
from wal.snapshot import (
    SNAPSHOT_HEADER_SIZE,
    SnapshotCorruptError,
    SnapshotStore,
    decode_snapshot_header,
    encode_snapshot_header,
)


def blob_for(anchor: int, size: int = 3000) -> bytes:
    rng = random.Random(anchor)
    return rng.randbytes(size)


def test_snapshot_round_trips_with_header_fields(tmp_path: Path) -> None:
    store = SnapshotStore(str(tmp_path))
    store.open()
    blob = blob_for(42, 70_000)
    header = store.put(42, blob)
    assert (header.anchor_seq, header.length, header.crc) == (42, len(blob), crc32c(blob))
    assert os.path.basename(header.path) == "00000000000000000042.snap"
    assert store.validate(42) == header
    assert store.read_blob(header) == blob
    raw = Path(header.path).read_bytes()
    assert len(raw) == SNAPSHOT_HEADER_SIZE + len(blob)
    assert decode_snapshot_header(header.path, raw) == (42, len(blob), crc32c(blob))


def test_snapshot_header_is_32_bytes_little_endian_with_its_own_crc() -> None:
    head = encode_snapshot_header(7, 5, 0xDEADBEEF)
    assert len(head) == 32
    assert head[:4] == b"AWSS"
    assert head[4:6] == (1).to_bytes(2, "little")
    assert head[8:16] == (7).to_bytes(8, "little")
    assert head[16:24] == (5).to_bytes(8, "little")
    assert head[24:28] == (0xDEADBEEF).to_bytes(4, "little")
    assert head[28:32] == crc32c(head[:28]).to_bytes(4, "little")


def test_streamed_snapshot_is_written_in_chunks_and_committed_once(tmp_path: Path) -> None:
    store = SnapshotStore(str(tmp_path))
    store.open()
    writer = store.begin(9)
    parts = [blob_for(i, 1000 + i) for i in range(5)]
    for part in parts:
        writer.write(part)
    assert store.anchors() == []  # invisible until committed
    header = writer.commit()
    assert store.read_blob(header) == b"".join(parts)


def test_only_the_newest_keep_snapshots_are_kept(tmp_path: Path) -> None:
    store = SnapshotStore(str(tmp_path), keep=3)
    store.open()
    for anchor in (5, 10, 15, 20, 25):
        store.put(anchor, blob_for(anchor))
    assert store.anchors() == [25, 20, 15]


def test_aborted_snapshot_leaves_no_file(tmp_path: Path) -> None:
    store = SnapshotStore(str(tmp_path))
    store.open()
    writer = store.begin(3)
    writer.write(b"partial")
    writer.abort()
    assert os.listdir(store.directory) == []


@pytest.mark.parametrize(
    "damage",
    ["flip_blob_bit", "flip_header_bit", "truncate", "append_garbage", "empty"],
)
def test_corrupt_newest_snapshot_falls_back_to_the_previous_one(
    tmp_path: Path, damage: str
) -> None:
    store = SnapshotStore(str(tmp_path))
    store.open()
    store.put(10, blob_for(10))
    newest = store.put(20, blob_for(20))
    data = bytearray(Path(newest.path).read_bytes())
    if damage == "flip_blob_bit":
        data[SNAPSHOT_HEADER_SIZE + 1234] ^= 0x10
    elif damage == "flip_header_bit":
        data[9] ^= 0x01
    elif damage == "truncate":
        del data[-100:]
    elif damage == "append_garbage":
        data += b"x"
    else:
        data = bytearray()
    Path(newest.path).write_bytes(bytes(data))
    header, skipped = store.newest_valid()
    assert header is not None and header.anchor_seq == 10
    assert [os.path.basename(e.path) for e in skipped] == ["00000000000000000020.snap"]
    with pytest.raises(SnapshotCorruptError):
        store.validate(20)


def test_no_valid_snapshot_gives_none_and_says_why(tmp_path: Path) -> None:
    store = SnapshotStore(str(tmp_path))
    store.open()
    only = store.put(4, blob_for(4))
    Path(only.path).write_bytes(b"garbage")
    header, skipped = store.newest_valid()
    assert header is None and len(skipped) == 1


PREVIOUS = (10, 20, 30)
NEW = 40


def _setup(root: Path) -> FaultyFileLayer:
    fs = FaultyFileLayer()
    store = SnapshotStore(str(root), fs, keep=3)
    store.open()
    for anchor in PREVIOUS:
        store.put(anchor, blob_for(anchor))
    return fs


def _put_calls(root: Path) -> int:
    fs = _setup(root)
    before = len(fs.calls)
    SnapshotStore(str(root), fs, keep=3).put(NEW, blob_for(NEW, 20_000))
    return len(fs.calls) - before


def _check_after_cut(root: Path) -> bool:
    """Check the store after a cut; True if the new snapshot survived."""
    store = SnapshotStore(str(root), keep=3)
    store.open()
    assert not [n for n in os.listdir(store.directory) if n.endswith(".tmp")]
    anchors = store.anchors()
    for anchor in anchors:
        header = store.validate(anchor)  # every file under a final name is whole
        size = 20_000 if anchor == NEW else 3000
        assert store.read_blob(header) == blob_for(anchor, size)
    if NEW not in anchors:
        assert anchors == [30, 20, 10]  # the interrupted write changed nothing
    else:
        assert anchors[:3] == [40, 30, 20]  # only the oldest may be pruned
    return NEW in anchors


@pytest.mark.parametrize("model", LOSS_MODELS)
def test_snapshot_write_interrupted_at_each_step_leaves_previous_snapshots_intact(
    tmp_path: Path, model: LossModel
) -> None:
    steps = _put_calls(tmp_path / "dry")
    assert steps >= 8
    outcomes = set()
    for step in range(steps):
        for phase in ("before", "after"):
            root = tmp_path / f"{step}-{phase}"
            fs = _setup(root)
            target = len(fs.calls) + step

            def hook(
                call: FsCall,
                at: Phase,
                fs: FaultyFileLayer = fs,
                phase: str = phase,
                target: int = target,
                step: int = step,
            ) -> None:
                if at == phase and len(fs.calls) - 1 == target:
                    cut_power(fs, model, step)

            fs.hook = hook
            with contextlib.suppress(PowerLossError, OSError):
                SnapshotStore(str(root), fs, keep=3).put(NEW, blob_for(NEW, 20_000))
            fs.hook = None
            cut_power(fs, model, step)  # whatever came after the cut is lost too
            fs.power_on()
            outcomes.add(_check_after_cut(root))
    assert outcomes == {False, True}  # cut before the commit point and after it


def test_worked_example_of_format_md_is_what_the_store_writes(tmp_path: Path) -> None:
    store = SnapshotStore(str(tmp_path))
    store.open()
    header = store.put(42, b"hello")
    raw = Path(header.path).read_bytes()
    assert raw.hex(" ") == (
        "41 57 53 53 01 00 00 00 2a 00 00 00 00 00 00 00 "
        "05 00 00 00 00 00 00 00 4c bb 71 9a 5d 97 98 ef 68 65 6c 6c 6f"
    )
