"""The README, the shipped config and the examples stay true: they are run, not just read."""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.settings import SPECS, Settings, _flatten_sections, load_settings

ROOT = Path(__file__).resolve().parent.parent
ACKWAL = str(Path(sys.executable).parent / "ackwal")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    sock = str(tmp_path / "ackwal.sock")
    proc = subprocess.Popen(
        [
            ACKWAL,
            "serve",
            "--data-dir",
            str(tmp_path / "data"),
            "--socket",
            sock,
            "--log-format",
            "json",
            "--metrics-addr",
            "",
        ],
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 20
    while not os.path.exists(sock):
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    try:
        yield sock
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0


def _function_source(path: Path, name: str) -> str:
    source = path.read_text()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.AsyncFunctionDef) and node.name == name:
            return ast.get_source_segment(source, node) or ""
    raise AssertionError(f"{name} not found in {path}")


def test_readme_starts_with_the_two_setup_commands() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    block = lines[lines.index("```") + 1 : lines.index("```", lines.index("```") + 1)]
    assert [line.split()[0:2] for line in block] == [["make", "run"], ["make", "test"]]


def test_readme_example_is_the_tested_quickstart() -> None:
    readme = (ROOT / "README.md").read_text()
    assert _function_source(ROOT / "examples" / "quickstart.py", "main") in readme


def test_quickstart_example_runs_against_a_real_server(server: str) -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py"), server],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "durable at seq 2" in out  # a fresh log: seq 1 is the run's RUN_STARTED record
    assert "retry answered with the original response" in out


def test_embedded_example_runs_in_process(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "embedded.py"), str(tmp_path / "data")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "durable at seq 2" in out  # a fresh log: seq 1 is the run's RUN_STARTED record
    assert "2 NewOrder" in out  # subscribe(from_seq=1) yields entries only


def test_shipped_config_documents_every_setting_with_its_default() -> None:
    path = ROOT / "config" / "ackwal.toml"
    doc = _flatten_sections(tomllib.loads(path.read_text()))
    assert set(doc) == {s.key for s in SPECS}
    for spec in SPECS:
        assert doc[spec.key] == spec.default, spec.key
    assert load_settings(str(path), env={}) == Settings()


def test_settings_defaults_match_the_documented_specs() -> None:
    defaults = Settings()
    for spec in SPECS:
        assert getattr(defaults, spec.key) == spec.default, spec.key


def test_ci_runs_make_test() -> None:
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_every_command_has_help() -> None:
    for args in (
        ["--help"],
        ["serve", "--help"],
        ["follow", "--help"],
        ["promote", "--help"],
        ["config", "show", "--help"],
    ):
        out = subprocess.run([ACKWAL, *args], capture_output=True, text=True, check=True)
        assert "usage: ackwal" in out.stdout


def test_invalid_setting_is_rejected_naming_key_value_source_and_allowed() -> None:
    result = subprocess.run(
        [
            ACKWAL,
            "serve",
            "--data-dir",
            "/nonexistent/x",
            "--socket",
            "/tmp/x.sock",
            "--set",
            "queue_capacity=0",
        ],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "ACKWAL_SYNC_MODE": "fdatasync"},
    )
    assert result.returncode == 2
    assert "queue_capacity = '0' (from flag --queue-capacity)" in result.stderr
    assert "expected a value from 1 to" in result.stderr
