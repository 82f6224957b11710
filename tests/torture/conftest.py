"""The torture suite: every test here is marked ``torture`` and sized by ``ACKWAL_TORTURE``.

``make test`` runs the short version (a minute or so in all); ``make torture`` sets
``ACKWAL_TORTURE=long`` (crash loops of 500 cycles, more power cuts and fuzz examples).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

LONG = os.environ.get("ACKWAL_TORTURE", "short") == "long"


def size(short: int, long: int) -> int:
    """How many cycles/cuts/examples a test runs in this mode."""
    return long if LONG else short


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "torture: crash loops, power cuts, disk faults, hostile clients (issue 8)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.torture)
            if LONG:
                item.add_marker(pytest.mark.timeout(3600))


FIGURES: list[str] = []
"""Lines each test adds (cycles run, ACKs verified, p99 under attack...): printed at the end."""


def report(line: str) -> None:
    """Record a figure for the end-of-run summary (and print it, for ``-s`` runs)."""
    FIGURES.append(line)
    print(line)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FIGURES:
        terminalreporter.section("torture figures")
        for line in FIGURES:
            terminalreporter.write_line(line)
