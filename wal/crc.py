"""CRC-32C (Castagnoli): the ``crc32c`` package's hardware path, with crcmod's C extension as
the baseline every installation must have.

Measured on this project's machines (docs/PERFORMANCE.md): per 330-byte record the hardware
path costs ~0.26 us against crcmod's ~1.2 us, and per MiB ~40 us against ~2.2 ms. A CRC is
computed per record on the append path, per record when recovery scans the log, and per chunk
of every snapshot, so this is worth a dependency. crcmod stays required: it is the reference
the hardware path is checked against at import, and it is what runs where the CPU has no
CRC-32C instruction. The pure-Python fallback of crcmod is about 25x slower still, which would
silently turn the WAL into the bottleneck; so importing this module fails loudly when
crcmod's extension is not loaded.
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

crcmod_crc32c: Callable[..., int] = crcmod.predefined.mkPredefinedCrcFun("crc-32c")
"""crcmod's CRC-32C: the reference implementation."""

# Check values: the CRC-32C of "123456789" (RFC 3720) and a running CRC continued over a
# second piece, which is how snapshots and streamed blobs use it.
_CHECKS = ((b"123456789", 0, 0xE3069283), (b" world", crcmod_crc32c(b"hello"), 0xC99465AA))


def _hardware() -> Callable[..., int] | None:
    """The ``crc32c`` package's function if it runs on a CPU instruction and agrees with crcmod."""
    try:
        import crc32c as hw  # noqa: PLC0415 - optional accelerator, checked before use
    except ImportError:
        return None
    if not getattr(hw, "hardware_based", False):
        return None  # its software path is no faster than crcmod's C extension
    fn: Callable[..., int] = hw.crc32c
    for data, start, want in _CHECKS:
        if fn(data, start) != want or crcmod_crc32c(data, start) != want:
            return None  # pragma: no cover - a broken build: keep the reference
    return fn


_fast = _hardware()
IMPLEMENTATION = "crc32c (hardware)" if _fast is not None else "crcmod (C extension)"
"""Which implementation ``crc32c`` is (the journal logs it when it opens)."""

crc32c: Callable[..., int] = _fast if _fast is not None else crcmod_crc32c
"""``crc32c(data, crc=0) -> int``; passing a previous value continues a running CRC."""
