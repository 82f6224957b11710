"""Fuzzing every op handler and the frame decoder over a real socket (Hypothesis; atheris too).

One ``ackwal serve`` subprocess serves the whole module. Hypothesis builds requests for every op
and compact appends (the real field names or items with well-typed, edge and arbitrary msgpack
values) and raw byte streams
(random bytes, and valid frames with bytes flipped, cut or inserted). The invariant: the server
answers every request on that connection (it then answers a ``status`` sent after them) or
closes it after a fatal framing error sent with ``id`` nil; it never answers ``internal`` (a
bug); and another client keeps getting ACKs after every example.

tests/service/test_protocol.py already fuzzes the decoder in-process; here the bytes go through
the server's reads, its backlog and its handlers. The atheris run (coverage-guided, in-process:
decoder, body decoding and entry validation) is skipped when atheris is not installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.entry import COMPACT_APPEND
from service.protocol import ErrorCode, FrameDecoder, ProtocolError, encode_frame
from tests.service.harness import ROOT, ServerProcess, command_for, new_rid, short_socket_path
from tests.torture.conftest import report, size

SENTINEL = 2**31 + 7
FRAME_LIMIT = 64 * 1024
KNOWN_CODES = {
    v for k, v in vars(ErrorCode).items() if not k.startswith("_") and isinstance(v, str)
} | {"unsupported_version"}
OPS = ["hello", "append", "append_batch", "lookup", "read", "subscribe", "unsubscribe", "status"]

leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=12)
    | st.binary(max_size=40)
)
anything = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
seqs = st.integers(-3, 3) | st.integers(0, 2**64 - 1) | anything
rids = st.binary(min_size=16, max_size=16) | st.binary(max_size=20) | anything
entry_fields = {
    "request_id": rids,
    "command_type": st.text(max_size=80) | anything,
    "command": st.binary(max_size=300) | anything,
    "response": st.binary(max_size=50) | anything,
    "events": st.lists(
        st.fixed_dictionaries({"type": st.text(max_size=8)}, optional={"data": anything}),
        max_size=3,
    )
    | anything,
    "ts_ms": seqs,
    "pre_digest": st.binary(max_size=40) | anything,
    "post_digest": st.binary(max_size=40) | anything,
    "duration_us": seqs,
}
entries = st.fixed_dictionaries(
    {},
    optional={**entry_fields, "extra": anything},  # type: ignore[dict-item]
)
request_fields: dict[str, Any] = {
    **entry_fields,
    "version": st.just(1) | anything,
    "journal": st.just("main") | st.text(max_size=6) | anything,
    "entries": st.lists(entries, max_size=4) | anything,
    "from_seq": seqs,
    "limit": st.integers(-2, 10_002) | anything,
    "subscription": st.integers(0, 2000) | anything,
    "colour": anything,
}
requests = st.builds(
    lambda op, rid, fields: {"op": op, "id": rid, **fields},
    st.sampled_from(OPS) | anything,
    st.integers(0, 2000) | anything,
    st.fixed_dictionaries({}, optional=request_fields),
)


# Compact appends (docs/PROTOCOL.md): mostly well formed with each item possibly arbitrary.
compact_appends = st.builds(
    lambda op, rid, fields, tail: [op, rid, *fields, *tail],
    st.just(COMPACT_APPEND) | anything,
    st.integers(0, 2000) | anything,
    st.tuples(rids, entry_fields["command_type"], entry_fields["command"]),
    st.lists(anything, max_size=8),
)


def valid_frames() -> st.SearchStrategy[bytes]:
    return st.builds(
        lambda rid: encode_frame(
            {
                "op": "append",
                "id": 1,
                "request_id": rid,
                "command_type": "t",
                "command": command_for(rid),
            }
        ),
        st.binary(min_size=16, max_size=16),
    ) | st.builds(encode_frame, requests | compact_appends)


@st.composite
def mangled(draw: st.DrawFn) -> bytes:
    """Valid frames with bytes flipped, cut out or inserted; or plain random bytes."""
    if draw(st.booleans()):
        return draw(st.binary(min_size=1, max_size=600))
    data = bytearray(b"".join(draw(st.lists(valid_frames(), min_size=1, max_size=3))))
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["flip", "cut", "insert"]))
        if kind == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "cut":
            del data[pos : pos + draw(st.integers(1, 8))]
        else:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        if not data:
            data = bytearray(b"\x00")
    return bytes(data)


class Conn:
    """A blocking client connection (Hypothesis drives examples synchronously)."""

    def __init__(self, path: str, hello: bool = True) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(path)
        self.decoder = FrameDecoder(1 << 26)
        self.ready: list[dict[str, Any] | ProtocolError] = []
        if hello:
            self.sock.sendall(encode_frame({"op": "hello", "id": 0, "version": 1}))
            assert "error" not in self.recv()

    def recv(self) -> dict[str, Any]:
        """The next reply; ConnectionError at end of stream."""
        while not self.ready:
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("closed")
            self.ready.extend(self.decoder.feed(data))
        item = self.ready.pop(0)
        assert not isinstance(item, ProtocolError), item
        return item

    def close(self) -> None:
        self.sock.close()


def check_reply(reply: dict[str, Any]) -> None:
    error = reply.get("error")
    if error is not None:
        assert error["code"] in KNOWN_CODES, reply
        assert error["code"] != ErrorCode.INTERNAL, f"a request hit a server bug: {reply}"
        assert isinstance(error["message"], str) and len(error["message"]) < 1000


def request_id(message: dict[str, Any] | list[Any]) -> Any:
    """The id a request's reply carries: nil for a missing or bad one."""
    rid = message[1:2] if isinstance(message, list) else [message["id"]]  # compact: [op, id, ...]
    return rid[0] if rid and type(rid[0]) is int else None


def answers(conn: Conn, messages: list[dict[str, Any] | list[Any]]) -> int:
    """Read until every message got its one reply (by id; nil for a bad id) and the status
    sent after them was answered: the connection stayed open and answered everything."""
    expected = Counter(request_id(m) for m in messages)
    got: Counter[Any] = Counter()
    sentinel = False
    while not sentinel or any(got[k] < n for k, n in expected.items()):
        reply = conn.recv()
        if reply.get("id") == SENTINEL:  # status, or bad_request before a hello
            sentinel = True
            continue
        check_reply(reply)
        if "records" in reply and "last_seq" not in reply:
            continue  # a subscription's push, not a reply
        assert reply.get("id") in expected, f"a reply to nothing that was sent: {reply}"
        got[reply.get("id")] += 1
    return sum(got.values())


class Fuzzed:
    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.path = server.socket_path
        self.watch = Conn(self.path)
        self.examples = 0
        self.closed = 0
        self.replies = 0
        self.acks = 0

    def others_still_served(self) -> None:
        """The watching client gets an ACK for a fresh append."""
        rid = new_rid()
        self.watch.sock.sendall(
            encode_frame(
                {
                    "op": "append",
                    "id": 5,
                    "request_id": rid,
                    "command_type": "w",
                    "command": command_for(rid),
                }
            )
        )
        reply = self.watch.recv()
        assert reply.get("id") == 5 and reply.get("duplicate") is False, reply
        self.acks += 1
        assert self.server.proc is not None and self.server.proc.poll() is None


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    root = tmp_path_factory.mktemp("fuzz")
    with short_socket_path() as sock:
        server = ServerProcess(
            root / "data", sock, root / "server.log", f"max_frame_bytes={FRAME_LIMIT}"
        )
        server.start()
        try:
            asyncio.run(server.wait_ready())
            state = Fuzzed(server)
            yield state
            report(
                f"socket fuzz: {state.examples} inputs, {state.replies} replies checked, "
                f"{state.closed} connections closed on a fatal framing error, "
                f"{state.acks} ACKs to the bystander client, no internal error"
            )
            assert "connection.internal_error" not in server.log_text()
        finally:
            server.stop_quietly()


FUZZ = settings(
    max_examples=size(150, 5000),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@FUZZ
@given(st.lists(requests | compact_appends, min_size=1, max_size=4), st.booleans())
def test_any_request_to_any_op_is_answered_and_others_keep_their_acks(
    fuzzed: Fuzzed, messages: list[dict[str, Any] | list[Any]], hello: bool
) -> None:
    conn = Conn(fuzzed.path, hello=hello)
    try:
        conn.sock.sendall(b"".join(encode_frame(m) for m in messages))
        conn.sock.sendall(encode_frame({"op": "status", "id": SENTINEL}))
        fuzzed.replies += answers(conn, messages)
    finally:
        conn.close()
    fuzzed.examples += 1
    fuzzed.others_still_served()


@FUZZ
@given(mangled(), st.booleans())
def test_any_byte_stream_is_answered_or_closed_with_an_error_and_others_keep_their_acks(
    fuzzed: Fuzzed, data: bytes, hello: bool
) -> None:
    """The stream then ends: the server answers what it could decode, says ``bad_frame`` or
    ``frame_too_large`` (id nil) if it could not, and closes the connection."""
    conn = Conn(fuzzed.path, hello=hello)
    try:
        conn.sock.sendall(data + encode_frame({"op": "status", "id": SENTINEL}))
        conn.sock.shutdown(socket.SHUT_WR)
        replies = []
        with contextlib.suppress(ConnectionError):
            while True:
                reply = conn.recv()
                check_reply(reply)
                replies.append(reply)
        fatal = [r for r in replies if r.get("id") is None and "error" in r]
        codes = {r["error"]["code"] for r in fatal}
        assert codes <= {ErrorCode.BAD_FRAME, ErrorCode.FRAME_TOO_LARGE, ErrorCode.BAD_REQUEST}
        fuzzed.closed += bool(codes - {ErrorCode.BAD_REQUEST})
        fuzzed.replies += len(replies)
    finally:
        conn.close()
    fuzzed.examples += 1
    fuzzed.others_still_served()


ATHERIS_RUNS = size(20_000, 1_000_000)


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris not installed")
def test_atheris_finds_no_input_that_breaks_the_decoder_or_entry_validation(
    tmp_path: Path,
) -> None:
    script = Path(__file__).with_name("fuzz_atheris.py")
    result = subprocess.run(
        [sys.executable, str(script), f"-atheris_runs={ATHERIS_RUNS}", "-max_len=4096"],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report(f"atheris: {ATHERIS_RUNS} coverage-guided inputs through decoder and entry checks")
