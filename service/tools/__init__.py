"""The operator tools: ``ackwal verify | dump | stat | repair | disk-check | top``.

Each tool lives in its own module with a ``register`` function that adds its subcommand to the
``ackwal`` parser. Output goes to stdout (text, or JSON with ``--json``); a progress bar (only on
a terminal) and a final summary line go to stderr. All but ``repair`` are read-only and never
take the data-directory lock, so they are safe on a directory a running server holds.
"""

from __future__ import annotations

from service.tools import diskcheck, dump, repair, stat, top, verify
from service.tools.common import SubParsers, ToolParser

TOOLS = (verify, dump, stat, repair, diskcheck, top)


def register_tools(sub: SubParsers[ToolParser]) -> None:
    """Add every tool's subcommand to ``sub``."""
    for tool in TOOLS:
        tool.register(sub)


__all__ = ["TOOLS", "ToolParser", "register_tools"]
