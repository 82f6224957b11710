"""Per event loop turn: one end-of-turn flush for all coalesced socket writes, one read budget.

The server queues the replies of a committed batch on ~25 connections at 64 clients, and a
client process with many connections sends a request on each of them per turn. A loop callback
per connection and turn was measurable on both sides (docs/PERFORMANCE.md); here the first
flush scheduled in a turn registers one callback, and the rest join its list. The journal does
not wait for the end of the turn after committing a batch: it calls :meth:`flush_now`.

WAL reads run on the loop too (they only touch synced bytes); :class:`ReadBudget` spreads them
over turns so that no turn holds up the appends of other clients for long.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable

_FLUSHERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, TurnFlusher] = (
    weakref.WeakKeyDictionary()
)
_BUDGETS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ReadBudget] = (
    weakref.WeakKeyDictionary()
)

# WAL bytes read per loop turn, for every reader on the loop together (read replies and
# subscription catch-up): ~2-3 ms of parsing and encoding. Before this budget, 8 connections
# pipelining large reads made one loop turn last 100-190 ms, and every ACK waited it out.
READ_BYTES_PER_TURN = 256 * 1024


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


class ReadBudget:
    """How much WAL reading is left in this loop turn; readers past it wait for the next turn.

    Reads are never split: one that starts within the budget finishes, so a turn reads at most
    the budget plus one reply's worth (READ_BYTES_PER_TURN is also the size of one).
    """

    __slots__ = ("_loop", "_spent", "per_turn")

    def __init__(self, loop: asyncio.AbstractEventLoop, per_turn: int) -> None:
        self._loop = loop
        self._spent = 0
        self.per_turn = per_turn

    @property
    def exhausted(self) -> bool:
        return self._spent >= self.per_turn

    def spend(self, nbytes: int) -> None:
        if self._spent == 0 and nbytes > 0:
            # Scheduled now, it runs at the start of the next turn's callbacks: before the
            # readers that were deferred during this turn.
            self._loop.call_soon(self._reset)
        self._spent += nbytes

    def _reset(self) -> None:
        self._spent = 0


def read_budget(loop: asyncio.AbstractEventLoop) -> ReadBudget:
    """The loop's read budget (made on first use, gone with the loop)."""
    budget = _BUDGETS.get(loop)
    if budget is None:
        budget = _BUDGETS[loop] = ReadBudget(loop, READ_BYTES_PER_TURN)
    return budget
