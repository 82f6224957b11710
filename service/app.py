"""Running the service: start-up order, signal handling, graceful and fail-stop shutdown.

Start-up: open and recover the journal (takes the data-directory lock: a second server fails
here), then bind the socket; readiness is announced only after the socket is bound.
Shutdown (SIGTERM/SIGINT): stop accepting, answer every new request with shutting_down, commit
what is queued and answer it, close the WAL, close connections once their clients went quiet. A
second SIGINT exits at once.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys
from collections.abc import Callable

import structlog
import uvloop

from service import __version__
from service.build import describe as describe_build
from service.cursors import CursorFileError
from service.journal import Journal
from service.metrics import MetricsEndpoint
from service.replication.follower import Follower
from service.replication.publisher import Publisher
from service.runs import RunStartTimeoutError
from service.server import Server, SocketInUseError
from service.settings import Settings
from wal import WalError
from wal.fileio import OS_FILES, FileLayer

log = structlog.get_logger("ackwal")

# The writer thread needs the GIL to start a batch (encode it), after its pwrite and after its
# fdatasync, and to hand the result back; a busy event loop keeps it waiting up to the switch
# interval each time, which lands directly on every ACK of the batch. CPython's default is
# 5 ms; 0.1 ms measured best here (docs/PERFORMANCE.md: 64 clients, 0.1 vs 0.5 vs 5 ms
# interleaved over three rounds).
GIL_SWITCH_INTERVAL = 0.0001

# The cyclic garbage collector, once the journals are open (see settle_gc). Nearly every object
# the hot path makes dies by reference counting; what the collector found was in-flight work
# (with append_batch, ~4,000 entries wait for their fdatasync at any moment, each a Pending and
# a tuple) and the long-lived containers made at start-up, whose full traversals paused the
# loop.
GC_GEN0_THRESHOLD = 10_000

EXIT_OK = 0
EXIT_HALTED = 70  # EX_SOFTWARE: a supervisor should restart us into recovery
EXIT_FORCED = 130
EXIT_START_REFUSED = 1  # could not start: the log line says why


class Service:
    """The whole service for one settings object; ``run()`` returns the process exit code."""

    def __init__(
        self, settings: Settings, *, fs: FileLayer = OS_FILES, standby: bool = False
    ) -> None:
        self.settings = settings
        self.standby = standby  # ackwal follow: journals copied from JetStream, read-only
        self.fs = fs
        self.journals: dict[str, Journal] = {}
        self.server: Server | None = None
        self.exit_code = EXIT_OK
        self._stop = asyncio.Event()
        self._signals = 0
        self.ready = asyncio.Event()
        self.metrics: MetricsEndpoint | None = None
        self.publishers: list[Publisher] = []
        self.followers: list[Follower] = []

    def readiness(self) -> tuple[bool, str]:
        """(ready, why) for /readyz: recovered, socket bound, not halted, not stopping."""
        if not self.ready.is_set():
            return False, "starting: recovery or socket binding not finished"
        halted = [j.name for j in self.journals.values() if j.halted is not None]
        if halted:
            return False, f"halted: {', '.join(halted)}"
        fenced = [j.name for j in self.journals.values() if getattr(j.replication, "fenced", None)]
        if fenced:
            return False, f"fenced (a newer primary exists): {', '.join(fenced)}"
        diverged = [f.journal.name for f in self.followers if f.diverged is not None]
        if diverged:
            return False, f"standby diverged from the stream: {', '.join(diverged)}"
        if self._stop.is_set():
            return False, "shutting down"
        return True, "ready"

    async def start(self) -> None:
        try:
            for name, directory in self.settings.journal_dirs().items():
                journal = await Journal.open(
                    self.settings.replace(data_dir=directory),
                    name,
                    fs=self.fs,
                    standby=self.standby,
                )
                self.journals[name] = journal
                journal.on_halt(self._on_halt)
            await self._start_replication()
            if self.settings.metrics_addr:
                host, _, port = self.settings.metrics_addr.rpartition(":")
                self.metrics = MetricsEndpoint(self, host.strip("[]") or "0.0.0.0", int(port))
                self.metrics.start()
                log.info("metrics.listening", addr=f"{self.metrics.host}:{self.metrics.port}")
            self.server = Server(self.settings, self.journals)
            await self.server.start()
        except BaseException:
            if self.metrics is not None:
                self.metrics.stop()
                self.metrics = None
            await self._stop_followers()
            for journal in reversed(self.journals.values()):
                await journal.close()
            await self._stop_replication()
            raise
        self.ready.set()
        main = self.journals["main"]
        log.info(
            "service.ready",
            version=__version__,
            build=describe_build(),
            socket=self.server.socket_path,
            data_dir=main.wal.directory,
            last_seq=main.last_seq,
            journals=list(self.journals),
            sync_mode=self.settings.sync_mode,
        )

    async def _start_replication(self) -> None:
        """Attach a JetStream publisher to every journal (replication_mode async or sync).

        In sync mode, wait until the stream holds everything the logs hold before serving:
        entries committed before a crash but never acknowledged by JetStream would otherwise
        be answered as duplicates (ACKed) without their JetStream copy.
        """
        if self.standby:
            for journal in self.journals.values():
                follower = Follower(journal)
                self.followers.append(follower)
                await follower.start()
            return
        if self.settings.replication_mode == "off" or self.settings.read_only:
            return
        for journal in self.journals.values():
            publisher = Publisher(journal)
            self.publishers.append(publisher)
            await publisher.start()
        if self.settings.replication_mode == "sync":
            for publisher in self.publishers:
                log.info("replication.catching_up", journal=publisher.journal.name)
                caught_up = asyncio.ensure_future(publisher.wait_caught_up())
                stop = asyncio.ensure_future(self._stop.wait())
                await asyncio.wait([caught_up, stop], return_when=asyncio.FIRST_COMPLETED)
                caught_up.cancel()
                stop.cancel()

    async def _stop_followers(self) -> None:
        for follower in self.followers:
            await follower.close()
        self.followers = []

    async def _stop_replication(self) -> None:
        for publisher in self.publishers:
            await publisher.close(self.settings.shutdown_timeout)
        self.publishers = []

    def request_stop(self, exit_code: int = EXIT_OK) -> None:
        if exit_code and not self.exit_code:
            self.exit_code = exit_code
        self._stop.set()

    def _on_halt(self, reason: str) -> None:
        if self.settings.exit_on_halt:
            # error, not critical: the journal's halt already logged the one critical line
            log.error("service.exiting_after_halt", reason=reason, exit_code=EXIT_HALTED)
            self.request_stop(EXIT_HALTED)

    def _on_signal(self, signum: int) -> None:
        self._signals += 1
        if self._signals > 1 and signum == signal.SIGINT:
            log.warning("service.forced_exit", signal=signal.Signals(signum).name)
            os._exit(EXIT_FORCED)
        log.info("service.stopping", signal=signal.Signals(signum).name)
        self.request_stop()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)

    async def wait_stopped(self) -> None:
        await self._stop.wait()

    async def shutdown(self) -> None:
        timeout = self.settings.shutdown_timeout
        if self.server is not None:
            await self.server.stop_accepting()
        await self._stop_followers()  # before the journals: they write into the WALs
        for journal in self.journals.values():
            try:
                await asyncio.wait_for(journal.close(), timeout)
            except TimeoutError:
                log.error("service.journal_close_timeout", journal=journal.name, timeout=timeout)
                # The writer is stuck (a disk that does not answer): fail stop, so that every
                # request waiting on it is answered and the exit code says so.
                journal.halt(f"shutdown timed out after {timeout}s: the writer is stuck")
                journal.writer_stuck = True
                self.exit_code = self.exit_code or EXIT_HALTED
        await self._stop_replication()  # after the journals: the run's seal is published too
        if self.server is not None:
            await self.server.close_connections(timeout=min(timeout, 5.0))
        if self.metrics is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.metrics.stop)
        log.info("service.stopped", exit_code=self.exit_code)

    async def run(self, on_ready: Callable[[Service], None] | None = None) -> int:
        self.install_signal_handlers()
        await self.start()
        if on_ready is not None:
            on_ready(self)
        try:
            await self.wait_stopped()
        finally:
            await self.shutdown()
        return self.exit_code


def settle_gc() -> None:
    """Move everything alive after start-up out of the collector's reach, collect young
    objects less often. For the service process only (a library must not touch its host's GC).

    Measured with append_batch(64) at 64 clients: the collector took 0.64 s of a 7 s run
    (~9% of the loop), its full collections up to 38 ms each; afterwards 0.015 s, and the
    p99 fell from 64-71 ms to 54-61 ms in each of three interleaved rounds
    (docs/PERFORMANCE.md). Cycles made later are still collected.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])


def run_service(settings: Settings, *, fs: FileLayer = OS_FILES, standby: bool = False) -> int:
    """Run on uvloop until stopped; returns the exit code (``fs``: see :class:`Service`)."""
    service = Service(settings, fs=fs, standby=standby)
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    try:
        code = uvloop.run(service.run(on_ready=lambda _: settle_gc()))
    except (WalError, SocketInUseError, CursorFileError, OSError) as exc:
        # Refusing to start (directory locked by another server, socket in use, corruption of
        # the log or of the cursor file, permissions) is for an operator to fix: one line
        # saying why, not a traceback.
        log.error("service.start_refused", error=str(exc), exit_code=EXIT_START_REFUSED)
        if isinstance(exc, RunStartTimeoutError):
            # The writer thread is still inside a write that may never return, and the
            # interpreter would join it at exit: leave now.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(EXIT_START_REFUSED)
        return EXIT_START_REFUSED
    if any(j.writer_stuck for j in service.journals.values()):
        # A write or fdatasync that never returned still holds the writer thread, and the
        # interpreter joins that thread at exit: it would never exit. Fail-stop exits now.
        log.error("service.exit_with_stuck_writer", exit_code=code)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
