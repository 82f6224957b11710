"""Build script: everything is declared in pyproject.toml except the optional compiled modules.

By default ackwal builds as plain Python. With ``ACKWAL_MYPYC=1`` the append path's modules
(``service/build.py``, ``COMPILED_MODULES``) are compiled to C extensions with mypyc, which is
part of mypy: 13-19 % more acked appends per second at 64 clients (docs/PERFORMANCE.md,
"Compiled modules"). The container image and ``make compiled`` (used by ``make test`` and
``make bench``) build that way. mypy must then be installed in the build environment:
``pip wheel --no-build-isolation`` from an environment that has it and ackwal's dependencies
(mypyc type-checks against them; the dev extras have both).

A compiled build is refused for an editable install: the extension modules would sit next to
the sources and silently shadow every later edit of them.
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent
# setup.py commands that only write metadata (pip asks for it before building the wheel).
METADATA_ONLY = ("dist_info", "egg_info")


def ext_modules() -> list[object]:
    flag = os.environ.get("ACKWAL_MYPYC", "").strip().lower()
    if flag in ("", "0", "false", "no"):
        return []
    if flag not in ("1", "true", "yes"):
        raise SystemExit(f"ACKWAL_MYPYC must be 1 or 0, not {flag!r}")
    commands = set(sys.argv[1:])
    if {"editable_wheel", "develop"} & commands:
        raise SystemExit(
            "ACKWAL_MYPYC=1 refuses an editable install: the compiled modules would shadow "
            "the sources you edit. Build a wheel, or run `make compiled` (a copy of the tree)."
        )
    if sys.argv[1:2] and sys.argv[1] in METADATA_ONLY:
        return []  # no need to compile for the metadata
    try:
        from mypyc.build import mypycify  # noqa: PLC0415  (only a compiled build needs mypy)
    except ImportError as exc:
        raise SystemExit(
            "ACKWAL_MYPYC=1 needs mypy (which ships mypyc) in the build environment: "
            "pip install mypy, then build with --no-build-isolation"
        ) from exc
    modules = runpy.run_path(str(HERE / "service" / "build.py"))["COMPILED_MODULES"]
    paths = [name.replace(".", "/") + ".py" for name in modules]
    result: list[object] = mypycify(paths, opt_level="3", group_name="ackwal_compiled")
    return result


setup(ext_modules=ext_modules())
