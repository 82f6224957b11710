"""Replication metric families, built at scrape time from each journal's publisher/follower."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric


def replication_families(journals: Iterable[Any]) -> Iterator[Metric]:
    """One sample per journal that replicates (``journal.replication`` set), labelled by role."""
    roles = [(j.name, j.replication) for j in journals if j.replication is not None]
    if not roles:
        return
    lab = ["journal", "role"]

    def gauge(name: str, doc: str, attr: str) -> GaugeMetricFamily:
        g = GaugeMetricFamily(name, doc, labels=lab)
        for name_, r in roles:
            g.add_metric([name_, r.role], float(getattr(r, attr)))
        return g

    def counter(name: str, doc: str, attr: str) -> CounterMetricFamily:
        c = CounterMetricFamily(name, doc, labels=lab)
        for name_, r in roles:
            c.add_metric([name_, r.role], float(getattr(r, attr)))
        return c

    yield gauge(
        "ackwal_replication_lag_records",
        "Records durable in the primary's WAL not yet in JetStream (primary), or in the stream "
        "not yet in this standby's WAL (standby).",
        "lag_records",
    )
    yield gauge(
        "ackwal_replication_lag_seconds",
        "Age of the oldest record still to replicate (0 when caught up).",
        "lag_seconds",
    )
    yield counter(
        "ackwal_replication_records",
        "Records published to JetStream (primary) or written to the standby's WAL (standby).",
        "records_total",
    )
    yield counter(
        "ackwal_replication_errors",
        "NATS failures seen by the publisher or follower (each followed by a retry).",
        "failures",
    )
    yield gauge("ackwal_replication_epoch", "The node's replication epoch.", "epoch")
    yield gauge(
        "ackwal_replication_connected", "1 while connected to NATS, else 0.", "connected_flag"
    )
    yield gauge(
        "ackwal_replication_fenced",
        "1 when a newer primary exists and this one refuses appends (error fenced).",
        "fenced_flag",
    )
    yield gauge(
        "ackwal_replication_diverged",
        "1 when the standby halted on a record that does not continue its WAL.",
        "diverged_flag",
    )
