"""Append a journal entry over the socket, retry it safely, look it up, read it back."""

import asyncio
import sys
import uuid

from service.client import JournalClient


async def main(socket_path: str) -> None:
    async with JournalClient(socket_path) as journal:
        request_id = uuid.uuid4()
        ack = await journal.append(
            request_id,
            "NewOrder",
            b'{"side": "buy", "qty": 10, "px": 101.5}',
            response=b'{"order_id": 42, "status": "accepted"}',
            events=[{"type": "OrderAccepted", "key": "42", "data": b"..."}],
        )
        print(f"durable at seq {ack.seq}")  # only now may the engine answer its client

        retry = await journal.append(request_id, "NewOrder", b"(retried)")
        assert retry.duplicate and retry.seq == ack.seq  # the original answer, no new record
        print(f"retry answered with the original response: {retry.response!r}")

        stored = await journal.lookup(request_id)
        assert stored is not None and stored.seq == ack.seq
        print([entry.command_type for entry in await journal.read(from_seq=ack.seq)])


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "run/ackwal.sock"))
