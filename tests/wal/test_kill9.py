"""kill -9 at random moments never loses an acknowledged record.

A real child process (tests/wal/kill9_child.py) appends batches and prints the last seq after
every append returned. The parent SIGKILLs it at random moments, during appends, rotations and
its own startup and recovery, reopens the log and checks that every seq the child announced is
present and intact and that seqs are gap-free.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.wal.kill9_child import KILL9_OPTIONS
from tests.wal.surgery import payload_for
from wal import Wal, verify

REPO = Path(__file__).resolve().parents[2]
KILLS_WHILE_APPENDING = 24
KILLS_DURING_STARTUP = 6


class Child:
    """The appending child and a thread draining its stdout (ACK lines)."""

    def __init__(self, directory: Path, seed: int, stderr: Path) -> None:
        self.stderr = stderr
        with open(stderr, "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.wal.kill9_child", str(directory), str(seed)],
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        self.opened = threading.Event()
        self.acked = 0
        self.reader = threading.Thread(target=self._drain, daemon=True)
        self.reader.start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if not line.endswith("\n"):
                break  # cut short by the kill: not an ACK
            if line.startswith("open "):
                self.opened.set()
            else:
                self.acked = max(self.acked, int(line))

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.reader.join(timeout=30)
        assert self.proc.returncode == -signal.SIGKILL, (
            f"child exited by itself ({self.proc.returncode}): {self.stderr.read_text()[-2000:]}"
        )


def _check(directory: Path, acked: int, checked_up_to: int, readonly: bool) -> int:
    """Reopen; every acknowledged seq must be there, intact and gap-free. Returns last_seq."""
    assert verify(str(directory)).status != "corrupt"
    with Wal.open(str(directory), KILL9_OPTIONS, readonly=readonly) as wal:
        assert wal.last_seq >= acked, f"acknowledged seq {acked} lost (log ends at {wal.last_seq})"
        expected = max(1, checked_up_to)
        for record in wal.read(expected):
            assert record.seq == expected, f"gap: seq {record.seq} where {expected} was expected"
            assert record.payload == payload_for(record.seq), f"seq {record.seq} altered"
            expected += 1
        assert expected == wal.last_seq + 1
        return wal.last_seq


def test_kill_9_at_random_moments_never_loses_an_acknowledged_record(tmp_path: Path) -> None:
    rng = random.Random(0xACC)
    directory = tmp_path / "wal"
    plan = ["appending"] * KILLS_WHILE_APPENDING + ["startup"] * KILLS_DURING_STARTUP
    rng.shuffle(plan)
    acked = 0
    checked = 0
    kills_after_acks = 0
    for cycle, moment in enumerate(plan):
        child = Child(directory, seed=cycle, stderr=tmp_path / "children.log")
        if moment == "appending":
            child.opened.wait(timeout=30)  # on failure, kill() below reports the child's stderr
            time.sleep(rng.uniform(0.0, 0.2))
        else:
            time.sleep(rng.uniform(0.0, 0.35))  # imports, lock, recovery, preallocation
        child.kill()
        if child.acked > acked:
            kills_after_acks += 1
        acked = max(acked, child.acked)
        checked = _check(directory, acked, checked, readonly=cycle % 2 == 1)
    assert kills_after_acks >= KILLS_WHILE_APPENDING // 2
    assert acked > 0
    # A last full pass over the whole log, from seq 1.
    assert _check(directory, acked, 1, readonly=True) >= acked
