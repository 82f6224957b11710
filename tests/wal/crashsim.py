"""Helpers for crash tests: scripted runs over the fault layer and the acknowledged-prefix check.

The rule every crash test checks: after recovery the log is exactly the acknowledged records, in
order, possibly followed by a prefix of the batch that was in flight when things went wrong, and
nothing else.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from wal import Wal, WalOptions, WriterFailedError, verify
from wal.faultfs import SYNC_OPS, FaultyFileLayer, FsCall, Phase

LossModel = Literal["lose_all", "torn_prefix", "whole_writes", "sectors", "dir_prefix"]
LOSS_MODELS: tuple[LossModel, ...] = (
    "lose_all",
    "torn_prefix",
    "whole_writes",
    "sectors",
    "dir_prefix",
)

# A boundary, named so that it is the same event in every run of the same script even though
# the spare-segment thread interleaves differently: (op, relative path, phase, occurrence).
BoundaryKey = tuple[str, str, str, int]


def cut_power(fs: FaultyFileLayer, model: LossModel, seed: int) -> bool:
    """Cut the power unless it is off already, losing unsynced state as ``model`` says (seeded,
    so failures replay). True if this call cut it."""
    rng = random.Random(seed)
    if model == "lose_all":
        return fs.power_cut()
    if model == "torn_prefix":
        return fs.power_cut(rng, keep_torn_prefix=True)
    if model == "whole_writes":
        return fs.power_cut(rng, keep_torn_prefix=False)
    if model == "sectors":
        return fs.power_cut(rng, sector_size=512)
    return fs.power_cut(rng, keep_torn_prefix=True, keep_dir_changes=True)


class BoundaryHook:
    """A layer hook that names every boundary of ``ops`` and can cut the power at one of them.

    Paths are named relative to ``root`` so that runs in different directories share names.
    """

    def __init__(
        self,
        fs: FaultyFileLayer,
        root: str,
        ops: frozenset[str] = SYNC_OPS,
        cut_at: BoundaryKey | None = None,
        cut: Callable[[], object] | None = None,
    ) -> None:
        self.fs = fs
        self.root = root
        self.ops = ops
        self.cut_at = cut_at
        self.cut = cut
        self.seen: list[BoundaryKey] = []
        self.fired = False
        self._counts: dict[tuple[str, str, str], int] = {}

    def __call__(self, call: FsCall, phase: Phase) -> None:
        if call.op not in self.ops:
            return
        name = (call.op, os.path.relpath(call.path, self.root), phase)
        count = self._counts.get(name, 0) + 1
        self._counts[name] = count
        key = (*name, count)
        self.seen.append(key)
        if key == self.cut_at and not self.fired and self.fs.powered:
            self.fired = True
            assert self.cut is not None
            self.cut()


@dataclass
class Run:
    """What a scripted run acknowledged, and the batch in flight when it stopped."""

    acked: list[bytes] = field(default_factory=list)
    in_flight: list[bytes] = field(default_factory=list)
    error: BaseException | None = None


def append_batches(wal: Wal, batches: Sequence[Sequence[bytes]], run: Run | None = None) -> Run:
    """Append ``batches`` in order until one fails; record what was acknowledged."""
    run = run or Run()
    for batch in batches:
        try:
            first = wal.append(batch)
        except WriterFailedError as exc:
            run.in_flight = list(batch)
            run.error = exc
            return run
        assert first == len(run.acked) + 1
        run.acked.extend(batch)
    return run


def script_batches(rng: random.Random, count: int, max_batch: int = 6) -> list[list[bytes]]:
    """Batches of varied sizes whose payloads say which batch and record they are."""
    batches = []
    for b in range(count):
        size = rng.randint(1, max_batch)
        batches.append(
            [f"b{b}r{r}:".encode() + rng.randbytes(rng.randint(0, 120)) for r in range(size)]
        )
    return batches


def check_acknowledged_prefix(
    recovered: Sequence[bytes], acked: Sequence[bytes], in_flight: Sequence[bytes]
) -> None:
    """The recovered log is the acknowledged records, then at most a prefix of the in-flight
    batch, and nothing else."""
    head = list(recovered[: len(acked)])
    if head != list(acked):
        diff = next(
            (i for i, (a, b) in enumerate(zip(head, acked, strict=False)) if a != b), len(head)
        )
        raise AssertionError(
            f"acknowledged records lost or changed: recovered {len(recovered)} records, "
            f"{len(acked)} were acknowledged; first difference at index {diff}"
        )
    extra = list(recovered[len(acked) :])
    assert extra == list(in_flight[: len(extra)]), (
        f"{len(extra)} records after the acknowledged ones are not a prefix of the in-flight batch"
    )


def reopen_and_check(
    directory: str, fs: FaultyFileLayer, options: WalOptions, run: Run
) -> list[bytes]:
    """Power on, reopen (running recovery), check the acknowledged prefix; return the log."""
    fs.hook = None
    fs.clear_faults()
    if not fs.powered:
        fs.power_on()
    with Wal.open(directory, options, fs=fs) as wal:
        records = list(wal.read(1))
        assert wal.last_seq == len(records)
    assert [r.seq for r in records] == list(range(1, len(records) + 1))
    recovered = [r.payload for r in records]
    check_acknowledged_prefix(recovered, run.acked, run.in_flight)
    assert verify(directory).status == "clean"
    return recovered


def scripted_run(
    root: str,
    fs: FaultyFileLayer,
    options: WalOptions,
    batches: Sequence[Sequence[bytes]],
    hook: BoundaryHook | None = None,
) -> Run:
    """Open a log in ``root/wal`` and append ``batches``; a power cut stops the run quietly."""
    fs.hook = hook
    run = Run()
    try:
        try:
            wal = Wal.open(os.path.join(root, "wal"), options, fs=fs)
        except (OSError, WriterFailedError):
            if fs.powered:
                raise
            return run
        try:
            append_batches(wal, batches, run)
        finally:
            wal.close()
    finally:
        fs.hook = None
    assert run.error is None or not fs.powered, run.error
    return run
