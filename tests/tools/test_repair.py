"""``ackwal repair`` and ``wal.repair``: cut only on purpose, copy aside first, never while held."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import pytest

from tests.tools.helpers import run_cli
from tests.wal.surgery import (
    PLAIN,
    assert_intact_prefix,
    build_log,
    flip_bit,
    payload_for,
    read_all,
    records_in,
    segment_paths,
    snapshot,
    truncate,
)
from wal import Wal, WalOptions, verify
from wal.faultfs import MUTATING_OPS, FaultyFileLayer, FsCall, Phase, PowerLossError
from wal.lock import DirectoryLock
from wal.repair import apply_repair, plan_repair
from wal.scan import list_segments

SMALL = WalOptions(segment_size=2048, preallocate=False)


def unlocked(directory: Path) -> dict[str, tuple[bytes, int]]:
    """Every file but the lock file (repair takes the lock, and that is all it may touch)."""
    files = snapshot(directory)
    files.pop("LOCK", None)
    return files


def torn_log(directory: Path) -> tuple[Path, int]:
    """A log whose last record is cut short; returns the segment and the torn record's offset."""
    build_log(directory, [3, 4, 5], PLAIN)
    last = records_in(segment_paths(directory)[-1])[-1]
    truncate(last.path, last.end - 3)
    return last.path, last.offset


def corrupt_log(directory: Path) -> tuple[int, int]:
    """Several segments, a flipped bit in the second; returns (last intact seq, last seq)."""
    last_seq = build_log(directory, [5] * 40, SMALL)
    rec = records_in(segment_paths(directory)[1])[3]
    flip_bit(rec.path, (rec.offset + 30) * 8)
    return rec.seq - 1, last_seq


def test_repair_cuts_a_torn_tail_after_copying_it_aside(tmp_path: Path) -> None:
    path, offset = torn_log(tmp_path)
    damaged = path.read_bytes()[offset:]
    res = run_cli("repair", str(tmp_path), "--yes")
    assert res.code == 0, res.err
    assert Path(f"{path}.{offset}.broken").read_bytes() == damaged
    assert path.stat().st_size == offset
    assert verify(str(tmp_path)).status == "clean"
    assert_intact_prefix(read_all(tmp_path), 11)


def test_repair_without_yes_asks_and_a_no_changes_nothing(tmp_path: Path) -> None:
    torn_log(tmp_path)
    before = unlocked(tmp_path)
    for answer in ("n\n", "", "whatever\n"):
        res = run_cli("repair", str(tmp_path), stdin=answer)
        assert res.code == 1, res.err
        assert "Proceed? [y/N]" in res.err
        assert "not confirmed; nothing changed" in res.err
    assert unlocked(tmp_path) == before


def test_repair_confirmed_on_stdin_applies_the_plan(tmp_path: Path) -> None:
    path, offset = torn_log(tmp_path)
    res = run_cli("repair", str(tmp_path), stdin="yes\n")
    assert res.code == 0, res.err
    assert f"cut {path.name} at offset {offset}" in res.out
    assert path.stat().st_size == offset


def test_repair_refuses_corruption_without_truncate_after_and_names_the_seq(
    tmp_path: Path,
) -> None:
    intact, _ = corrupt_log(tmp_path)
    before = unlocked(tmp_path)
    res = run_cli("repair", str(tmp_path), "--yes")
    assert res.code == 2
    assert f"--truncate-after {intact}" in res.err
    assert unlocked(tmp_path) == before


def test_truncate_after_removes_later_records_and_segments_and_keeps_copies(
    tmp_path: Path,
) -> None:
    intact, _ = corrupt_log(tmp_path)
    keep = intact - 2
    segments = segment_paths(tmp_path)
    originals = {p.name: p.read_bytes() for p in segments}
    # Valid records it removes: two before the damage, every one in the later segments (those
    # after the damage in its own segment cannot be told from garbage, so are not counted).
    dropped = 2 + sum(len(records_in(p)) for p in segments[2:])
    res = run_cli("repair", str(tmp_path), "--truncate-after", str(keep), "--yes", "--json")
    assert res.code == 0, res.err
    doc = json.loads(res.out)
    assert doc["applied"] and doc["status_after"] == "clean"
    assert doc["plan"]["keep_through_seq"] == keep
    assert doc["plan"]["dropped_records"] == dropped
    cut = doc["plan"]["cut"]
    cut_name = Path(cut["path"]).name
    moved = [Path(p).name for p in doc["plan"]["moved_segments"]]
    assert moved and moved == sorted(moved, reverse=True)
    # What was removed is all still there, aside: the cut tail and every later segment.
    aside = Path(f"{cut['path']}.{cut['offset']}.broken").read_bytes()
    assert aside == originals[cut_name][cut["offset"] :].rstrip(b"\0")
    for name in moved:
        assert (tmp_path / f"{name}.broken").read_bytes() == originals[name]
        assert not (tmp_path / name).exists()
    assert_intact_prefix(read_all(tmp_path, SMALL), keep)
    # The log takes appends again, gap-free after the kept prefix.
    with Wal.open(str(tmp_path), SMALL) as wal:
        assert wal.append([payload_for(keep + 1)]) == keep + 1
    assert verify(str(tmp_path)).status == "clean"


def test_truncate_after_past_the_first_damage_is_refused(tmp_path: Path) -> None:
    intact, _ = corrupt_log(tmp_path)
    res = run_cli("repair", str(tmp_path), "--truncate-after", str(intact + 1), "--yes")
    assert res.code == 2
    assert "the last intact record before the first damage" in res.err
    assert f"is seq {intact}" in res.err
    assert verify(str(tmp_path)).status == "corrupt"


def test_repair_refuses_while_the_directory_lock_is_held_and_works_once_released(
    tmp_path: Path,
) -> None:
    torn_log(tmp_path)
    before = unlocked(tmp_path)
    held = DirectoryLock(str(tmp_path))  # what a running server holds
    held.acquire()
    try:
        res = run_cli("repair", str(tmp_path), "--yes")
        assert res.code == 4
        assert f"is locked by pid {os.getpid()}: stop the server" in res.err
        assert unlocked(tmp_path) == before
    finally:
        held.release()
    assert run_cli("repair", str(tmp_path), "--yes").code == 0


def test_repair_of_a_clean_log_does_nothing(tmp_path: Path) -> None:
    build_log(tmp_path, [4, 4], PLAIN)
    before = unlocked(tmp_path)
    res = run_cli("repair", str(tmp_path))  # no --yes and no stdin: never asked
    assert res.code == 0
    assert "nothing to repair" in res.err
    assert unlocked(tmp_path) == before


def test_repair_never_overwrites_an_earlier_broken_copy(tmp_path: Path) -> None:
    path, offset = torn_log(tmp_path)
    earlier = Path(f"{path}.{offset}.broken")
    earlier.write_bytes(b"evidence from an earlier repair")
    assert run_cli("repair", str(tmp_path), "--yes").code == 0
    assert earlier.read_bytes() == b"evidence from an earlier repair"
    assert Path(f"{path}.{offset}.1.broken").exists()


# -- crash safety of wal.repair: a power cut at every disk operation ---------------------------


class CutBefore:
    """Cuts the power before the n-th disk-changing operation."""

    def __init__(self, fs: FaultyFileLayer, n: int, rng: random.Random | None) -> None:
        self.fs = fs
        self.n = n
        self.rng = rng
        self.count = 0

    def __call__(self, call: FsCall, phase: Phase) -> None:
        if phase != "before" or call.op not in MUTATING_OPS:
            return
        self.count += 1
        if self.count == self.n:
            self.fs.power_cut(self.rng, keep_dir_changes=self.rng is not None)


def mutating_ops_of_a_repair(directory: Path, keep: int) -> int:
    fs = FaultyFileLayer()
    counter = CutBefore(fs, 0, None)
    plan = plan_repair(str(directory), fs, truncate_after=keep)
    fs.hook = counter
    apply_repair(plan, fs)
    return counter.count


@pytest.mark.parametrize("loss", ["all_unsynced_lost", "random_prefix_kept"])
def test_a_power_cut_during_a_repair_loses_nothing_and_a_rerun_finishes_it(
    tmp_path: Path, loss: str
) -> None:
    template = tmp_path / "template"
    intact, _ = corrupt_log(template)
    keep = intact - 1
    originals = {p.name: p.read_bytes() for p in segment_paths(template)}
    total = mutating_ops_of_a_repair(shutil.copytree(template, tmp_path / "dry"), keep)
    assert total >= 8
    for n in range(1, total + 1):
        root = Path(shutil.copytree(template, tmp_path / f"cut-{n}"))
        fs = FaultyFileLayer()
        plan = plan_repair(str(root), fs, truncate_after=keep)
        rng = random.Random(n) if loss == "random_prefix_kept" else None
        fs.hook = CutBefore(fs, n, rng)
        with pytest.raises(PowerLossError):
            apply_repair(plan, fs)
        # The segments left are a prefix of the original ones, and every byte of every original
        # segment is still somewhere: in place, or in a *.broken copy.
        names = [name for _, name in list_segments(str(root))]
        assert names == sorted(originals)[: len(names)]
        copies = [p.read_bytes() for p in root.iterdir() if p.name.endswith(".broken")]
        for name, content in originals.items():
            here = (root / name).read_bytes() if (root / name).exists() else b""
            if here == content:
                continue
            cut = len(here)
            rest = content[cut:].rstrip(b"\0")
            assert content.startswith(here) and (not rest or rest in copies), (n, name)
        # Running the same repair again (after the restart) completes it.
        rerun = plan_repair(str(root), truncate_after=keep)
        apply_repair(rerun)
        assert verify(str(root)).status == "clean"
        assert_intact_prefix(read_all(root, SMALL), keep)
