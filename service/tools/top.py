"""``ackwal top``: a live view of a running service, refreshed every second, 80 columns wide.

Everything comes from the ``status`` op (over the service's socket, via JournalClient): rates
are differences between two samples. The status op has no latencies; with ``--metrics`` the
view adds append-latency and fdatasync percentiles over the last interval, computed from the
histogram buckets of two ``/metrics`` scrapes (as Prometheus' histogram_quantile does), and the
furthest subscriber's lag.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Final

from prometheus_client.parser import text_string_to_metric_families

from service.client import JournalClient
from service.errors import AckwalError
from service.settings import Settings
from service.tools.common import (
    EXIT_ERROR,
    EXIT_OK,
    SubParsers,
    ToolError,
    ToolParser,
    add_tool_parser,
    crc_hex,
    guarded,
    positive_float,
    time_iso,
)
from service.tools.progress import summary

EXIT_HALTED: Final = 1
WIDTH: Final = 80
LATENCY: Final = "ackwal_append_latency_seconds"
FDATASYNC: Final = "ackwal_fdatasync_duration_seconds"
LAG: Final = "ackwal_subscriber_lag_records"
CLEAR: Final = "\x1b[H\x1b[2J"

Buckets = list[tuple[float, float]]  # (upper bound, cumulative count), +Inf last


def register(sub: SubParsers[ToolParser]) -> None:
    parser = add_tool_parser(
        sub,
        "top",
        help="live view of a running service (appends/s, batches, queue, halted, subscribers)",
        description="Show a running service's status, refreshed every --interval seconds: "
        "appends/s, duplicates/s, batches/s and mean batch size, MB/s, queue depth, "
        "backpressure, halted, connections, subscribers, last seq. The status op carries no "
        "latencies: pass --metrics HOST:PORT (the metrics_addr setting) to add append-latency "
        "and fdatasync percentiles and subscriber lag. Ctrl-C quits.",
        exits=f"""\
  {EXIT_OK}   stopped (Ctrl-C), or --once on a running service
  {EXIT_HALTED}   --once: the service is halted (fail-stop)
  {EXIT_ERROR}   the service cannot be reached (with --once; otherwise top keeps retrying)""",
    )
    parser.add_argument(
        "--socket",
        default=os.environ.get("ACKWAL_SOCKET_PATH", Settings().socket_path),
        metavar="PATH",
        help="the service's socket (default: $ACKWAL_SOCKET_PATH or %(default)s)",
    )
    parser.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="the metrics endpoint (or its /metrics URL), for latency percentiles",
    )
    parser.add_argument(
        "--interval",
        type=positive_float,
        default=1.0,
        metavar="SECONDS",
        help="refresh period (default: %(default)s)",
    )
    parser.add_argument(
        "--once", action="store_true", help="print one frame (two samples --interval apart)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per frame")
    parser.set_defaults(func=run)


@dataclass(slots=True)
class Sample:
    at: float  # time.monotonic()
    wall_ms: int
    status: dict[str, Any]
    histograms: dict[str, Buckets] = field(default_factory=dict)
    lag: float | None = None
    metrics_error: str | None = None


def metrics_url(addr: str) -> str:
    if "://" in addr:
        return addr
    host, _, port = addr.rpartition(":")
    if host in ("", "0.0.0.0", "[::]"):
        host = "127.0.0.1"
    return f"http://{host}:{port}/metrics"


def parse_metrics(text: str, journal: str) -> tuple[dict[str, Buckets], float | None]:
    """The latency histograms and the subscriber lag of ``journal`` from an exposition."""
    histograms: dict[str, Buckets] = {}
    lag = None
    for family in text_string_to_metric_families(text):
        if family.name in (LATENCY, FDATASYNC):
            buckets = [
                (float(s.labels["le"]), float(s.value))
                for s in family.samples
                if s.name.endswith("_bucket") and s.labels.get("journal") == journal
            ]
            histograms[family.name] = sorted(buckets)
        elif family.name == LAG:
            values = [s.value for s in family.samples if s.labels.get("journal") == journal]
            lag = max(values) if values else None
    return histograms, lag


def quantile(q: float, cur: Buckets, prev: Buckets | None) -> float | None:
    """The q-quantile of the observations between two scrapes (linear within a bucket)."""
    if not cur:
        return None
    before = dict(prev or [])
    deltas = [(le, count - before.get(le, 0.0)) for le, count in cur]
    total = deltas[-1][1]
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for le, count in deltas:
        if count >= rank:
            if math.isinf(le):
                return lower  # beyond the largest bound: report the bound
            if count <= below:
                return le
            return lower + (le - lower) * (rank - below) / (count - below)
        lower, below = le, count
    return lower


async def take_sample(client: JournalClient, url: str | None, timeout: float) -> Sample:
    status = await asyncio.wait_for(client.status(), timeout)
    sample = Sample(time.monotonic(), time.time_ns() // 1_000_000, status)
    if url is not None:
        try:
            text = await asyncio.to_thread(_fetch, url, timeout)
            sample.histograms, sample.lag = parse_metrics(text, str(status.get("journal")))
        except (OSError, ValueError) as exc:
            sample.metrics_error = str(exc)
    return sample


def _fetch(url: str, timeout: float) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body: bytes = response.read()
    return body.decode("utf-8")


def rates(prev: Sample | None, cur: Sample) -> dict[str, float | None]:
    """Per-second rates and interval percentiles between two samples (None: unknown yet)."""
    out: dict[str, float | None] = {}
    dt = cur.at - prev.at if prev is not None else 0.0
    for key, name in (
        ("appends_per_s", "appended"),
        ("duplicates_per_s", "duplicates"),
        ("batches_per_s", "batches"),
        ("bytes_per_s", "bytes_written"),
        ("backpressure_per_s", "backpressure_events"),
    ):
        if prev is None or dt <= 0:
            out[key] = None
        else:
            out[key] = max(cur.status.get(name, 0) - prev.status.get(name, 0), 0) / dt
    if prev is not None:
        batches = cur.status.get("batches", 0) - prev.status.get("batches", 0)
        appended = cur.status.get("appended", 0) - prev.status.get("appended", 0)
        out["mean_batch"] = appended / batches if batches > 0 else None
    else:
        out["mean_batch"] = None
    for key, name, q in (
        ("latency_p50_s", LATENCY, 0.5),
        ("latency_p99_s", LATENCY, 0.99),
        ("latency_p999_s", LATENCY, 0.999),
        ("fdatasync_p99_s", FDATASYNC, 0.99),
    ):
        buckets = cur.histograms.get(name)
        before = prev.histograms.get(name) if prev is not None else None
        out[key] = quantile(q, buckets, before) if buckets else None
    return out


def _num(value: float | None, fmt: str = ",.0f") -> str:
    return "-" if value is None else format(value, fmt)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.2f} ms"


def _row(*cells: tuple[str, str]) -> str:
    return "  ".join(f"{label:<14}{value:>11}" for label, value in cells).rstrip()


def render(socket: str, cur: Sample, r: dict[str, float | None], has_metrics: bool) -> list[str]:
    """One frame, each line at most WIDTH columns."""
    s = cur.status
    clock = time.strftime("%H:%M:%S", time.localtime(cur.wall_ms / 1000))
    head = f"ackwal top  {s.get('server_version', '?')}  journal {s.get('journal', '?')}"
    room = WIDTH - len(head) - len(clock) - 4
    where = socket if len(socket) <= room else ".." + socket[-(room - 2) :]
    halted = bool(s.get("halted"))
    state = f"HALTED: {s.get('halt_reason')}" if halted else "running"
    depth, capacity = int(s.get("queue_depth", 0)), int(s.get("queue_capacity", 0)) or 1
    rate = r["bytes_per_s"]
    lines = [
        f"{head}  {where:<{room}}  {clock}",
        f"state         {state}",
        _row(
            ("appends/s", _num(r["appends_per_s"])),
            ("duplicates/s", _num(r["duplicates_per_s"])),
            ("connections", _num(s.get("connections"))),
        ),
        _row(
            ("batches/s", _num(r["batches_per_s"])),
            ("mean batch", _num(r["mean_batch"], ",.1f")),
            ("MB/s", _num(None if rate is None else rate / 1e6, ",.2f")),
        ),
        _row(
            ("queue", f"{depth:,}/{capacity:,}"),
            ("queue fill", f"{100 * depth / capacity:.0f}%"),
            ("backpress./s", _num(r["backpressure_per_s"])),
        ),
        _row(
            ("last seq", _num(s.get("last_seq"))),
            ("segments", _num(s.get("segments"))),
            ("subscribers", _num(s.get("subscribers"))),
        ),
        _row(
            ("idempot. ids", _num(s.get("idempotency_entries"))),
            ("chain head", crc_hex(int(s.get("chain_head", 0)))),
        ),
    ]
    if not has_metrics:
        lines.append("latency       not in the status op: add --metrics HOST:PORT")
    elif cur.metrics_error is not None:
        lines.append(f"latency       metrics unavailable: {cur.metrics_error}")
    else:
        lines.append(
            f"latency       p50 {_ms(r['latency_p50_s'])}  p99 {_ms(r['latency_p99_s'])}  "
            f"p99.9 {_ms(r['latency_p999_s'])}"
        )
        lines.append(
            f"fdatasync     p99 {_ms(r['fdatasync_p99_s'])}    "
            f"subscriber lag {_num(cur.lag)} records"
        )
    return [line[:WIDTH] for line in lines]


def frame_json(socket: str, cur: Sample, r: dict[str, float | None]) -> str:
    return json.dumps(
        {
            "time": time_iso(cur.wall_ms),
            "socket": socket,
            "status": cur.status,
            "rates": r,
            "subscriber_lag": cur.lag,
            "metrics_error": cur.metrics_error,
        }
    )


class Screen:
    """Where frames go: redrawn in place on a terminal, appended otherwise."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.tty = sys.stdout.isatty() and not as_json
        self.frames = 0

    def show(self, lines: list[str]) -> None:
        text = "\n".join(lines)
        if self.tty:
            sys.stdout.write(CLEAR + text + "\n")
        elif self.frames and not self.as_json:
            sys.stdout.write("\n" + text + "\n")
        else:
            sys.stdout.write(text + "\n")
        sys.stdout.flush()
        self.frames += 1


async def watch(args: argparse.Namespace) -> tuple[int, Sample | None]:
    url = metrics_url(args.metrics) if args.metrics else None
    timeout = max(5.0, args.interval)
    screen = Screen(args.json)
    client: JournalClient | None = None
    prev: Sample | None = None
    cur: Sample | None = None
    try:
        while True:
            try:
                if client is None:
                    client = await JournalClient.connect(args.socket, reconnect=False)
                cur = await take_sample(client, url, timeout)
            except (OSError, ConnectionError, TimeoutError, AckwalError) as exc:
                if args.once:
                    raise ToolError(f"cannot reach the service at {args.socket}: {exc}") from None
                screen.show([f"ackwal top  {args.socket}: unreachable ({exc}); retrying"])
                if client is not None:
                    await client.close()
                client, prev = None, None
                await asyncio.sleep(args.interval)
                continue
            if prev is not None or not args.once:
                r = rates(prev, cur)
                if args.json:
                    screen.show([frame_json(args.socket, cur, r)])
                else:
                    screen.show(render(args.socket, cur, r, url is not None))
                if args.once:
                    return screen.frames, cur
            prev = cur
            await asyncio.sleep(args.interval)
    finally:
        if client is not None:
            await client.close()


@guarded("top")
def run(args: argparse.Namespace) -> int:
    try:
        frames, last = asyncio.run(watch(args))
    except KeyboardInterrupt:
        summary("top: stopped")
        return EXIT_OK
    halted = last is not None and bool(last.status.get("halted"))
    summary(f"top: {frames} frame(s) from {args.socket}" + (" (HALTED)" if halted else ""))
    return EXIT_HALTED if halted else EXIT_OK
