"""Child process of test_kill9: append batches until killed, announcing every ACK on stdout.

    python -m tests.wal.kill9_child DIRECTORY SEED

Prints ``open <last_seq>`` once the log is open, then ``<last_seq>`` after every append that
returned: the line is the ACK, so the parent may only count seqs it has read from stdout.
Payloads come from :func:`tests.wal.surgery.payload_for`, so the parent can check them.
"""

from __future__ import annotations

import random
import sys

import structlog

from tests.wal.surgery import payload_for
from wal import Wal, WalOptions

# Small preallocated segments: the kills land in rotations and spare-file preparation too.
KILL9_OPTIONS = WalOptions(segment_size=32 * 1024, preallocate=True)


def main(directory: str, seed: int) -> None:
    # stdout carries only ACKs; log lines go to stderr.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    rng = random.Random(seed)
    with Wal.open(directory, KILL9_OPTIONS) as wal:
        print(f"open {wal.last_seq}", flush=True)
        while True:
            first = wal.last_seq + 1
            count = rng.randint(1, 4)
            wal.append([payload_for(seq) for seq in range(first, first + count)])
            print(wal.last_seq, flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
