"""A power cut at any moment loses no acknowledged record and leaves a log that opens.

Runs are scripted: open a log with small segments (so rotations happen) and append batches of
varied sizes. A dry run names every boundary (a sync, a directory sync, or any disk-changing
operation, before or after it); then the script runs again once per boundary with the power cut
there, under each loss model (everything unsynced lost, a random torn prefix kept, whole writes
only, sectors written back out of order, unsynced directory changes partly kept). After each
cut the log is reopened: it must hold every acknowledged record, intact and in order, possibly
followed by a prefix of the batch in flight, and nothing else.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from tests.wal.crashsim import (
    LOSS_MODELS,
    BoundaryHook,
    BoundaryKey,
    LossModel,
    Run,
    append_batches,
    cut_power,
    reopen_and_check,
    script_batches,
    scripted_run,
)
from wal import Wal, WalOptions
from wal.faultfs import MUTATING_OPS, SYNC_OPS, FaultyFileLayer, FsCall, Phase
from wal.writer import SPARE_NAME

SEGMENT_SIZE = 1024
SCRIPT = script_batches(random.Random(7), 12)


def options(preallocate: bool) -> WalOptions:
    return WalOptions(segment_size=SEGMENT_SIZE, preallocate=preallocate)


def cutter(fs: FaultyFileLayer, model: LossModel, seed: int) -> Callable[[], object]:
    return lambda: cut_power(fs, model, seed)


def boundaries(root: Path, opts: WalOptions, ops: frozenset[str]) -> list[BoundaryKey]:
    """Every boundary of ``ops`` in a run of the script without any cut."""
    root.mkdir()
    fs = FaultyFileLayer()
    hook = BoundaryHook(fs, str(root), ops)
    run = scripted_run(str(root), fs, opts, SCRIPT, hook)
    assert run.error is None
    return hook.seen


def cut_and_check(
    root: Path,
    opts: WalOptions,
    ops: frozenset[str],
    key: BoundaryKey,
    model: LossModel,
    seed: int,
) -> None:
    """Run the script with the power cut at ``key``, then reopen and check the log."""
    root.mkdir()
    fs = FaultyFileLayer()
    hook = BoundaryHook(fs, str(root), ops, key, cutter(fs, model, seed))
    run = scripted_run(str(root), fs, opts, SCRIPT, hook)
    assert hook.fired, f"boundary {key} never happened"
    reopen_and_check(str(root / "wal"), fs, opts, run)


@pytest.mark.parametrize("preallocate", [True, False], ids=["prealloc", "growing"])
def test_a_power_cut_at_any_sync_boundary_keeps_every_acknowledged_record(
    tmp_path: Path, preallocate: bool
) -> None:
    opts = options(preallocate)
    keys = boundaries(tmp_path / "dry", opts, SYNC_OPS)
    assert sum(1 for key in keys if key[0] == "fsync_dir") >= 8  # rotations happened
    for i, key in enumerate(keys):
        for model in LOSS_MODELS:
            cut_and_check(tmp_path / f"{i}-{model}", opts, SYNC_OPS, key, model, seed=i)


@pytest.mark.parametrize("preallocate", [True, False], ids=["prealloc", "growing"])
def test_a_power_cut_at_random_points_keeps_every_acknowledged_record(
    tmp_path: Path, preallocate: bool
) -> None:
    opts = options(preallocate)
    keys = boundaries(tmp_path / "dry", opts, MUTATING_OPS)
    rng = random.Random(11)
    for i in range(60):
        key = rng.choice(keys)
        model = rng.choice(LOSS_MODELS)
        seed = rng.randrange(1 << 30)
        cut_and_check(tmp_path / f"{i}", opts, MUTATING_OPS, key, model, seed)


@pytest.mark.parametrize("preallocate", [True, False], ids=["prealloc", "growing"])
def test_a_rotation_interrupted_at_each_step_keeps_every_acknowledged_record(
    tmp_path: Path, preallocate: bool
) -> None:
    opts = options(preallocate)
    root = tmp_path / "dry"
    root.mkdir()
    fs = FaultyFileLayer()
    hook = BoundaryHook(fs, str(root), MUTATING_OPS)
    fs.hook = hook
    with Wal.open(str(root / "wal"), opts, fs=fs) as wal:
        run = append_batches(wal, SCRIPT[:4])
        segments = len(wal.segments())
        start = len(hook.seen)
        append_batches(wal, SCRIPT[4:], run)
        assert len(wal.segments()) > segments
    steps: list[BoundaryKey] = []
    for key in hook.seen[start:]:
        steps.append(key)
        if key[0] == "fsync_dir" and key[2] == "after":
            break  # the first rotation after the first four batches is complete
    # The spare segment is prepared on a thread of its own, so its calls (a create among them)
    # can land anywhere in this window on a slow machine: only the log's own files count here.
    step_ops = {key[0] for key in steps if os.path.basename(key[1]) != SPARE_NAME}
    assert {"write", "fsync", "rename", "fsync_dir"} <= step_ops
    assert ("create" in step_ops) != preallocate  # without a spare the rotation creates it
    for i, key in enumerate(steps):
        for model in LOSS_MODELS:
            cut_and_check(tmp_path / f"{i}-{model}", opts, MUTATING_OPS, key, model, seed=i)


class CutAtNth:
    """Cut the power before the ``n``-th call of ``op`` on the log's own files (keeping a torn
    prefix, seeded). The spare segment's preparation, on a thread of its own, is not counted."""

    def __init__(self, fs: FaultyFileLayer, op: str, n: int, seed: int) -> None:
        self.fs, self.op, self.n, self.seed = fs, op, n, seed

    def __call__(self, call: FsCall, phase: Phase) -> None:
        if call.op == self.op and phase == "before" and os.path.basename(call.path) != SPARE_NAME:
            self.n -= 1
            if self.n == 0:
                self.fs.power_cut(random.Random(self.seed), keep_torn_prefix=True)


TORN_SEED = 1  # a seed whose cut leaves a torn tail in both preallocation modes


def torn_log(root: Path, opts: WalOptions) -> Run:
    """A log whose sixth and last batch was torn by a power cut before its fdatasync."""
    root.mkdir()
    fs = FaultyFileLayer()
    fs.hook = CutAtNth(fs, "fdatasync", 6, TORN_SEED)
    run = Run()
    with Wal.open(str(root / "wal"), opts, fs=fs) as wal:
        append_batches(wal, SCRIPT[:6], run)
    assert run.in_flight == SCRIPT[5]
    return run


@pytest.mark.parametrize("preallocate", [True, False], ids=["prealloc", "growing"])
def test_a_power_cut_during_recovery_keeps_every_acknowledged_record(
    tmp_path: Path, preallocate: bool
) -> None:
    opts = options(preallocate)
    torn_log(tmp_path / "dry", opts)
    fs = FaultyFileLayer()
    hook = BoundaryHook(fs, str(tmp_path / "dry"), MUTATING_OPS)
    scripted_run(str(tmp_path / "dry"), fs, opts, [], hook)
    assert any(key[0] == "truncate" for key in hook.seen), "no torn tail to repair"
    for i, key in enumerate(hook.seen):
        for model in LOSS_MODELS:
            root = tmp_path / f"{i}-{model}"
            run = torn_log(root, opts)
            fs = FaultyFileLayer()
            cut = BoundaryHook(fs, str(root), MUTATING_OPS, key, cutter(fs, model, i))
            scripted_run(str(root), fs, opts, [], cut)
            assert cut.fired
            reopen_and_check(str(root / "wal"), fs, opts, run)


class ProcessKilled(BaseException):
    """Raised from a layer hook: the process dies there, with no further disk operation."""


def kill_before(op: str, n: int) -> Callable[[FsCall, Phase], None]:
    """Kill the process before the ``n``-th ``op`` on the log's own files (the spare's
    preparation, on a thread of its own, syncs too: counting it would make ``n`` a race)."""

    def hook(call: FsCall, phase: Phase) -> None:
        nonlocal n
        if call.op == op and phase == "before" and os.path.basename(call.path) != SPARE_NAME:
            n -= 1
            if n == 0:
                raise ProcessKilled

    return hook


def in_flight_batch(script: Sequence[list[bytes]], acked: int) -> list[bytes]:
    """The batch that was being appended after ``acked`` records were acknowledged."""
    done = 0
    for batch in script:
        if done == acked:
            return batch
        done += len(batch)
    return []


def run_until_killed(directory: str, fs: FaultyFileLayer, opts: WalOptions, op: str) -> Run:
    """Append the script until the process is killed before its third ``op``."""
    run = Run()
    wal = Wal.open(directory, opts, fs=fs)
    fs.hook = kill_before(op, 3)
    try:
        append_batches(wal, SCRIPT, run)
    except ProcessKilled:
        run.in_flight = in_flight_batch(SCRIPT, len(run.acked))
    finally:
        wal.close()
        fs.hook = None
    assert run.in_flight, "the process was never killed"
    return run


@pytest.mark.parametrize("preallocate", [True, False], ids=["prealloc", "growing"])
def test_a_batch_a_killed_process_left_unsynced_is_made_durable_before_the_writer_rotates(
    tmp_path: Path, preallocate: bool
) -> None:
    # The batch is readable after the restart but not on disk. The restarted writer links the
    # next segment to it; if it rotates at once, no fdatasync of the old segment ever flushes it.
    opts = options(preallocate)
    directory = str(tmp_path / "wal")
    fs = FaultyFileLayer()
    run = run_until_killed(directory, fs, opts, "fdatasync")
    after = Run(acked=reopen_and_check(directory, fs, opts, run))  # a restart, no power cut
    with Wal.open(directory, opts, fs=fs) as wal:
        segments = len(wal.segments())
        append_batches(wal, [[b"R" * (SEGMENT_SIZE - 100)], [b"small"]], after)
        assert after.error is None
        assert len(wal.segments()) > segments
    fs.power_cut()
    reopen_and_check(directory, fs, opts, after)


@pytest.mark.parametrize("preallocate", [True, False], ids=["prealloc", "growing"])
def test_a_segment_a_killed_process_renamed_without_a_directory_fsync_is_made_durable(
    tmp_path: Path, preallocate: bool
) -> None:
    # Killed between the rename and the directory fsync of a rotation: after the restart the
    # new segment is the last one and takes the next records, but its name is not on disk.
    opts = options(preallocate)
    directory = str(tmp_path / "wal")
    fs = FaultyFileLayer()
    run = run_until_killed(directory, fs, opts, "fsync_dir")
    after = Run(acked=reopen_and_check(directory, fs, opts, run))  # a restart, no power cut
    with Wal.open(directory, opts, fs=fs) as wal:
        segments = len(wal.segments())
        append_batches(wal, [[b"into the renamed segment"]], after)
        assert after.error is None
        assert len(wal.segments()) == segments  # no rotation, no directory fsync by the writer
    fs.power_cut()
    reopen_and_check(directory, fs, opts, after)
