"""wal/aio.py against the real kernel: submitted syncs complete through the eventfd."""

from __future__ import annotations

import errno
import os
import select
from collections.abc import Iterator
from pathlib import Path

import pytest

from wal.aio import LinuxAio


@pytest.fixture
def aio() -> Iterator[LinuxAio]:
    ctx = LinuxAio.open()
    if ctx is None:
        pytest.skip("Linux AIO is not available on this machine")
    yield ctx
    ctx.close()


def wait_readable(fd: int) -> None:
    ready, _, _ = select.select([fd], [], [], 10)
    assert ready, "no completion within 10 s"


@pytest.mark.parametrize("datasync", [True, False], ids=["fdatasync", "fsync"])
def test_a_submitted_sync_completes_through_the_eventfd_with_result_zero(
    aio: LinuxAio, tmp_path: Path, datasync: bool
) -> None:
    fd = os.open(tmp_path / "f", os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.write(fd, b"x" * 4096)
        assert aio.reap() == []  # nothing submitted yet: never blocks
        aio.submit_sync(fd, datasync)
        assert aio.in_flight == 1
        wait_readable(aio.fileno())
        assert aio.reap() == [0]
        assert aio.in_flight == 0
        assert aio.reap() == []
    finally:
        os.close(fd)


def test_a_sync_that_cannot_start_raises_and_leaves_nothing_in_flight(aio: LinuxAio) -> None:
    fd = os.open(os.devnull, os.O_RDONLY)
    os.close(fd)  # a descriptor that is certainly closed
    with pytest.raises(OSError) as caught:
        aio.submit_sync(fd, True)
    assert caught.value.errno == errno.EBADF
    assert aio.in_flight == 0


def test_close_is_idempotent() -> None:
    ctx = LinuxAio.open()
    if ctx is None:
        pytest.skip("Linux AIO is not available on this machine")
    ctx.close()
    ctx.close()
