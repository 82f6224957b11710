"""The protocol without sockets: the frame decoder and entry validation (sans-IO).

Every way a byte stream can be cut into reads must decode the same; every malformed frame is
one fatal error and nothing after it; every malformed entry is one ``bad_request`` (or
``entry_too_large``) naming the field, never any other exception.
"""

from __future__ import annotations

import uuid
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.entry import (
    APPEND_FIELDS,
    COMPACT_APPEND,
    ENTRY_FIELD_ORDER,
    ENTRY_FIELDS,
    MAX_COMMAND_TYPE_LEN,
    PreparedEntry,
    _validated_fields,
    decode_entry,
    entry_request_id,
    prepare_compact_entry,
    prepare_entry,
)
from service.protocol import (
    ErrorCode,
    FrameDecoder,
    ProtocolError,
    decode_body,
    describe,
    encode_error,
    encode_frame,
    encode_record,
    frame_with_raw,
    raw_array,
)

LIMIT = 1024
RID = uuid.UUID("00010203-0405-0607-0809-0a0b0c0d0e0f").bytes
RECV_MS = 1_767_225_600_000
MAX_PAYLOAD = 4096
FATAL_CODES = {ErrorCode.BAD_FRAME, ErrorCode.FRAME_TOO_LARGE}


def frame_of_body(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


def feed_in_chunks(chunks: list[bytes], limit: int = LIMIT) -> list[Any]:
    decoder = FrameDecoder(limit)
    out: list[Any] = []
    for chunk in chunks:
        out.extend(decoder.feed(chunk))
    return out


def the_error(items: list[Any]) -> ProtocolError:
    assert items, "expected a fatal error"
    *messages, last = items
    assert isinstance(last, ProtocolError), items
    assert last.fatal
    assert last.code in FATAL_CODES
    assert not any(isinstance(m, ProtocolError) for m in messages)
    return last


MESSAGES: list[dict[str, Any]] = [
    {"op": "hello", "id": 1, "version": 1},
    {"op": "append", "id": 2, "request_id": RID, "command_type": "x", "command": b""},
    {},
    {"id": 3, "nested": {"a": [1, 2, {"b": None}]}, "s": "é✓", "f": 1.5, "neg": -(2**63)},
    {"op": "read", "id": 2**64 - 1, "big": b"\x00" * 300},
]
STREAM = b"".join(encode_frame(m) for m in MESSAGES)


# -- FrameDecoder: framing ------------------------------------------------------------------


def test_frames_split_at_every_byte_boundary_decode_the_same() -> None:
    for cut in range(len(STREAM) + 1):
        assert feed_in_chunks([STREAM[:cut], STREAM[cut:]]) == MESSAGES, cut


def test_frames_split_at_every_pair_of_byte_boundaries_decode_the_same() -> None:
    stream = STREAM[:120]
    expected = feed_in_chunks([stream])
    for a in range(len(stream) + 1):
        for b in range(a, len(stream) + 1):
            assert feed_in_chunks([stream[:a], stream[a:b], stream[b:]]) == expected


def test_frames_fed_one_byte_at_a_time_decode_the_same() -> None:
    assert feed_in_chunks([STREAM[i : i + 1] for i in range(len(STREAM))]) == MESSAGES


def test_many_frames_in_one_chunk_decode_in_order() -> None:
    messages = [{"op": "status", "id": i} for i in range(10_000)]
    assert FrameDecoder().feed(b"".join(encode_frame(m) for m in messages)) == messages


def test_an_incomplete_frame_is_kept_until_its_last_byte_arrives() -> None:
    frame = encode_frame(MESSAGES[1])
    decoder = FrameDecoder(LIMIT)
    assert decoder.feed(frame[:-1]) == []
    assert decoder.buffered == len(frame) - 1
    assert decoder.feed(frame[-1:]) == [MESSAGES[1]]
    assert decoder.buffered == 0


def test_empty_reads_change_nothing() -> None:
    decoder = FrameDecoder(LIMIT)
    assert decoder.feed(b"") == []
    assert decoder.feed(STREAM[:3]) == []
    assert decoder.feed(b"") == []
    assert decoder.feed(STREAM[3:]) == MESSAGES


def test_a_frame_of_exactly_the_limit_is_accepted() -> None:
    body = next(b for k in range(LIMIT) if len(b := msgpack.packb({"pad": b"\0" * k})) == LIMIT)
    assert FrameDecoder(LIMIT).feed(frame_of_body(body)) == [msgpack.unpackb(body)]


@pytest.mark.parametrize("length", [LIMIT + 1, 2**24, 2**32 - 1])
def test_an_oversized_length_prefix_is_rejected_as_soon_as_its_four_bytes_arrive(
    length: int,
) -> None:
    prefix = length.to_bytes(4, "big")
    decoder = FrameDecoder(LIMIT)
    for i in range(3):
        assert decoder.feed(prefix[i : i + 1]) == []
    error = the_error(decoder.feed(prefix[3:]))
    assert error.code == ErrorCode.FRAME_TOO_LARGE
    assert str(length) in error.message
    assert str(LIMIT) in error.message


def test_frames_before_an_oversized_one_are_returned_first() -> None:
    items = FrameDecoder(LIMIT).feed(STREAM + (LIMIT + 1).to_bytes(4, "big"))
    assert items[:-1] == MESSAGES
    assert the_error(items).code == ErrorCode.FRAME_TOO_LARGE


NOT_MAPS = {
    "array": [1, 2],
    "empty array": [],
    "int": 7,
    "string": "hello",
    "nil": None,
    "bool": True,
    "float": 1.5,
    "binary": b"\x81\xa2op",
}


@pytest.mark.parametrize("value", NOT_MAPS.values(), ids=list(NOT_MAPS))
def test_a_frame_that_is_not_a_map_is_a_fatal_bad_frame(value: Any) -> None:
    error = the_error(FrameDecoder(LIMIT).feed(encode_frame_any(value)))
    assert error.code == ErrorCode.BAD_FRAME
    assert "must hold a msgpack map" in error.message


def encode_frame_any(value: Any) -> bytes:
    return frame_of_body(msgpack.packb(value, use_bin_type=True))


UNDECODABLE = {
    "empty body": b"",
    "reserved byte 0xc1": b"\xc1",
    "map cut short": msgpack.packb({"op": "hello", "id": 1})[:-1],
    "two values in one frame": msgpack.packb({"id": 1}) + msgpack.packb({"id": 2}),
    "string with invalid UTF-8": b"\x81\xa2op\xa2\xff\xfe",
    "key with invalid UTF-8": b"\x81\xa2\xc3\x28\x01",
    "lone surrogate in UTF-8": b"\x81\xa1s\xa3\xed\xa0\x80",
    "map as a map key": b"\x81\x80\x01",
    "array as a map key": b"\x81\x91\x01\x01",
    "nesting deeper than msgpack allows": b"\x81\xa1x" + b"\x91" * 5000 + b"\x01",
    "bin length past the end": b"\x81\xa1x\xc5\xff\xff",
    "array length past the end": b"\x81\xa1x\xdd\xff\xff\xff\xff",
}


@pytest.mark.parametrize("body", UNDECODABLE.values(), ids=list(UNDECODABLE))
def test_undecodable_msgpack_is_a_fatal_bad_frame_with_a_reason(body: bytes) -> None:
    error = the_error(FrameDecoder(LIMIT * 10).feed(frame_of_body(body)))
    assert error.code == ErrorCode.BAD_FRAME
    reason = error.message.partition(":")[2].strip()
    assert reason, f"the message must say why: {error.message!r}"


def test_nothing_is_decoded_after_a_fatal_error_not_even_in_later_reads() -> None:
    decoder = FrameDecoder(LIMIT)
    items = decoder.feed(encode_frame(MESSAGES[0]) + encode_frame_any([1]) + STREAM)
    assert items[0] == MESSAGES[0]
    assert the_error(items[1:]).code == ErrorCode.BAD_FRAME
    assert decoder.failed is items[1]
    assert decoder.feed(STREAM) == []
    assert decoder.feed(encode_frame(MESSAGES[0])) == []


def test_a_map_with_non_string_keys_is_a_map() -> None:
    """Keys other than strings decode; such a request just lacks the fields it needs."""
    assert decode_body(msgpack.packb({1: "a", b"op": "hello", None: 2})) == {
        1: "a",
        b"op": "hello",
        None: 2,
    }


# -- encoders -------------------------------------------------------------------------------


def test_an_error_frame_holds_id_and_code_and_message() -> None:
    frame = encode_error(None, ErrorCode.BUSY, "too many")
    assert FrameDecoder().feed(frame) == [
        {"id": None, "error": {"code": "busy", "message": "too many"}}
    ]


def test_a_record_embeds_the_payload_bytes_as_they_are() -> None:
    payload = msgpack.packb([1, RID, 5, "t", b"c", None, [], None, None, None, None])
    encoded = encode_record(2**40, 1, payload)
    assert encoded.endswith(payload)
    assert msgpack.unpackb(encoded) == {"seq": 2**40, "type": 1, "data": msgpack.unpackb(payload)}


@pytest.mark.parametrize("n", [0, 1, 15, 16, 65535, 65536])
def test_a_raw_array_is_the_msgpack_array_of_its_items(n: int) -> None:
    items = [msgpack.packb(i) for i in range(n)]
    assert raw_array(items) == msgpack.packb(list(range(n)))


def test_a_frame_with_a_raw_value_equals_the_frame_of_the_whole_map() -> None:
    raw = msgpack.packb([1, 2, 3])
    assert frame_with_raw({"id": 9, "last_seq": 3}, "records", raw) == encode_frame(
        {"id": 9, "last_seq": 3, "records": [1, 2, 3]}
    )


def test_a_frame_with_a_raw_value_refuses_maps_it_cannot_extend() -> None:
    with pytest.raises(ValueError, match="small maps"):
        frame_with_raw({str(i): i for i in range(15)}, "records", b"\x90")


@pytest.mark.parametrize(
    "value",
    [b"x" * 10_000_000, "y" * 10_000_000, list(range(100_000)), {"k": 1}, 2**64 - 1, None],
    ids=["bin", "str", "list", "map", "int", "nil"],
)
def test_a_client_value_is_described_in_bounded_length(value: Any) -> None:
    assert len(describe(value)) <= 120


def test_a_deeply_nested_client_value_is_described_without_recursion() -> None:
    nested: Any = 0
    for _ in range(100_000):
        nested = [nested]
    assert describe(nested) == "a list of 1 item(s)"


# -- prepare_entry --------------------------------------------------------------------------


def entry(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"request_id": RID, "command_type": "new_order", "command": b"cmd"}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not MISSING}


MISSING: Any = object()


def test_a_minimal_entry_is_stored_with_every_optional_field_nil() -> None:
    prepared = prepare_entry(entry(), RECV_MS, MAX_PAYLOAD)
    assert prepared == PreparedEntry(RID, prepared.payload, None)
    assert msgpack.unpackb(prepared.payload) == [
        1,
        RID,
        RECV_MS,
        "new_order",
        b"cmd",
        None,
        [],
        None,
        None,
        None,
        None,
    ]
    assert entry_request_id(prepared.payload) == (RID, RECV_MS)


def test_every_field_sent_is_stored_and_read_back_as_sent() -> None:
    events = [{"type": "filled", "key": "BTC", "data": b"\x01"}, {"type": "tick"}]
    sent = entry(
        response=b"ok",
        events=events,
        ts_ms=2**63 - 1,
        pre_digest=b"\x00" * 32,
        post_digest=b"",
        duration_us=0,
    )
    prepared = prepare_entry(sent, RECV_MS, MAX_PAYLOAD)
    stored = decode_entry(7, prepared.payload)
    assert prepared.response == b"ok"
    assert (stored.seq, stored.request_id, stored.recv_ms) == (7, RID, RECV_MS)
    assert (stored.command_type, stored.command, stored.response) == ("new_order", b"cmd", b"ok")
    assert stored.events == events
    assert (stored.ts_ms, stored.pre_digest, stored.post_digest, stored.duration_us) == (
        2**63 - 1,
        b"\x00" * 32,
        b"",
        0,
    )


def test_an_append_request_may_carry_op_id_and_journal_but_a_batch_item_may_not() -> None:
    request = entry(op="append", id=1, journal="main")
    assert prepare_entry(request, RECV_MS, MAX_PAYLOAD, APPEND_FIELDS).request_id == RID
    with pytest.raises(ProtocolError, match=r"unknown field\(s\) \['id', 'journal', 'op'\]"):
        prepare_entry(request, RECV_MS, MAX_PAYLOAD, ENTRY_FIELDS)


BAD_ENTRIES: dict[str, tuple[dict[str, Any], str]] = {
    "missing request_id": (entry(request_id=MISSING), "'request_id' is required"),
    "nil request_id": (entry(request_id=None), "'request_id' is required"),
    "15-byte request_id": (entry(request_id=RID[:15]), "16 bytes .* got 15 bytes"),
    "17-byte request_id": (entry(request_id=RID + b"\0"), "16 bytes .* got 17 bytes"),
    "empty request_id": (entry(request_id=b""), "got 0 bytes"),
    "request_id as a string": (entry(request_id=str(uuid.UUID(bytes=RID))), "got str"),
    "request_id as 16 characters": (entry(request_id="0123456789abcdef"), "got str"),
    "request_id as an int": (entry(request_id=1), "got int"),
    "request_id as a list": (entry(request_id=list(RID)), "got list"),
    "missing command_type": (entry(command_type=MISSING), "'command_type'"),
    "empty command_type": (entry(command_type=""), "'command_type'"),
    "command_type too long": (entry(command_type="x" * (MAX_COMMAND_TYPE_LEN + 1)), "1..256"),
    "command_type as binary": (entry(command_type=b"new_order"), "'command_type'"),
    "missing command": (entry(command=MISSING), "'command' is required"),
    "command as a string": (entry(command="cmd"), "'command' .* binary"),
    "command as nil": (entry(command=None), "'command'"),
    "response as a string": (entry(response="ok"), "'response' must be binary .* got str"),
    "response as an int": (entry(response=0), "'response'"),
    "pre_digest as a string": (entry(pre_digest="ab"), "'pre_digest'"),
    "post_digest as a list": (entry(post_digest=[1]), "'post_digest'"),
    "ts_ms negative": (entry(ts_ms=-1), "'ts_ms' must be an integer >= 0, got -1"),
    "ts_ms as a string": (entry(ts_ms="1"), "'ts_ms'"),
    "ts_ms as a float": (entry(ts_ms=1.0), "'ts_ms'"),
    "ts_ms as a bool": (entry(ts_ms=True), "'ts_ms'"),
    "ts_ms above int64": (entry(ts_ms=2**63), "'ts_ms'"),
    "duration_us negative": (entry(duration_us=-5), "'duration_us'"),
    "events as a map": (entry(events={"type": "x"}), "'events' must be a list of maps, got dict"),
    "events as binary": (entry(events=b""), "'events'"),
    "event as a list": (entry(events=[["x"]]), r"events\[0\] must be a map, got list"),
    "event without type": (entry(events=[{"data": b""}]), r"events\[0\]\.type"),
    "event with empty type": (entry(events=[{"type": ""}]), r"events\[0\]\.type"),
    "event type as binary": (entry(events=[{"type": b"x"}]), r"events\[0\]\.type"),
    "event key as an int": (entry(events=[{"type": "x", "key": 1}]), r"events\[0\]\.key"),
    "event data as a string": (entry(events=[{"type": "x", "data": "d"}]), r"events\[0\]\.data"),
    "event with unknown field": (
        entry(events=[{"type": "x"}, {"type": "y", "extra": 1}]),
        r"events\[1\] has unknown field\(s\) \['extra'\]",
    ),
    "unknown field": (entry(colour="red"), r"unknown field\(s\) \['colour'\]"),
    "unknown non-string field": (entry(**{"7": 1}), "unknown field"),
}


@pytest.mark.parametrize(("message", "reason"), BAD_ENTRIES.values(), ids=list(BAD_ENTRIES))
def test_a_malformed_entry_is_a_bad_request_naming_the_problem(
    message: dict[str, Any], reason: str
) -> None:
    with pytest.raises(ProtocolError, match=reason) as info:
        prepare_entry(message, RECV_MS, MAX_PAYLOAD)
    assert info.value.code == ErrorCode.BAD_REQUEST
    assert not info.value.fatal


def test_unknown_fields_with_non_string_keys_are_reported() -> None:
    with pytest.raises(ProtocolError, match=r"unknown field\(s\) \[1, None\]"):
        prepare_entry({**entry(), 1: "a", None: 2}, RECV_MS, MAX_PAYLOAD)


def test_an_entry_one_byte_over_the_record_size_is_entry_too_large() -> None:
    size = len(prepare_entry(entry(command=b"x" * 1000), RECV_MS, MAX_PAYLOAD).payload)
    assert prepare_entry(entry(command=b"x" * 1000), RECV_MS, size).payload
    with pytest.raises(ProtocolError) as info:
        prepare_entry(entry(command=b"x" * 1000), RECV_MS, size - 1)
    assert info.value.code == ErrorCode.ENTRY_TOO_LARGE
    assert not info.value.fatal
    assert f"{size} bytes" in info.value.message


def test_an_error_message_never_echoes_a_huge_value() -> None:
    for bad in (entry(ts_ms=b"\xff" * 1_000_000), entry(**{"k" * 1_000_000: 1})):
        with pytest.raises(ProtocolError) as info:
            prepare_entry(bad, RECV_MS, MAX_PAYLOAD)
        assert info.value.code == ErrorCode.BAD_REQUEST
        assert len(info.value.message) < 300


def test_many_unknown_fields_are_summarised() -> None:
    with pytest.raises(ProtocolError, match=r"and 99995 more") as info:
        prepare_entry({**entry(), **{f"f{i}": 0 for i in range(100_000)}}, RECV_MS, MAX_PAYLOAD)
    assert len(info.value.message) < 300


def test_a_value_nested_as_deep_as_msgpack_allows_is_a_bad_request() -> None:
    body = bytearray(msgpack.packb(entry()))
    body[0] += 1  # one more key in the fixmap
    body += msgpack.packb("ts_ms") + b"\x91" * 1000 + b"\xc0"
    message = decode_body(bytes(body))
    with pytest.raises(ProtocolError, match="'ts_ms' must be an integer >= 0, got a list") as info:
        prepare_entry(message, RECV_MS, MAX_PAYLOAD)
    assert info.value.code == ErrorCode.BAD_REQUEST


# -- fuzzing --------------------------------------------------------------------------------

msgpack_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=40)
)
msgpack_values = st.recursive(
    msgpack_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=8) | st.integers(0, 9), children, max_size=4)
    ),
    max_leaves=12,
)
field_names = st.sampled_from(sorted(APPEND_FIELDS | {"x", "", "events"})) | st.text(max_size=6)
uuids = st.binary(min_size=16, max_size=16)
plausible_events = st.lists(
    st.fixed_dictionaries(
        {"type": st.text(min_size=1, max_size=8)},
        optional={"key": st.none() | st.text(max_size=8), "data": st.binary(max_size=8)},
    ),
    max_size=3,
)


@st.composite
def entry_maps(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly-valid entries with some fields replaced by arbitrary msgpack values."""
    message: dict[str, Any] = {
        "request_id": draw(uuids),
        "command_type": draw(st.text(min_size=1, max_size=10)),
        "command": draw(st.binary(max_size=64)),
        "response": draw(st.none() | st.binary(max_size=16)),
        "events": draw(plausible_events),
        "ts_ms": draw(st.none() | st.integers(0, 2**63 - 1)),
        "pre_digest": draw(st.none() | st.binary(max_size=16)),
        "post_digest": draw(st.none() | st.binary(max_size=16)),
        "duration_us": draw(st.none() | st.integers(0, 2**63 - 1)),
    }
    for name in draw(st.lists(st.sampled_from(sorted(message)), max_size=3)):
        message.pop(name, None)
    for name, value in draw(st.dictionaries(field_names, msgpack_values, max_size=3)).items():
        message[name] = value
    return message


def over_the_wire(message: dict[str, Any]) -> dict[str, Any]:
    """What the server sees: the map encoded by a client and decoded from a frame."""
    items = FrameDecoder(1 << 24).feed(encode_frame(message))
    assert len(items) == 1
    assert isinstance(items[0], dict)
    return items[0]


def check_prepare(message: dict[str, Any]) -> None:
    try:
        prepared = prepare_entry(message, RECV_MS, 512, ENTRY_FIELDS)
    except ProtocolError as exc:
        assert exc.code in {ErrorCode.BAD_REQUEST, ErrorCode.ENTRY_TOO_LARGE}
        assert not exc.fatal
        assert len(exc.message) < 500
        return
    stored = decode_entry(1, prepared.payload)
    assert len(prepared.payload) <= 512
    assert stored.request_id == prepared.request_id == message["request_id"]
    assert stored.recv_ms == RECV_MS
    assert stored.command_type == message["command_type"]
    assert stored.command == message["command"]
    assert stored.response == prepared.response == message.get("response")
    assert stored.events == (message.get("events") or [])
    for name in ("ts_ms", "pre_digest", "post_digest", "duration_us"):
        assert getattr(stored, name) == message.get(name)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entry_maps())
def test_prepare_entry_accepts_exactly_what_it_can_store_and_rejects_the_rest(
    message: dict[str, Any],
) -> None:
    check_prepare(over_the_wire(message))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entry_maps())
def test_the_inline_fast_path_rejects_exactly_what_full_validation_rejects(
    message: dict[str, Any],
) -> None:
    """prepare_entry checks the common case inline; the full validator names problems. Both
    must agree on every map, and the error must be the full validator's."""
    message = over_the_wire(message)
    try:
        _validated_fields(message, ENTRY_FIELDS)
        expected = None
    except ProtocolError as exc:
        expected = exc.message
    try:
        prepare_entry(message, RECV_MS, 1 << 20, ENTRY_FIELDS)
        got = None
    except ProtocolError as exc:
        got = exc.message
    assert got == expected


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entry_maps(), st.integers(0, 6), st.lists(msgpack_values, max_size=2))
def test_a_compact_append_is_prepared_exactly_as_its_map(
    message: dict[str, Any], cut: int, extra: list[Any]
) -> None:
    """The same entry (or the same error message) from the array as from the map of its known
    fields: in ENTRY_FIELD_ORDER order, a random number of trailing ones left out, or one or two
    items too many."""
    message = over_the_wire(message)
    values = [message.get(name) for name in ENTRY_FIELD_ORDER]
    kept = values[: len(values) - cut]
    item = [COMPACT_APPEND, 1, *kept, *(extra if cut == 0 else [])]
    dropped = set(ENTRY_FIELD_ORDER[len(kept) :])
    as_map = {k: v for k, v in message.items() if k in ENTRY_FIELD_ORDER and k not in dropped}

    def outcome(prepare: Any, arg: Any) -> PreparedEntry | str:
        try:
            result: PreparedEntry = prepare(arg)
            return result
        except ProtocolError as exc:
            return exc.message

    compact = outcome(lambda i: prepare_compact_entry(i, RECV_MS, 512), item)
    if cut == 0 and extra:
        assert isinstance(compact, str) and "an array of 5 to 11 items" in compact
        return
    expected = outcome(lambda m: prepare_entry(m, RECV_MS, 512, ENTRY_FIELDS), as_map)
    assert compact == expected  # a nil field is an absent one in both forms


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(field_names, msgpack_values, max_size=8))
def test_prepare_entry_never_raises_on_arbitrary_msgpack_maps(message: dict[str, Any]) -> None:
    check_prepare(over_the_wire(message))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=6))
def test_the_decoder_only_ever_yields_maps_then_at_most_one_fatal_error(
    data: bytes, cuts: list[int]
) -> None:
    bounds = sorted({min(c, len(data)) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *bounds], [*bounds, len(data)], strict=True)]
    whole = FrameDecoder(64).feed(data)
    pieces = feed_in_chunks(chunks, 64)
    for items in (whole, pieces):
        for i, item in enumerate(items):
            if isinstance(item, ProtocolError):
                assert i == len(items) - 1
                assert item.fatal
                assert item.code in FATAL_CODES
            else:
                assert isinstance(item, dict)
    assert [m if isinstance(m, dict) else m.code for m in pieces] == [
        m if isinstance(m, dict) else m.code for m in whole
    ]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.dictionaries(st.text(max_size=8), msgpack_values, max_size=5), max_size=8),
    st.lists(st.integers(0, 2000), max_size=8),
)
def test_any_sequence_of_maps_survives_any_chunking(
    messages: list[dict[str, Any]], cuts: list[int]
) -> None:
    stream = b"".join(encode_frame(m) for m in messages)
    bounds = sorted({min(c, len(stream)) for c in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *bounds], [*bounds, len(stream)], strict=True)]
    decoded = feed_in_chunks(chunks, 1 << 20)
    assert [encode_frame(m) for m in decoded] == [encode_frame(m) for m in messages]
