"""WAL reads on the event loop are spread over loop turns (service/turn.py ReadBudget).

Reads and subscription catch-up share one budget of READ_BYTES_PER_TURN per turn; before it,
8 connections pipelining large reads made one turn last 100-190 ms (tests/torture prints the
probe's worst ACK under that attack).
"""

from __future__ import annotations

import asyncio

from service.client import JournalClient
from service.connection import READ_REPLY_BYTES
from service.turn import READ_BYTES_PER_TURN, read_budget
from tests.service.conftest import RunningService
from tests.service.harness import RawConnection, command_for, new_rid


async def test_the_budget_is_spent_within_a_turn_and_renewed_by_the_next() -> None:
    budget = read_budget(asyncio.get_running_loop())
    assert not budget.exhausted
    budget.spend(READ_BYTES_PER_TURN // 2)
    assert not budget.exhausted
    budget.spend(READ_BYTES_PER_TURN // 2)
    assert budget.exhausted
    await asyncio.sleep(0)  # the next turn
    assert not budget.exhausted
    budget.spend(0)  # an empty read costs nothing and schedules nothing
    await asyncio.sleep(0)
    assert not budget.exhausted


async def test_pipelined_reads_are_all_answered_in_order_each_within_the_reply_size(
    running_service: RunningService,
) -> None:
    async with running_service() as service:
        socket_path = service.settings.socket_path
        async with JournalClient(socket_path) as writer:
            for _ in range(6):  # 60 x 20 KB: several read replies' worth
                rids = [new_rid() for _ in range(10)]
                await asyncio.gather(
                    *(writer.append(r, "big", command_for(r, 20_000)) for r in rids)
                )
            last_seq = (await writer.status())["last_seq"]
            reader = await RawConnection.open(socket_path)
            reader.send(
                *({"op": "read", "id": n, "from_seq": 1, "limit": 10_000} for n in range(12))
            )
            # Meanwhile appends on another connection are answered as usual.
            acked = [await writer.append(r, "small", b"x") for r in (new_rid() for _ in range(5))]
            assert [a.seq for a in acked] == list(range(last_seq + 1, last_seq + 6))
            for n in range(12):
                reply = await reader.recv()
                assert reply["id"] == n
                records = reply["records"]
                assert records[0]["seq"] == 1
                size = sum(len(r["data"]) for r in records)
                # At most one reply's worth, plus the record that crossed the limit.
                assert size <= READ_REPLY_BYTES + 21_000
                assert len(records) < last_seq  # a reply never holds the whole log here
            await reader.close()
