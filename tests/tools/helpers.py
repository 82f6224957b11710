"""Helpers for the tool tests: run ``ackwal`` in-process, and build real logs to run it on.

Logs are built with the real writers: :class:`service.journal.Journal` for ordinary entries,
:class:`wal.Wal` where a test needs entries with chosen receive times or other record types.
"""

from __future__ import annotations

import io
import sys
import uuid
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from service.cli import main
from service.entry import AppendResult, prepare_entry
from service.journal import Journal
from tests.service.harness import make_settings
from wal import RecordType, Wal, WalOptions

EVENT_TYPES = ("order.accepted", "fill", "fill", "order.done")


@dataclass(frozen=True)
class CliResult:
    code: int
    out: str
    err: str


def run_cli(*argv: str, stdin: str | None = None) -> CliResult:
    """``ackwal ARGV`` in this process: exit code, stdout and stderr (stdin if given).

    A service running in this process (on the test's loop) logs to stdout through structlog;
    its lines are dropped while the tool runs, so that only the tool's output is captured.
    """
    out, err = io.StringIO(), io.StringIO()
    saved_stdin = sys.stdin
    saved_logging = structlog.get_config()
    structlog.configure(processors=[_drop])
    if stdin is not None:
        sys.stdin = io.StringIO(stdin)
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = main(list(argv))
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.stdin = saved_stdin
        structlog.configure(**saved_logging)
    return CliResult(code, out.getvalue(), err.getvalue())


def _drop(logger: Any, method: str, event: Any) -> Any:
    raise structlog.DropEvent


def entry_fields(i: int) -> dict[str, Any]:
    """The i-th test command: its events' count and types vary with i."""
    return {
        "request_id": uuid.uuid5(uuid.NAMESPACE_OID, f"cmd-{i}").bytes,
        "command_type": "order.place" if i % 3 else "order.cancel",
        "command": f"command {i}".encode(),
        "response": f"response {i}".encode(),
        "events": [
            {"type": EVENT_TYPES[k % len(EVENT_TYPES)], "key": f"k{k}", "data": bytes([i % 256, k])}
            for k in range(i % 4)
        ],
        "ts_ms": 1_700_000_000_000 + i,
        "duration_us": i,
    }


async def journal_log(
    data_dir: Path, count: int, *, batch: int = 1, **settings: Any
) -> list[AppendResult]:
    """Append ``count`` entries through a real Journal (``batch`` per append_batch)."""
    overrides: dict[str, Any] = {"segment_size": 16 * 1024, "max_record_size": 4096}
    overrides.update(settings)
    journal = await Journal.open(make_settings(data_dir, "/nonexistent/ackwal.sock", **overrides))
    results: list[AppendResult] = []
    try:
        for start in range(0, count, batch):
            entries = [entry_fields(i) for i in range(start, min(start + batch, count))]
            results += await journal.append_batch(entries)
    finally:
        await journal.close()
    return results


def wal_entries(directory: Path, recv_ms: list[int], first_index: int = 0, **options: Any) -> None:
    """Append one ENTRY record per receive time, encoded by service.entry as the journal does."""
    opts = WalOptions(**{"preallocate": False, **options})
    with Wal.open(str(directory), opts) as wal:
        for i, ms in enumerate(recv_ms, start=first_index):
            wal.append([prepare_entry(entry_fields(i), ms, opts.max_record_size).payload])


def wal_record(directory: Path, record_type: RecordType, payload: bytes) -> int:
    with Wal.open(str(directory), WalOptions(preallocate=False)) as wal:
        return wal.append([payload], record_type)
