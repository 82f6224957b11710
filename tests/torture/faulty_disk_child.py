"""Child process of test_disk_faults: ``ackwal serve`` on a disk that fails as told.

    python -m tests.torture.faulty_disk_child DATA_DIR SOCKET PREALLOCATE [OP ERRNO SKIP SUFFIX]

Runs :func:`service.app.run_service` (as ``ackwal serve`` does, with the same exit codes) over
a :class:`wal.faultfs.FaultyFileLayer`. With a fault, every call of OP on a path ending in
SUFFIX after the first SKIP fails with ERRNO (a name such as EIO or ENOSPC): a disk that broke,
or filled up, and stays that way. Without one, the layer only passes calls through.
"""

from __future__ import annotations

import errno
import sys

from service.app import run_service
from service.logs import configure_logging
from service.settings import Settings
from wal.faultfs import FaultyFileLayer, FsCall


def main(args: list[str]) -> int:
    configure_logging("json", "info")
    data_dir, socket_path, preallocate = args[:3]
    fs = FaultyFileLayer()
    if len(args) > 3:
        op, error, skip, suffix = args[3:7]

        def on_path(call: FsCall) -> bool:
            return call.path.endswith(suffix)

        fs.fail_always(op, getattr(errno, error), skip=int(skip), when=on_path)  # type: ignore[arg-type]
    settings = Settings(
        data_dir=data_dir,
        socket_path=socket_path,
        metrics_addr="",
        segment_size=64 * 1024,
        max_record_size=16 * 1024,
        preallocate=preallocate == "1",
        shutdown_timeout=2.0,
        exit_on_halt=True,
    )
    return run_service(settings, fs=fs)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
