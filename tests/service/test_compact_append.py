"""The compact append (docs/PROTOCOL.md, "Compact append") over a real socket: the same entry,
the same reply and the same idempotency as the map form; the journal of the hello; the client
library uses it only where the server says it can."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from service.client import JournalClient
from service.entry import COMPACT_APPEND, prepare_compact_entry, prepare_entry
from service.protocol import ErrorCode, ProtocolError, encode_frame
from tests.service.conftest import RunningService
from tests.service.harness import RawConnection, make_settings, new_rid, serve, short_socket_path

RECV_MS = 1_767_225_600_000
EVENTS = [{"type": "filled", "key": "BTC-USD", "data": b"\x01"}]


async def compact(conn: RawConnection, *items: Any) -> dict[str, Any]:
    """Send ``[1, id, *items]`` and return its reply."""
    rid = conn.next_id()
    conn.writer.write(encode_frame([COMPACT_APPEND, rid, *items]))
    reply = await conn.recv()
    assert reply["id"] == rid, reply
    return reply


@pytest.mark.parametrize(
    ("items", "fields"),
    [
        ((), {}),
        ((b"ok",), {"response": b"ok"}),
        (
            (None, EVENTS, 5, b"\xaa", b"\xbb", 7),
            {
                "events": EVENTS,
                "ts_ms": 5,
                "pre_digest": b"\xaa",
                "post_digest": b"\xbb",
                "duration_us": 7,
            },
        ),
        ((None, None, None, None, None, 9), {"duration_us": 9}),
    ],
    ids=["minimal", "with a response", "every field", "nil before the last"],
)
def test_a_compact_append_stores_the_bytes_of_the_equivalent_map(
    items: tuple[Any, ...], fields: dict[str, Any]
) -> None:
    rid = new_rid()
    item = [COMPACT_APPEND, 1, rid, "new_order", b"cmd", *items]
    as_map = {"request_id": rid, "command_type": "new_order", "command": b"cmd", **fields}
    assert prepare_compact_entry(item, RECV_MS, 1 << 20) == prepare_entry(as_map, RECV_MS, 1 << 20)


@pytest.mark.parametrize(
    ("item", "complaint"),
    [
        ([COMPACT_APPEND, 1, b"x" * 15, "t", b""], "field 'request_id' must be 16 bytes"),
        ([COMPACT_APPEND, 1, None, "t", b""], "field 'request_id' is required"),
        ([COMPACT_APPEND, 1, b"x" * 16, "t", "cmd"], "field 'command' is required and must be"),
        ([COMPACT_APPEND, 1, b"x" * 16, "t"], "an array of 5 to 11 items, got 4"),
        ([COMPACT_APPEND, 1, b"x" * 16, "t", b"", *[None] * 7], "got 12"),
    ],
)
def test_a_bad_compact_append_is_refused_with_the_map_forms_message(
    item: list[Any], complaint: str
) -> None:
    with pytest.raises(ProtocolError) as caught:
        prepare_compact_entry(item, RECV_MS, 1 << 20)
    assert caught.value.code == ErrorCode.BAD_REQUEST
    assert complaint in caught.value.message


async def test_compact_and_map_appends_share_seqs_and_idempotency(
    running_service: RunningService,
) -> None:
    async with running_service() as svc:
        conn = await RawConnection.open(svc.settings.socket_path)
        hello = await conn.request({"op": "hello", "version": 1})
        assert hello["compact_append"] is True
        first, second = new_rid(), new_rid()
        reply = await compact(conn, first, "new_order", b"a")
        assert reply == {"id": reply["id"], "seq": 2, "duplicate": False}
        # A retry in the other form is the same request: the original seq, nothing written.
        retry = {"op": "append", "request_id": first, "command_type": "new_order", "command": b"a"}
        assert (await conn.request(retry))["seq"] == 2
        await conn.request({**retry, "request_id": second, "response": b"done"})
        again = await compact(conn, second, "new_order", b"a")
        assert again["seq"] == 3 and again["duplicate"] is True and again["response"] == b"done"
        stored = svc.journals["main"].read(2, 10)
        assert [e.request_id for e in stored] == [first, second]
        assert stored[0].command == b"a" and stored[0].response is None
        await conn.close()


async def test_a_compact_append_goes_to_the_journal_of_the_last_successful_hello(
    tmp_path: Path,
) -> None:
    with short_socket_path() as sock:
        settings = make_settings(tmp_path / "main", sock, journals={"orders": str(tmp_path / "o")})
        async with serve(settings) as svc:
            conn = await RawConnection.open(sock, hello=False)
            await conn.request({"op": "hello", "version": 1, "journal": "orders"})
            assert (await compact(conn, new_rid(), "t", b""))["seq"] == 2
            failed = await conn.request({"op": "hello", "version": 1, "journal": "nope"})
            assert failed["error"]["code"] == ErrorCode.UNKNOWN_JOURNAL
            assert (await compact(conn, new_rid(), "t", b""))["seq"] == 3  # still orders
            await conn.request({"op": "hello", "version": 1})
            assert (await compact(conn, new_rid(), "t", b""))["seq"] == 2  # main now
            assert svc.journals["orders"].last_seq == 3
            assert svc.journals["main"].last_seq == 2
            await conn.close()


async def test_the_client_sends_the_common_append_compact_and_the_rest_as_maps(
    running_service: RunningService,
) -> None:
    async with running_service() as svc:
        sent: list[Any] = []
        async with JournalClient(svc.settings.socket_path) as client:
            protocol = client._protocol
            assert protocol is not None and client.server_info["compact_append"] is True
            write = protocol.write

            def spy(frame: bytes) -> None:
                sent.append(frame[4])  # the body's first byte: 0x9X an array, 0x8X a map
                write(frame)

            protocol.write = spy  # type: ignore[method-assign]
            plain = await client.append(new_rid(), "new_order", b"a")
            full = await client.append(new_rid(), "new_order", b"b", response=b"ok", ts_ms=3)
            assert (plain.seq, full.seq) == (2, 3)
        assert [b >> 4 for b in sent] == [0x9, 0x8]
        stored = svc.journals["main"].read(2, 10)
        assert [(e.command, e.response, e.ts_ms) for e in stored] == [
            (b"a", None, None),
            (b"b", b"ok", 3),
        ]


async def test_a_client_of_another_journal_appends_compact_to_that_journal(
    tmp_path: Path,
) -> None:
    with short_socket_path() as sock:
        settings = make_settings(tmp_path / "main", sock, journals={"orders": str(tmp_path / "o")})
        async with serve(settings) as svc, JournalClient(sock, journal="orders") as client:
            assert client.server_info["compact_append"] is True
            assert (await client.append(new_rid(), "new_order", b"a")).seq == 2
            assert [e.command for e in svc.journals["orders"].read(2, 10)] == [b"a"]
            assert svc.journals["main"].last_seq == 1
