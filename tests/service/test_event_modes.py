"""Event persistence modes: full, summary, none, with critical event types always kept in full."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from service.client import JournalClient
from service.settings import SettingsError, load_settings
from tests.service.conftest import RunningService
from tests.service.harness import new_rid

EVENTS: list[dict[str, Any]] = [
    {"type": "OrderAccepted", "key": "o1", "data": b"accepted" * 10},
    {"type": "OrderFilled", "key": "o1", "data": b"filled 10 @ 101.5"},
    {"type": "BookUpdated", "key": None, "data": b"book" * 20},
]


async def stored_and_pushed(svc: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The events as read back from the WAL, and as pushed live to a subscriber."""
    async with JournalClient(svc.settings.socket_path) as client:
        it = client.subscribe()
        first = asyncio.ensure_future(anext(it))
        await asyncio.sleep(0.05)  # subscribed (live) before the append
        ack = await client.append(new_rid(), "Fill", b"cmd", events=EVENTS)
        pushed = await asyncio.wait_for(first, 10)
        await it.aclose()
        [stored] = await client.read(ack.seq, 1)
        assert pushed.seq == stored.seq == ack.seq
        return stored.events, pushed.events


async def test_full_mode_stores_events_as_sent(running_service: RunningService) -> None:
    async with running_service() as svc:
        stored, pushed = await stored_and_pushed(svc)
    assert stored == pushed == EVENTS


async def test_summary_mode_keeps_type_and_key_and_critical_types_in_full(
    running_service: RunningService,
) -> None:
    async with running_service(
        event_persistence="summary", critical_event_types="OrderFilled, Trade"
    ) as svc:
        stored, pushed = await stored_and_pushed(svc)
    assert (
        stored
        == pushed
        == [
            {"type": "OrderAccepted", "key": "o1"},
            EVENTS[1],
            {"type": "BookUpdated", "key": None},
        ]
    )


async def test_none_mode_keeps_only_critical_events(running_service: RunningService) -> None:
    async with running_service(event_persistence="none", critical_event_types="OrderFilled") as svc:
        stored, pushed = await stored_and_pushed(svc)
    assert stored == pushed == [EVENTS[1]]


async def test_none_mode_without_critical_types_stores_no_events(
    running_service: RunningService,
) -> None:
    async with running_service(event_persistence="none") as svc:
        journal = svc.journals["main"]
        ack = await journal.append(new_rid(), "Fill", b"cmd", events=EVENTS)
        [stored] = journal.read(ack.seq, 1)
        assert stored.events == []
        results = await journal.append_batch(
            [{"request_id": new_rid(), "command_type": "F", "command": b"c", "events": EVENTS}]
        )
        assert journal.read(results[0].seq, 1)[0].events == []


async def test_the_size_limit_applies_to_what_is_stored(running_service: RunningService) -> None:
    big = [{"type": "Blob", "key": None, "data": b"x" * (1024 * 1024)}]
    async with (
        running_service(event_persistence="summary") as svc,
        JournalClient(svc.settings.socket_path) as client,
    ):
        ack = await client.append(new_rid(), "Big", b"c", events=big)  # 1 MiB sent, not stored
        assert (await client.read(ack.seq, 1))[0].events == [{"type": "Blob", "key": None}]


def test_an_unknown_mode_is_rejected_at_start() -> None:
    with pytest.raises(SettingsError, match=r"event_persistence.*one of full, summary, none"):
        load_settings(env={}, flags={"event_persistence": "some"})
    with pytest.raises(SettingsError, match="critical_event_types"):
        load_settings(env={}, flags={"critical_event_types": "A,,B"})
