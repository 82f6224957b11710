"""What the operator tools share: exit codes, the parser class, read-only opens, formatting.

Every tool is safe on a directory that a running server holds. The read-only tools never take
the directory lock, not even for an instant: they learn who holds it from ``/proc/locks``, so a
server starting at the same moment can never fail because an operator ran ``ackwal stat``. A
live server may be writing the last segment while a tool reads it, and a read can catch a batch
half-copied into the page cache; damage seen in the last segment of a live log is therefore
checked again before it is reported (:data:`LIVE_RESCANS`). Only ``repair`` takes the lock.
"""

from __future__ import annotations

import argparse
import base64
import functools
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final, Literal, NoReturn

import structlog

from service.tools.progress import Progress
from wal import CorruptionError, Wal, WalOptions
from wal.fileio import OS_FILES, FileLayer, ReadHandle, WriteHandle
from wal.format import DEFAULT_MAX_RECORD_SIZE, RecordType
from wal.lock import LOCK_NAME
from wal.scan import list_segments

EXIT_OK: Final = 0
EXIT_ERROR: Final = 3  # could not run: missing directory, unreadable file, I/O error
EXIT_USAGE: Final = 64  # EX_USAGE: bad arguments (never confused with a tool's own status)

LIVE_RESCANS: Final = 5
LIVE_RESCAN_DELAY: Final = 0.05

COMMON_EXITS: Final = f"""\
  {EXIT_ERROR}   could not run (missing directory, unreadable file, I/O error)
  {EXIT_USAGE}  usage error (bad arguments)"""

Command = Callable[[argparse.Namespace], int]
BytesFormat = Literal["hex", "base64"]


class ToolError(Exception):
    """Stops a tool with a message and an exit code."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


class ToolParser(argparse.ArgumentParser):
    """The ``ackwal`` argument parser. Usage errors exit with ``usage_exit``.

    The tools use 64 (EX_USAGE) so that a mistyped flag never reads as a tool's own status
    (``verify`` exits 2 for corruption); ``serve`` and ``config`` keep argparse's 2.
    """

    def __init__(self, *args: Any, usage_exit: int = 2, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.usage_exit = usage_exit

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(self.usage_exit, f"{self.prog}: error: {message}\n")

    def parse_known_args(self, *args: Any, **kwargs: Any) -> tuple[Any, list[str]]:
        namespace, extras = super().parse_known_args(*args, **kwargs)
        if extras and self.usage_exit != 2:
            # A tool's own parser rejects what it does not know, with the tool's usage code.
            self.error("unrecognized arguments: " + " ".join(extras))
        return namespace, extras


# argparse has no public name for the subparsers action type.
SubParsers = argparse._SubParsersAction


class _HelpFormatter(argparse.HelpFormatter):
    """Wraps the description as usual; keeps the exit-code table (it has newlines) as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def add_tool_parser(
    sub: SubParsers[ToolParser], name: str, *, help: str, description: str, exits: str
) -> ToolParser:
    """A subcommand whose ``--help`` ends with its exit codes (its own and the common ones)."""
    return sub.add_parser(
        name,
        help=help,
        description=description,
        epilog="exit codes:\n" + _exit_table(exits + "\n" + COMMON_EXITS),
        formatter_class=_HelpFormatter,
        usage_exit=EXIT_USAGE,
    )


def _exit_table(text: str) -> str:
    """Entries ("  N   meaning", continuation lines indented deeper) sorted by code.

    A tool's own entry for a code replaces the common one (it comes first in ``text``).
    """
    entries: dict[int, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        if line.strip()[:1].isdigit():
            current = [line]
            entries.setdefault(int(line.split()[0]), current)
        else:
            current.append(line)
    return "\n".join(line for code in sorted(entries) for line in entries[code])


def add_max_record_size(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-record-size",
        type=positive_int,
        default=DEFAULT_MAX_RECORD_SIZE,
        metavar="BYTES",
        help="the max_record_size the log was written with (default: %(default)s)",
    )


def guarded(name: str) -> Callable[[Command], Command]:
    """Turn ToolError and OSError into a one-line message and the matching exit code.

    The WAL's own log lines (a torn tail seen by a read-only open, a corruption) are muted
    while a tool runs: the tool reports them itself, and stdout must carry only its output.
    """

    def wrap(func: Command) -> Command:
        @functools.wraps(func)
        def run(args: argparse.Namespace) -> int:
            saved = structlog.get_config()
            structlog.configure(processors=[_drop_event])
            try:
                return func(args)
            except ToolError as exc:
                print(f"ackwal {name}: {exc}", file=sys.stderr)
                return exc.code
            except OSError as exc:
                print(f"ackwal {name}: {exc}", file=sys.stderr)
                return EXIT_ERROR
            finally:
                structlog.configure(**saved)

        return run

    return wrap


def _drop_event(logger: Any, method: str, event: Any) -> Any:
    raise structlog.DropEvent


# -- arguments ----------------------------------------------------------------------------------


def positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def seq_arg(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a sequence number >= 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _int(text: str) -> int:
    try:
        return int(text.replace("_", ""), 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def log_directory(path: str) -> str:
    """The absolute path of an existing directory, or a ToolError (exit 3)."""
    directory = os.path.abspath(path)
    if not os.path.isdir(directory):
        raise ToolError(f"{path} is not a directory")
    return directory


# -- the directory lock, observed without taking it ---------------------------------------------


def lock_holder(directory: str) -> int | None:
    """Pid of the process holding ``directory``'s lock (0: held, pid not visible), or None.

    Read from ``/proc/locks`` (Linux), which takes no lock: probing with ``flock`` would hold
    the lock for an instant, and a server starting in that instant would fail.
    """
    try:
        st = os.stat(os.path.join(directory, LOCK_NAME))
        with open("/proc/locks", encoding="ascii", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    exact = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    inode_only: int | None = None
    for line in lines:
        # "3: FLOCK  ADVISORY  WRITE 1234 fd:00:5678 0 EOF" (waiters show "->" after the id)
        parts = line.split()
        if len(parts) < 6 or parts[1] != "FLOCK":
            continue
        pid = max(int(parts[4]), 0) if parts[4].lstrip("-").isdigit() else 0
        if parts[5] == exact:
            return pid
        if parts[5].rsplit(":", 1)[-1] == str(st.st_ino):
            inode_only = pid  # some filesystems (btrfs) report another device number here
    return inode_only


def live_note(holder: int | None) -> str:
    if holder is None:
        return "not held by a running server"
    who = f"pid {holder}" if holder else "a process in another pid namespace"
    return f"held by {who}: a live log, figures are a snapshot"


# -- read-only access -----------------------------------------------------------------------------


class CountingFiles:
    """The real file layer, reporting each whole-file read to a progress bar."""

    def __init__(self, progress: Progress, inner: FileLayer = OS_FILES) -> None:
        self.inner = inner
        self.progress = progress

    def listdir(self, path: str) -> list[str]:
        return self.inner.listdir(path)

    def read_file(self, path: str) -> bytes:
        data = self.inner.read_file(path)
        self.progress.advance(len(data))
        return data

    def open_read(self, path: str) -> ReadHandle:
        return self.inner.open_read(path)

    def open_write(self, path: str, *, create: bool) -> WriteHandle:
        return self.inner.open_write(path, create=create)

    def rename(self, src: str, dst: str) -> None:
        self.inner.rename(src, dst)

    def unlink(self, path: str) -> None:
        self.inner.unlink(path)

    def fsync_dir(self, path: str) -> None:
        self.inner.fsync_dir(path)

    def exists(self, path: str) -> bool:
        return self.inner.exists(path)

    def makedirs(self, path: str) -> None:
        self.inner.makedirs(path)


def segment_bytes(directory: str) -> int:
    """Bytes in the segment files (what a full scan reads)."""
    total = 0
    for _, name in list_segments(directory):
        try:
            total += os.path.getsize(os.path.join(directory, name))
        except FileNotFoundError:
            continue
    return total


def is_last_segment(directory: str, path: str) -> bool:
    names = list_segments(directory)
    return bool(names) and os.path.join(directory, names[-1][1]) == path


def open_log(directory: str, max_record_size: int, progress: Progress, live: bool) -> Wal:
    """``Wal.open(readonly=True)``: no lock, no change. Retried while a live tail is in flux."""
    attempts = 1 + (LIVE_RESCANS if live else 0)
    options = WalOptions(max_record_size=max_record_size, preallocate=False)
    for attempt in range(attempts):
        progress.relabel("scanning", segment_bytes(directory))
        try:
            return Wal.open(directory, options, fs=CountingFiles(progress), readonly=True)
        except CorruptionError as exc:
            if attempt == attempts - 1 or not is_last_segment(directory, exc.path):
                raise
        except FileNotFoundError:
            if attempt == attempts - 1:  # a segment vanished between listing and reading
                raise
        time.sleep(LIVE_RESCAN_DELAY)
    raise AssertionError("unreachable")


def corrupt_log_error(exc: CorruptionError) -> ToolError:
    return ToolError(
        f"{exc}\nthe log is corrupt: run `ackwal verify` for every damaged spot", code=2
    )


# -- formatting -----------------------------------------------------------------------------------


def crc_hex(value: int) -> str:
    return f"{value:#010x}"


def time_text(ms: int | None) -> str:
    """'2024-05-01 12:00:00.123' (UTC) for people; '-' when unknown."""
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def time_iso(ms: int | None) -> str | None:
    """'2024-05-01T12:00:00.123Z' for JSON."""
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def duration_text(seconds: float) -> str:
    """3725 -> '1h 2m 5s'."""
    total = round(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    shown = [f"{n}{u}" for n, u in parts if n]
    return " ".join(shown[:2]) if shown else f"{seconds:.3f}s"


def encode_bytes(data: bytes | None, fmt: BytesFormat) -> str | None:
    if data is None:
        return None
    return data.hex() if fmt == "hex" else base64.b64encode(data).decode("ascii")


def type_name(code: int) -> str:
    try:
        return RecordType(code).name
    except ValueError:
        return f"TYPE_{code}"
