"""Writes the golden protocol frames ``tests/golden/frames/*.bin`` that pin protocol version 1.

Each file holds one complete frame (4-byte big-endian length + msgpack map, or the array of a
compact append) built by the real
encoders in :mod:`service.protocol` and :mod:`service.entry` from fixed inputs: the replies are
built the way ``service/connection.py`` builds them (same keys, same order), and record
payloads with a fixed ``recv_ms``. ``tests/service/test_protocol_golden.py`` rebuilds them and
compares bytes, decodes the files back, and plays the requests against a live server.

Regenerate ONLY when the wire encoding changes on purpose, with an update of docs/PROTOCOL.md:
a bump of ``service.protocol.PROTOCOL_VERSION``, or an extension every version-1 client can
ignore (the compact append, announced by ``compact_append`` in the hello reply, was one). If
the test fails after any other change, the change broke the protocol: fix the code, not the
golden files.

    .venv/bin/python -m tests.golden.frames.make_frames        # (re)write the .bin files
    .venv/bin/python -m tests.golden.frames.make_frames --hex  # hex of each frame, for the docs
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from typing import Any, Final

from service.entry import COMPACT_APPEND, prepare_entry
from service.protocol import (
    ErrorCode,
    encode_error,
    encode_frame,
    encode_record,
    frame_with_raw,
    raw_array,
)
from wal.format import RecordType

GOLDEN_DIR: Final = os.path.dirname(os.path.abspath(__file__))
SERVER_VERSION: Final = "0.1.0"  # the hello reply carries it; a live test masks it
RECV_MS: Final = 1_767_225_600_000  # 2026-01-01T00:00:00Z, the server's clock in every payload
MAX_PAYLOAD: Final = 4 * 1024 * 1024  # the default max_record_size
REQUEST_ID: Final = uuid.UUID("00010203-0405-0607-0809-0a0b0c0d0e0f").bytes
REQUEST_ID_2: Final = uuid.UUID("10111213-1415-1617-1819-1a1b1c1d1e1f").bytes
REQUEST_ID_3: Final = uuid.UUID("20212223-2425-2627-2829-2a2b2c2d2e2f").bytes
REQUEST_ID_4: Final = uuid.UUID("30313233-3435-3637-3839-3a3b3c3d3e3f").bytes
REQUEST_ID_5: Final = uuid.UUID("40414243-4445-4647-4849-4a4b4c4d4e4f").bytes

# The entries as a client sends them (without op/id): the minimal one and one with every field.
ENTRY: Final[dict[str, Any]] = {
    "request_id": REQUEST_ID,
    "command_type": "new_order",
    "command": b'{"px":100}',
    "response": b"ok",
}
FULL_ENTRY: Final[dict[str, Any]] = {
    "request_id": REQUEST_ID_2,
    "command_type": "cancel_order",
    "command": b'{"order":7}',
    "response": b"cancelled",
    "events": [
        {"type": "order_cancelled", "key": "BTC-USD", "data": b"\x07"},
        {"type": "book_changed", "key": None, "data": b""},
    ],
    "ts_ms": 1_767_225_599_999,
    "pre_digest": b"\xaa" * 8,
    "post_digest": b"\xbb" * 8,
    "duration_us": 42,
}
BATCH_ENTRIES: Final[list[dict[str, Any]]] = [
    {"request_id": REQUEST_ID_3, "command_type": "new_order", "command": b"a"},
    {"request_id": REQUEST_ID_4, "command_type": "new_order", "command": b"b"},
]


def payload(entry: dict[str, Any]) -> bytes:
    """The ENTRY payload the server stores for ``entry`` (accepted at RECV_MS)."""
    return prepare_entry(entry, RECV_MS, MAX_PAYLOAD).payload


def record(seq: int, entry: dict[str, Any]) -> bytes:
    """One record as it travels in read/lookup replies and subscribe pushes."""
    return encode_record(seq, RecordType.ENTRY, payload(entry))


def build_frames() -> dict[str, bytes]:
    """Every golden frame by file stem, in the order of a conversation with a fresh server."""
    # A fresh server's log starts with its run's RUN_STARTED record (seq 1, whose payload holds
    # a time and a pid, so never part of a golden frame): the first entry gets seq 2.
    both = raw_array([record(2, ENTRY), record(3, FULL_ENTRY)])
    return {
        "hello_request": encode_frame({"op": "hello", "id": 1, "version": 1}),
        "hello_reply": encode_frame(
            {
                "id": 1,
                "server_version": SERVER_VERSION,
                "protocol_version": 1,
                "max_frame_bytes": 8 * 1024 * 1024,
                "max_inflight": 4096,
                "max_record_size": MAX_PAYLOAD,
                "journals": ["main"],
                "last_seq": 1,
                "compact_append": True,
            }
        ),
        "append_request": encode_frame({"op": "append", "id": 2, **ENTRY}),
        "append_reply": encode_frame({"id": 2, "seq": 2, "duplicate": False}),
        "append_retry_request": encode_frame({"op": "append", "id": 3, **ENTRY}),
        "append_duplicate_reply": encode_frame(
            {"id": 3, "seq": 2, "duplicate": True, "response": b"ok"}
        ),
        "append_full_request": encode_frame({"op": "append", "id": 4, **FULL_ENTRY}),
        "append_full_reply": encode_frame({"id": 4, "seq": 3, "duplicate": False}),
        "append_bad_request_id_request": encode_frame(
            {"op": "append", "id": 5, **ENTRY, "request_id": REQUEST_ID[:15]}
        ),
        "error_reply": encode_error(
            5,
            ErrorCode.BAD_REQUEST,
            "field 'request_id' must be 16 bytes (binary UUID), got 15 bytes",
        ),
        "read_request": encode_frame({"op": "read", "id": 6, "from_seq": 2, "limit": 2}),
        "read_reply": frame_with_raw({"id": 6, "last_seq": 3}, "records", both),
        "lookup_request": encode_frame({"op": "lookup", "id": 7, "request_id": REQUEST_ID}),
        "lookup_reply": frame_with_raw({"id": 7}, "record", record(2, ENTRY)),
        "lookup_unknown_request": encode_frame(
            {"op": "lookup", "id": 8, "request_id": REQUEST_ID_4}
        ),
        "lookup_unknown_reply": encode_frame({"id": 8, "record": None}),
        "subscribe_request": encode_frame({"op": "subscribe", "id": 9, "from_seq": 2}),
        "subscribe_reply": encode_frame({"id": 9, "subscribed": True, "from_seq": 2}),
        "subscribe_push": frame_with_raw({"id": 9}, "records", both),
        "unsubscribe_request": encode_frame({"op": "unsubscribe", "id": 10, "subscription": 9}),
        "unsubscribe_reply": encode_frame({"id": 10, "unsubscribed": 9}),
        "append_batch_request": encode_frame(
            {"op": "append_batch", "id": 11, "entries": BATCH_ENTRIES}
        ),
        "append_batch_reply": encode_frame(
            {
                "id": 11,
                "results": [
                    {"seq": 4, "duplicate": False},
                    {"seq": 5, "duplicate": False},
                ],
            }
        ),
        "compact_append_request": encode_frame(
            [COMPACT_APPEND, 12, REQUEST_ID_5, "new_order", b"c"]
        ),
        "compact_append_reply": encode_frame({"id": 12, "seq": 6, "duplicate": False}),
        "subscription_ended": encode_error(
            9, ErrorCode.SHUTTING_DOWN, "the journal is shutting down"
        ),
        "bad_frame_reply": encode_error(
            None,
            ErrorCode.BAD_FRAME,
            "frame must hold a msgpack map (or an array: a compact append), got int",
        ),
    }


def golden_path(name: str) -> str:
    return os.path.join(GOLDEN_DIR, f"{name}.bin")


def write_all() -> None:
    for name, frame in build_frames().items():
        with open(golden_path(name), "wb") as f:
            f.write(frame)
        print(f"{golden_path(name)}: {len(frame)} bytes")


def print_hex() -> None:
    for name, frame in build_frames().items():
        print(f"{name} ({len(frame)} bytes):")
        body = frame.hex(" ")
        for start in range(0, len(body), 16 * 3):
            print("    " + body[start : start + 16 * 3].rstrip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--hex", action="store_true", help="print the frames in hex instead")
    args = parser.parse_args(argv)
    if args.hex:
        print_hex()
    else:
        write_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
