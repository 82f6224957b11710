"""Hypothesis drives one log through appends, rotations, disk faults, kills and power cuts.

The model is the acknowledged prefix: the records the log must hold, plus the batch that was in
flight when an append failed. After every reopen the recovered log must be exactly the model's
records, possibly followed by a prefix of the in-flight batch, and nothing else; what was
recovered then becomes the model (the writer builds on it).
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import threading

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.wal.crashsim import LOSS_MODELS, LossModel, check_acknowledged_prefix, cut_power
from wal import Wal, WalOptions, WriterFailedError
from wal.faultfs import MUTATING_OPS, SYNC_OPS, Fault, FaultyFileLayer, FsCall, FsOp, Phase
from wal.writer import SPARE_NAME, SyncMode

payloads = st.binary(max_size=300)


def not_spare(call: FsCall) -> bool:
    return os.path.basename(call.path) != SPARE_NAME


class ArmedCut:
    """Cut the power at the ``n``-th upcoming boundary of ``ops`` in an append, a rotation or
    recovery. Only this thread's calls count: the spare-segment thread interleaves differently
    in every run, and Hypothesis must be able to replay an example (test_power_cut.py cuts the
    spare thread's boundaries too)."""

    def __init__(
        self, fs: FaultyFileLayer, ops: frozenset[str], n: int, model: LossModel, seed: int
    ) -> None:
        self.fs, self.ops, self.n, self.model, self.seed = fs, ops, n, model, seed
        self.thread = threading.get_ident()

    @property
    def pending(self) -> bool:
        return self.n >= 0

    def __call__(self, call: FsCall, phase: Phase) -> None:
        if call.op not in self.ops or self.n < 0 or threading.get_ident() != self.thread:
            return
        if self.n == 0:
            cut_power(self.fs, self.model, self.seed)
        self.n -= 1


class ProcessKilled(BaseException):
    """Raised from a layer hook: the process dies there (kill -9), with no further disk I/O."""


class ArmedKill(ArmedCut):
    """Kill the process at the ``n``-th upcoming boundary of ``ops`` of this thread."""

    def __call__(self, call: FsCall, phase: Phase) -> None:
        if call.op not in self.ops or self.n < 0 or threading.get_ident() != self.thread:
            return
        self.n -= 1
        if self.n < 0:
            raise ProcessKilled


class WalMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.root = tempfile.mkdtemp(prefix="ackwal-stateful-")
        self.directory = os.path.join(self.root, "wal")
        self.fs = FaultyFileLayer()
        self.options = WalOptions()
        self.wal: Wal | None = None
        self.log: list[bytes] = []
        self.in_flight: list[bytes] = []
        self.faults: list[Fault] = []
        self.armed: ArmedCut | None = None

    # -- setup and restart --------------------------------------------------------------------

    @initialize(
        preallocate=st.booleans(),
        segment_size=st.sampled_from([512, 1024, 4096]),
        sync_mode=st.sampled_from(["fdatasync", "fsync"]),
    )
    def open_log(self, preallocate: bool, segment_size: int, sync_mode: SyncMode) -> None:
        self.options = WalOptions(
            segment_size=segment_size, preallocate=preallocate, sync_mode=sync_mode
        )
        self.reopen()

    def fault_hits(self) -> int:
        return self.fs.power_cuts + sum(f.hits for f in self.faults)

    def reopen(self) -> None:
        """Restart the process (powering on first if needed) and check what recovery kept."""
        if self.wal is not None:
            self.wal.close()
            self.wal = None
        for _attempt in range(50):
            if not self.fs.powered:
                self.fs.power_on()
            before = self.fault_hits()
            wal = None
            try:
                wal = Wal.open(self.directory, self.options, fs=self.fs)
                recovered = [r.payload for r in wal.read(1)]
            except ProcessKilled:
                continue  # killed during recovery: restart again
            except (OSError, WriterFailedError):
                # A power cut or an injected fault hit recovery: restart again.
                assert self.fault_hits() > before, "open failed without any fault"
                if wal is not None:
                    wal.close()
                continue
            break
        else:
            raise AssertionError("the log could not be reopened")
        check_acknowledged_prefix(recovered, self.log, self.in_flight)
        self.wal = wal
        self.log = recovered
        self.in_flight = []

    def teardown(self) -> None:
        if self.wal is not None:
            self.wal.close()
        shutil.rmtree(self.root, ignore_errors=True)

    # -- rules ----------------------------------------------------------------------------------

    @rule(batch=st.lists(payloads, min_size=1, max_size=12))
    def append(self, batch: list[bytes]) -> None:
        self.append_batch(batch)

    @rule(batch=st.lists(st.binary(min_size=200, max_size=900), min_size=1, max_size=4))
    def append_large_batch_that_rotates(self, batch: list[bytes]) -> None:
        self.append_batch(batch)

    def append_batch(self, batch: list[bytes]) -> None:
        assert self.wal is not None
        if self.wal.failed is not None:
            with pytest.raises(WriterFailedError):
                self.wal.append(batch)
            return
        try:
            first = self.wal.append(batch)
        except WriterFailedError:
            assert not self.in_flight
            self.in_flight = list(batch)
            return
        except ProcessKilled:
            self.in_flight = list(batch)
            self.reopen()  # the supervisor restarts the killed process
            return
        assert first == len(self.log) + 1
        self.log.extend(batch)

    @rule()
    def restart(self) -> None:
        self.reopen()

    @rule(model=st.sampled_from(LOSS_MODELS), seed=st.integers(0, 2**32 - 1))
    def power_cut_now(self, model: LossModel, seed: int) -> None:
        self.fs.hook = self.armed = None
        cut_power(self.fs, model, seed)
        self.reopen()

    @precondition(lambda self: self.armed is None or not self.armed.pending)
    @rule(
        n=st.integers(0, 30),
        only_syncs=st.booleans(),
        model=st.sampled_from(LOSS_MODELS),
        seed=st.integers(0, 2**32 - 1),
    )
    def arm_power_cut(self, n: int, only_syncs: bool, model: LossModel, seed: int) -> None:
        """Cut at a boundary still to come: in an append, a rotation or recovery."""
        ops = SYNC_OPS if only_syncs else MUTATING_OPS
        self.armed = ArmedCut(self.fs, ops, n, model, seed)
        self.fs.hook = self.armed

    @precondition(lambda self: self.armed is None or not self.armed.pending)
    @rule(n=st.integers(0, 30), only_syncs=st.booleans())
    def arm_process_kill(self, n: int, only_syncs: bool) -> None:
        """Kill the process (not the power) at a boundary still to come, then restart it."""
        ops = SYNC_OPS if only_syncs else MUTATING_OPS
        self.armed = ArmedKill(self.fs, ops, n, "lose_all", 0)
        self.fs.hook = self.armed

    @precondition(lambda self: all(f.hits for f in self.faults))
    @rule(
        op=st.sampled_from(["write", "fdatasync", "fsync", "fsync_dir", "rename", "create"]),
        error=st.sampled_from([errno.EIO, errno.ENOSPC]),
        skip=st.integers(0, 3),
    )
    def inject_fault(self, op: FsOp, error: int, skip: int) -> None:
        self.faults.append(self.fs.fail_next(op, error, skip=skip, when=not_spare))

    # -- invariants -----------------------------------------------------------------------------

    @invariant()
    def a_healthy_log_reads_back_exactly_the_model(self) -> None:
        wal = self.wal
        if wal is None or wal.failed is not None or not self.fs.powered:
            return
        assert wal.last_seq == len(self.log)
        try:
            records = [r.payload for r in wal.read(1)]
        except OSError:
            assert not self.fs.powered  # the spare thread cut the power meanwhile
            return
        assert records == self.log


def test_the_recovered_log_is_every_acknowledged_record_then_at_most_part_of_one_batch() -> None:
    run_state_machine_as_test(
        WalMachine,
        settings=settings(
            max_examples=200,
            stateful_step_count=50,
            deadline=None,
            database=None,  # every run explores afresh; a failure prints its replayable steps
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
