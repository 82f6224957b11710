"""The journal's dedicated WAL writer thread.

A ``ThreadPoolExecutor`` + ``run_in_executor`` costs, per batch, a ``concurrent.futures``
future with its condition variable, an asyncio future chained to it, two locks in ``submit``
and two cross-thread callbacks. At ~1,000+ batches a second that overhead lands on the event
loop and, worse, makes both threads contend for the GIL more often than the work needs. Here
a job is one tuple on a ``SimpleQueue`` (implemented in C) and its result comes back with one
``call_soon_threadsafe``. One thread, jobs in submission order: the WAL relies on that.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_STOP = None


def _deliver(fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if fut.cancelled():
        return
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)


class WriterThread:
    """Runs blocking calls one at a time, in order, on a single thread of its own."""

    def __init__(self, loop: asyncio.AbstractEventLoop, name: str) -> None:
        self._loop = loop
        self._jobs: queue.SimpleQueue[
            tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]] | None
        ] = queue.SimpleQueue()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name)
        self._thread.start()

    def run(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Queue ``fn(*args)``; the returned future resolves on the loop with its outcome."""
        if self._stopped:
            raise RuntimeError("the writer thread is shut down")
        fut: asyncio.Future[T] = self._loop.create_future()
        self._jobs.put((fn, args, fut))
        return fut

    def shutdown(self, *, wait: bool) -> None:
        """Stop after the queued jobs; ``wait=False`` leaves a job that never returns behind
        (a stuck disk: the caller then exits with ``os._exit``)."""
        if not self._stopped:
            self._stopped = True
            self._jobs.put(_STOP)
        if wait:
            self._thread.join()

    def _run(self) -> None:
        jobs = self._jobs
        loop = self._loop
        while True:
            job = jobs.get()
            if job is None:
                return
            fn, args, fut = job
            try:
                result = fn(*args)
            except BaseException as exc:  # handed to the awaiting coroutine, as an executor does
                outcome: tuple[bool, Any] = (False, exc)
            else:
                outcome = (True, result)
            del job, fn, args
            try:
                loop.call_soon_threadsafe(_deliver, fut, *outcome)
            except RuntimeError:
                return  # the loop is closed: nobody waits for this any more
            del fut, outcome
