"""Power cuts under the whole service: the fault layer below the WAL, everything above it real.

A scripted run starts :class:`service.app.Service` over a :class:`wal.faultfs.FaultyFileLayer`,
and a client appends over the Unix socket one request at a time (single appends and
``append_batch`` groups, so every run makes the same batches and names the same boundaries).
A dry run names every fsync and directory-fsync boundary (before and after each); the script
then runs again once per boundary with the power cut there, keeping random (torn) prefixes of
unsynced writes under the loss models of tests/wal/crashsim.py. Random cuts at any disk-changing
operation and a segment rotation interrupted at each of its steps follow.

After each cut a fresh service on a fresh layer recovers the same directory: the log must hold
every acknowledged entry at its seq with its bytes, nothing but entries that were sent, no
request id twice, gap-free seqs; retrying every unacknowledged request id answers each once;
``wal.verify`` finds the log clean.
"""

from __future__ import annotations

import functools
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from service.app import Service
from service.client import JournalClient
from service.entry import decode_entry
from service.errors import HaltedError, ShuttingDownError
from service.settings import Settings
from tests.service.harness import bounded, command_for, make_settings, short_socket_path
from tests.torture.conftest import report, size
from tests.wal.crashsim import LOSS_MODELS, BoundaryHook, BoundaryKey, cut_power
from wal import RecordType, verify
from wal.faultfs import MUTATING_OPS, SYNC_OPS, FaultyFileLayer
from wal.writer import SPARE_NAME, TMP_SUFFIX

SEGMENT_SIZE = 4096  # rotations happen every few requests; the layer's model stays small


@dataclass(frozen=True)
class Step:
    """One request: a single append (one rid) or an append_batch (several)."""

    rids: tuple[bytes, ...]
    batch: bool
    size: int


def script(seed: int, steps: int = 14) -> list[Step]:
    rng = random.Random(seed)
    out = []
    for _ in range(steps):
        batch = rng.random() < 0.4
        count = rng.randint(2, 6) if batch else 1
        rids = tuple(rng.randbytes(16) for _ in range(count))
        out.append(Step(rids, batch, rng.choice([16, 200, 700])))
    return out


SCRIPT = script(8)


@dataclass
class Outcome:
    acked: dict[bytes, int] = field(default_factory=dict)
    refused: int = 0  # halted / shutting_down replies (never a wrong ACK)
    started: bool = False


def settings_for(root: Path, sock: str, preallocate: bool) -> Settings:
    return make_settings(
        root / "data",
        sock,
        segment_size=SEGMENT_SIZE,
        max_record_size=2048,
        preallocate=preallocate,
        shutdown_timeout=2.0,
    )


async def run_script(settings: Settings, fs: FaultyFileLayer, steps: list[Step]) -> Outcome:
    """Start the service over ``fs`` and send ``steps`` until the first refusal."""
    out = Outcome()
    service = Service(settings, fs=fs)
    try:
        await service.start()
    except Exception:
        if fs.powered:
            raise
        return out  # the cut came while opening: nothing was acknowledged
    out.started = True
    try:
        async with JournalClient(settings.socket_path, reconnect=False) as client:
            for step in steps:
                try:
                    if step.batch:
                        results = await client.append_batch(
                            [
                                {"request_id": r, "command_type": "b", "command": cmd(r, step)}
                                for r in step.rids
                            ]
                        )
                    else:
                        rid = step.rids[0]
                        results = [await client.append(rid, "t", cmd(rid, step))]
                except (HaltedError, ShuttingDownError):
                    assert not fs.powered, "refused although the power never went off"
                    out.refused += 1
                    break
                for rid, result in zip(step.rids, results, strict=True):
                    assert not result.duplicate
                    out.acked[rid] = result.seq
    finally:
        await service.shutdown()
    return out


def cmd(rid: bytes, step: Step) -> bytes:
    return command_for(rid, step.size)


async def recover_and_check(settings: Settings, steps: list[Step], out: Outcome) -> int:
    """A fresh service on a fresh layer: check the log, retry the unacknowledged; returns the
    number of entries recovered."""
    sizes = {rid: step for step in steps for rid in step.rids}
    service = Service(settings, fs=FaultyFileLayer())
    await service.start()
    try:
        journal = service.journals["main"]
        records = journal.read_records(1, 100_000, 1 << 62)
        assert [r.seq for r in records] == list(range(1, len(records) + 1)), "seqs have a gap"
        # The service's own records (run markers) may sit between entries.
        log = [decode_entry(r.seq, r.payload) for r in records if r.type == RecordType.ENTRY]
        where = {e.request_id: e for e in log}
        assert len(where) == len(log), "a request id is in the log twice"
        for e in log:
            assert e.request_id in sizes, f"seq {e.seq} holds an entry nobody sent"
            assert e.command == cmd(e.request_id, sizes[e.request_id]), f"seq {e.seq} changed"
        for rid, seq in out.acked.items():
            assert rid in where, f"acknowledged seq {seq} was lost"
            assert where[rid].seq == seq, f"acknowledged seq {seq} moved to {where[rid].seq}"
        # Acknowledged entries come first; what follows came from the request in flight.
        last_acked = max(out.acked.values(), default=0)
        assert all(e.request_id in out.acked for e in log if e.seq <= last_acked)
        async with JournalClient(settings.socket_path, reconnect=False) as client:
            for step in steps:
                for rid in step.rids:
                    if rid in out.acked:
                        continue
                    again = await client.append(rid, "t", cmd(rid, step))
                    if rid in where:
                        assert (again.seq, again.duplicate) == (where[rid].seq, True)
                    else:
                        assert not again.duplicate
        assert len(journal.read(1, 100_000)) == len(sizes), "a retry was written twice"
        n = len(log)
    finally:
        await service.shutdown()
    assert verify(settings.data_dir).status == "clean"
    return n


@pytest.fixture
def sock() -> Iterator[str]:
    with short_socket_path() as path:
        yield path


async def boundaries(
    root: Path, sock: str, preallocate: bool, ops: frozenset[str]
) -> list[BoundaryKey]:
    """Every boundary of ``ops`` in an uncut run of the script."""
    fs = FaultyFileLayer()
    hook = BoundaryHook(fs, str(root), ops)
    fs.hook = hook
    out = await run_script(settings_for(root, sock, preallocate), fs, SCRIPT)
    assert len(out.acked) == sum(len(s.rids) for s in SCRIPT)
    return hook.seen


async def cut_at(
    root: Path, sock: str, preallocate: bool, key: BoundaryKey, ops: frozenset[str], seed: int
) -> tuple[Outcome, int, bool]:
    root.mkdir()
    fs = FaultyFileLayer()
    model = LOSS_MODELS[seed % len(LOSS_MODELS)]
    hook = BoundaryHook(fs, str(root), ops, cut_at=key, cut=lambda: cut_power(fs, model, seed))
    fs.hook = hook
    settings = settings_for(root, sock, preallocate)
    async with bounded(f"the scripted run with a power cut at {key}", 60):
        out = await run_script(settings, fs, SCRIPT)
    fs.hook = None
    async with bounded(f"recovery after the power cut at {key}", 60):
        n = await recover_and_check(settings, SCRIPT, out)
    return out, n, hook.fired


class Tally:
    def __init__(self, name: str) -> None:
        self.name = name
        self.cuts = 0
        self.acked = 0
        self.kept_unacked = 0

    def add(self, out: Outcome, n: int, fired: bool) -> None:
        self.cuts += fired
        self.acked += len(out.acked)
        self.kept_unacked += n - len(out.acked)

    def report(self) -> None:
        report(
            f"power cuts ({self.name}): {self.cuts} cuts, {self.acked} ACKs verified after "
            f"recovery, {self.kept_unacked} unacknowledged entries kept (allowed)"
        )


@pytest.mark.parametrize("preallocate", [False, True], ids=["plain", "preallocated"])
async def test_a_power_cut_at_every_sync_boundary_of_the_service_loses_no_ack(
    tmp_path: Path, sock: str, preallocate: bool
) -> None:
    (tmp_path / "dry").mkdir()
    keys = await boundaries(tmp_path / "dry", sock, preallocate, SYNC_OPS)
    assert len(keys) > 2 * len(SCRIPT)
    tally = Tally(f"every fsync/dir-fsync boundary, {'preallocated' if preallocate else 'plain'}")
    repeats = size(1, len(LOSS_MODELS))
    for i, key in enumerate(keys):
        for r in range(repeats):
            seed = i * len(LOSS_MODELS) + r
            tally.add(
                *await cut_at(tmp_path / f"cut{i}-{r}", sock, preallocate, key, SYNC_OPS, seed)
            )
    assert tally.cuts >= len(keys) * repeats * 9 // 10  # the spare thread may shift a few
    tally.report()


async def test_power_cuts_at_random_disk_operations_lose_no_ack(tmp_path: Path, sock: str) -> None:
    (tmp_path / "dry").mkdir()
    keys = await boundaries(tmp_path / "dry", sock, True, MUTATING_OPS)
    rng = random.Random(int.from_bytes(os.urandom(4), "little"))
    tally = Tally("random disk operations")
    for i, key in enumerate(rng.sample(keys, min(len(keys), size(20, 200)))):
        seed = rng.randrange(1 << 30)
        tally.add(*await cut_at(tmp_path / f"cut{i}", sock, True, key, MUTATING_OPS, seed))
    tally.report()


def rotation_step(key: BoundaryKey) -> bool:
    """True for a boundary that belongs to cutting a new segment (not to appending to one)."""
    op, path, _phase, _n = key
    name = os.path.basename(path)
    return (
        name.endswith(TMP_SUFFIX)
        or name == SPARE_NAME
        or op in ("rename", "fsync", "unlink")
        or (op == "fsync_dir" and path == "data")
    )


@pytest.mark.parametrize("preallocate", [False, True], ids=["plain", "preallocated"])
async def test_a_segment_rotation_interrupted_at_each_step_loses_no_ack(
    tmp_path: Path, sock: str, preallocate: bool
) -> None:
    (tmp_path / "dry").mkdir()
    keys = await boundaries(tmp_path / "dry", sock, preallocate, MUTATING_OPS)
    steps = [k for k in keys if rotation_step(k)]
    zero_writes = [k for k in steps if k[0] == "write"]
    # Zero-filling a spare segment is hundreds of writes: cut at a few of them, every other step.
    steps = [k for k in steps if k[0] != "write"] + zero_writes[:: max(1, len(zero_writes) // 4)]
    assert any(k[0] == "rename" for k in steps) and any(k[0] == "fsync_dir" for k in steps)
    tally = Tally(f"segment rotation steps, {'preallocated' if preallocate else 'plain'}")
    for i, key in enumerate(steps[: size(60, len(steps))]):
        tally.add(*await cut_at(tmp_path / f"cut{i}", sock, preallocate, key, MUTATING_OPS, i))
    tally.report()


async def test_the_dry_run_acknowledges_everything(tmp_path: Path, sock: str) -> None:
    """The check itself holds on an uncut run (so a cut run's failure is the cut's)."""
    settings = settings_for(tmp_path, sock, True)
    out = await run_script(settings, FaultyFileLayer(), SCRIPT)
    assert await recover_and_check(settings, SCRIPT, out) == len(out.acked)


SNAPSHOTS = [random.Random(n).randbytes(size) for n, size in ((1, 20_000), (2, 150_000))]


@dataclass
class SnapshotRun:
    acked_entries: dict[bytes, int] = field(default_factory=dict)
    stored: list[int] = field(default_factory=list)  # indexes into SNAPSHOTS whose put returned
    anchors: list[int] = field(default_factory=list)


async def snapshot_script(settings: Settings, fs: FaultyFileLayer) -> SnapshotRun:
    """Append, store snapshot 0, append, store snapshot 1 (in-process API of the service)."""
    run = SnapshotRun()
    service = Service(settings, fs=fs)
    try:
        await service.start()
    except Exception:
        if fs.powered:
            raise
        return run
    try:
        journal = service.journals["main"]
        for n, blob in enumerate(SNAPSHOTS):
            for _ in range(4):
                rid = random.randbytes(16)
                result = await journal.append(rid, "t", command_for(rid))
                run.acked_entries[rid] = result.seq
            run.anchors.append(journal.last_seq)
            await journal.snapshot_put(journal.last_seq, blob)
            run.stored.append(n)
    except Exception:
        if fs.powered:
            raise
    finally:
        await service.shutdown()
    return run


async def test_a_snapshot_write_interrupted_at_each_step_leaves_the_old_set_or_the_new_one(
    tmp_path: Path, sock: str
) -> None:
    """Never a half snapshot under its final name: after the cut the newest valid snapshot is
    the last one whose put returned, or one written completely after it; nothing is skipped as
    corrupt; every acknowledged entry is there."""
    dry = tmp_path / "dry"
    dry.mkdir()
    fs = FaultyFileLayer()
    hook = BoundaryHook(fs, str(dry), MUTATING_OPS)
    fs.hook = hook
    assert (await snapshot_script(settings_for(dry, sock, False), fs)).stored == [0, 1]
    fs.hook = None
    keys = [k for k in hook.seen if "snapshots" in k[1] or (k[0] == "fsync_dir" and k[1] == "data")]
    writes = [k for k in keys if k[0] == "write"]
    keys = [k for k in keys if k[0] != "write"] + writes[:: max(1, len(writes) // 6)]
    assert any(k[0] == "rename" for k in keys)
    cuts = 0
    for i, key in enumerate(keys):
        root = tmp_path / f"cut{i}"
        root.mkdir()
        fs = FaultyFileLayer()
        model = LOSS_MODELS[i % len(LOSS_MODELS)]
        cut = functools.partial(cut_power, fs, model, i)
        hook = BoundaryHook(fs, str(root), MUTATING_OPS, cut_at=key, cut=cut)
        fs.hook = hook
        settings = settings_for(root, sock, False)
        run = await snapshot_script(settings, fs)
        fs.hook = None
        cuts += hook.fired
        service = Service(settings, fs=FaultyFileLayer())
        await service.start()
        try:
            journal = service.journals["main"]
            log = {e.request_id: e.seq for e in journal.read(1, 1000)}
            for rid, seq in run.acked_entries.items():
                assert log.get(rid) == seq, f"acknowledged seq {seq} lost (cut at {key})"
            snap = await journal.snapshot_get()
            assert snap is None or not snap.skipped, f"a torn snapshot under its final name: {key}"
            if run.stored:
                assert snap is not None, f"a stored snapshot was lost (cut at {key})"
            if snap is not None:
                n = next(n for n, blob in enumerate(SNAPSHOTS) if blob == snap.data)
                assert n >= (run.stored[-1] if run.stored else 0)
        finally:
            await service.shutdown()
        leftovers = [p.name for p in (root / "data" / "snapshots").glob("*.tmp")]
        assert leftovers == [], "temp files of an interrupted snapshot were not cleared"
    assert cuts >= len(keys) * 9 // 10
    report(f"power cuts (snapshot write steps): {cuts} cuts, the old or the new set every time")
