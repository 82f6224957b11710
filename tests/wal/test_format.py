"""Record and segment-header encoding: round trips, and every way a header can be rejected."""

from __future__ import annotations

import struct
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wal.crc import crc32c, crcmod_crc32c
from wal.format import (
    DEFAULT_MAX_RECORD_SIZE,
    RECORD_HEADER,
    RECORD_HEADER_SIZE,
    SEGMENT_HEADER,
    SEGMENT_HEADER_SIZE,
    RecordType,
    RecordView,
    check_record,
    decode_segment_header,
    encode_records,
    encode_segment_header,
    parse_segment_name,
    segment_name,
)

REPO = Path(__file__).resolve().parents[2]


def _record(
    payload: bytes,
    *,
    seq: int = 7,
    prev_crc: int = 0x1234_5678,
    batch_pos: int = 0,
    rtype: int = RecordType.ENTRY,
    flags: int = 0,
    reserved: int = 0,
    length: int | None = None,
) -> bytes:
    """A record with arbitrary header fields and a CRC that matches them."""
    size = len(payload) if length is None else length
    head = RECORD_HEADER.pack(0, prev_crc, size, seq, batch_pos, rtype, flags, reserved)
    body = head[4:] + payload
    return struct.pack("<I", crc32c(body)) + body


def _segment_header(**fields: int | bytes) -> bytes:
    """A segment header with some fields overridden and a header CRC that matches them."""
    values: dict[str, int | bytes] = {
        "magic": b"ACKWALSG",
        "version": 1,
        "header_size": 48,
        "flags": 0,
        "first_seq": 1,
        "prev_chain": 0,
        "rsv1": 0,
        "created": 5,
        "rsv2": 0,
    }
    values.update(fields)
    body = SEGMENT_HEADER.pack(*values.values(), 0)[:44]
    return body + struct.pack("<I", crc32c(body))


# -- CRC-32C ----------------------------------------------------------------------------------


def test_crc32c_is_castagnoli_with_the_standard_check_value() -> None:
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0


def test_crc32c_continues_a_running_value() -> None:
    assert crc32c(b"6789", crc32c(b"12345")) == crc32c(b"123456789")


# -- records ----------------------------------------------------------------------------------


def test_header_sizes_are_28_and_48_bytes() -> None:
    assert RECORD_HEADER_SIZE == 28
    assert SEGMENT_HEADER_SIZE == 48


def test_encoded_batch_decodes_to_the_same_records_with_chained_crcs() -> None:
    payloads = [b"a", b"", b"x" * 1000, bytes(range(256))]
    buf, head = encode_records(payloads, 41, 0xDEAD_BEEF, RecordType.CURSOR)
    data = bytes(buf)
    off = 0
    prev = 0xDEAD_BEEF
    for pos, payload in enumerate(payloads):
        rec = check_record(data, off, DEFAULT_MAX_RECORD_SIZE)
        assert isinstance(rec, RecordView)
        assert (rec.seq, rec.type, rec.length, rec.batch_pos) == (41 + pos, 6, len(payload), pos)
        assert rec.prev_crc == prev
        assert data[off + RECORD_HEADER_SIZE : rec.end] == payload
        assert rec.crc == crc32c(data[off + 4 : rec.end])
        prev = rec.crc
        off = rec.end
    assert off == len(data)
    assert head == prev


def test_record_header_is_little_endian_at_the_documented_offsets() -> None:
    buf, _ = encode_records([b"pay"], 0x0102_0304_0506_0708, 0xA1B2_C3D4, 9)
    data = bytes(buf)
    assert data[4:8] == bytes.fromhex("d4c3b2a1")
    assert data[8:12] == bytes.fromhex("03000000")
    assert data[12:20] == bytes.fromhex("0807060504030201")
    assert data[20:24] == bytes(4)
    assert data[24:28] == bytes([9, 0, 0, 0])
    assert data[28:] == b"pay"
    assert int.from_bytes(data[0:4], "little") == crc32c(data[4:])


def test_segment_header_round_trips() -> None:
    for first_seq, prev_chain, created in ((1, 0, 0), (10**19, 0xFFFF_FFFF, 2**64 - 1)):
        data = encode_segment_header(first_seq, prev_chain, created)
        assert len(data) == SEGMENT_HEADER_SIZE
        header = decode_segment_header(data)
        assert (header.first_seq, header.prev_chain, header.created_unix_ns) == (
            first_seq,
            prev_chain,
            created,
        )
        assert header.format_version == 1


def test_segment_header_crc_covers_bytes_0_to_44() -> None:
    data = encode_segment_header(3, 0x55, 77)
    assert int.from_bytes(data[44:48], "little") == crc32c(data[:44])


def test_segment_names_are_the_first_seq_in_20_digits() -> None:
    assert segment_name(1) == "00000000000000000001.wal"
    assert segment_name(18_446_744_073_709_551_615) == "18446744073709551615.wal"
    assert parse_segment_name(segment_name(12345)) == 12345


@pytest.mark.parametrize(
    "name",
    [
        "1.wal",
        "00000000000000000001.wal.tmp",
        "00000000000000000001.wal.48.broken",
        "spare.wal.tmp",
        "LOCK",
        "0000000000000000000a.wal",
    ],
)
def test_other_files_are_not_segments(name: str) -> None:
    assert parse_segment_name(name) is None


# -- rejections -------------------------------------------------------------------------------


@pytest.mark.parametrize("rtype", [0, 256, -1])
def test_encoding_rejects_type_0_and_types_beyond_a_byte(rtype: int) -> None:
    with pytest.raises(ValueError, match="0 is reserved"):
        encode_records([b"x"], 1, 0, rtype)


def test_a_type_0_record_is_rejected_even_with_a_valid_crc() -> None:
    data = _record(b"abc", rtype=0)
    assert check_record(data, 0, DEFAULT_MAX_RECORD_SIZE) == (
        "record type 0 (zero-filled or never written)"
    )


def test_zero_filled_space_never_parses_as_a_record() -> None:
    assert check_record(bytes(4096), 0, DEFAULT_MAX_RECORD_SIZE) == (
        "record type 0 (zero-filled or never written)"
    )


def test_a_short_header_is_reported_as_truncated() -> None:
    data = _record(b"abc")
    for cut in range(RECORD_HEADER_SIZE):
        reason = check_record(data[:cut], 0, DEFAULT_MAX_RECORD_SIZE)
        assert reason == f"truncated record header ({cut} of 28 bytes)"


def test_a_length_above_the_maximum_is_rejected() -> None:
    data = _record(b"x" * 100)
    assert check_record(data, 0, 99) == "record length 100 exceeds the maximum 99"
    assert isinstance(check_record(data, 0, 100), RecordView)


def test_a_length_past_the_end_is_rejected_before_any_allocation() -> None:
    data = _record(b"abc", length=0xFFFF_FFF0) + bytes(64)
    tracemalloc.start()
    try:
        reason = check_record(data, 0, 0xFFFF_FFFF)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert reason == "record length 4294967280 runs past the end of the segment"
    assert peak < 64 * 1024


def test_a_length_that_exactly_fills_the_remaining_bytes_is_accepted() -> None:
    data = b"\xff" * 10 + _record(b"z" * 50)
    rec = check_record(data, 10, DEFAULT_MAX_RECORD_SIZE)
    assert isinstance(rec, RecordView)
    assert rec.end == len(data)
    assert check_record(data[:-1], 10, DEFAULT_MAX_RECORD_SIZE) == (
        "record length 50 runs past the end of the segment"
    )


@pytest.mark.parametrize("byte", range(RECORD_HEADER_SIZE))
def test_any_flipped_header_byte_fails_the_record_check(byte: int) -> None:
    data = bytearray(_record(b"payload"))
    data[byte] ^= 0xFF
    reason = check_record(bytes(data), 0, DEFAULT_MAX_RECORD_SIZE)
    assert isinstance(reason, str)
    if byte < 8 or 12 <= byte < 24 or byte >= 25:  # fields checked by the CRC alone
        assert reason == "record checksum mismatch"


def test_any_flipped_bit_of_a_record_fails_the_record_check() -> None:
    data = _record(b"\x00\x01tiny\xff")
    for bit in range(len(data) * 8):
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        assert isinstance(check_record(bytes(flipped), 0, DEFAULT_MAX_RECORD_SIZE), str), bit


def test_unknown_flags_or_reserved_bits_are_rejected_even_with_a_valid_crc() -> None:
    for fields in ({"flags": 1}, {"reserved": 0x8000}):
        data = _record(b"abc", **fields)
        assert check_record(data, 0, DEFAULT_MAX_RECORD_SIZE) == (
            "record has unknown flags or reserved bits set"
        )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (encode_segment_header(1, 0, 0)[:47], "segment header truncated: 47 of 48 bytes"),
        (b"", "segment header truncated: 0 of 48 bytes"),
        (_segment_header(magic=b"ACKWALSX"), "bad segment magic b'ACKWALSX'"),
        (bytes(48), "bad segment magic"),
        (_segment_header(version=2), "unsupported format version 2 \\(this build reads 1\\)"),
        (_segment_header(header_size=64), "unknown flags or reserved fields"),
        (_segment_header(flags=1), "unknown flags or reserved fields"),
        (_segment_header(rsv1=1), "unknown flags or reserved fields"),
        (_segment_header(rsv2=1), "unknown flags or reserved fields"),
        (_segment_header(first_seq=0), "segment first_seq 0 is not positive"),
    ],
)
def test_segment_header_validation_names_the_problem(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode_segment_header(data)


@pytest.mark.parametrize("byte", range(SEGMENT_HEADER_SIZE))
def test_any_flipped_segment_header_byte_is_rejected(byte: int) -> None:
    data = bytearray(encode_segment_header(11, 0xABCD, 12345))
    data[byte] ^= 0x01
    with pytest.raises(ValueError, match=r"checksum mismatch|bad segment magic"):
        decode_segment_header(bytes(data))


# -- the CRC import guard ---------------------------------------------------------------------


def _import_wal_crc(prelude: str) -> subprocess.CompletedProcess[str]:
    code = textwrap.dedent(prelude) + "\nimport wal.crc\n"
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False
    )


def test_importing_the_crc_fails_loudly_without_crcmods_c_extension() -> None:
    proc = _import_wal_crc(
        """
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "crcmod._crcfunext":
                    raise ImportError("blocked for the test")
                return None
        sys.meta_path.insert(0, Block())
        """
    )
    assert proc.returncode != 0
    assert "ImportError: ackwal needs crcmod's C extension (crcmod._crcfunext)" in proc.stderr
    assert "pure-Python fallback" in proc.stderr
    assert "pip install --force-reinstall --no-binary crcmod crcmod" in proc.stderr


def test_importing_the_crc_fails_when_crcmod_did_not_pick_up_its_extension() -> None:
    proc = _import_wal_crc(
        """
        import sys
        import crcmod.crcmod
        sys.modules["crcmod.crcmod"]._usingExtension = False
        """
    )
    assert proc.returncode != 0
    assert "crcmod loaded without its C extension" in proc.stderr


def test_importing_the_crc_succeeds_with_the_extension() -> None:
    proc = _import_wal_crc("")
    assert proc.returncode == 0, proc.stderr


def test_without_the_crc32c_package_crcmod_computes_the_same_crcs() -> None:
    proc = _import_wal_crc(
        """
        import sys
        sys.modules["crc32c"] = None  # the optional accelerator is not installed
        """
    )
    assert proc.returncode == 0, proc.stderr
    code = (
        "import sys; sys.modules['crc32c'] = None\n"
        "import wal.crc as c\n"
        "assert c.crc32c is c.crcmod_crc32c, c.IMPLEMENTATION\n"
        "print(c.IMPLEMENTATION, c.crc32c(b'123456789'))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["crcmod", "(C", "extension)", str(0xE3069283)]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=5000), st.integers(0, 5000), st.integers(0, 2**32 - 1))
def test_the_crc_in_use_agrees_with_crcmod_on_any_bytes_slices_and_running_crcs(
    data: bytes, cut: int, start: int
) -> None:
    cut = min(cut, len(data))
    view = memoryview(data)
    assert crc32c(data) == crcmod_crc32c(data)
    assert crc32c(view[cut:]) == crcmod_crc32c(view[cut:])
    assert crc32c(bytearray(data), start) == crcmod_crc32c(data, start)
    assert crc32c(data[cut:], crc32c(data[:cut])) == crc32c(data)
