"""Child process of test_crash: the service on a disk whose batch fdatasyncs never return.

    python -m tests.service.stuck_disk_child DATA_DIR SOCKET

Runs :func:`service.app.run_service` (as ``ackwal serve`` does) over a
:class:`wal.faultfs.FaultyFileLayer` whose hook blocks, for good, every fdatasync made once the
socket is bound (start-up's own records are written before that), like a disk that dies.
With a small queue and ``halt_threshold`` the watchdog fails stop, and a SIGTERM runs into
``shutdown_timeout``: either way the process must exit with code 70 although the writer thread
is still stuck in that fdatasync.
"""

from __future__ import annotations

import os
import sys
import threading

from service.app import run_service
from service.logs import configure_logging
from service.settings import Settings
from wal.faultfs import FaultyFileLayer, FsCall, Phase
from wal.writer import SPARE_NAME


def main(data_dir: str, socket_path: str) -> int:
    configure_logging("json", "info")
    never = threading.Event()

    def stuck(call: FsCall, phase: Phase) -> None:
        spare = call.path.endswith(SPARE_NAME)  # the spare syncs on a thread of its own
        if (
            call.op == "fdatasync"
            and phase == "before"
            and os.path.exists(socket_path)
            and not spare
        ):
            never.wait()

    fs = FaultyFileLayer()
    fs.hook = stuck
    settings = Settings(
        data_dir=data_dir,
        socket_path=socket_path,
        metrics_addr="",
        segment_size=1024 * 1024,
        max_record_size=256 * 1024,
        queue_capacity=4,
        halt_threshold=0.5,
        shutdown_timeout=1.0,
        exit_on_halt=True,
    )
    return run_service(settings, fs=fs)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
