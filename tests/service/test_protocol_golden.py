"""Golden frames pin the wire encoding of protocol version 1 (tests/golden/frames).

The files were written by ``tests/golden/frames/make_frames.py``. The code must re-encode the
same inputs to the same bytes, the files must decode to the maps spelled out below (written by
hand, independent of the encoders), and a live server must answer the golden requests with the
golden replies byte for byte (only the server's clock and version are masked).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from service.protocol import FrameDecoder, ProtocolError, decode_request, encode_frame
from tests.golden.frames.make_frames import (
    GOLDEN_DIR,
    RECV_MS,
    REQUEST_ID,
    REQUEST_ID_2,
    REQUEST_ID_3,
    REQUEST_ID_4,
    REQUEST_ID_5,
    SERVER_VERSION,
    build_frames,
    golden_path,
)
from tests.service.conftest import RunningService

ENTRY_1 = [1, REQUEST_ID, RECV_MS, "new_order", b'{"px":100}', b"ok", [], None, None, None, None]
EVENTS_2 = [
    {"type": "order_cancelled", "key": "BTC-USD", "data": b"\x07"},
    {"type": "book_changed", "key": None, "data": b""},
]
ENTRY_2 = [
    1,
    REQUEST_ID_2,
    RECV_MS,
    "cancel_order",
    b'{"order":7}',
    b"cancelled",
    EVENTS_2,
    1_767_225_599_999,
    b"\xaa" * 8,
    b"\xbb" * 8,
    42,
]
RECORDS = [{"seq": 2, "type": 1, "data": ENTRY_1}, {"seq": 3, "type": 1, "data": ENTRY_2}]
APPEND_1 = {
    "request_id": REQUEST_ID,
    "command_type": "new_order",
    "command": b'{"px":100}',
    "response": b"ok",
}

EXPECTED: dict[str, dict[str, Any] | list[Any]] = {
    "hello_request": {"op": "hello", "id": 1, "version": 1},
    "hello_reply": {
        "id": 1,
        "server_version": "0.1.0",
        "protocol_version": 1,
        "max_frame_bytes": 8_388_608,
        "max_inflight": 4096,
        "max_record_size": 4_194_304,
        "journals": ["main"],
        "last_seq": 1,  # the run's RUN_STARTED record
        "compact_append": True,
    },
    "append_request": {"op": "append", "id": 2, **APPEND_1},
    "append_reply": {"id": 2, "seq": 2, "duplicate": False},
    "append_retry_request": {"op": "append", "id": 3, **APPEND_1},
    "append_duplicate_reply": {"id": 3, "seq": 2, "duplicate": True, "response": b"ok"},
    "append_full_request": {
        "op": "append",
        "id": 4,
        "request_id": REQUEST_ID_2,
        "command_type": "cancel_order",
        "command": b'{"order":7}',
        "response": b"cancelled",
        "events": EVENTS_2,
        "ts_ms": 1_767_225_599_999,
        "pre_digest": b"\xaa" * 8,
        "post_digest": b"\xbb" * 8,
        "duration_us": 42,
    },
    "append_full_reply": {"id": 4, "seq": 3, "duplicate": False},
    "append_bad_request_id_request": {
        "op": "append",
        "id": 5,
        **APPEND_1,
        "request_id": REQUEST_ID[:15],
    },
    "error_reply": {
        "id": 5,
        "error": {
            "code": "bad_request",
            "message": "field 'request_id' must be 16 bytes (binary UUID), got 15 bytes",
        },
    },
    "read_request": {"op": "read", "id": 6, "from_seq": 2, "limit": 2},
    "read_reply": {"id": 6, "last_seq": 3, "records": RECORDS},
    "lookup_request": {"op": "lookup", "id": 7, "request_id": REQUEST_ID},
    "lookup_reply": {"id": 7, "record": RECORDS[0]},
    "lookup_unknown_request": {"op": "lookup", "id": 8, "request_id": REQUEST_ID_4},
    "lookup_unknown_reply": {"id": 8, "record": None},
    "subscribe_request": {"op": "subscribe", "id": 9, "from_seq": 2},
    "subscribe_reply": {"id": 9, "subscribed": True, "from_seq": 2},
    "subscribe_push": {"id": 9, "records": RECORDS},
    "unsubscribe_request": {"op": "unsubscribe", "id": 10, "subscription": 9},
    "unsubscribe_reply": {"id": 10, "unsubscribed": 9},
    "append_batch_request": {
        "op": "append_batch",
        "id": 11,
        "entries": [
            {"request_id": REQUEST_ID_3, "command_type": "new_order", "command": b"a"},
            {"request_id": REQUEST_ID_4, "command_type": "new_order", "command": b"b"},
        ],
    },
    "append_batch_reply": {
        "id": 11,
        "results": [{"seq": 4, "duplicate": False}, {"seq": 5, "duplicate": False}],
    },
    "compact_append_request": [1, 12, REQUEST_ID_5, "new_order", b"c"],
    "compact_append_reply": {"id": 12, "seq": 6, "duplicate": False},
    "subscription_ended": {
        "id": 9,
        "error": {"code": "shutting_down", "message": "the journal is shutting down"},
    },
    "bad_frame_reply": {
        "id": None,
        "error": {
            "code": "bad_frame",
            "message": "frame must hold a msgpack map (or an array: a compact append), got int",
        },
    },
}


def golden(name: str) -> bytes:
    with open(golden_path(name), "rb") as f:
        return f.read()


def decode_one(frame: bytes) -> dict[str, Any] | list[Any]:
    items = FrameDecoder().feed_raw(frame)
    assert len(items) == 1, items
    item = items[0]
    assert not isinstance(item, ProtocolError), item
    return decode_request(item)


def test_every_golden_file_is_listed_and_every_listed_frame_has_a_file() -> None:
    on_disk = {n[:-4] for n in os.listdir(GOLDEN_DIR) if n.endswith(".bin")}
    assert on_disk == set(build_frames()) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_code_encodes_the_golden_inputs_to_the_golden_bytes(name: str) -> None:
    assert build_frames()[name] == golden(name)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_golden_frame_decodes_to_its_documented_map(name: str) -> None:
    frame = golden(name)
    assert int.from_bytes(frame[:4], "big") == len(frame) - 4
    assert decode_one(frame) == EXPECTED[name]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_decoded_golden_frame_re_encodes_to_the_same_bytes(name: str) -> None:
    """The encoding is canonical: map order is kept, every value takes its shortest form."""
    assert encode_frame(decode_one(golden(name))) == golden(name)


def masked(message: dict[str, Any]) -> dict[str, Any]:
    """A live reply with the server's clock (recv_ms) and version replaced by the golden ones."""
    out = dict(message)
    if "server_version" in out:
        out["server_version"] = SERVER_VERSION
    records = out.get("records") or ([out["record"]] if out.get("record") else [])
    for rec in records:
        assert type(rec["data"][2]) is int
        rec["data"][2] = RECV_MS
    return out


class Wire:
    """Raw bytes both ways over one Unix-socket connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = FrameDecoder()
        self.ready: list[dict[str, Any]] = []

    async def next(self) -> dict[str, Any] | None:
        """The next reply, or None once the server closed the connection."""
        while not self.ready:
            data = await asyncio.wait_for(self.reader.read(65536), 10)
            if not data:
                return None
            for item in self.decoder.feed(data):
                assert not isinstance(item, ProtocolError), item
                self.ready.append(item)
        return self.ready.pop(0)

    async def exchange(self, request: str, *replies: str) -> None:
        """Send a golden request verbatim; each reply must equal its golden frame."""
        self.writer.write(golden(request))
        for name in replies:
            reply = await self.next()
            assert reply is not None, f"connection closed before {name}"
            assert encode_frame(masked(reply)) == golden(name), (name, reply)


async def test_a_live_server_answers_the_golden_requests_with_the_golden_replies(
    running_service: RunningService,
) -> None:
    limits = {"segment_size": 8 * 1024 * 1024, "max_record_size": 4 * 1024 * 1024}
    async with running_service(**limits) as svc:
        path = svc.settings.socket_path
        wire = Wire(*await asyncio.open_unix_connection(path))
        await wire.exchange("hello_request", "hello_reply")
        await wire.exchange("append_request", "append_reply")
        await wire.exchange("append_retry_request", "append_duplicate_reply")
        await wire.exchange("append_full_request", "append_full_reply")
        await wire.exchange("append_bad_request_id_request", "error_reply")
        await wire.exchange("read_request", "read_reply")
        await wire.exchange("lookup_request", "lookup_reply")
        await wire.exchange("lookup_unknown_request", "lookup_unknown_reply")
        await wire.exchange("subscribe_request", "subscribe_reply", "subscribe_push")
        await wire.exchange("unsubscribe_request", "unsubscribe_reply")
        await wire.exchange("append_batch_request", "append_batch_reply")
        await wire.exchange("compact_append_request", "compact_append_reply")

        # A frame holding neither a map nor an array (here the int 7) is answered with
        # bad_frame, id nil, and the connection is closed.
        other = Wire(*await asyncio.open_unix_connection(path))
        other.writer.write(golden("hello_request") + b"\0\0\0\1\x07")
        assert (await other.next() or {}).get("last_seq") == 6
        assert encode_frame(await other.next() or {}) == golden("bad_frame_reply")
        assert await other.next() is None, "the connection must be closed after bad_frame"

        # A subscription still open at shutdown is ended with an error frame carrying its id.
        wire.writer.write(encode_frame({"op": "subscribe", "id": 9, "from_seq": 7}))
        assert await wire.next() == {"id": 9, "subscribed": True, "from_seq": 7}
    assert await wire.next() == EXPECTED["subscription_ended"]
    assert await wire.next() is None
