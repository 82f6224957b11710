"""A well-behaved client that measures its own ACK latency, in a process of its own.

    python -m tests.torture.probe SOCKET SECONDS

Connects, prints ``ready``, waits for a line on stdin (the test sets up an attack meanwhile),
then appends one entry at a time (each waits for its ACK) over a blocking socket for
``SECONDS`` and prints one JSON line: count and latency percentiles in milliseconds. Running it
as its own process keeps the test's own event loop (the attackers) out of the measured latency.
"""

from __future__ import annotations

import json
import socket
import sys
import time
import uuid
from typing import Any

from service.protocol import FrameDecoder, ProtocolError, encode_frame


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


def summarize(latencies: list[float]) -> dict[str, Any]:
    """Count and percentiles (ms) of latencies given in seconds."""
    values = sorted(x * 1000 for x in latencies)
    return {
        "count": len(values),
        "p50_ms": percentile(values, 50),
        "p99_ms": percentile(values, 99),
        "max_ms": values[-1] if values else float("nan"),
    }


class Appender:
    """One blocking connection that appends and waits for each ACK."""

    def __init__(self, path: str, timeout: float = 30.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.decoder = FrameDecoder(1 << 26)
        self.ready: list[dict[str, Any] | ProtocolError] = []
        self.next_id = 1
        reply = self.request({"op": "hello", "version": 1})
        assert "error" not in reply, reply

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        message["id"] = self.next_id
        self.next_id += 1
        self.sock.sendall(encode_frame(message))
        while not self.ready:
            data = self.sock.recv(1 << 16)
            if not data:
                raise ConnectionError("server closed the connection")
            self.ready.extend(self.decoder.feed(data))
        reply = self.ready.pop(0)
        assert isinstance(reply, dict) and reply.get("id") == message["id"], reply
        return reply

    def append(self, size: int = 128) -> float:
        """One append; returns its latency in seconds."""
        rid = uuid.uuid4().bytes
        message = {
            "op": "append",
            "request_id": rid,
            "command_type": "p",
            "command": rid * (size // 16),
        }
        started = time.perf_counter()
        reply = self.request(message)
        took = time.perf_counter() - started
        assert reply.get("duplicate") is False, reply
        return took

    def close(self) -> None:
        self.sock.close()


def run(path: str, seconds: float) -> dict[str, Any]:
    client = Appender(path)
    print("ready", flush=True)
    sys.stdin.readline()
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            latencies.append(client.append())
    finally:
        client.close()
    return summarize(latencies)


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1], float(sys.argv[2]))))
