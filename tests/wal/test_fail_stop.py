"""After a write, sync or segment-creation error the writer stops for good and never lies.

Each test injects one disk fault through the fault layer, then checks the fail-stop rules: the
append raises WriterFailedError (DiskFullError for ENOSPC), every later append raises without
touching the disk, nothing half-written is reported committed, no sync is ever retried, and a
reopen after the fault is lifted (with or without a power cut in between) recovers every
acknowledged record.
"""

from __future__ import annotations

import errno
import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.wal.crashsim import Run, append_batches, reopen_and_check, script_batches
from wal import DiskFullError, Wal, WalOptions, WriterFailedError
from wal.faultfs import MUTATING_OPS, SYNC_OPS, FaultyFileLayer, FsCall, FsOp
from wal.writer import SPARE_NAME, SPARE_SYNC_BYTES

SEGMENT_SIZE = 2048


def is_segment(call: FsCall) -> bool:
    return call.path.endswith(".wal")


def is_new_segment(call: FsCall) -> bool:
    """The temp file a rotation creates (not the spare, whose name also ends in .wal.tmp)."""
    name = os.path.basename(call.path)
    return name.endswith(".wal.tmp") and name != SPARE_NAME


def is_spare(call: FsCall) -> bool:
    return os.path.basename(call.path) == SPARE_NAME


def batches(seed: int = 0, count: int = 30) -> list[list[bytes]]:
    return script_batches(random.Random(seed), count)


def assert_fail_stop(
    wal: Wal, fs: FaultyFileLayer, run: Run, expected: type[WriterFailedError]
) -> None:
    """The failed append raised ``expected``; the writer stays failed and reports no more."""
    assert isinstance(run.error, expected), run.error
    assert wal.failed is not None
    assert wal.last_seq == len(run.acked)
    assert [r.payload for r in wal.read(1)] == run.acked
    assert wal.get(len(run.acked) + 1) is None
    mark = len(fs.calls)
    for _ in range(3):
        with pytest.raises(WriterFailedError):
            wal.append([b"after the failure"])
    touched = [c for c in fs.calls[mark:] if c.op in MUTATING_OPS and not is_spare(c)]
    assert touched == [], "a failed writer touched the disk again"


def assert_no_sync_after(fs: FaultyFileLayer, failed_at: int) -> None:
    """Nothing but the spare segment's preparation synced anything after the failure."""
    synced = [c for c in fs.calls[failed_at + 1 :] if c.op in SYNC_OPS and not is_spare(c)]
    assert synced == [], f"sync retried after the failure: {synced}"


def fault_index(fs: FaultyFileLayer, op: FsOp, when: Callable[[FsCall], bool]) -> int:
    """Index in ``fs.calls`` of the last call of ``op`` matching ``when`` (the one that failed)."""
    return max(i for i, c in enumerate(fs.calls) if c.op == op and when(c))


def run_until_fault(
    tmp_path: Path, fs: FaultyFileLayer, options: WalOptions, inject: Callable[[], object]
) -> tuple[Wal, Run]:
    """Append a few batches, inject the fault, append until an append fails."""
    wal = Wal.open(str(tmp_path), options, fs=fs)
    script = batches()
    run = append_batches(wal, script[:3])
    assert run.error is None
    inject()
    append_batches(wal, script[3:], run)
    assert run.error is not None, "the injected fault never fired"
    return wal, run


def finish(
    tmp_path: Path, fs: FaultyFileLayer, options: WalOptions, wal: Wal, run: Run, *, power_cut: bool
) -> None:
    """Close the failed log, optionally cut the power, lift the faults, reopen and check."""
    wal.close()
    if power_cut:
        fs.power_cut()
    reopen_and_check(str(tmp_path), fs, options, run)
    with Wal.open(str(tmp_path), options, fs=fs) as again:  # and the log takes appends again
        again.append([b"after the restart"])


@pytest.mark.parametrize("power_cut", [False, True], ids=["restart", "power_cut"])
@pytest.mark.parametrize("preallocate", [True, False], ids=["prealloc", "growing"])
def test_eio_on_write_stops_the_writer_for_good(
    tmp_path: Path, preallocate: bool, power_cut: bool
) -> None:
    fs = FaultyFileLayer()
    options = WalOptions(segment_size=SEGMENT_SIZE, preallocate=preallocate)
    wal, run = run_until_fault(
        tmp_path, fs, options, lambda: fs.fail_next("write", errno.EIO, when=is_segment)
    )
    assert_fail_stop(wal, fs, run, WriterFailedError)
    assert not isinstance(run.error, DiskFullError)
    assert "fail-stop" in str(run.error)
    assert_no_sync_after(fs, fault_index(fs, "write", is_segment))
    finish(tmp_path, fs, options, wal, run, power_cut=power_cut)


@pytest.mark.parametrize("power_cut", [False, True], ids=["restart", "power_cut"])
@pytest.mark.parametrize("preallocate", [True, False], ids=["prealloc", "growing"])
def test_eio_on_fdatasync_stops_the_writer_and_never_syncs_that_file_again(
    tmp_path: Path, preallocate: bool, power_cut: bool
) -> None:
    fs = FaultyFileLayer()
    options = WalOptions(segment_size=SEGMENT_SIZE, preallocate=preallocate)
    wal, run = run_until_fault(
        tmp_path, fs, options, lambda: fs.fail_next("fdatasync", errno.EIO, when=is_segment)
    )
    assert_fail_stop(wal, fs, run, WriterFailedError)
    failed_at = fault_index(fs, "fdatasync", is_segment)
    wal.close()
    failed_file = fs.calls[failed_at].file_id
    assert not [c for c in fs.calls[failed_at + 1 :] if c.file_id == failed_file]
    assert_no_sync_after(fs, failed_at)
    if power_cut:
        fs.power_cut()
    reopen_and_check(str(tmp_path), fs, options, run)


@pytest.mark.parametrize("power_cut", [False, True], ids=["restart", "power_cut"])
@pytest.mark.parametrize("partial", [0, 40], ids=["nothing_written", "short_write"])
def test_enospc_on_write_raises_disk_full_and_reports_nothing_half_written(
    tmp_path: Path, partial: int, power_cut: bool
) -> None:
    fs = FaultyFileLayer()
    options = WalOptions(segment_size=SEGMENT_SIZE)
    wal, run = run_until_fault(
        tmp_path,
        fs,
        options,
        lambda: fs.fail_next("write", errno.ENOSPC, when=is_segment, partial=partial),
    )
    assert_fail_stop(wal, fs, run, DiskFullError)
    message = str(run.error)
    assert "disk full (ENOSPC)" in message
    assert "Free space and restart" in message
    assert_no_sync_after(fs, fault_index(fs, "write", is_segment))
    finish(tmp_path, fs, options, wal, run, power_cut=power_cut)


# Every step of a rotation that can fail, per preallocation mode: (op, which call).
ROTATION_STEPS: dict[str, tuple[bool, FsOp, Callable[[FsCall], bool]]] = {
    "create_temp": (False, "create", is_new_segment),
    "write_header": (False, "write", is_new_segment),
    "fsync_temp": (False, "fsync", is_new_segment),
    "rename_into_place": (False, "rename", is_new_segment),
    "fsync_directory": (False, "fsync_dir", lambda call: True),
    "take_spare": (True, "rename", is_spare),
    "open_spare": (True, "open", is_new_segment),
    "write_header_on_spare": (True, "write", is_new_segment),
    "fsync_spare": (True, "fsync", is_new_segment),
    "rename_spare_into_place": (True, "rename", is_new_segment),
    "fsync_directory_after_spare": (True, "fsync_dir", lambda call: True),
}


@pytest.mark.parametrize("error", [errno.EIO, errno.ENOSPC], ids=["EIO", "ENOSPC"])
@pytest.mark.parametrize("step", sorted(ROTATION_STEPS))
def test_a_failure_while_creating_a_segment_stops_the_writer(
    tmp_path: Path, step: str, error: int
) -> None:
    preallocate, op, when = ROTATION_STEPS[step]
    fs = FaultyFileLayer()
    options = WalOptions(segment_size=SEGMENT_SIZE, preallocate=preallocate)
    # The first append created the first segment; the fault hits the next rotation.
    wal, run = run_until_fault(tmp_path, fs, options, lambda: fs.fail_next(op, error, when=when))
    expected = DiskFullError if error == errno.ENOSPC else WriterFailedError
    assert_fail_stop(wal, fs, run, expected)
    assert not isinstance(run.error, DiskFullError) or error == errno.ENOSPC
    assert_no_sync_after(fs, fault_index(fs, op, when))
    finish(tmp_path, fs, options, wal, run, power_cut=True)


@pytest.mark.parametrize("error", [errno.EIO, errno.ENOSPC], ids=["EIO", "ENOSPC"])
@pytest.mark.parametrize("op", ["create", "write", "fdatasync", "fsync"])
def test_a_failed_spare_preparation_falls_back_to_creating_the_segment_at_rotation(
    tmp_path: Path, op: FsOp, error: int
) -> None:
    fs = FaultyFileLayer()
    fs.fail_always(op, error, when=is_spare)
    options = WalOptions(segment_size=SEGMENT_SIZE, preallocate=True)
    with Wal.open(str(tmp_path), options, fs=fs) as wal:
        run = append_batches(wal, batches(seed=1))
        assert run.error is None
        assert len(wal.segments()) > 2
    created = [c for c in fs.calls if c.op == "create" and is_new_segment(c)]
    assert len(created) == len(wal.segments())  # every rotation made its own segment
    fs.power_cut()
    reopen_and_check(str(tmp_path), fs, options, run)


def test_the_spare_goes_to_disk_a_piece_at_a_time_then_is_fsynced_whole(tmp_path: Path) -> None:
    """No WAL fdatasync should queue behind a whole segment of zeros (wal/writer.py)."""
    fs = FaultyFileLayer()
    size = 2 * SPARE_SYNC_BYTES + SPARE_SYNC_BYTES // 2
    Wal.open(str(tmp_path), WalOptions(segment_size=size, preallocate=True), fs=fs).close()
    spare = [c for c in fs.calls if is_spare(c) and c.op in ("write", "fdatasync", "fsync")]
    assert [c.op for c in spare if c.op != "write"] == ["fdatasync"] * 3 + ["fsync"]
    unsynced = written = 0
    for call in spare:
        if call.op == "write":
            assert call.nbytes is not None
            unsynced += call.nbytes
            written += call.nbytes
            assert unsynced <= SPARE_SYNC_BYTES
        else:
            unsynced = 0
    assert written == size


def test_disk_full_while_preparing_the_spare_and_at_rotation_raises_disk_full(
    tmp_path: Path,
) -> None:
    fs = FaultyFileLayer()
    options = WalOptions(segment_size=SEGMENT_SIZE, preallocate=True)
    wal = Wal.open(str(tmp_path), options, fs=fs)  # the first segment exists before the fault
    wal.close()
    fs.fail_always("write", errno.ENOSPC, when=lambda call: call.path.endswith(".tmp"))
    wal = Wal.open(str(tmp_path), options, fs=fs)
    run = append_batches(wal, batches())
    assert_fail_stop(wal, fs, run, DiskFullError)
    assert run.acked, "the first segment took batches until a rotation was needed"
    assert len(wal.segments()) == 1, "no segment was cut on the full disk"
    finish(tmp_path, fs, options, wal, run, power_cut=True)


@pytest.mark.parametrize("preallocate", [True, False], ids=["prealloc", "growing"])
def test_a_new_log_on_a_full_disk_refuses_to_open_with_disk_full(
    tmp_path: Path, preallocate: bool
) -> None:
    fs = FaultyFileLayer()
    fs.fail_always("write", errno.ENOSPC)
    options = WalOptions(segment_size=SEGMENT_SIZE, preallocate=preallocate)
    with pytest.raises(DiskFullError, match="disk full"):
        Wal.open(str(tmp_path), options, fs=fs)
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".wal")]


@pytest.mark.parametrize("preallocate", [True, False], ids=["prealloc", "growing"])
def test_a_batch_whose_fdatasync_failed_is_made_durable_before_the_restarted_writer_builds_on_it(
    tmp_path: Path, preallocate: bool
) -> None:
    # The failed fdatasync left the batch readable but never on disk (Linux marks the pages
    # clean). A restarted writer that links new records to it must first make it durable.
    fs = FaultyFileLayer()
    options = WalOptions(segment_size=SEGMENT_SIZE, preallocate=preallocate)
    wal, run = run_until_fault(
        tmp_path, fs, options, lambda: fs.fail_next("fdatasync", errno.EIO, when=is_segment)
    )
    wal.close()
    log = reopen_and_check(str(tmp_path), fs, options, run)
    after = Run(acked=log)
    with Wal.open(str(tmp_path), options, fs=fs) as wal:
        append_batches(wal, batches(seed=2, count=20), after)
        assert after.error is None
        assert len(wal.segments()) > 1
    fs.power_cut()
    reopen_and_check(str(tmp_path), fs, options, after)


@pytest.mark.parametrize(
    ("skip", "expected"),
    [(0, OSError), (1, WriterFailedError)],
    ids=["in_recovery_resync", "in_writer_preallocation"],
)
def test_a_failed_sync_while_opening_fails_the_open_and_leaks_nothing(
    tmp_path: Path, skip: int, expected: type[Exception]
) -> None:
    # A log written without preallocation, reopened with it: recovery fsyncs the last segment,
    # then the writer zero-fills and fsyncs it. One of the two fsyncs fails.
    fs = FaultyFileLayer()
    growing = WalOptions(segment_size=SEGMENT_SIZE, preallocate=False)
    with Wal.open(str(tmp_path), growing, fs=fs) as wal:
        run = append_batches(wal, batches(count=3))
    fds = len(os.listdir("/proc/self/fd"))
    fs.fail_next("fsync", errno.EIO, when=is_segment, skip=skip)
    prealloc = WalOptions(segment_size=SEGMENT_SIZE, preallocate=True)
    with pytest.raises(expected):
        Wal.open(str(tmp_path), prealloc, fs=fs)
    assert len(os.listdir("/proc/self/fd")) == fds
    reopen_and_check(str(tmp_path), fs, prealloc, run)
