"""The fault-injecting file layer keeps what a disk would keep, and fails what it is told to."""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path

import pytest

from wal.faultfs import (
    FaultyFileLayer,
    FaultyWriteHandle,
    FsCall,
    FsOp,
    Phase,
    PowerLossError,
)


def read(path: Path) -> bytes:
    return path.read_bytes()


def write_file(fs: FaultyFileLayer, path: Path, data: bytes, *, sync: bool) -> FaultyWriteHandle:
    handle = fs.open_write(str(path), create=True)
    assert isinstance(handle, FaultyWriteHandle)
    handle.pwrite(data, 0)
    if sync:
        handle.fdatasync()
    return handle


def test_unsynced_bytes_are_lost_at_a_power_cut(tmp_path: Path) -> None:
    fs = FaultyFileLayer()
    handle = write_file(fs, tmp_path / "f", b"durable", sync=True)
    fs.fsync_dir(str(tmp_path))
    handle.pwrite(b" and lost", 7)
    assert read(tmp_path / "f") == b"durable and lost"  # reads go through the OS
    fs.power_cut()
    assert read(tmp_path / "f") == b"durable"


@pytest.mark.parametrize("sync", ["fdatasync", "fsync"])
def test_synced_bytes_survive_a_power_cut(tmp_path: Path, sync: str) -> None:
    fs = FaultyFileLayer()
    handle = write_file(fs, tmp_path / "f", b"one", sync=False)
    fs.fsync_dir(str(tmp_path))
    handle.pwrite(b"two", 3)
    getattr(handle, sync)()
    fs.power_cut()
    assert read(tmp_path / "f") == b"onetwo"


def test_a_synced_file_without_a_directory_sync_vanishes_at_a_power_cut(tmp_path: Path) -> None:
    fs = FaultyFileLayer()
    write_file(fs, tmp_path / "f", b"data", sync=True)
    fs.power_cut()
    assert not (tmp_path / "f").exists()


def test_a_synced_directory_entry_survives_with_only_the_synced_content(tmp_path: Path) -> None:
    fs = FaultyFileLayer()
    write_file(fs, tmp_path / "f", b"never synced", sync=False)
    fs.fsync_dir(str(tmp_path))
    fs.power_cut()
    assert read(tmp_path / "f") == b""


def test_an_unsynced_rename_is_undone_by_a_power_cut(tmp_path: Path) -> None:
    fs = FaultyFileLayer()
    write_file(fs, tmp_path / "a", b"content", sync=True).close()
    fs.fsync_dir(str(tmp_path))
    fs.rename(str(tmp_path / "a"), str(tmp_path / "b"))
    fs.power_cut()
    assert read(tmp_path / "a") == b"content"
    assert not (tmp_path / "b").exists()


def test_a_synced_rename_survives_a_power_cut(tmp_path: Path) -> None:
    fs = FaultyFileLayer()
    write_file(fs, tmp_path / "a", b"content", sync=True).close()
    fs.rename(str(tmp_path / "a"), str(tmp_path / "b"))
    fs.fsync_dir(str(tmp_path))
    fs.power_cut()
    assert sorted(os.listdir(tmp_path)) == ["b"]
    assert read(tmp_path / "b") == b"content"


def test_an_unsynced_rename_over_a_file_brings_the_old_file_back(tmp_path: Path) -> None:
    (tmp_path / "dst").write_bytes(b"old")
    fs = FaultyFileLayer()
    write_file(fs, tmp_path / "src", b"new", sync=True).close()
    fs.rename(str(tmp_path / "src"), str(tmp_path / "dst"))
    assert read(tmp_path / "dst") == b"new"
    fs.power_cut()
    assert sorted(os.listdir(tmp_path)) == ["dst"]
    assert read(tmp_path / "dst") == b"old"


def test_an_unsynced_unlink_is_undone_by_a_power_cut(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"was here before")
    fs = FaultyFileLayer()
    fs.unlink(str(tmp_path / "f"))
    fs.power_cut()
    assert read(tmp_path / "f") == b"was here before"


def test_files_found_on_disk_count_as_durable(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"found")
    fs = FaultyFileLayer()
    handle = fs.open_write(str(tmp_path / "f"), create=False)
    handle.pwrite(b"FOUND and more", 0)
    fs.power_cut()
    assert read(tmp_path / "f") == b"found"


def test_files_the_layer_never_touched_are_left_alone(tmp_path: Path) -> None:
    (tmp_path / "untouched").write_bytes(b"x")
    fs = FaultyFileLayer()
    write_file(fs, tmp_path / "f", b"lost", sync=False)
    (tmp_path / "untouched").write_bytes(b"changed outside the layer")
    fs.power_cut()
    assert read(tmp_path / "untouched") == b"changed outside the layer"
    assert not (tmp_path / "f").exists()


def test_a_renamed_file_keeps_its_identity_and_its_handle_syncs_it(tmp_path: Path) -> None:
    fs = FaultyFileLayer()
    handle = write_file(fs, tmp_path / "a.tmp", b"header", sync=True)
    fs.rename(str(tmp_path / "a.tmp"), str(tmp_path / "a"))
    fs.fsync_dir(str(tmp_path))
    handle.pwrite(b"+body", 6)
    handle.fdatasync()
    handle.pwrite(b"+lost", 11)
    fs.power_cut()
    assert read(tmp_path / "a") == b"header+body"


def test_durable_content_reports_what_a_power_cut_would_leave(tmp_path: Path) -> None:
    fs = FaultyFileLayer()
    handle = write_file(fs, tmp_path / "f", b"synced", sync=True)
    assert fs.durable_content(str(tmp_path / "f")) is None  # entry not synced yet
    fs.fsync_dir(str(tmp_path))
    handle.pwrite(b"!", 6)
    assert fs.durable_content(str(tmp_path / "f")) == b"synced"


def prefixes_seen(tmp_path: Path, keep_torn_prefix: bool) -> set[bytes]:
    """Cut the power with many seeds after two unsynced writes; collect what survived."""
    seen = set()
    for seed in range(200):
        path = tmp_path / f"f{seed}"
        fs = FaultyFileLayer()
        handle = write_file(fs, path, b"D", sync=True)
        fs.fsync_dir(str(tmp_path))
        handle.pwrite(b"abcd", 1)
        handle.pwrite(b"efgh", 5)
        fs.power_cut(random.Random(seed), keep_torn_prefix=keep_torn_prefix)
        seen.add(read(path))
    return seen


def test_a_power_cut_with_torn_writes_keeps_a_prefix_of_the_unsynced_bytes(
    tmp_path: Path,
) -> None:
    seen = prefixes_seen(tmp_path, keep_torn_prefix=True)
    assert all(b"Dabcdefgh".startswith(s) and s.startswith(b"D") for s in seen)
    assert {b"D", b"Dabcd", b"Dabcdefgh"} <= seen
    assert seen - {b"D", b"Dabcd", b"Dabcdefgh"}, "no write was ever torn"


def test_a_power_cut_without_torn_writes_keeps_only_whole_writes(tmp_path: Path) -> None:
    assert prefixes_seen(tmp_path, keep_torn_prefix=False) == {b"D", b"Dabcd", b"Dabcdefgh"}


def test_out_of_order_writeback_keeps_any_subset_of_sectors(tmp_path: Path) -> None:
    seen = set()
    for seed in range(64):
        path = tmp_path / f"f{seed}"
        fs = FaultyFileLayer()
        write_file(fs, path, bytes(16), sync=True)
        fs.fsync_dir(str(tmp_path))
        handle = fs.open_write(str(path), create=False)
        handle.pwrite(b"AAAABBBBCCCCDDDD", 0)
        fs.power_cut(random.Random(seed), sector_size=4)
        data = read(path)
        seen.add(tuple(data[i : i + 4] != bytes(4) for i in range(0, 16, 4)))
    # A later sector survives without the first one: pages reach the disk in any order.
    assert any(not kept[0] and any(kept[1:]) for kept in seen)
    assert len(seen) > 8


def test_kept_directory_changes_are_a_prefix_in_order(tmp_path: Path) -> None:
    outcomes = set()
    for seed in range(40):
        d = tmp_path / f"d{seed}"
        d.mkdir()
        fs = FaultyFileLayer()
        write_file(fs, d / "a", b"1", sync=True).close()
        write_file(fs, d / "b", b"2", sync=True).close()
        fs.rename(str(d / "a"), str(d / "c"))
        fs.power_cut(random.Random(seed), keep_dir_changes=True)
        outcomes.add(tuple(sorted(os.listdir(d))))
    assert outcomes == {(), ("a",), ("a", "b"), ("b", "c")}


def test_every_handle_dies_at_a_power_cut(tmp_path: Path) -> None:
    fs = FaultyFileLayer()
    handle = write_file(fs, tmp_path / "f", b"x", sync=True)
    fs.fsync_dir(str(tmp_path))
    reader = fs.open_read(str(tmp_path / "f"))
    fs.power_cut()
    fs.power_on()
    assert handle.dead
    with pytest.raises(PowerLossError):
        handle.pwrite(b"y", 0)
    with pytest.raises(PowerLossError):
        handle.fdatasync()
    with pytest.raises(PowerLossError):
        reader.pread(1, 0)
    handle.close()  # closing a dead handle never fails, so cleanup code runs
    reader.close()
    assert fs.read_file(str(tmp_path / "f")) == b"x"  # new operations work after power_on


def test_nothing_works_between_a_power_cut_and_power_on(tmp_path: Path) -> None:
    fs = FaultyFileLayer()
    fs.power_cut()
    with pytest.raises(PowerLossError):
        fs.listdir(str(tmp_path))
    with pytest.raises(PowerLossError):
        fs.open_write(str(tmp_path / "f"), create=True)
    assert not (tmp_path / "f").exists()


def test_an_injected_write_error_writes_nothing(tmp_path: Path) -> None:
    fs = FaultyFileLayer()
    handle = write_file(fs, tmp_path / "f", b"", sync=True)
    fault = fs.fail_next("write", errno.EIO)
    with pytest.raises(OSError) as info:
        handle.pwrite(b"data", 0)
    assert info.value.errno == errno.EIO
    assert fault.hits == 1
    assert read(tmp_path / "f") == b""
    assert handle.pwrite(b"data", 0) == 4  # fail_next fails one call only


def test_an_injected_partial_write_leaves_its_prefix_unsynced(tmp_path: Path) -> None:
    fs = FaultyFileLayer()
    handle = write_file(fs, tmp_path / "f", b"", sync=True)
    fs.fsync_dir(str(tmp_path))
    fs.fail_next("write", errno.ENOSPC, partial=3)
    with pytest.raises(OSError) as info:
        handle.pwrite(b"abcdef", 0)
    assert info.value.errno == errno.ENOSPC
    assert read(tmp_path / "f") == b"abc"
    fs.power_cut()
    assert read(tmp_path / "f") == b""


def test_a_failed_fsync_loses_the_unsynced_writes_for_good(tmp_path: Path) -> None:
    fs = FaultyFileLayer()
    handle = write_file(fs, tmp_path / "f", b"ok|", sync=True)
    fs.fsync_dir(str(tmp_path))
    handle.pwrite(b"lost|", 3)
    fs.fail_next("fdatasync", errno.EIO)
    with pytest.raises(OSError):
        handle.fdatasync()
    assert read(tmp_path / "f") == b"ok|lost|"  # still readable from the page cache
    handle.pwrite(b"later", 8)
    handle.fdatasync()  # succeeds, but the pages of the failed sync were marked clean
    fs.power_cut()
    assert read(tmp_path / "f") == b"ok|" + bytes(5) + b"later"


def test_a_failed_directory_fsync_keeps_the_changes_pending(tmp_path: Path) -> None:
    fs = FaultyFileLayer()
    write_file(fs, tmp_path / "f", b"x", sync=True)
    fs.fail_next("fsync_dir", errno.EIO)
    with pytest.raises(OSError):
        fs.fsync_dir(str(tmp_path))
    fs.fsync_dir(str(tmp_path))
    fs.power_cut()
    assert read(tmp_path / "f") == b"x"


@pytest.mark.parametrize("op", ["create", "rename", "unlink"])
def test_an_injected_directory_operation_error_changes_nothing(tmp_path: Path, op: FsOp) -> None:
    (tmp_path / "a").write_bytes(b"a")
    fs = FaultyFileLayer()
    fs.fail_next(op, errno.ENOSPC)
    with pytest.raises(OSError) as info:
        if op == "create":
            fs.open_write(str(tmp_path / "b"), create=True)
        elif op == "rename":
            fs.rename(str(tmp_path / "a"), str(tmp_path / "b"))
        else:
            fs.unlink(str(tmp_path / "a"))
    assert info.value.errno == errno.ENOSPC
    assert sorted(os.listdir(tmp_path)) == ["a"]


def test_a_fault_can_fail_the_nth_call_only(tmp_path: Path) -> None:
    fs = FaultyFileLayer()
    handle = write_file(fs, tmp_path / "f", b"", sync=False)
    fs.fail_next("fdatasync", errno.EIO, skip=2)
    handle.fdatasync()
    handle.fdatasync()
    with pytest.raises(OSError):
        handle.fdatasync()
    handle.fdatasync()


def test_a_fault_can_fail_every_call_until_cleared(tmp_path: Path) -> None:
    fs = FaultyFileLayer()
    handle = write_file(fs, tmp_path / "f", b"", sync=False)
    fault = fs.fail_always("write", errno.ENOSPC)
    for _ in range(3):
        with pytest.raises(OSError):
            handle.pwrite(b"x", 0)
    assert fault.hits == 3
    fs.clear_faults()
    handle.pwrite(b"x", 0)


def test_a_fault_predicate_chooses_which_calls_fail(tmp_path: Path) -> None:
    fs = FaultyFileLayer()
    fs.fail_always("create", errno.EIO, when=lambda call: call.path.endswith(".tmp"))
    fs.open_write(str(tmp_path / "ok"), create=True).close()
    with pytest.raises(OSError):
        fs.open_write(str(tmp_path / "bad.tmp"), create=True)


def test_the_hook_sees_every_sync_and_can_cut_power_before_it(tmp_path: Path) -> None:
    fs = FaultyFileLayer()
    handle = write_file(fs, tmp_path / "f", b"x", sync=False)
    fs.fsync_dir(str(tmp_path))
    events: list[tuple[str, Phase]] = []

    def hook(call: FsCall, phase: Phase) -> None:
        events.append((call.op, phase))
        if call.op == "fdatasync" and phase == "before":
            fs.power_cut()

    fs.hook = hook
    with pytest.raises(PowerLossError):
        handle.fdatasync()
    assert events == [("fdatasync", "before")]
    fs.power_on()
    assert read(tmp_path / "f") == b""  # the sync never happened


def test_a_power_cut_right_after_a_sync_keeps_what_it_synced(tmp_path: Path) -> None:
    fs = FaultyFileLayer()
    handle = write_file(fs, tmp_path / "f", b"x", sync=False)
    fs.fsync_dir(str(tmp_path))

    def hook(call: FsCall, phase: Phase) -> None:
        if call.op == "fdatasync" and phase == "after":
            fs.power_cut()

    fs.hook = hook
    handle.fdatasync()  # completed before the cut: returns normally
    fs.hook = None
    fs.power_on()
    assert read(tmp_path / "f") == b"x"


def test_every_call_is_recorded_with_the_file_identity(tmp_path: Path) -> None:
    fs = FaultyFileLayer()
    handle = write_file(fs, tmp_path / "f.tmp", b"x", sync=True)
    fs.rename(str(tmp_path / "f.tmp"), str(tmp_path / "f"))
    handle.path = str(tmp_path / "f")
    handle.fdatasync()
    syncs = [c for c in fs.calls if c.op == "fdatasync"]
    assert [c.file_id for c in syncs] == [handle.file_id, handle.file_id]
    assert [os.path.basename(c.path) for c in syncs] == ["f.tmp", "f"]
    assert [c.op for c in fs.calls] == ["create", "write", "fdatasync", "rename", "fdatasync"]
