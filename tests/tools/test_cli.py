"""The tools are ``ackwal`` subcommands; each documents its exit codes; serve and config stay."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tools.helpers import run_cli

ACKWAL = str(Path(sys.executable).with_name("ackwal"))
TOOLS = ["verify", "dump", "stat", "repair", "disk-check", "top"]


@pytest.mark.parametrize("tool", TOOLS)
def test_every_tool_documents_its_exit_codes_in_its_help(tool: str) -> None:
    res = run_cli(tool, "--help")
    assert res.code == 0
    table = res.out.split("exit codes:", 1)[1]
    codes = [int(line.split()[0]) for line in table.splitlines() if line[2:3].isdigit()]
    assert codes == sorted(set(codes))  # in order, each once
    assert codes[0] == 0
    assert 3 in codes
    assert "  64  usage error (bad arguments)" in table


def test_the_top_level_help_lists_every_tool() -> None:
    res = run_cli("--help")
    assert res.code == 0
    for tool in TOOLS:
        assert f"    {tool}" in res.out


def test_config_show_still_works_next_to_the_tools() -> None:
    res = run_cli("config", "show", "--json", "--data-dir", "/srv/ackwal")
    assert res.code == 0
    assert json.loads(res.out)["data_dir"] == {"value": "/srv/ackwal", "source": "flag --data-dir"}


def test_serve_usage_errors_keep_argparse_exit_code_2() -> None:
    assert run_cli("serve", "--no-such-flag").code == 2


def test_the_installed_command_runs_a_tool(tmp_path: Path) -> None:
    proc = subprocess.run(
        [ACKWAL, "verify", str(tmp_path), "--json"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["status"] == "clean"
    assert proc.stderr.startswith("verify: clean")
