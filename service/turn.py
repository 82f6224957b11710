"""One end-of-turn callback per event loop, shared by everything that coalesces socket writes.

The server queues the replies of a committed batch on ~25 connections at 64 clients, and a
client process with many connections sends a request on each of them per turn. A loop callback
per connection and turn was measurable on both sides (docs/PERFORMANCE.md); here the first
flush scheduled in a turn registers one callback, and the rest join its list. The journal does
not wait for the end of the turn after committing a batch: it calls :meth:`flush_now`.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable

_FLUSHERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, TurnFlusher] = (
    weakref.WeakKeyDictionary()
)


class TurnFlusher:
    """Calls every scheduled flush once, at the end of the current loop turn, in order."""

    __slots__ = ("_loop", "_pending")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pending: list[Callable[[], None]] = []

    def schedule(self, flush: Callable[[], None]) -> None:
        if not self._pending:
            self._loop.call_soon(self._run)
        self._pending.append(flush)

    def flush_now(self) -> None:
        """Run what is scheduled now instead of at the end of the turn (the callback then
        finds nothing left to do)."""
        if self._pending:
            self._run()

    def _run(self) -> None:
        pending, self._pending = self._pending, []
        for flush in pending:
            try:
                flush()
            except Exception as exc:  # one broken connection must not keep the others' output
                self._loop.call_exception_handler(
                    {"message": "end-of-turn flush failed", "exception": exc}
                )


def turn_flusher(loop: asyncio.AbstractEventLoop) -> TurnFlusher:
    """The loop's flusher (made on first use, gone with the loop)."""
    flusher = _FLUSHERS.get(loop)
    if flusher is None:
        flusher = _FLUSHERS[loop] = TurnFlusher(loop)
    return flusher
