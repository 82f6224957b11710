"""The two builds: interpreted (the sources, as `make run` and the dev venv run them) and
mypyc-compiled (setup.py with ACKWAL_MYPYC=1, as the image and `make bench` run them).

`make test` runs the suite once against each (`make pytest-compiled` sets ACKWAL_EXPECT_COMPILED).
These tests make sure each run tests the build it claims to, in this process and in the servers
it starts, and that a compiled build can never shadow the sources being edited.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.build import COMPILED_MODULES, compiled_modules, describe

ROOT = Path(__file__).resolve().parents[1]
ACKWAL = str(Path(sys.executable).with_name("ackwal"))
EXPECT_COMPILED = os.environ.get("ACKWAL_EXPECT_COMPILED") == "1"


def test_this_run_tests_the_build_it_claims_to() -> None:
    if EXPECT_COMPILED:
        assert compiled_modules() == COMPILED_MODULES, describe()
        assert describe() == f"mypyc-compiled: {len(COMPILED_MODULES)} modules"
    else:
        # Extension modules next to the sources would run instead of them, edits unseen.
        assert compiled_modules() == (), (
            f"compiled modules next to the sources shadow them: {compiled_modules()}; "
            "delete them (git status lists them) and use `make compiled`, which builds a copy"
        )
        assert describe() == "interpreted"


def test_the_servers_the_tests_start_run_the_same_build() -> None:
    out = subprocess.run(
        [ACKWAL, "--version"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert out.strip() == f"ackwal 0.1.0 ({describe()})"


def test_every_compiled_module_is_a_source_file_of_this_tree() -> None:
    for name in COMPILED_MODULES:
        assert (ROOT / (name.replace(".", "/") + ".py")).is_file(), name


def setup_py(flag: str, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "setup.py", *command],
        cwd=ROOT,
        env={**os.environ, "ACKWAL_MYPYC": flag},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("command", ["editable_wheel", "develop"])
def test_a_compiled_build_refuses_an_editable_install(command: str) -> None:
    result = setup_py("1", command)
    assert result.returncode != 0
    assert "ACKWAL_MYPYC=1 refuses an editable install" in result.stderr


def test_an_unclear_compile_flag_is_an_error_not_a_guess() -> None:
    result = setup_py("maybe", "--name")
    assert result.returncode != 0
    assert "ACKWAL_MYPYC must be 1 or 0, not 'maybe'" in result.stderr


def test_the_default_build_compiles_nothing() -> None:
    # `setup.py --name` runs the whole script, ext_modules included, and prints the name.
    result = setup_py("", "--name")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "ackwal"
