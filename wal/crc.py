"""CRC-32C (Castagnoli) through crcmod's C extension.

The pure-Python fallback of crcmod is about 25x slower per CRC (see docs/FORMAT.md for the measured
figure), which would silently turn the WAL into the bottleneck; so importing this module fails
loudly when the extension is not loaded.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import crcmod.predefined

try:
    import crcmod._crcfunext  # the import itself proves the C extension is built
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        "ackwal needs crcmod's C extension (crcmod._crcfunext) for CRC-32C; it is not built in "
        "this environment, and the pure-Python fallback is about 25x slower per CRC. Reinstall "
        "crcmod with a C compiler and the Python headers available: "
        "pip install --force-reinstall --no-binary crcmod crcmod"
    ) from exc

if not getattr(sys.modules["crcmod.crcmod"], "_usingExtension", False):  # pragma: no cover
    raise ImportError("ackwal: crcmod loaded without its C extension; reinstall crcmod")

crc32c: Callable[..., int] = crcmod.predefined.mkPredefinedCrcFun("crc-32c")
"""``crc32c(data, crc=0) -> int``; passing a previous value continues a running CRC."""
