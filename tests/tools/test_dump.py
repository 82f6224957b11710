"""``ackwal dump``: records as text or JSON lines, filtered by seq range, count or request id."""

from __future__ import annotations

import base64
import json
import uuid
from collections import Counter
from pathlib import Path

import msgpack

from tests.tools.helpers import entry_fields, journal_log, run_cli, wal_entries, wal_record
from tests.wal.surgery import flip_bit, records_in, segment_paths
from wal import RecordType


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


async def test_dump_prints_every_entry_decoded_and_in_seq_order(tmp_path: Path) -> None:
    results = await journal_log(tmp_path / "data", 40, batch=6)
    res = run_cli("dump", str(tmp_path / "data"), "--json")
    assert res.code == 0, res.err
    docs = json_lines(res.out)
    started, *docs, sealed = docs  # the run's records enclose its entries
    assert (started["seq"], started["type"]) == (1, "RUN_STARTED")
    assert (sealed["seq"], sealed["type"]) == (42, "RUN_SEALED")
    assert [d["seq"] for d in docs] == [r.seq for r in results] == list(range(2, 42))
    for i, doc in enumerate(docs):
        want = entry_fields(i)
        assert doc["type"] == "ENTRY"
        assert doc["request_id"] == str(uuid.UUID(bytes=want["request_id"]))
        assert doc["command_type"] == want["command_type"]
        assert bytes.fromhex(str(doc["command"])) == want["command"]
        assert bytes.fromhex(str(doc["response"])) == want["response"]
        events = doc["events"]
        assert isinstance(events, list)
        assert [e["type"] for e in events] == [e["type"] for e in want["events"]]
        assert [bytes.fromhex(e["data"]) for e in events] == [e["data"] for e in want["events"]]
        assert doc["ts_ms"] == want["ts_ms"]
        assert doc["duration_us"] == want["duration_us"]
    assert "dump: 42 record(s) (seq 1..42)" in res.err


async def test_dump_from_and_to_select_an_inclusive_seq_range(tmp_path: Path) -> None:
    await journal_log(tmp_path / "data", 30, batch=4)  # seqs 1 (run started) .. 32 (sealed)
    res = run_cli("dump", str(tmp_path / "data"), "--from", "7", "--to", "12", "--json")
    assert res.code == 0
    assert [d["seq"] for d in json_lines(res.out)] == list(range(7, 13))
    text = run_cli("dump", str(tmp_path / "data"), "--from", "30")
    assert [line.split()[1] for line in text.out.splitlines()] == ["30", "31", "32"]
    beyond = run_cli("dump", str(tmp_path / "data"), "--from", "33")
    assert beyond.code == 1
    assert "no record matched" in beyond.err


async def test_dump_last_shows_the_newest_commands_with_event_counts_and_types(
    tmp_path: Path,
) -> None:
    await journal_log(tmp_path / "data", 25, batch=5)  # entries at seqs 2..26 (index = seq - 2)
    res = run_cli("dump", str(tmp_path / "data"), "--last", "4", "--json")
    assert res.code == 0
    docs = json_lines(res.out)
    assert [d["seq"] for d in docs] == [23, 24, 25, 26]  # the newest commands: no run record
    for doc in docs:
        want = entry_fields(int(str(doc["seq"])) - 2)
        assert doc["events"] == len(want["events"])
        assert doc["event_types"] == dict(Counter(e["type"] for e in want["events"]))
        assert doc["command_type"] == want["command_type"]
    text = run_cli("dump", str(tmp_path / "data"), "--last", "3", "--to", "10")
    lines = text.out.splitlines()
    assert lines[0].split()[:3] == ["SEQ", "UTC", "TIME"]
    assert [line.split()[0] for line in lines[1:]] == ["8", "9", "10"]
    assert all(len(line) <= 80 for line in lines)
    assert lines[2].endswith("3  order.accepted, fill x2")  # seq 9 (index 7): three events


async def test_dump_request_id_prints_exactly_that_entry(tmp_path: Path) -> None:
    await journal_log(tmp_path / "data", 20, batch=3)
    rid = uuid.UUID(bytes=entry_fields(13)["request_id"])
    res = run_cli("dump", str(tmp_path / "data"), "--request-id", str(rid), "--json")
    assert res.code == 0
    assert [(d["seq"], d["request_id"]) for d in json_lines(res.out)] == [(15, str(rid))]
    hex_form = run_cli("dump", str(tmp_path / "data"), "--request-id", rid.hex)
    assert hex_form.code == 0
    assert f"request {rid}" in hex_form.out


async def test_dump_of_an_unknown_request_id_exits_1(tmp_path: Path) -> None:
    await journal_log(tmp_path / "data", 5)
    res = run_cli("dump", str(tmp_path / "data"), "--request-id", str(uuid.uuid4()))
    assert res.code == 1
    assert res.out == ""


def test_dump_writes_bytes_as_hex_or_base64_as_asked(tmp_path: Path) -> None:
    wal_entries(tmp_path, [1_000, 2_000])
    hexed = json_lines(run_cli("dump", str(tmp_path), "--json").out)
    b64 = json_lines(run_cli("dump", str(tmp_path), "--json", "--bytes", "base64").out)
    for i, (h, b) in enumerate(zip(hexed, b64, strict=True)):
        command = entry_fields(i)["command"]
        assert bytes.fromhex(str(h["command"])) == command
        assert base64.b64decode(str(b["command"])) == command
        assert h["recv_ms"] == (i + 1) * 1000


def test_dump_prints_other_record_types_generically(tmp_path: Path) -> None:
    wal_entries(tmp_path, [5_000])
    payload = msgpack.packb({"run": 7, "host": b"\x01\x02"}, use_bin_type=True)
    seq = wal_record(tmp_path, RecordType.RUN_STARTED, payload)
    raw_seq = wal_record(tmp_path, RecordType.CURSOR, b"\xc1 not msgpack")
    docs = {d["seq"]: d for d in json_lines(run_cli("dump", str(tmp_path), "--json").out)}
    assert docs[seq]["type"] == "RUN_STARTED"
    assert docs[seq]["decoded"] == {"run": 7, "host": "0102"}
    assert bytes.fromhex(str(docs[seq]["payload"])) == payload
    assert docs[raw_seq]["type"] == "CURSOR"
    assert "decoded" not in docs[raw_seq]
    text = run_cli("dump", str(tmp_path)).out.splitlines()
    assert text[1].startswith(f"seq {seq}  RUN_STARTED (type 2)")
    assert text[2].startswith(f"seq {raw_seq}  CURSOR (type 6)")
    # --last counts commands only: the other records are left out
    last = json_lines(run_cli("dump", str(tmp_path), "--last", "5", "--json").out)
    assert [d["seq"] for d in last] == [1]


async def test_dump_refuses_a_corrupt_log_with_exit_2(tmp_path: Path) -> None:
    await journal_log(tmp_path / "data", 300, batch=10, preallocate=False)
    rec = records_in(segment_paths(tmp_path / "data")[0])[3]
    flip_bit(rec.path, (rec.offset + 40) * 8)
    res = run_cli("dump", str(tmp_path / "data"))
    assert res.code == 2
    assert res.out == ""
    assert f"corruption in {rec.path} at offset {rec.offset}" in res.err


def test_dump_rejects_from_after_to_and_last_with_from_as_usage_errors(tmp_path: Path) -> None:
    assert run_cli("dump", str(tmp_path), "--from", "9", "--to", "3").code == 64
    assert run_cli("dump", str(tmp_path), "--from", "1", "--last", "3").code == 64
    assert run_cli("dump", str(tmp_path), "--request-id", "not-a-uuid").code == 64
