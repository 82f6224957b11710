"""Use the journal in-process (no socket hop) from an engine's own event loop."""

import asyncio
import sys
import uuid

from service.journal import Journal
from service.settings import load_settings


async def main(data_dir: str) -> None:
    journal = await Journal.open(load_settings(flags={"data_dir": data_dir}))
    try:
        ack = await journal.append(uuid.uuid4(), "NewOrder", b"buy 10 @ 101.5")
        print(f"durable at seq {ack.seq}")
        async for entry in journal.subscribe(from_seq=1):  # history, then live
            print(entry.seq, entry.command_type)
            if entry.seq == ack.seq:
                break
    finally:
        await journal.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "data-embedded"))
