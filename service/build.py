"""Which of ackwal's modules run mypyc-compiled in this install.

The append path's modules can be compiled to C extensions with mypyc (``ACKWAL_MYPYC=1`` in
``setup.py``): the container image and ``make bench`` run them that way, for 13-19 % more acked
appends per second at 64 clients (docs/PERFORMANCE.md, "Compiled modules"). A plain or editable
install runs the same sources interpreted, with the same behaviour. Operators need to know which
one they run, and a compiled build that silently fell back to Python must fail, not ship: hence
this module. It imports only the standard library, because ``setup.py`` reads
:data:`COMPILED_MODULES` from it before anything is installed.
"""

from __future__ import annotations

import functools
import importlib.machinery
import importlib.util

# The modules on the path of every append, compiled together as one mypyc group. Not here:
# modules with async generators (mypyc does not compile them: service/subscription.py keeps
# the journal's), the client (users may subclass it; compiled, it gained ~2 % in the
# benchmark, inside the noise), and the file layer (wal/fileio.py, wal/aio.py), which tests
# replace at run time to inject faults, as a compiled caller would not see.
COMPILED_MODULES: tuple[str, ...] = (
    "service.connection",
    "service.entry",
    "service.fanout",
    "service.idempotency",
    "service.journal",
    "service.metrics",
    "service.protocol",
    "service.turn",
    "wal.format",
    "wal.log",
    "wal.writer",
)


@functools.cache
def compiled_modules() -> tuple[str, ...]:
    """The modules of :data:`COMPILED_MODULES` that this interpreter loads as C extensions
    (looked up once: a process keeps the build it started with; every metrics scrape asks)."""
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    found = []
    for name in COMPILED_MODULES:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin is not None and spec.origin.endswith(suffixes):
            found.append(name)
    return tuple(found)


def describe() -> str:
    """One phrase for ``--version``, the start-up line and benchmark reports."""
    compiled = compiled_modules()
    if not compiled:
        return "interpreted"
    if len(compiled) == len(COMPILED_MODULES):
        return f"mypyc-compiled: {len(compiled)} modules"
    return f"partly mypyc-compiled: {len(compiled)} of {len(COMPILED_MODULES)} modules"


def require_compiled() -> None:
    """Exit with an error naming what is missing unless every compiled module is in use.

    Run by the image build and ``make compiled`` after compiling, so that a build whose
    extensions failed to build or to load stops there instead of shipping interpreted code.
    """
    missing = sorted(set(COMPILED_MODULES) - set(compiled_modules()))
    if missing:
        raise SystemExit(
            "ackwal: these modules are not loaded as compiled extensions: "
            + ", ".join(missing)
            + " (build with ACKWAL_MYPYC=1, see setup.py)"
        )
    print(f"ackwal: {describe()}")
