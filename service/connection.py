"""One client connection: decode frames, dispatch operations, coalesce replies.

An ``asyncio.Protocol`` rather than streams: at tens of thousands of requests per second the
callback style avoids a task switch per message. Replies produced while handling one read, or
one committed batch, leave in a single ``write`` scheduled with ``call_soon``.

Flow control, so that no client can hurt another:
* reads pause while this connection has ``max_inflight_per_connection`` unanswered requests or
  the journal queue is full (backpressure), and while our write buffer is above its high-water
  mark (a client that does not read its replies);
* a client that leaves its buffer full for ``write_timeout`` is disconnected.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, cast

import structlog

from service import __version__
from service import snapshots as snapshot_ops
from service.cursors import check_name as check_cursor_name
from service.entry import (
    APPEND_FIELDS,
    COMPACT_APPEND,
    ENTRY_FIELDS,
    PreparedEntry,
    check_request_id,
    prepare_compact_entry,
    prepare_entry,
)
from service.errors import AckwalError
from service.fanout import Subscription
from service.journal import Journal, now_ms
from service.protocol import (
    PROTOCOL_VERSION,
    ErrorCode,
    FrameDecoder,
    ProtocolError,
    decode_request,
    describe,
    encode_error,
    encode_frame,
    encode_record,
    frame_with_raw,
    raw_array,
)
from service.turn import READ_BYTES_PER_TURN, read_budget
from wal import Record
from wal.reader import SeqOutOfRangeError

if TYPE_CHECKING:
    from service.server import Server

log = structlog.get_logger("ackwal.connection")

WRITE_HIGH_WATER = 1024 * 1024
MESSAGES_PER_TURN = 512  # requests handled per loop turn per connection (fairness)
MAX_READ_LIMIT = 10_000
READ_REPLY_BYTES = READ_BYTES_PER_TURN  # one read reply's records (and max_frame_bytes / 2)
MAX_BATCH_ITEMS = 65_536


class BatchReply:
    """Collects the per-entry outcomes of one ``append_batch`` into a single reply.

    A fresh entry's outcome is kept as its bare seq (the common case, one per entry of a
    large batch); the result maps are built once, when the last outcome is in.
    """

    __slots__ = ("conn", "remaining", "request_id", "results")

    def __init__(self, conn: Connection, request_id: int, n: int) -> None:
        self.conn = conn
        self.request_id = request_id
        self.results: list[int | dict[str, Any] | None] = [None] * n
        self.remaining = n

    def acked(self, token: Any, seq: int, duplicate: bool, response: bytes | None) -> None:
        self.results[token] = (
            {"seq": seq, "duplicate": True, "response": response} if duplicate else seq
        )
        self.remaining -= 1
        if self.remaining == 0:
            self._reply()

    def failed(self, token: Any, code: str, message: str) -> None:
        self.results[token] = {"error": {"code": code, "message": message}}
        self.remaining -= 1
        if self.remaining == 0:
            self._reply()

    def _reply(self) -> None:
        results = [{"seq": r, "duplicate": False} if type(r) is int else r for r in self.results]
        self.conn.answered(encode_frame({"id": self.request_id, "results": results}))


class LookupReply:
    """Answers a ``lookup`` for a request id that was still in flight once it is durable."""

    __slots__ = ("conn", "journal")

    def __init__(self, conn: Connection, journal: Journal) -> None:
        self.conn = conn
        self.journal = journal

    # A lookup never counted as in flight (only appends do), so its late answer must not
    # uncount one: that would let the connection exceed max_inflight_per_connection.
    def acked(self, token: Any, seq: int, duplicate: bool, response: bytes | None) -> None:
        self.conn.answered(self.conn.lookup_frame(token, self.journal, seq), count=False)

    def failed(self, token: Any, code: str, message: str) -> None:
        self.conn.answered(encode_error(token, code, message), count=False)


class Connection(asyncio.Protocol):
    def __init__(self, server: Server) -> None:
        self.server = server
        self._journals = server.journals
        settings = server.settings
        self.decoder = FrameDecoder(settings.max_frame_bytes)
        self.max_inflight = settings.max_inflight_per_connection
        self.max_record_size = settings.max_record_size
        self.transport: asyncio.Transport | None = None
        self.inflight = 0
        self.hello = False
        self._hello_journal: Journal | None = None  # a compact append's journal
        self.closed = False
        self._out: list[bytes] = []
        self._out_bytes = 0  # bytes in _out (replies not yet handed to the transport)
        self._backlog: list[bytes | bytearray | ProtocolError] = []  # frames not yet handled
        self._flush_scheduled = False
        self._reading_paused = False
        self._write_paused = False
        self._writable = asyncio.Event()
        self._writable.set()
        self._write_timer: asyncio.TimerHandle | None = None
        self._waiting_for_space = False
        self._subs: dict[int, tuple[Journal, Subscription]] = {}
        self._loop = asyncio.get_running_loop()
        self._reads = read_budget(self._loop)
        self.last_read = float("-inf")  # loop time of the last data received (shutdown linger)
        self._t = 0.0  # perf_counter() of the current read, for latency metrics

    # -- transport callbacks ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = tr = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        tr.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        refused_uid = self.server.refused_peer_uid(tr)
        if refused_uid is not None:
            log.warning("connection.forbidden", uid=refused_uid)
            message = f"uid {refused_uid} is not in allowed_uids"
            tr.write(encode_error(None, ErrorCode.FORBIDDEN, message))
            self.closed = True
            tr.close()
            return
        if not self.server.register(self):
            if self.server.stopping:
                code, message = ErrorCode.SHUTTING_DOWN, "the service is shutting down"
            else:
                limit = self.server.settings.max_connections
                code, message = ErrorCode.BUSY, f"too many connections (max_connections={limit})"
            tr.write(encode_error(None, code, message))
            self.closed = True
            tr.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._writable.set()
        if self._write_timer is not None:
            self._write_timer.cancel()
        for journal, sub in self._subs.values():
            journal.fanout.unsubscribe(sub)
        self._subs.clear()
        snapshot_ops.connection_lost(self)
        self.server.unregister(self)

    def pause_writing(self) -> None:
        self._write_paused = True
        self._writable.clear()
        self._update_reading()
        timeout = self.server.settings.write_timeout
        self._write_timer = self._loop.call_later(timeout, self._write_timed_out)

    def resume_writing(self) -> None:
        self._write_paused = False
        self._writable.set()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        if self._backlog:
            self._loop.call_soon(self._continue_backlog)
        self._update_reading()

    def _write_timed_out(self) -> None:
        if self._write_paused and self.transport is not None:
            log.warning(
                "connection.write_timeout",
                detail="client left its replies unread; disconnecting it",
                timeout=self.server.settings.write_timeout,
            )
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        self.last_read = self._loop.time()
        messages = self.decoder.feed_raw(data)
        if self._backlog:
            self._backlog.extend(messages)  # arrived before the pause took effect: keep order
        else:
            self._handle_messages(messages)
        self._update_reading()

    def _handle_messages(self, messages: list[bytes | bytearray | ProtocolError]) -> None:
        """Handle decoded requests in order, within this turn's budget.

        A read is handled piecewise so that no client can make the server hold unbounded
        output (500 pipelined ``read`` requests are 18 KB in, gigabytes out) or hog the loop
        (10,000 garbage frames in one read): at most ``MESSAGES_PER_TURN`` requests per loop
        turn, none while this connection's unsent output is above ``WRITE_HIGH_WATER``, and no
        ``read`` once the loop's read budget for this turn is spent (service/turn.py). The rest
        waits in ``_backlog`` with reading paused.
        """
        recv = now_ms()
        self._t = time.perf_counter()
        n = len(messages)
        stop = min(n, MESSAGES_PER_TURN)
        i = 0
        while i < stop:
            if self._write_paused or self._out_bytes > WRITE_HIGH_WATER:
                break
            item = messages[i]
            i += 1
            try:
                if isinstance(item, ProtocolError):
                    raise item
                message = decode_request(item)
            except ProtocolError as exc:
                self.server.count_error(exc.code)
                self.answered(encode_error(None, exc.code, exc.message), count=False)
                self.close_after_flush()
                self._backlog = []
                return
            if isinstance(message, list):
                self._handle_compact(message, recv)
                continue
            if self._reads.exhausted and message.get("op") == "read":
                i -= 1  # next turn, from the frame (decoding it again is cheap)
                break
            self._handle(message, recv)
        self._backlog = messages[i:] if i < n else []
        if self._backlog and not self._write_paused:
            if self._out_bytes > WRITE_HIGH_WATER:
                self._flush()  # the transport then pauses us (resume_writing continues)
            if not self._write_paused:
                self._loop.call_soon(self._continue_backlog)

    def _continue_backlog(self) -> None:
        messages, self._backlog = self._backlog, []
        if messages and not self.closed:
            self._handle_messages(messages)
        self._update_reading()

    # -- dispatch -----------------------------------------------------------------------------

    def _handle(self, message: dict[str, Any], recv: int) -> None:
        rid = message.get("id")
        if type(rid) is not int:
            self._reply_error(None, ErrorCode.BAD_REQUEST, "field 'id' must be an integer")
            return
        if self.server.stopping:
            # Shutdown keeps reading so that what a client sent before it learnt of the
            # shutdown is answered rather than lost with the connection.
            self._refuse_while_stopping(message.get("journal", "main"), rid)
            return
        op = message.get("op")
        try:
            if op == "append" and self.hello:
                name = message.get("journal", "main")
                journal = self._journals.get(name) if type(name) is str else None
                if journal is None:
                    journal = self._journal(message)  # raises unknown_journal
                entry = prepare_entry(
                    message, recv, self.max_record_size, APPEND_FIELDS, journal.event_policy
                )
                self._submit(journal, entry, rid)
                return
            handler = _HANDLERS.get(op) if isinstance(op, str) else None
            if handler is None:
                raise ProtocolError(
                    ErrorCode.UNKNOWN_OP,
                    f"unknown op {describe(op)}; known ops: {', '.join(sorted(_HANDLERS))}",
                )
            if not self.hello and op != "hello":
                raise ProtocolError(ErrorCode.BAD_REQUEST, "send 'hello' before any other op")
            handler(self, message, rid, recv)
        except ProtocolError as exc:
            if op in ("append", "append_batch"):
                self._count_rejected(message.get("journal", "main"), exc.code)
            self._reply_error(rid, exc.code, exc.message)
        except AckwalError as err:  # each clause its own name: compiled (mypyc), exc is typed once
            self._reply_error(rid, err.code, err.message)
        except Exception as bug:  # a bug must cost this request, never the service
            log.exception("connection.internal_error", op=op)
            self._reply_error(rid, ErrorCode.INTERNAL, f"internal error: {bug}")

    def _handle_compact(self, item: list[Any], recv: int) -> None:
        """A compact append (docs/PROTOCOL.md): ``[1, id, request_id, command_type, command,
        ...]``, for the journal of this connection's last successful ``hello``. Errors are
        the map form's, and so is the reply."""
        rid = item[1] if len(item) > 1 else None
        if type(rid) is not int:
            message = "item 1 of a compact request (its id) must be an integer"
            self._reply_error(None, ErrorCode.BAD_REQUEST, message)
            return
        journal = self._hello_journal
        if self.server.stopping:
            self._refuse_while_stopping(journal.name if journal else "main", rid)
            return
        op = item[0]
        try:
            if type(op) is not int or op != COMPACT_APPEND:
                raise ProtocolError(
                    ErrorCode.UNKNOWN_OP,
                    f"unknown compact op {describe(op)}; known: {COMPACT_APPEND} (append)",
                )
            if journal is None:
                raise ProtocolError(ErrorCode.BAD_REQUEST, "send 'hello' before any other op")
            entry = prepare_compact_entry(item, recv, self.max_record_size, journal.event_policy)
            self._submit(journal, entry, rid)
        except ProtocolError as exc:
            if journal is not None and exc.code != ErrorCode.UNKNOWN_OP:
                journal.count_rejected(exc.code)
            self._reply_error(rid, exc.code, exc.message)
        except AckwalError as err:
            self._reply_error(rid, err.code, err.message)
        except Exception as bug:  # a bug must cost this request, never the service
            log.exception("connection.internal_error", op="compact append")
            self._reply_error(rid, ErrorCode.INTERNAL, f"internal error: {bug}")

    def _submit(self, journal: Journal, entry: PreparedEntry, rid: int) -> None:
        self.inflight += 1
        try:
            journal.submit(entry, self, rid, self._t)
        except BaseException:
            self.inflight -= 1  # not taken in: the error reply ends it
            raise
        if journal.queue_full:
            self._wait_for_space(journal)

    def _refuse_while_stopping(self, name: Any, rid: int) -> None:
        journal = self.server.journals.get(name) if isinstance(name, str) else None
        if journal is not None and journal.halted is not None:
            # A fail-stop shutdown: say so, as every other request after the halt was told.
            message_text = f"journal {journal.name} is halted: {journal.halted}"
            self._reply_error(rid, ErrorCode.HALTED, message_text)
        else:
            self._reply_error(rid, ErrorCode.SHUTTING_DOWN, "the service is shutting down")

    def _count_rejected(self, name: Any, code: str) -> None:
        journal = self.server.journals.get(name) if isinstance(name, str) else None
        if journal is not None:
            journal.count_rejected(code)

    def _journal(self, message: dict[str, Any]) -> Journal:
        name = message.get("journal", "main")
        journal = self.server.journals.get(name) if isinstance(name, str) else None
        if journal is None:
            raise ProtocolError(
                ErrorCode.UNKNOWN_JOURNAL,
                f"unknown journal {describe(name)}; "
                f"this service has {', '.join(self.server.journals)}",
            )
        return journal

    def _op_hello(self, message: dict[str, Any], rid: int, recv: int) -> None:
        version = message.get("version")
        if type(version) is not int or version != PROTOCOL_VERSION:
            raise ProtocolError(
                ErrorCode.UNSUPPORTED_VERSION,
                f"protocol version {describe(version)} is not supported; this server speaks "
                f"version {PROTOCOL_VERSION}",
            )
        journal = self._journal(message)  # an unknown journal fails the hello: no other op
        self.hello = True
        self._hello_journal = journal
        settings = self.server.settings
        self.answered(
            encode_frame(
                {
                    "id": rid,
                    "server_version": __version__,
                    "protocol_version": PROTOCOL_VERSION,
                    "max_frame_bytes": settings.max_frame_bytes,
                    "max_inflight": settings.max_inflight_per_connection,
                    "max_record_size": settings.max_record_size,
                    "journals": sorted(self.server.journals),
                    "last_seq": journal.last_seq,
                    "compact_append": True,
                }
            ),
            count=False,
        )

    def _op_append(self, message: dict[str, Any], rid: int, recv: int) -> None:
        raise AssertionError("append is dispatched on the fast path")  # pragma: no cover

    def _op_append_batch(self, message: dict[str, Any], rid: int, recv: int) -> None:
        journal = self._journal(message)
        items = message.get("entries")
        if type(items) is not list or not items:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "field 'entries' must be a non-empty list")
        if len(items) > MAX_BATCH_ITEMS:
            raise ProtocolError(
                ErrorCode.BAD_REQUEST, f"at most {MAX_BATCH_ITEMS} entries per append_batch"
            )
        entries = []
        for i, item in enumerate(items):
            if type(item) is not dict:
                raise ProtocolError(ErrorCode.BAD_REQUEST, f"entries[{i}] must be a map")
            try:
                entries.append(
                    prepare_entry(
                        item, recv, self.max_record_size, ENTRY_FIELDS, journal.event_policy
                    )
                )
            except ProtocolError as exc:
                raise ProtocolError(exc.code, f"entries[{i}]: {exc.message}") from None
        self.inflight += 1
        collector = BatchReply(self, rid, len(entries))
        try:
            journal.submit_group(entries, collector, range(len(entries)), self._t)
        except BaseException:
            self.inflight -= 1  # not taken in: the error reply ends it
            raise
        if journal.queue_full:
            self._wait_for_space(journal)

    def _op_lookup(self, message: dict[str, Any], rid: int, recv: int) -> None:
        journal = self._journal(message)
        request_id = check_request_id(message.get("request_id"))
        if journal.wait_inflight(request_id, LookupReply(self, journal), rid):
            return
        seq = journal.lookup_seq(request_id)
        if seq is None:
            self.answered(encode_frame({"id": rid, "record": None}), count=False)
        else:
            self.answered(self.lookup_frame(rid, journal, seq), count=False)

    def lookup_frame(self, rid: int, journal: Journal, seq: int) -> bytes:
        try:
            rec = journal.wal.get(seq)
        except SeqOutOfRangeError:
            rec = None  # deleted by retention
        if rec is None:
            return encode_frame({"id": rid, "record": None})
        return frame_with_raw({"id": rid}, "record", encode_record(rec.seq, rec.type, rec.payload))

    def _op_read(self, message: dict[str, Any], rid: int, recv: int) -> None:
        journal = self._journal(message)
        from_seq = message.get("from_seq", 1)
        limit = message.get("limit", 1000)
        if type(from_seq) is not int or from_seq < 1:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "field 'from_seq' must be an integer >= 1")
        if type(limit) is not int or not 1 <= limit <= MAX_READ_LIMIT:
            raise ProtocolError(
                ErrorCode.BAD_REQUEST,
                f"field 'limit' must be an integer from 1 to {MAX_READ_LIMIT}",
            )
        max_bytes = min(READ_REPLY_BYTES, self.server.settings.max_frame_bytes // 2)
        records = journal.read_records(from_seq, limit, max_bytes)
        self._reads.spend(sum(len(r.payload) for r in records))
        body = raw_array([encode_record(r.seq, r.type, r.payload) for r in records])
        self.answered(
            frame_with_raw({"id": rid, "last_seq": journal.last_seq}, "records", body), count=False
        )

    def _op_subscribe(self, message: dict[str, Any], rid: int, recv: int) -> None:
        journal = self._journal(message)
        cursor = message.get("cursor")
        from_seq = message.get("from_seq", None if cursor is not None else journal.last_seq + 1)
        if from_seq is not None and (type(from_seq) is not int or from_seq < 1):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "field 'from_seq' must be an integer >= 1")
        if cursor is not None:
            from_seq = journal.cursor_start(cursor, from_seq)
        assert from_seq is not None
        if rid in self._subs:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"subscription id {rid} is already in use")
        # subscribe() checks the range (out_of_range is the only reply then) and starts the
        # catch-up task, which runs only after this callback: the reply still goes first.
        sub = journal.fanout.subscribe(self, rid, from_seq)
        self._subs[rid] = (journal, sub)
        self.answered(
            encode_frame({"id": rid, "subscribed": True, "from_seq": from_seq}), count=False
        )

    def has_subscription(self, rid: int) -> bool:
        return rid in self._subs

    def start_subscription(self, journal: Journal, rid: int, from_seq: int) -> None:
        """Subscribe ``rid`` from ``from_seq`` with no reply of its own (``recover`` uses it)."""
        if rid in self._subs:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"subscription id {rid} is already in use")
        self._subs[rid] = (journal, journal.fanout.subscribe(self, rid, from_seq))

    def _op_unsubscribe(self, message: dict[str, Any], rid: int, recv: int) -> None:
        sub_id = message.get("subscription")
        entry = self._subs.pop(sub_id, None) if type(sub_id) is int else None
        if entry is None:
            raise ProtocolError(
                ErrorCode.BAD_REQUEST, f"no subscription with id {describe(sub_id)}"
            )
        journal, sub = entry
        journal.fanout.unsubscribe(sub)
        self.answered(encode_frame({"id": rid, "unsubscribed": sub_id}), count=False)

    def _op_cursor_commit(self, message: dict[str, Any], rid: int, recv: int) -> None:
        journal = self._journal(message)
        name = check_cursor_name(message.get("cursor"))
        seq = message.get("seq")
        if type(seq) is not int or seq < 0:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "field 'seq' must be an integer >= 0")
        self._run_cursor_op(rid, journal.cursor_commit(name, seq), "seq")

    def _op_cursor_delete(self, message: dict[str, Any], rid: int, recv: int) -> None:
        journal = self._journal(message)
        name = check_cursor_name(message.get("cursor"))
        self._run_cursor_op(rid, journal.cursor_delete(name), "deleted")

    def _op_cursors(self, message: dict[str, Any], rid: int, recv: int) -> None:
        journal = self._journal(message)
        last = journal.last_seq
        cursors = {
            name: {"seq": seq, "lag": last - seq} for name, seq in journal.cursors.all().items()
        }
        self.answered(encode_frame({"id": rid, "cursors": cursors, "last_seq": last}), count=False)

    def _run_cursor_op(self, rid: int, op: Coroutine[Any, Any, Any], field: str) -> None:
        """Cursor writes wait for an fsync: answered from a task, in any order (by ``id``)."""
        task = asyncio.ensure_future(op)
        _CURSOR_TASKS.add(task)

        def done(task: asyncio.Future[Any]) -> None:
            _CURSOR_TASKS.discard(task)
            if task.cancelled():
                self._reply_error(rid, ErrorCode.SHUTTING_DOWN, "the service is shutting down")
                return
            exc = task.exception()
            if isinstance(exc, ProtocolError | AckwalError):
                self._reply_error(rid, exc.code, str(exc))
            elif exc is not None:
                log.error("connection.cursor_op_failed", error=str(exc))
                self._reply_error(rid, ErrorCode.INTERNAL, f"internal error: {exc}")
            else:
                self.answered(encode_frame({"id": rid, field: task.result()}), count=False)

        task.add_done_callback(done)

    def _op_status(self, message: dict[str, Any], rid: int, recv: int) -> None:
        journal = self._journal(message)
        status = journal.status()
        status["connections"] = self.server.connection_count
        status["server_version"] = __version__
        self.answered(encode_frame({"id": rid, "status": status}), count=False)

    # -- AckSink ------------------------------------------------------------------------------

    def acked(self, token: Any, seq: int, duplicate: bool, response: bytes | None) -> None:
        if duplicate:
            frame = encode_frame({"id": token, "seq": seq, "duplicate": True, "response": response})
        else:
            frame = encode_frame({"id": token, "seq": seq, "duplicate": False})
        self.answered(frame)

    def failed(self, token: Any, code: str, message: str) -> None:
        self.server.count_error(code)
        self.answered(encode_error(token, code, message))

    # -- SubscriberSink -----------------------------------------------------------------------

    def push(self, sub_id: Any, first_seq: int, record_type: int, payloads: list[bytes]) -> None:
        seq = first_seq
        items = []
        for payload in payloads:
            items.append(encode_record(seq, record_type, payload))
            seq += 1
        self._queue(frame_with_raw({"id": sub_id}, "records", raw_array(items)))

    def push_records(self, sub_id: Any, records: list[Record]) -> None:
        items = [encode_record(r.seq, r.type, r.payload) for r in records]
        self._queue(frame_with_raw({"id": sub_id}, "records", raw_array(items)))

    def can_push(self) -> bool:
        return not self._write_paused and not self.closed

    async def wait_writable(self) -> None:
        await self._writable.wait()

    def end(self, sub_id: Any, error: AckwalError) -> None:
        self._subs.pop(sub_id, None)
        self._queue(encode_error(sub_id, error.code, error.message))

    # -- output -------------------------------------------------------------------------------

    def answered(self, frame: bytes, *, count: bool = True) -> None:
        """Queue a reply; ``count`` marks the end of an in-flight request."""
        if count:
            self.inflight -= 1
        self._queue(frame)
        if self._reading_paused and count:
            self._update_reading()

    def _reply_error(self, rid: int | None, code: str, message: str) -> None:
        self.server.count_error(code)
        self._queue(encode_error(rid, code, message))

    def _queue(self, frame: bytes) -> None:
        if self.closed:
            return
        self._out.append(frame)
        self._out_bytes += len(frame)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.server.schedule_flush(self)

    def _flush(self) -> None:
        self._flush_scheduled = False
        out = self._out
        if not out or self.transport is None or self.closed:
            out.clear()
            self._out_bytes = 0
            return
        self._out = []
        self._out_bytes = 0
        self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def flush_now(self) -> None:
        self._flush()

    def flush_scheduled(self) -> None:
        """The server's end-of-turn flush; nothing to do if a direct flush already sent it."""
        if self._flush_scheduled:
            self._flush()

    def close_after_flush(self) -> None:
        self._flush()
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    # -- backpressure -------------------------------------------------------------------------

    def _wait_for_space(self, journal: Journal) -> None:
        journal.note_backpressure()
        if not self._waiting_for_space:
            self._waiting_for_space = True
            journal.on_space(self._space_available)

    def _space_available(self) -> None:
        self._waiting_for_space = False
        self._update_reading()

    def _update_reading(self) -> None:
        transport = self.transport
        if transport is None or self.closed:
            return
        should_pause = (
            self.inflight >= self.max_inflight
            or self._write_paused
            or self._waiting_for_space
            or bool(self._backlog)
        )
        if should_pause and not self._reading_paused:
            self._reading_paused = True
            transport.pause_reading()
        elif not should_pause and self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()


_HANDLERS = {
    "hello": Connection._op_hello,
    "append": Connection._op_append,
    "append_batch": Connection._op_append_batch,
    "lookup": Connection._op_lookup,
    "read": Connection._op_read,
    "subscribe": Connection._op_subscribe,
    "unsubscribe": Connection._op_unsubscribe,
    "status": Connection._op_status,
    "cursor_commit": Connection._op_cursor_commit,
    "cursor_delete": Connection._op_cursor_delete,
    "cursors": Connection._op_cursors,
    **snapshot_ops.HANDLERS,
}
_CURSOR_TASKS: set[asyncio.Future[Any]] = set()
