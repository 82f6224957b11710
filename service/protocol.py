"""The socket protocol, sans I/O: frame codec, operation names and stable error codes.

A frame is a 4-byte big-endian unsigned length followed by that many bytes holding one msgpack
map (or, for a compact append, one array). docs/PROTOCOL.md is the normative description.
"""

from __future__ import annotations

from typing import Any, Final

import msgpack

PROTOCOL_VERSION: Final = 1
LENGTH_PREFIX: Final = 4
DEFAULT_MAX_FRAME_BYTES: Final = 8 * 1024 * 1024


class ErrorCode:
    """Stable error codes sent as ``error.code``. Never renamed; new ones may be added."""

    BAD_FRAME: Final = "bad_frame"  # not a decodable msgpack map or array (closed)
    FRAME_TOO_LARGE: Final = "frame_too_large"  # length prefix above the limit (closed)
    UNKNOWN_OP: Final = "unknown_op"
    BAD_REQUEST: Final = "bad_request"  # missing/mistyped field, bad UUID, unknown field
    UNSUPPORTED_VERSION: Final = "unsupported_version"
    ENTRY_TOO_LARGE: Final = "entry_too_large"
    HALTED: Final = "halted"  # the journal failed stop after a disk error
    BUSY: Final = "busy"  # too many in-flight requests or connections
    FORBIDDEN: Final = "forbidden"  # peer uid not in allowed_uids (closed)
    SHUTTING_DOWN: Final = "shutting_down"
    OUT_OF_RANGE: Final = "out_of_range"  # read below the first retained seq
    UNKNOWN_JOURNAL: Final = "unknown_journal"
    READ_ONLY: Final = "read_only"  # a write (append, cursor move) to a read-only server
    JOURNAL_FULL: Final = "journal_full"  # max_journal_bytes reached, retention freed nothing
    FENCED: Final = "fenced"  # a newer primary epoch exists: this one accepts no appends
    INTERNAL: Final = "internal"


class ProtocolError(Exception):
    """A request that gets an error reply. ``fatal`` ones close the connection after replying."""

    def __init__(self, code: str, message: str, *, fatal: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.fatal = fatal


_packer = msgpack.Packer(use_bin_type=True)


def encode_frame(message: dict[str, Any] | list[Any]) -> bytes:
    """One frame: length prefix + msgpack map (a list: a compact append's array)."""
    body: bytes = _packer.pack(message)
    return len(body).to_bytes(4, "big") + body


def describe(value: Any, limit: int = 40) -> str:
    """A short, bounded rendering of a client-sent value for an error message.

    Error messages must not echo what a client sent at full size (an 8 MiB field would come
    back as a 32 MiB repr) nor recurse into it (msgpack nests up to ~1,000 levels, deeper than
    ``repr`` can go).
    """
    if isinstance(value, list | dict):
        return f"a {type(value).__name__} of {len(value)} item(s)"
    if isinstance(value, str | bytes) and len(value) > limit:
        return f"{value[:limit]!r}... ({type(value).__name__} of length {len(value)})"
    text = repr(value)
    return text if len(text) <= 2 * limit else f"{text[: 2 * limit]}..."


def error_message(request_id: int | None, code: str, message: str) -> dict[str, Any]:
    return {"id": request_id, "error": {"code": code, "message": message}}


def encode_error(request_id: int | None, code: str, message: str) -> bytes:
    return encode_frame(error_message(request_id, code, message))


class FrameDecoder:
    """Incremental decoder: feed bytes, get complete messages in order.

    A frame over the limit or one that is not a msgpack map yields a fatal
    :class:`ProtocolError` as the last item; the caller answers it with ``id`` nil and closes
    the connection. Nothing after it is decoded, in this call or any later one: once a frame
    boundary is lost, the bytes that follow cannot be trusted to start a frame.
    """

    __slots__ = ("_buf", "_need", "failed", "max_frame_bytes")

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.max_frame_bytes = max_frame_bytes
        self.failed: ProtocolError | None = None  # the fatal error that stopped decoding
        self._buf = bytearray()  # an incomplete frame carried over between reads
        self._need = 0  # bytes the carried-over frame needs before it is worth parsing

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[dict[str, Any] | ProtocolError]:
        """Complete frames, decoded; a fatal error is the last item and ends decoding."""
        out: list[dict[str, Any] | ProtocolError] = []
        for item in self.feed_raw(data):
            if isinstance(item, ProtocolError):
                out.append(item)
                break
            try:
                out.append(decode_body(item))
            except ProtocolError as exc:
                self.failed = exc
                out.append(exc)
                break
        return out

    def feed_raw(self, data: bytes) -> list[bytes | bytearray | ProtocolError]:
        """Complete frame bodies, not yet decoded (the server decodes each when it handles
        it, so a huge read of tiny frames is not decoded in one go). A frame over the limit
        is a fatal error, the last item."""
        if self.failed is not None:
            return []
        if not self._buf and len(data) > LENGTH_PREFIX:
            # The common read holds exactly one whole frame: no loop, no carry-over.
            length = int.from_bytes(data[:LENGTH_PREFIX], "big")
            if length + LENGTH_PREFIX == len(data) and length <= self.max_frame_bytes:
                return [data[LENGTH_PREFIX:]]
        buf: bytes | bytearray
        if self._buf:
            self._buf += data
            if len(self._buf) < self._need:
                return []
            buf = self._buf
            self._buf = bytearray()
        else:
            buf = data
        out: list[bytes | bytearray | ProtocolError] = []
        pos = 0
        end = len(buf)
        limit = self.max_frame_bytes
        while end - pos >= LENGTH_PREFIX:
            length = int.from_bytes(buf[pos : pos + LENGTH_PREFIX], "big")
            if length > limit:
                self.failed = ProtocolError(
                    ErrorCode.FRAME_TOO_LARGE,
                    f"frame of {length} bytes exceeds the limit of {limit} bytes",
                    fatal=True,
                )
                out.append(self.failed)
                return out
            stop = pos + LENGTH_PREFIX + length
            if stop > end:
                break
            out.append(buf[pos + LENGTH_PREFIX : stop])
            pos = stop
        if pos < end:
            self._buf = bytearray(buf[pos:])
            self._need = (
                LENGTH_PREFIX + int.from_bytes(buf[pos : pos + LENGTH_PREFIX], "big")
                if end - pos >= LENGTH_PREFIX
                else LENGTH_PREFIX
            )
        return out


def _unpack(body: bytes | bytearray) -> Any:
    try:
        return msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        detail = str(exc) or type(exc).__name__  # FormatError and StackError carry no text
        raise ProtocolError(
            ErrorCode.BAD_FRAME, f"frame is not valid msgpack: {detail}", fatal=True
        ) from None


def decode_body(body: bytes | bytearray) -> dict[str, Any]:
    """Decode one frame body into a map, or raise a fatal ``bad_frame``.

    Map keys may be any hashable msgpack value; requests use string keys, so a map keyed
    otherwise simply lacks the fields a request needs.
    """
    message = _unpack(body)
    if not isinstance(message, dict):
        raise ProtocolError(
            ErrorCode.BAD_FRAME,
            f"frame must hold a msgpack map, got {type(message).__name__}",
            fatal=True,
        )
    return message


def decode_request(body: bytes | bytearray) -> dict[str, Any] | list[Any]:
    """A request frame's body: a map, or an array (a compact append, docs/PROTOCOL.md);
    anything else is a fatal ``bad_frame``."""
    message = _unpack(body)
    if not isinstance(message, dict | list):
        raise ProtocolError(
            ErrorCode.BAD_FRAME,
            f"frame must hold a msgpack map (or an array: a compact append), "
            f"got {type(message).__name__}",
            fatal=True,
        )
    return message


_MAP3_SEQ: bytes = b"\x83" + _packer.pack("seq")
_KEY_TYPE: bytes = _packer.pack("type")
_KEY_DATA: bytes = _packer.pack("data")


def encode_record(seq: int, record_type: int, payload: bytes) -> bytes:
    """msgpack of ``{"seq": seq, "type": record_type, "data": <payload>}``.

    A WAL payload is itself one msgpack value, so it is embedded as-is, never decoded and
    re-encoded: this is how records travel in ``read``, ``lookup`` and ``subscribe`` pushes.
    """
    seq_bytes: bytes = _packer.pack(seq)
    type_bytes: bytes = _packer.pack(record_type)
    return _MAP3_SEQ + seq_bytes + _KEY_TYPE + type_bytes + _KEY_DATA + payload


def frame_with_raw(fields: dict[str, Any], raw_key: str, raw_value: bytes) -> bytes:
    """A frame holding ``fields`` plus one key whose value is pre-encoded msgpack bytes."""
    head: bytes = _packer.pack(fields)
    key: bytes = _packer.pack(raw_key)
    n = len(fields) + 1
    if n > 15 or not head or head[0] != 0x80 | len(fields):
        raise ValueError("frame_with_raw supports small maps only")
    body = bytes([0x80 | n]) + head[1:] + key + raw_value
    return len(body).to_bytes(4, "big") + body


def raw_array(items: list[bytes]) -> bytes:
    """msgpack array header + already-encoded items."""
    n = len(items)
    if n < 16:
        head = bytes([0x90 | n])
    elif n < 0x10000:
        head = b"\xdc" + n.to_bytes(2, "big")
    else:
        head = b"\xdd" + n.to_bytes(4, "big")
    return head + b"".join(items)
