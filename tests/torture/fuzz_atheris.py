"""Coverage-guided fuzzing (atheris) of what a client's bytes reach first, in-process.

    python tests/torture/fuzz_atheris.py -atheris_runs=100000

The bytes are fed to :class:`service.protocol.FrameDecoder` in two chunks and each frame's body
is decoded as the server decodes a request; every decoded map is checked by
:func:`service.entry.prepare_entry` as an append would be, every array of two or more items by
:func:`service.entry.prepare_compact_entry`. Allowed outcomes: maps and arrays, one fatal
``ProtocolError`` last, ``ProtocolError`` from entry validation. Anything else raised
is a crash atheris reports (with the input) and a non-zero exit.
"""

from __future__ import annotations

import contextlib
import sys

import atheris

with atheris.instrument_imports():
    from service.entry import APPEND_FIELDS, prepare_compact_entry, prepare_entry
    from service.protocol import FrameDecoder, ProtocolError, decode_request


def one_input(data: bytes) -> None:
    if not data:
        return
    cut = data[0] % (len(data) + 1)
    decoder = FrameDecoder(64 * 1024)
    items = decoder.feed_raw(data[1:cut]) + decoder.feed_raw(data[cut:])
    for i, item in enumerate(items):
        if isinstance(item, ProtocolError):
            assert item.fatal and i == len(items) - 1, item
            continue
        try:
            message = decode_request(item)
        except ProtocolError as exc:
            assert exc.fatal, exc
            return  # the server stops reading here
        with contextlib.suppress(ProtocolError):
            if isinstance(message, list):
                if len(message) >= 2:
                    prepare_compact_entry(message, 0, 64 * 1024)
            else:
                prepare_entry(message, 0, 64 * 1024, APPEND_FIELDS)


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
