"""Prometheus metrics and the health endpoints.

The hot path only bumps plain ints and bucket counters (``Histogram.observe`` is one
``bisect``); prometheus-client's collector API turns them into metric families at scrape time and
prometheus-client renders the exposition (never hand-written). The HTTP endpoint serves
``/metrics``, ``/healthz`` (process alive) and ``/readyz`` (recovery finished, socket bound, not
halted) from a small WSGI server thread.
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import ThreadingWSGIServer, _SilentHandler
from prometheus_client.registry import Collector

from service import __version__
from service.build import compiled_modules
from service.protocol import PROTOCOL_VERSION
from service.replication.metrics import replication_families
from wal import FORMAT_VERSION

if TYPE_CHECKING:
    from service.app import Service

# 50 us .. 1 s, roughly 1-2.5-5 per decade: resolves a 0.2 ms fdatasync and a 3 ms p99 alike.
LATENCY_BUCKETS = (
    50e-6, 100e-6, 200e-6, 300e-6, 500e-6, 750e-6,
    1e-3, 1.5e-3, 2e-3, 3e-3, 5e-3, 7.5e-3,
    10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1.0,
)  # fmt: skip
ENTRY_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 16384, 65536)
BYTE_BUCKETS = tuple(float(256 << (2 * i)) for i in range(10))  # 256 B .. 64 MiB


class Histogram:
    """Bucket counts updated with one bisect; read by the collector at scrape time."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def observe_since(self, now: float, starts: Iterable[float]) -> None:
        """Observe ``now - t`` for each of ``starts``. The entries of one ``append_batch`` share
        their start: one bisect serves the run of them."""
        counts = self.counts
        bounds = self.bounds
        last = None
        i = 0
        n = 0
        total = 0.0
        for t in starts:
            if t != last:
                last = t
                i = bisect.bisect_left(bounds, now - t)
            counts[i] += 1
            total += now - t
            n += 1
        self.sum += total
        self.count += n

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, c in zip(self.bounds, self.counts, strict=False):
            running += c
            out.append((_fmt(bound), running))
        out.append(("+Inf", running + self.counts[-1]))
        return out


def _fmt(bound: float) -> str:
    return repr(float(bound))


class JournalMetrics:
    """Per-journal histograms and result counters filled by the journal and its connections."""

    def __init__(self) -> None:
        self.append_latency = Histogram(LATENCY_BUCKETS)
        self.queue_wait = Histogram(LATENCY_BUCKETS)
        self.fdatasync = Histogram(LATENCY_BUCKETS)
        self.batch_entries = Histogram(ENTRY_BUCKETS)
        self.batch_bytes = Histogram(BYTE_BUCKETS)
        self.append_errors: Counter[str] = Counter()


class AckwalCollector(Collector):
    """Builds every ackwal metric family from the live service at scrape time."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def describe(self) -> list[Metric]:
        return []  # collected on demand: no eager collection at registration

    def collect(self) -> Iterator[Metric]:
        svc = self.service
        journals = list(svc.journals.values())
        lab = ["journal"]

        def gauge(name: str, doc: str, value: Callable[[Any], float]) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc, labels=lab)
            for j in journals:
                g.add_metric([j.name], value(j))
            return g

        def counter(name: str, doc: str, value: Callable[[Any], float]) -> CounterMetricFamily:
            c = CounterMetricFamily(name, doc, labels=lab)
            for j in journals:
                c.add_metric([j.name], value(j))
            return c

        def hist(name: str, doc: str, pick: Callable[[Any], Histogram]) -> HistogramMetricFamily:
            h = HistogramMetricFamily(name, doc, labels=lab)
            for j in journals:
                data = pick(j)
                h.add_metric([j.name], data.buckets(), data.sum)
            return h

        info = InfoMetricFamily("ackwal_build", "Build information.")
        info.add_metric(
            [],
            {
                "version": __version__,
                "format_version": str(FORMAT_VERSION),
                "protocol_version": str(PROTOCOL_VERSION),
                "compiled_modules": str(len(compiled_modules())),
            },
        )
        yield info
        appends = CounterMetricFamily(
            "ackwal_appends", "Append requests by result: ok, duplicate, or an error code.",
            labels=["journal", "result"],
        )  # fmt: skip
        for j in journals:
            appends.add_metric([j.name, "ok"], j.stats.appended)
            appends.add_metric([j.name, "duplicate"], j.stats.duplicates)
            for code, n in sorted(j.metrics.append_errors.items()):
                appends.add_metric([j.name, code], n)
        yield appends
        yield hist(
            "ackwal_append_latency_seconds",
            "Time from receiving an append to its ACK being queued (after fdatasync).",
            lambda j: j.metrics.append_latency,
        )
        yield hist(
            "ackwal_queue_wait_seconds",
            "Time an append waited in the queue before its batch was taken.",
            lambda j: j.metrics.queue_wait,
        )
        yield hist(
            "ackwal_fdatasync_duration_seconds",
            "Duration of one batch write + sync, from taking the batch to its sync's completion.",
            lambda j: j.metrics.fdatasync,
        )
        yield hist("ackwal_batch_entries", "Entries per committed batch.",
                   lambda j: j.metrics.batch_entries)  # fmt: skip
        yield hist("ackwal_batch_bytes", "Payload bytes per committed batch.",
                   lambda j: j.metrics.batch_bytes)  # fmt: skip
        yield counter("ackwal_written_bytes_total", "Payload bytes committed to the WAL.",
                      lambda j: j.stats.bytes_written)  # fmt: skip
        yield counter("ackwal_batches_total", "Batches committed (one fdatasync each).",
                      lambda j: j.stats.batches)  # fmt: skip
        yield gauge("ackwal_queue_depth", "Entries waiting for the batcher.",
                    lambda j: j.queue_depth)  # fmt: skip
        yield gauge("ackwal_queue_capacity", "Capacity of the append queue.",
                    lambda j: j.queue_capacity)  # fmt: skip
        yield counter(
            "ackwal_backpressure_events_total",
            "Times an append found the queue full and had to wait.",
            lambda j: j.stats.backpressure_events,
        )
        yield gauge("ackwal_halted", "1 after a fail-stop (no more ACKs), else 0.",
                    lambda j: 1 if j.halted is not None else 0)  # fmt: skip
        yield gauge("ackwal_last_seq", "Seq of the last durable record.", lambda j: j.last_seq)
        yield gauge("ackwal_wal_segments", "WAL segment files on disk.",
                    lambda j: len(j.wal.segments()))  # fmt: skip
        yield gauge("ackwal_wal_bytes", "Bytes of valid records in the WAL segments.",
                    lambda j: sum(s.bytes for s in j.wal.segments()))  # fmt: skip
        yield gauge("ackwal_wal_first_seq", "Seq of the first retained record.",
                    lambda j: j.wal.first_seq)  # fmt: skip
        yield counter(
            "ackwal_retention_deleted_segments_total",
            "WAL segments deleted by retention since the start.",
            lambda j: j.retention.deleted_segments,
        )
        yield gauge(
            "ackwal_journal_full",
            "1 while appends get journal_full (max_journal_bytes reached, nothing to delete).",
            lambda j: 1 if j.full is not None else 0,
        )
        yield counter("ackwal_snapshots_written_total", "Snapshots stored since the start.",
                      lambda j: j.snapshots.written)  # fmt: skip
        yield gauge(
            "ackwal_snapshot_anchor_seq",
            "Anchor seq of the newest valid snapshot (-1: none).",
            lambda j: -1 if j.snapshots.newest_anchor is None else j.snapshots.newest_anchor,
        )
        yield gauge("ackwal_subscribers", "Open subscriptions.", lambda j: j.fanout.count)
        yield gauge(
            "ackwal_subscriber_lag_records",
            "Records the furthest-behind subscriber has yet to receive.",
            lambda j: max(j.fanout.lags(), default=0),
        )
        cursor_lag = GaugeMetricFamily(
            "ackwal_cursor_lag_records",
            "Records between a durable follower cursor's committed seq and the last seq.",
            labels=["journal", "cursor"],
        )
        for j in journals:
            for name, seq in sorted(j.cursors.all().items()):
                cursor_lag.add_metric([j.name, name], max(0, j.last_seq - seq))
        yield cursor_lag
        yield gauge("ackwal_idempotency_entries", "Request ids in the idempotency index.",
                    lambda j: len(j.index))  # fmt: skip
        yield gauge(
            "ackwal_recovery_duration_seconds",
            "Time the last start spent scanning and repairing the WAL.",
            lambda j: j.wal.recovery.duration_seconds,
        )
        yield gauge(
            "ackwal_recovery_dropped_bytes",
            "Bytes of torn tail dropped by the last start's recovery.",
            lambda j: j.wal.recovery.dropped_bytes,
        )
        yield from replication_families(journals)
        conns = GaugeMetricFamily("ackwal_connections", "Open client connections.")
        conns.add_metric([], svc.server.connection_count if svc.server is not None else 0)
        yield conns
        errors = CounterMetricFamily(
            "ackwal_request_errors", "Error replies sent, by error code.", labels=["code"]
        )
        if svc.server is not None:
            for code, n in sorted(svc.server.errors.items()):
                errors.add_metric([code], n)
        yield errors


class MetricsEndpoint:
    """``/metrics``, ``/healthz`` and ``/readyz`` over HTTP on a background thread."""

    def __init__(self, service: Service, host: str, port: int) -> None:
        self.service = service
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(AckwalCollector(service))
        metrics_app = make_wsgi_app(self.registry)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
            path = environ.get("PATH_INFO", "/")
            if path == "/healthz":
                start_response("200 OK", [("Content-Type", "text/plain")])
                return [b"ok\n"]
            if path == "/readyz":
                ready, why = service.readiness()
                status = "200 OK" if ready else "503 Service Unavailable"
                start_response(status, [("Content-Type", "text/plain")])
                return [why.encode() + b"\n"]
            result: list[bytes] = metrics_app(environ, start_response)
            return result

        self._httpd = make_server(
            host, port, app, ThreadingWSGIServer, handler_class=_SilentHandler
        )
        self.port: int = self._httpd.server_port
        self.host = host
        self._serve_thread = threading.Thread(
            target=self._httpd.serve_forever, name="ackwal-metrics", daemon=True
        )

    def start(self) -> None:
        self._serve_thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._serve_thread.join(5)
