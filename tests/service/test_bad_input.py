"""Bad input over a real Unix socket: the right error code, nothing written, nobody else hurt.

Every test runs a real server (``running_service``) and, on its own connection, a well-behaved
client that appends one entry at a time. A bad input must be answered with the documented code
(fatal framing errors: ``id`` nil, then the connection is closed; anything else: the request's
own ``id``, and the connection stays open), the journal must hold exactly the well-behaved
client's entries, and that client must keep getting ACKs before, during and after.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgpack
import pytest

from service.app import Service
from service.entry import COMPACT_APPEND, MAX_COMMAND_TYPE_LEN
from service.protocol import ErrorCode, FrameDecoder, ProtocolError, decode_request, encode_frame
from tests.service.conftest import RunningService
from tests.service.harness import RawConnection, append_message, new_rid

SENTINEL_ID = 987_654_321
RECORD_LIMIT = 64 * 1024
FRAME_LIMIT = 256 * 1024
# Small limits make the over-the-limit cases cheap; everything else is the defaults.
LIMITS = {"max_record_size": RECORD_LIMIT, "max_frame_bytes": FRAME_LIMIT}


class Appender:
    """A well-behaved client: appends one entry at a time and checks every ACK."""

    def __init__(self, conn: RawConnection, first_seq: int) -> None:
        self.conn = conn
        self.next_seq = first_seq
        self.rids: list[bytes] = []
        self._stop = False
        self._progress = asyncio.Condition()
        self._task = asyncio.create_task(self._run())

    @classmethod
    async def start(cls, svc: Service) -> Appender:
        conn = await RawConnection.open(svc.settings.socket_path)
        return cls(conn, svc.journals["main"].last_seq + 1)

    @property
    def acks(self) -> int:
        return len(self.rids)

    async def _run(self) -> None:
        while not self._stop:
            rid = new_rid()
            message = append_message(rid, self.conn.next_id())
            reply = await self.conn.request(message)
            assert reply == {"id": message["id"], "seq": self.next_seq, "duplicate": False}
            self.next_seq += 1
            self.rids.append(rid)
            async with self._progress:
                self._progress.notify_all()

    async def more_acks(self, n: int = 3) -> None:
        """Wait until ``n`` more appends were acknowledged (fails if the appender failed)."""
        target = self.acks + n

        async def reached() -> None:
            async with self._progress:
                await self._progress.wait_for(lambda: self.acks >= target or self._task.done())

        await asyncio.wait_for(reached(), 30)
        if self._task.done():
            self._task.result()  # raises what broke the appender
            raise AssertionError("the appender stopped")

    def cancel(self) -> None:
        self._task.cancel()

    async def stop(self) -> None:
        self._stop = True
        await asyncio.wait_for(self._task, 30)
        await self.conn.close()


class World:
    """A running server and its well-behaved appender."""

    def __init__(self, svc: Service, appender: Appender) -> None:
        self.svc = svc
        self.appender = appender

    async def connect(self, *, hello: bool = True) -> RawConnection:
        return await RawConnection.open(self.svc.settings.socket_path, hello=hello)


@contextlib.asynccontextmanager
async def served(running_service: RunningService, **settings: Any) -> AsyncIterator[World]:
    """A server with a well-behaved appender; on exit, the journal must hold only its entries."""
    async with running_service(**{**LIMITS, **settings}) as svc:
        appender = await Appender.start(svc)
        try:
            await appender.more_acks()
            yield World(svc, appender)
            await appender.more_acks()
            await appender.stop()
        finally:
            appender.cancel()  # a no-op once stopped; after a failure, no orphan task
        journal = svc.journals["main"]
        stored = journal.read(1, 100_000)
        # Every record after this run's RUN_STARTED is one of the appender's entries.
        assert journal.last_seq == journal.run_started_seq + appender.acks
        assert [e.request_id for e in stored] == appender.rids


async def replies_until_eof(conn: RawConnection) -> list[dict[str, Any]]:
    """Every frame the server sends until it closes the connection."""
    out: list[dict[str, Any]] = []
    while True:
        try:
            out.append(await conn.recv())
        except ConnectionError:
            return out


async def replies_until_sentinel(conn: RawConnection) -> list[dict[str, Any]]:
    """Every reply before the answer to a ``status`` sent now (proves the connection is open)."""
    conn.send({"op": "status", "id": SENTINEL_ID})
    out: list[dict[str, Any]] = []
    while True:
        reply = await conn.recv()
        if reply.get("id") == SENTINEL_ID:
            assert "status" in reply, reply
            return out
        out.append(reply)


def codes(replies: list[dict[str, Any]]) -> list[tuple[Any, str]]:
    return [(r["id"], r["error"]["code"]) for r in replies]


# -- framing errors: id nil, then the connection is closed -----------------------------------


def body_frame(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


FATAL: dict[str, tuple[bytes, str]] = {
    "length one over the limit": ((FRAME_LIMIT + 1).to_bytes(4, "big"), ErrorCode.FRAME_TOO_LARGE),
    "length 2**32-1": (b"\xff\xff\xff\xff", ErrorCode.FRAME_TOO_LARGE),
    "a frame holding an int": (body_frame(msgpack.packb(7)), ErrorCode.BAD_FRAME),
    "a frame holding a string": (body_frame(msgpack.packb("op")), ErrorCode.BAD_FRAME),
    "a frame holding nil": (body_frame(b"\xc0"), ErrorCode.BAD_FRAME),
    "an empty frame": (body_frame(b""), ErrorCode.BAD_FRAME),
    "the reserved byte 0xc1": (body_frame(b"\xc1"), ErrorCode.BAD_FRAME),
    "invalid UTF-8 in a string": (body_frame(b"\x81\xa2op\xa2\xff\xfe"), ErrorCode.BAD_FRAME),
    "two values in one frame": (body_frame(b"\x80\x80"), ErrorCode.BAD_FRAME),
    "a map cut short inside its frame": (body_frame(b"\x82\xa2id\x01"), ErrorCode.BAD_FRAME),
    "nesting deeper than msgpack allows": (
        body_frame(b"\x81\xa1x" + b"\x91" * 5000 + b"\xc0"),
        ErrorCode.BAD_FRAME,
    ),
}


@pytest.mark.parametrize("hello", [True, False], ids=["after hello", "before hello"])
@pytest.mark.parametrize(("data", "code"), FATAL.values(), ids=list(FATAL))
async def test_a_bad_frame_gets_one_error_with_id_nil_and_the_connection_is_closed(
    running_service: RunningService, data: bytes, code: str, hello: bool
) -> None:
    async with served(running_service) as world:
        conn = await world.connect(hello=hello)
        conn.writer.write(data)
        replies = await replies_until_eof(conn)
        assert codes(replies) == [(None, code)]
        assert replies[0]["error"]["message"]


async def test_requests_before_a_bad_frame_in_the_same_read_are_answered_first(
    running_service: RunningService,
) -> None:
    async with served(running_service) as world:
        conn = await world.connect()
        conn.writer.write(
            encode_frame({"op": "status", "id": 1})
            + encode_frame({"op": "bogus", "id": 2})
            + encode_frame([2, 3])
            + body_frame(msgpack.packb(7))
            + encode_frame({"op": "status", "id": 4})
        )
        replies = await replies_until_eof(conn)
        assert [r["id"] for r in replies] == [1, 2, 3, None]
        assert "status" in replies[0]
        assert codes(replies[1:]) == [
            (2, ErrorCode.UNKNOWN_OP),
            (3, ErrorCode.UNKNOWN_OP),
            (None, ErrorCode.BAD_FRAME),
        ]


async def test_an_oversized_length_is_refused_before_its_body_is_sent(
    running_service: RunningService,
) -> None:
    """The four length bytes alone draw the error: the server never buffers the body."""
    async with served(running_service) as world:
        conn = await world.connect()
        conn.writer.write((FRAME_LIMIT * 1000).to_bytes(4, "big") + b"\x81")
        replies = await replies_until_eof(conn)
        assert codes(replies) == [(None, ErrorCode.FRAME_TOO_LARGE)]
        assert str(FRAME_LIMIT) in replies[0]["error"]["message"]


TRUNCATED = {
    "half a length prefix": b"\x00\x00",
    "a length prefix alone": b"\x00\x00\x00\x40",
    "a frame missing its last byte": encode_frame({"op": "status", "id": 1})[:-1],
}


@pytest.mark.parametrize("data", TRUNCATED.values(), ids=list(TRUNCATED))
async def test_a_truncated_frame_then_end_of_stream_closes_the_connection_without_a_reply(
    running_service: RunningService, data: bytes
) -> None:
    async with served(running_service) as world:
        conn = await world.connect()
        conn.writer.write(data)
        conn.writer.write_eof()
        assert await replies_until_eof(conn) == []


async def test_a_client_that_vanishes_mid_frame_costs_nothing(
    running_service: RunningService,
) -> None:
    async with served(running_service) as world:
        for cut in (1, 5, 30):
            conn = await world.connect()
            frame = encode_frame(append_message(new_rid(), 1))
            conn.writer.write(frame[:cut])
            await conn.writer.drain()
            conn.writer.transport.abort()
            await world.appender.more_acks(1)


# -- request errors: the request's id, the connection stays open ---------------------------

RID = uuid.UUID("00010203-0405-0607-0809-0a0b0c0d0e0f").bytes


def append(**changes: Any) -> dict[str, Any]:
    """A valid append request (frame id 7) with some fields changed or DROPped."""
    message = {**append_message(RID, 7), **changes}
    return {k: v for k, v in message.items() if v is not DROP}


DROP: Any = object()
DEEP = b"\x91" * 1000 + b"\xc0"  # as deep as msgpack decodes


def with_raw_field(message: dict[str, Any], key: str, raw_value: bytes) -> bytes:
    body = bytearray(msgpack.packb(message))
    assert body[0] == 0x80 | len(message) and len(message) < 15
    body[0] += 1
    return body_frame(bytes(body) + msgpack.packb(key) + raw_value)


def compact(*items: Any) -> list[Any]:
    """A compact append (frame id 7), its items after the id as given."""
    return [COMPACT_APPEND, 7, *items]


REQUEST_ERRORS: dict[str, tuple[dict[str, Any] | list[Any] | bytes, Any, str]] = {
    "unknown op": ({"op": "drop_table", "id": 7}, 7, ErrorCode.UNKNOWN_OP),
    "no op": ({"id": 7}, 7, ErrorCode.UNKNOWN_OP),
    "op that is not a string": ({"op": 1, "id": 7}, 7, ErrorCode.UNKNOWN_OP),
    "op as binary": ({"op": b"append", "id": 7}, 7, ErrorCode.UNKNOWN_OP),
    "no id": ({"op": "status"}, None, ErrorCode.BAD_REQUEST),
    "id as a string": ({"op": "status", "id": "7"}, None, ErrorCode.BAD_REQUEST),
    "id as a float": ({"op": "status", "id": 7.0}, None, ErrorCode.BAD_REQUEST),
    "id as nil": (append(id=None), None, ErrorCode.BAD_REQUEST),
    "append without request_id": (append(request_id=DROP), 7, ErrorCode.BAD_REQUEST),
    "append with a 15-byte request_id": (append(request_id=RID[:15]), 7, ErrorCode.BAD_REQUEST),
    "append with a 17-byte request_id": (
        append(request_id=RID + b"\0"),
        7,
        ErrorCode.BAD_REQUEST,
    ),
    "append with the request_id as text": (
        append(request_id=str(uuid.UUID(bytes=RID))),
        7,
        ErrorCode.BAD_REQUEST,
    ),
    "append with the command as a string": (append(command="x"), 7, ErrorCode.BAD_REQUEST),
    "append with command_type an int": (append(command_type=5), 7, ErrorCode.BAD_REQUEST),
    "append with command_type too long": (
        append(command_type="t" * (MAX_COMMAND_TYPE_LEN + 1)),
        7,
        ErrorCode.BAD_REQUEST,
    ),
    "append with response a string": (append(response="ok"), 7, ErrorCode.BAD_REQUEST),
    "append with events a map": (append(events={"type": "x"}), 7, ErrorCode.BAD_REQUEST),
    "append with an event without type": (
        append(events=[{"data": b""}]),
        7,
        ErrorCode.BAD_REQUEST,
    ),
    "append with ts_ms a string": (append(ts_ms="1"), 7, ErrorCode.BAD_REQUEST),
    "append with ts_ms negative": (append(ts_ms=-1), 7, ErrorCode.BAD_REQUEST),
    "append with duration_us a float": (append(duration_us=1.5), 7, ErrorCode.BAD_REQUEST),
    "append with an unknown field": (append(colour="red"), 7, ErrorCode.BAD_REQUEST),
    "append with ts_ms nested deeply": (
        with_raw_field(append(), "ts_ms", DEEP),
        7,
        ErrorCode.BAD_REQUEST,
    ),
    "append to an unknown journal": (append(journal="other"), 7, ErrorCode.UNKNOWN_JOURNAL),
    "append over the record size": (
        append(command=b"x" * RECORD_LIMIT),
        7,
        ErrorCode.ENTRY_TOO_LARGE,
    ),
    "append_batch with one bad entry": (
        {
            "op": "append_batch",
            "id": 7,
            "entries": [
                {"request_id": RID, "command_type": "t", "command": b""},
                {"request_id": RID[:15], "command_type": "t", "command": b""},
            ],
        },
        7,
        ErrorCode.BAD_REQUEST,
    ),
    "append_batch with no entries": (
        {"op": "append_batch", "id": 7, "entries": []},
        7,
        ErrorCode.BAD_REQUEST,
    ),
    "append_batch with entries a map": (
        {"op": "append_batch", "id": 7, "entries": {"request_id": RID}},
        7,
        ErrorCode.BAD_REQUEST,
    ),
    "append_batch with an entry carrying op": (
        {
            "op": "append_batch",
            "id": 7,
            "entries": [{"op": "append", "request_id": RID, "command_type": "t", "command": b""}],
        },
        7,
        ErrorCode.BAD_REQUEST,
    ),
    "lookup with a 15-byte request_id": (
        {"op": "lookup", "id": 7, "request_id": RID[:15]},
        7,
        ErrorCode.BAD_REQUEST,
    ),
    "read from seq 0": ({"op": "read", "id": 7, "from_seq": 0}, 7, ErrorCode.BAD_REQUEST),
    "read with limit 0": ({"op": "read", "id": 7, "limit": 0}, 7, ErrorCode.BAD_REQUEST),
    "read with limit 10001": ({"op": "read", "id": 7, "limit": 10_001}, 7, ErrorCode.BAD_REQUEST),
    "read from seq as a string": (
        {"op": "read", "id": 7, "from_seq": "1"},
        7,
        ErrorCode.BAD_REQUEST,
    ),
    "subscribe from seq -1": (
        {"op": "subscribe", "id": 7, "from_seq": -1},
        7,
        ErrorCode.BAD_REQUEST,
    ),
    "unsubscribe from nothing": (
        {"op": "unsubscribe", "id": 7, "subscription": 1},
        7,
        ErrorCode.BAD_REQUEST,
    ),
    "hello with version 2": ({"op": "hello", "id": 7, "version": 2}, 7, "unsupported_version"),
    "an empty array": ([], None, ErrorCode.BAD_REQUEST),
    "compact without an id": ([COMPACT_APPEND], None, ErrorCode.BAD_REQUEST),
    "compact with the id as a string": (
        [COMPACT_APPEND, "7", RID, "t", b""],
        None,
        ErrorCode.BAD_REQUEST,
    ),
    "compact op 2": ([2, 7, RID, "t", b""], 7, ErrorCode.UNKNOWN_OP),
    "compact op true": ([True, 7, RID, "t", b""], 7, ErrorCode.UNKNOWN_OP),
    "compact op as a string": (["append", 7, RID, "t", b""], 7, ErrorCode.UNKNOWN_OP),
    "compact append of 4 items": (compact(RID, "t"), 7, ErrorCode.BAD_REQUEST),
    "compact append of 12 items": (compact(RID, "t", b"", *[None] * 7), 7, ErrorCode.BAD_REQUEST),
    "compact append with a 15-byte request_id": (compact(RID[:15], "t", b""), 7, "bad_request"),
    "compact append with request_id nil": (compact(None, "t", b""), 7, ErrorCode.BAD_REQUEST),
    "compact append with the command as a string": (
        compact(RID, "t", "x"),
        7,
        ErrorCode.BAD_REQUEST,
    ),
    "compact append with an empty command_type": (compact(RID, "", b""), 7, "bad_request"),
    "compact append with ts_ms negative": (
        compact(RID, "t", b"", None, None, -1),
        7,
        ErrorCode.BAD_REQUEST,
    ),
    "compact append with events a map": (
        compact(RID, "t", b"", None, {"type": "x"}),
        7,
        ErrorCode.BAD_REQUEST,
    ),
    "compact append over the record size": (
        compact(RID, "t", b"x" * RECORD_LIMIT),
        7,
        ErrorCode.ENTRY_TOO_LARGE,
    ),
}


@pytest.mark.parametrize(
    ("request_", "rid", "code"), REQUEST_ERRORS.values(), ids=list(REQUEST_ERRORS)
)
async def test_a_bad_request_gets_its_error_code_and_the_connection_stays_open(
    running_service: RunningService,
    request_: dict[str, Any] | list[Any] | bytes,
    rid: Any,
    code: str,
) -> None:
    async with served(running_service) as world:
        conn = await world.connect()
        conn.writer.write(request_ if isinstance(request_, bytes) else encode_frame(request_))
        replies = await replies_until_sentinel(conn)
        assert codes(replies) == [(rid, code)]
        message = replies[0]["error"]["message"]
        assert isinstance(message, str) and message


async def test_an_error_reply_never_echoes_a_huge_value(running_service: RunningService) -> None:
    async with served(running_service) as world:
        conn = await world.connect()
        conn.send(append(ts_ms=b"\xff" * (FRAME_LIMIT // 2), extra="y" * (FRAME_LIMIT // 4)))
        conn.send(append(ts_ms=b"\xff" * (FRAME_LIMIT // 2)))
        replies = await replies_until_sentinel(conn)
        assert codes(replies) == [(7, ErrorCode.BAD_REQUEST)] * 2
        assert all(len(r["error"]["message"]) < 300 for r in replies)


BEFORE_HELLO: dict[str, tuple[dict[str, Any] | list[Any], str]] = {
    "append": (append(), ErrorCode.BAD_REQUEST),
    "compact append": (compact(RID, "t", b""), ErrorCode.BAD_REQUEST),
    "compact op 2": ([2, 7], ErrorCode.UNKNOWN_OP),
    "append_batch": ({"op": "append_batch", "id": 7, "entries": []}, ErrorCode.BAD_REQUEST),
    "status": ({"op": "status", "id": 7}, ErrorCode.BAD_REQUEST),
    "read": ({"op": "read", "id": 7}, ErrorCode.BAD_REQUEST),
    "unknown op": ({"op": "nope", "id": 7}, ErrorCode.UNKNOWN_OP),
    "hello version 2": ({"op": "hello", "id": 7, "version": 2}, ErrorCode.UNSUPPORTED_VERSION),
    "hello version '1'": ({"op": "hello", "id": 7, "version": "1"}, "unsupported_version"),
    "hello without version": ({"op": "hello", "id": 7}, ErrorCode.UNSUPPORTED_VERSION),
}


@pytest.mark.parametrize(("request_", "code"), BEFORE_HELLO.values(), ids=list(BEFORE_HELLO))
async def test_a_request_before_a_successful_hello_is_refused_and_hello_still_works_after(
    running_service: RunningService, request_: dict[str, Any] | list[Any], code: str
) -> None:
    async with served(running_service) as world:
        conn = await world.connect(hello=False)
        conn.writer.write(encode_frame(request_))
        assert codes([await conn.recv()]) == [(7, code)]
        reply = await conn.request({"op": "hello", "version": 1})
        assert reply["protocol_version"] == 1
        assert reply["last_seq"] >= world.appender.acks
        assert codes(await replies_until_sentinel(conn)) == []


# -- floods -------------------------------------------------------------------------------


def garbage_requests(n: int, seed: int) -> list[tuple[bytes, Any, str]]:
    """``n`` well-framed bad requests of many kinds, each with the (id, code) it must draw."""
    rng = random.Random(seed)
    out: list[tuple[bytes, Any, str]] = []

    def junk(*allowed: type) -> Any:
        """A random msgpack value of none of the ``allowed`` types."""
        values = [None, True, rng.randint(-(2**63), 0), rng.random(), rng.randbytes(9), "é", []]
        return rng.choice([v for v in values if type(v) not in allowed])

    kinds = [
        lambda i: ({"op": f"op{rng.random()}", "id": i}, i, ErrorCode.UNKNOWN_OP),
        lambda i: ({"id": i, **{f"k{j}": junk() for j in range(3)}}, i, ErrorCode.UNKNOWN_OP),
        lambda i: ({"op": "status", "id": str(i)}, None, ErrorCode.BAD_REQUEST),
        lambda i: (
            append_message(rng.randbytes(rng.choice([0, 15, 17, 32])), i),
            i,
            ErrorCode.BAD_REQUEST,
        ),
        lambda i: (append_message(new_rid(), i, command=junk(bytes)), i, ErrorCode.BAD_REQUEST),
        lambda i: (append_message(new_rid(), i, events=[junk()]), i, ErrorCode.BAD_REQUEST),
        lambda i: (append_message(new_rid(), i, nope=junk()), i, ErrorCode.BAD_REQUEST),
        lambda i: (append_message(new_rid(), i, journal="x"), i, ErrorCode.UNKNOWN_JOURNAL),
        lambda i: (
            {"op": "append_batch", "id": i, "entries": [append_message(new_rid(), i)]},
            i,
            ErrorCode.BAD_REQUEST,  # op and id are not entry fields
        ),
        lambda i: (
            {"op": "hello", "id": i, "version": rng.randint(2, 99)},
            i,
            "unsupported_version",
        ),
        lambda i: ({"op": "read", "id": i, "from_seq": junk()}, i, ErrorCode.BAD_REQUEST),
        lambda i: ({"op": "lookup", "id": i, "request_id": junk()}, i, ErrorCode.BAD_REQUEST),
        lambda i: ([COMPACT_APPEND, i, junk(), "t", b""], i, ErrorCode.BAD_REQUEST),
        lambda i: ([COMPACT_APPEND, i, new_rid(), "t", junk(bytes)], i, ErrorCode.BAD_REQUEST),
        lambda i: ([COMPACT_APPEND, i, new_rid()], i, ErrorCode.BAD_REQUEST),
        lambda i: ([rng.randint(2, 99), i], i, ErrorCode.UNKNOWN_OP),
        lambda i: ([COMPACT_APPEND, junk(int)], None, ErrorCode.BAD_REQUEST),
    ]
    for i in range(n):
        message, rid, code = rng.choice(kinds)(i)
        out.append((encode_frame(message), rid, code))
    return out


async def test_a_flood_of_10000_garbage_frames_is_answered_in_order_while_another_client_appends(
    running_service: RunningService,
) -> None:
    """The appender runs throughout; halfway, with garbage still in flight, it must get ACKs."""
    garbage = garbage_requests(10_000, seed=3)
    async with served(running_service) as world:
        conn = await world.connect()
        reader = asyncio.create_task(read_replies(conn, len(garbage)))
        for start in range(0, len(garbage), 500):
            conn.writer.write(b"".join(frame for frame, _, _ in garbage[start : start + 500]))
            await conn.writer.drain()
            if start == len(garbage) // 2:
                await world.appender.more_acks()
        replies = await reader
        assert codes(replies) == [(rid, code) for _, rid, code in garbage]
        assert codes(await replies_until_sentinel(conn)) == []


async def read_replies(conn: RawConnection, n: int) -> list[dict[str, Any]]:
    return [await conn.recv() for _ in range(n)]


async def test_random_bytes_on_many_connections_draw_the_errors_the_decoder_predicts(
    running_service: RunningService,
) -> None:
    """Random bytes mostly carry a length over the limit; the rest is a truncated frame."""
    rng = random.Random(11)
    async with served(running_service) as world:
        for _ in range(50):
            data = rng.randbytes(rng.randint(1, 4096))
            expected = nil_id_errors(data)
            conn = await world.connect(hello=rng.random() < 0.5)
            conn.writer.write(data)
            conn.writer.write_eof()
            replies = await replies_until_eof(conn)
            assert codes([r for r in replies if r["id"] is None]) == expected
        await world.appender.more_acks()


def nil_id_errors(data: bytes) -> list[tuple[None, str]]:
    """The errors with id nil the server must answer ``data`` with: a fatal framing error,
    which ends the connection, or a request (map or compact array) without an int id."""
    out: list[tuple[None, str]] = []
    for body in FrameDecoder(FRAME_LIMIT).feed_raw(data):
        try:
            if isinstance(body, ProtocolError):
                raise body
            message = decode_request(body)
        except ProtocolError as exc:
            return [*out, (None, exc.code)]
        if isinstance(message, list):
            rid = message[1] if len(message) > 1 else None
        else:
            rid = message.get("id")
        if type(rid) is not int:
            out.append((None, ErrorCode.BAD_REQUEST))
    return out


async def test_a_flooding_client_that_never_reads_its_replies_is_disconnected(
    running_service: RunningService,
) -> None:
    """Its unread replies fill only its own buffer; after write_timeout it is cut off."""
    async with served(running_service, write_timeout=0.5) as world:
        server = world.svc.server
        assert server is not None
        conn = await world.connect()
        assert server.connection_count == 2
        # 40,000 replies of about 130 bytes: far more than the socket buffers and the
        # server's 1 MiB write high-water mark hold.
        conn.writer.write(b"".join(encode_frame({"op": "nope", "id": i}) for i in range(40_000)))
        async with asyncio.timeout(30):
            while server.connection_count > 1:
                await world.appender.more_acks(1)
        with contextlib.suppress(ConnectionError):
            while await conn.reader.read(1 << 20):
                pass
