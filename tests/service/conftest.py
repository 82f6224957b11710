"""Shared fixtures for the service tests: a real server in the test's own event loop."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest

from service.app import Service
from service.settings import load_settings
from tests.service.harness import short_socket_path
from wal.fileio import OS_FILES, FileLayer

RunningService = Callable[..., AbstractAsyncContextManager[Service]]


@pytest.fixture
def running_service(tmp_path: Path) -> Iterator[RunningService]:
    """``async with running_service(**settings) as svc:`` a started :class:`Service`.

    Real socket, files and fdatasync. Settings go through ``load_settings`` as flags (so they
    are validated like an operator's), with no config file and no environment (the host's
    ``ACKWAL_*`` variables cannot leak in). The data directory is ``tmp_path / "data"`` and the
    socket path is short (AF_UNIX paths must fit in 108 bytes); entering the context again in
    the same test restarts on the same data directory. ``fs`` puts a file layer under the WAL.
    """
    with short_socket_path() as socket_path:

        @contextlib.asynccontextmanager
        async def run(*, fs: FileLayer = OS_FILES, **overrides: Any) -> AsyncIterator[Service]:
            flags: dict[str, Any] = {
                "data_dir": str(tmp_path / "data"),
                "socket_path": socket_path,
                "metrics_addr": "",
                "segment_size": 4 * 1024 * 1024,
                "max_record_size": 1024 * 1024,
                **overrides,
            }
            svc = Service(load_settings(env={}, flags=flags), fs=fs)
            await svc.start()
            try:
                yield svc
            finally:
                svc.request_stop()
                await svc.shutdown()

        yield run
