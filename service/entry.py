"""Journal entries: validation of what a client sends, and the WAL payload they become.

An ENTRY record's payload is a msgpack array (docs/PROTOCOL.md, section 4)::

    [1, request_id, recv_ms, command_type, command, response, events, ts_ms,
     pre_digest, post_digest, duration_us]

``1`` is the payload version, ``recv_ms`` the server's wall clock when it accepted the entry
(used for the idempotency window); every other field is stored exactly as the client sent it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

import msgpack

from service.protocol import ErrorCode, ProtocolError, describe

ENTRY_PAYLOAD_VERSION: Final = 1
# An entry's fields in their documented order (docs/PROTOCOL.md), which is also their order in
# the ENTRY payload and in a compact append: [COMPACT_APPEND, id, *ENTRY_FIELD_ORDER], the
# optional trailing fields left out or nil.
ENTRY_FIELD_ORDER: Final = (
    "request_id",
    "command_type",
    "command",
    "response",
    "events",
    "ts_ms",
    "pre_digest",
    "post_digest",
    "duration_us",
)
ENTRY_FIELDS: Final = frozenset(ENTRY_FIELD_ORDER)
ENVELOPE_FIELDS: Final = frozenset({"op", "id", "journal"})
COMPACT_APPEND: Final = 1
COMPACT_APPEND_MIN_ITEMS: Final = 5
COMPACT_APPEND_MAX_ITEMS: Final = 2 + len(ENTRY_FIELD_ORDER)
APPEND_FIELDS: Final = ENTRY_FIELDS | ENVELOPE_FIELDS
EVENT_FIELDS: Final = frozenset({"type", "key", "data"})
MAX_COMMAND_TYPE_LEN: Final = 256
_I64_MAX: Final = (1 << 63) - 1

_packer = msgpack.Packer(use_bin_type=True)


def _bad(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.BAD_REQUEST, message)


def _field_names(names: Iterable[Any], shown: int = 5) -> str:
    """Unknown field names for an error message: a few, each bounded (see ``describe``)."""
    ordered = sorted(map(describe, names))
    more = f" and {len(ordered) - shown} more" if len(ordered) > shown else ""
    return f"[{', '.join(ordered[:shown])}]{more}"


@dataclass(frozen=True, slots=True)
class Event:
    """One event a command produced: emitted to subscribers once the entry is durable."""

    type: str
    data: bytes = b""
    key: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.type, "key": self.key, "data": self.data}


class PreparedEntry(NamedTuple):
    """A validated entry, ready to be queued: its request id, WAL payload and stored response.

    A named tuple (immutable) rather than a frozen dataclass: one is built per append, and a
    frozen dataclass costs three times as much to construct. :func:`prepare_entry` builds it
    with ``tuple.__new__`` directly, skipping the named tuple's ``__new__``, a Python function.
    """

    request_id: bytes
    payload: bytes
    response: bytes | None


_new_prepared: Callable[[type[PreparedEntry], tuple[Any, ...]], PreparedEntry] = tuple.__new__


@dataclass(frozen=True, slots=True)
class StoredEntry:
    """An ENTRY record as read back from the journal."""

    seq: int
    request_id: bytes
    recv_ms: int
    command_type: str
    command: bytes
    response: bytes | None
    events: list[dict[str, Any]] = field(default_factory=list)
    ts_ms: int | None = None
    pre_digest: bytes | None = None
    post_digest: bytes | None = None
    duration_us: int | None = None

    @property
    def request_uuid(self) -> uuid.UUID:
        return uuid.UUID(bytes=self.request_id)

    def to_wire(self) -> dict[str, Any]:
        """The map the protocol returns for a stored record (``lookup``, ``read``)."""
        return {
            "seq": self.seq,
            "request_id": self.request_id,
            "recv_ms": self.recv_ms,
            "command_type": self.command_type,
            "command": self.command,
            "response": self.response,
            "events": self.events,
            "ts_ms": self.ts_ms,
            "pre_digest": self.pre_digest,
            "post_digest": self.post_digest,
            "duration_us": self.duration_us,
        }


def _opt_bin(message: dict[str, Any], name: str) -> bytes | None:
    value = message.get(name)
    if value is None or type(value) is bytes:
        return value
    raise _bad(f"field '{name}' must be binary (msgpack bin) or nil, got {type(value).__name__}")


def _opt_int(message: dict[str, Any], name: str, minimum: int) -> int | None:
    value = message.get(name)
    if value is None:
        return None
    if type(value) is not int or not minimum <= value <= _I64_MAX:
        raise _bad(f"field '{name}' must be an integer >= {minimum}, got {describe(value)}")
    return value


def check_request_id(value: Any) -> bytes:
    """A request id is a UUID sent as exactly 16 bytes of msgpack bin."""
    if type(value) is not bytes:
        if value is None:
            raise _bad("field 'request_id' is required (16-byte binary UUID)")
        raise _bad(f"field 'request_id' must be a 16-byte binary UUID, got {type(value).__name__}")
    if len(value) != 16:
        raise _bad(f"field 'request_id' must be 16 bytes (binary UUID), got {len(value)} bytes")
    return value


def _check_events(value: Any) -> list[Any]:
    if value is None:
        return []
    if type(value) is not list:
        raise _bad(f"field 'events' must be a list of maps, got {type(value).__name__}")
    for i, event in enumerate(value):
        if type(event) is not dict:
            raise _bad(f"events[{i}] must be a map, got {type(event).__name__}")
        unknown = event.keys() - EVENT_FIELDS
        if unknown:
            raise _bad(f"events[{i}] has unknown field(s) {_field_names(unknown)}")
        etype = event.get("type")
        if type(etype) is not str or not etype:
            raise _bad(f"events[{i}].type must be a non-empty string")
        key = event.get("key")
        if key is not None and type(key) is not str:
            raise _bad(f"events[{i}].key must be a string or nil")
        data = event.get("data", b"")
        if type(data) is not bytes:
            raise _bad(f"events[{i}].data must be binary")
    return value


@dataclass(frozen=True, slots=True)
class EventPolicy:
    """How much of each event the WAL keeps, for ``event_persistence`` other than ``full``.

    ``summary`` keeps each event's type and key (not its data); ``none`` keeps no event. Types
    in ``critical`` are always kept as sent. Event indexes refer to the events as stored.
    """

    mode: str
    critical: frozenset[str]

    def apply(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        critical = self.critical
        summary = self.mode == "summary"
        out: list[dict[str, Any]] = []
        for event in events:
            etype = event["type"]
            if etype in critical:
                out.append(event)
            elif summary:
                out.append({"type": etype, "key": event.get("key")})
        return out


def event_policy(mode: str, critical: frozenset[str]) -> EventPolicy | None:
    """The policy for a journal; None for ``full`` (events stored as sent: no work per entry)."""
    return None if mode == "full" else EventPolicy(mode, critical)


def prepare_entry(
    message: dict[str, Any],
    recv_ms: int,
    max_payload: int,
    allowed: frozenset[str] = ENTRY_FIELDS,
    policy: EventPolicy | None = None,
) -> PreparedEntry:
    """Validate one entry map (an ``append`` request, or one item of ``append_batch``).

    Raises ``bad_request`` naming the first problem, or ``entry_too_large``. ``allowed`` is the
    set of keys the map may hold (an ``append`` request also carries op, id and journal).
    ``policy`` is the journal's event persistence (None: ``full``); the size limit applies to
    what is stored.

    This runs once per append, so the common case is checked inline with one ``get`` per
    field; anything unusual goes through :func:`_validated_fields`, which names the problem.
    """
    get = message.get
    request_id = get("request_id")
    command_type = get("command_type")
    command = get("command")
    response = get("response")
    events = get("events")
    ts_ms = get("ts_ms")
    pre_digest = get("pre_digest")
    post_digest = get("post_digest")
    duration_us = get("duration_us")
    if not (
        allowed.issuperset(message)
        and type(request_id) is bytes
        and len(request_id) == 16
        and type(command_type) is str
        and 0 < len(command_type) <= MAX_COMMAND_TYPE_LEN
        and type(command) is bytes
        and (response is None or type(response) is bytes)
        and (events is None or (type(events) is list and not events))
        and (ts_ms is None or (type(ts_ms) is int and 0 <= ts_ms <= _I64_MAX))
        and (pre_digest is None or type(pre_digest) is bytes)
        and (post_digest is None or type(post_digest) is bytes)
        and (duration_us is None or (type(duration_us) is int and 0 <= duration_us <= _I64_MAX))
    ):
        events = _validated_fields(message, allowed)
        if policy is not None and events:
            events = policy.apply(events)
    elif events is None:
        events = []
    return _prepared(
        [
            ENTRY_PAYLOAD_VERSION,
            request_id,
            recv_ms,
            command_type,
            command,
            response,
            events,
            ts_ms,
            pre_digest,
            post_digest,
            duration_us,
        ],
        max_payload,
    )


def _prepared(fields: list[Any], max_payload: int) -> PreparedEntry:
    """The entry for validated payload fields (``fields[1]`` the request id, ``fields[5]``
    the response), or ``entry_too_large``."""
    payload = _packer.pack(fields)
    if len(payload) > max_payload:
        raise ProtocolError(
            ErrorCode.ENTRY_TOO_LARGE,
            f"entry encodes to {len(payload)} bytes; the maximum record size is {max_payload}",
        )
    return _new_prepared(PreparedEntry, (fields[1], payload, fields[5]))


def prepare_compact_entry(
    item: list[Any], recv_ms: int, max_payload: int, policy: EventPolicy | None = None
) -> PreparedEntry:
    """Validate a compact append (docs/PROTOCOL.md, "Compact append"): the array
    ``[1, id, request_id, command_type, command, response?, events?, ts_ms?, pre_digest?,
    post_digest?, duration_us?]``, whose op and id the caller has checked.

    The point of the compact form is that the common append (no optional field) decodes to
    one small list instead of a map of string keys: measured on the server, ~8 % more ACKs
    per second at 64 clients (docs/PERFORMANCE.md). It is checked inline here; anything else
    goes through :func:`prepare_entry` as the equivalent map, so the rules and the error
    messages are the map form's.
    """
    n = len(item)
    if n == COMPACT_APPEND_MIN_ITEMS:
        request_id = item[2]
        command_type = item[3]
        command = item[4]
        if (
            type(request_id) is bytes
            and len(request_id) == 16
            and type(command_type) is str
            and 0 < len(command_type) <= MAX_COMMAND_TYPE_LEN
            and type(command) is bytes
        ):
            fields = [ENTRY_PAYLOAD_VERSION, request_id, recv_ms, command_type, command]
            fields += (None, [], None, None, None, None)  # no response, events, ts, digests, time
            return _prepared(fields, max_payload)
    if not COMPACT_APPEND_MIN_ITEMS <= n <= COMPACT_APPEND_MAX_ITEMS:
        raise _bad(
            f"a compact append is an array of {COMPACT_APPEND_MIN_ITEMS} to "
            f"{COMPACT_APPEND_MAX_ITEMS} items, got {n}"
        )
    values = zip(ENTRY_FIELD_ORDER[: n - 2], item[2:], strict=True)
    entry = {name: value for name, value in values if value is not None}
    return prepare_entry(entry, recv_ms, max_payload, ENTRY_FIELDS, policy)


def _validated_fields(message: dict[str, Any], allowed: frozenset[str]) -> list[Any]:
    """Check every field of an entry map in documented order; raise ``bad_request`` naming the
    first problem. Returns the events list (an entry with events always comes this way)."""
    unknown = message.keys() - allowed
    if unknown:
        raise _bad(f"unknown field(s) {_field_names(unknown)} in entry")
    check_request_id(message.get("request_id"))
    command_type = message.get("command_type")
    if type(command_type) is not str or not 0 < len(command_type) <= MAX_COMMAND_TYPE_LEN:
        raise _bad(f"field 'command_type' must be a string of 1..{MAX_COMMAND_TYPE_LEN} characters")
    if type(message.get("command")) is not bytes:
        raise _bad("field 'command' is required and must be binary (msgpack bin)")
    _opt_bin(message, "response")
    events = _check_events(message.get("events"))
    _opt_int(message, "ts_ms", 0)
    _opt_bin(message, "pre_digest")
    _opt_bin(message, "post_digest")
    _opt_int(message, "duration_us", 0)
    return events


def decode_entry(seq: int, payload: bytes) -> StoredEntry:
    """Decode an ENTRY record's payload (ValueError if it is not one this version knows)."""
    fields = msgpack.unpackb(payload, raw=False)
    if type(fields) is not list or len(fields) != 11 or fields[0] != ENTRY_PAYLOAD_VERSION:
        raise ValueError(f"record {seq} is not a version-{ENTRY_PAYLOAD_VERSION} entry payload")
    return StoredEntry(seq, *fields[1:])


_ENTRY_PREFIX: Final = b"\x9b\x01\xc4\x10"  # array of 11, version 1, bin8 of 16 bytes


def entry_request_id(payload: bytes) -> tuple[bytes, int]:
    """(request_id, recv_ms) of an ENTRY payload: used to rebuild the idempotency index.

    Start-up reads this for every entry in the window (millions), so the common layout is
    sliced directly: the prefix above, the 16 id bytes, then recv_ms as a msgpack uint64
    (0xcf; any wall-clock time in ms after 1970-02 needs it). Anything else is unpacked.
    """
    if payload[:4] == _ENTRY_PREFIX and payload[20] == 0xCF:
        return payload[4:20], int.from_bytes(payload[21:29], "big")
    fields = msgpack.unpackb(payload, raw=False)
    return fields[1], fields[2]


class AppendResult(NamedTuple):
    """The answer to an append: its durable seq, and for a duplicate the original's response.

    A named tuple for the same reason as :class:`PreparedEntry` (one per append, client side).
    """

    seq: int
    duplicate: bool
    response: bytes | None = None


def entry_map(
    request_id: uuid.UUID | bytes,
    command_type: str,
    command: bytes,
    response: bytes | None = None,
    events: Iterable[Event | dict[str, Any]] = (),
    ts_ms: int | None = None,
    pre_digest: bytes | None = None,
    post_digest: bytes | None = None,
    duration_us: int | None = None,
) -> dict[str, Any]:
    """The protocol map of one entry, from Python arguments (UUIDs become 16 bytes).

    Absent optional fields and an empty event list are left out (stored as nil and []): every
    append, over the socket or in-process, builds one of these.
    """
    m: dict[str, Any] = {
        "request_id": request_id.bytes if isinstance(request_id, uuid.UUID) else request_id,
        "command_type": command_type,
        "command": command,
    }
    if response is not None:
        m["response"] = response
    if events:
        m["events"] = [e.to_wire() if hasattr(e, "to_wire") else e for e in events]
    if ts_ms is not None:
        m["ts_ms"] = ts_ms
    if pre_digest is not None:
        m["pre_digest"] = pre_digest
    if post_digest is not None:
        m["post_digest"] = post_digest
    if duration_us is not None:
        m["duration_us"] = duration_us
    return m


def entry_from_wire(record: dict[str, Any]) -> StoredEntry:
    """A StoredEntry from a protocol record map (``{"seq", "type", "data"}`` with type 1)."""
    data = record["data"]
    return StoredEntry(record["seq"], *data[1:])
