"""Runs: each start of the service writes a RUN_STARTED record, each clean stop a RUN_SEALED one.

A run is the stretch of the log written by one process. A run followed by a RUN_SEALED record
ended cleanly; any other ended in a crash, a kill or a fail-stop, and the next start recovered
from it. Payloads are msgpack maps (docs/FORMAT.md, "Service records")::

    RUN_STARTED {"v": 1, "service_version": str, "format_version": int, "config_hash": str,
                 "host": str, "pid": int, "time_ms": int}
    RUN_SEALED  {"v": 1, "started_seq": int, "entries": int, "time_ms": int}

``config_hash`` is the SHA-256 (first 16 hex digits) of the effective settings, so that a run
can be matched with the configuration it ran under.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgpack

from service import __version__
from service.settings import SPECS, Settings
from wal import Record, RecordType, Wal
from wal.format import FORMAT_VERSION

RUN_PAYLOAD_VERSION = 1


class RunStartTimeoutError(TimeoutError):
    """The RUN_STARTED record was not durable within ``run_started_timeout``: start refused."""


def config_hash(settings: Settings) -> str:
    values = {s.key: getattr(settings, s.key) for s in SPECS}
    text = json.dumps(values, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_started_payload(settings: Settings) -> bytes:
    payload: bytes = msgpack.packb(
        {
            "v": RUN_PAYLOAD_VERSION,
            "service_version": __version__,
            "format_version": FORMAT_VERSION,
            "config_hash": config_hash(settings),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "time_ms": time.time_ns() // 1_000_000,
        },
        use_bin_type=True,
    )
    return payload


def run_sealed_payload(started_seq: int, entries: int) -> bytes:
    payload: bytes = msgpack.packb(
        {
            "v": RUN_PAYLOAD_VERSION,
            "started_seq": started_seq,
            "entries": entries,
            "time_ms": time.time_ns() // 1_000_000,
        },
        use_bin_type=True,
    )
    return payload


def decode_run_payload(payload: bytes) -> dict[str, Any]:
    """The map of a RUN_STARTED or RUN_SEALED payload ({} if it is not a map)."""
    try:
        value = msgpack.unpackb(payload, raw=False)
    except (ValueError, msgpack.ExtraData):
        return {}
    return value if isinstance(value, dict) else {}


@dataclass(slots=True)
class Run:
    """One run found in the log."""

    started_seq: int
    started: dict[str, Any]
    sealed_seq: int | None = None
    last_seq: int = 0  # the last record of the run (its seal, if sealed)
    entries: int = 0

    @property
    def sealed(self) -> bool:
        return self.sealed_seq is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "started_seq": self.started_seq,
            "sealed_seq": self.sealed_seq,
            "sealed": self.sealed,
            "last_seq": self.last_seq,
            "entries": self.entries,
            "pid": self.started.get("pid"),
            "host": self.started.get("host"),
            "service_version": self.started.get("service_version"),
            "config_hash": self.started.get("config_hash"),
            "started_ms": self.started.get("time_ms"),
        }


def runs_of(records: Iterator[Record]) -> list[Run]:
    """Group a log's records into runs (records before the first RUN_STARTED are not in any)."""
    runs: list[Run] = []
    current: Run | None = None
    for rec in records:
        if rec.type == RecordType.RUN_STARTED:
            current = Run(rec.seq, decode_run_payload(rec.payload), last_seq=rec.seq)
            runs.append(current)
        elif current is not None:
            current.last_seq = rec.seq
            if rec.type == RecordType.RUN_SEALED:
                current.sealed_seq = rec.seq
                current = None
            elif rec.type == RecordType.ENTRY:
                current.entries += 1
    return runs


def last_run(wal: Wal) -> Run | None:
    """The newest run of the log, reading segments from the newest back until one starts."""
    segments = wal.segments()
    for info in reversed(segments):
        if info.record_count == 0:
            continue
        found = runs_of(wal.read(max(info.first_seq, wal.first_seq)))
        if found:
            return found[-1]
    return None
