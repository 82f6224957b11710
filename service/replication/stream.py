"""JetStream naming, message headers and connection helpers shared by publisher and follower.

Journal J is published on subject ``PREFIX.J`` into its own stream ``PREFIX_J`` (file storage),
one message per WAL record: the body is the record's exact bytes (28-byte header + payload,
docs/FORMAT.md), so a standby can check and store it unchanged. Headers:

* ``Nats-Msg-Id: J:EPOCH:SEQ``, so JetStream drops a re-publish (after a restart) of a record
  it already holds, within the stream's duplicate window;
* ``Nats-Expected-Last-Sequence``: the stream seq the publisher believes is last. JetStream
  refuses the message otherwise, so two primaries can never interleave records in one stream,
  and one stream message is one WAL record, in seq order, without gap;
* ``Ackwal-Seq`` / ``Ackwal-Epoch``: the record's seq and its writer's epoch (fencing).
"""

from __future__ import annotations

import asyncio

import nats
import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import NotFoundError

from service.settings import Settings

log = structlog.get_logger("ackwal.replication")

HDR_MSG_ID = "Nats-Msg-Id"
HDR_EXPECTED_LAST_SEQ = "Nats-Expected-Last-Sequence"
HDR_SEQ = "Ackwal-Seq"
HDR_EPOCH = "Ackwal-Epoch"
WRONG_LAST_SEQUENCE = 10071  # JetStream's error code for a failed Nats-Expected-Last-Sequence


def subject_of(settings: Settings, journal: str) -> str:
    return f"{settings.replication_stream_prefix}.{journal}"


def stream_of(settings: Settings, journal: str) -> str:
    return f"{settings.replication_stream_prefix}_{journal}"


def msg_id(journal: str, epoch: int, seq: int) -> str:
    return f"{journal}:{epoch}:{seq}"


def header_int(headers: dict[str, str] | None, name: str) -> int | None:
    value = (headers or {}).get(name)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


async def close_quietly(nc: Client) -> None:
    """Close a NATS connection at shutdown within 2 s; a failure to close is only logged.

    ``asyncio.timeout``, not ``wait_for``: on 3.11 ``wait_for`` can swallow a cancellation
    that lands as the close completes (CPython gh-86296).
    """
    try:
        async with asyncio.timeout(2.0):
            await nc.close()
    except Exception as exc:
        log.debug("replication.nats_close_failed", error=str(exc))


async def connect(settings: Settings, name: str) -> Client:
    """A NATS connection that reconnects by itself; the first connect fails fast."""

    async def quiet(exc: Exception) -> None:
        log.debug("replication.nats_error", error=str(exc))

    servers = [u.strip() for u in settings.replication_nats_url.split(",") if u.strip()]
    # nats-py keeps trying the first connect for ever with unlimited reconnects: bound it, the
    # callers retry (publisher, follower) or give up with a message (promote).
    connecting = nats.connect(
        servers=servers,
        name=name,
        connect_timeout=2,
        allow_reconnect=True,
        max_reconnect_attempts=-1,
        reconnect_time_wait=settings.replication_retry_interval,
        error_cb=quiet,
        pending_size=64 * 1024 * 1024,
    )
    try:
        nc: Client = await asyncio.wait_for(connecting, 5.0)
    except TimeoutError:
        raise ConnectionError(
            f"no NATS server answered at {settings.replication_nats_url}"
        ) from None
    return nc


async def ensure_stream(js: JetStreamContext, settings: Settings, journal: str) -> None:
    """Create the journal's stream if it does not exist (file storage, no limits)."""
    name = stream_of(settings, journal)
    try:
        await js.stream_info(name)
        return
    except NotFoundError:
        pass
    await js.add_stream(
        StreamConfig(
            name=name,
            subjects=[subject_of(settings, journal)],
            storage=StorageType.FILE,
            num_replicas=settings.replication_stream_replicas,
            duplicate_window=settings.replication_duplicate_window,
        )
    )
    log.info(
        "replication.stream_created", stream=name, replicas=settings.replication_stream_replicas
    )


class StreamTail:
    """The last record a stream holds for a journal (None fields: the stream is empty)."""

    def __init__(
        self,
        stream_last_seq: int,
        seq: int | None = None,
        epoch: int | None = None,
        data: bytes | None = None,
    ) -> None:
        self.stream_last_seq = stream_last_seq
        self.seq = seq
        self.epoch = epoch
        self.data = data


async def stream_tail(js: JetStreamContext, settings: Settings, journal: str) -> StreamTail:
    name = stream_of(settings, journal)
    info = await js.stream_info(name)
    state = info.state
    if not state.messages:
        return StreamTail(int(state.last_seq or 0))
    msg = await js.get_msg(name, int(state.last_seq))
    return StreamTail(
        int(msg.seq or state.last_seq),
        header_int(msg.headers, HDR_SEQ),
        header_int(msg.headers, HDR_EPOCH),
        msg.data,
    )
