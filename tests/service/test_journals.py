"""Several named journals in one service: settings, real sockets, status and metrics per journal."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest

from service.settings import Settings, SettingsError, load_settings
from tests.service.harness import (
    ACKWAL,
    RawConnection,
    append_message,
    make_settings,
    new_rid,
    serve,
    short_socket_path,
)
from tests.service.test_metrics import scrape, value


def test_journal_tables_and_the_replication_section_are_read_from_toml(tmp_path: Path) -> None:
    config = tmp_path / "ackwal.toml"
    config.write_text(
        'data_dir = "/srv/main"\n'
        "[journals.orders]\n"
        'data_dir = "/srv/orders"\n'
        "[journals.risk-2]\n"
        'data_dir = "/srv/risk"\n'
        "[replication]\n"
        'mode = "sync"\n'
        "sync_timeout = 2.5\n"
    )
    settings = load_settings(str(config), env={})
    assert settings.journal_dirs() == {
        "main": "/srv/main",
        "orders": "/srv/orders",
        "risk-2": "/srv/risk",
    }
    assert next(iter(settings.journal_dirs())) == "main"
    assert settings.replication_mode == "sync"
    assert settings.replication_sync_timeout == 2.5
    assert settings.origin["replication_mode"] == f"file {config}"


def test_journals_from_the_environment_and_flags() -> None:
    settings = load_settings(
        None,
        env={"ACKWAL_JOURNALS": "a=/x/a, b=/x/b", "ACKWAL_REPLICATION_MODE": "async"},
    )
    assert settings.journals == {"a": "/x/a", "b": "/x/b"}
    assert settings.replication_mode == "async"
    flagged = load_settings(None, env={}, flags={"journals": "c=/y/c"})
    assert flagged.journals == {"c": "/y/c"}
    assert Settings().journal_dirs() == {"main": "./data"}  # the single-journal default


@pytest.mark.parametrize(
    ("raw", "complaint"),
    [
        ("bad name=/x", "is not 1-64 of"),
        ("main=/x", "configured by data_dir"),
        ("a", "is not NAME=DIR"),
        ("a=", "empty data_dir"),
    ],
)
def test_bad_journal_settings_are_refused_naming_the_problem(raw: str, complaint: str) -> None:
    with pytest.raises(SettingsError, match=complaint):
        load_settings(None, env={"ACKWAL_JOURNALS": raw})


def test_two_journals_may_not_share_a_directory() -> None:
    with pytest.raises(SettingsError, match="share the data directory"):
        load_settings(None, env={"ACKWAL_DATA_DIR": "/d", "ACKWAL_JOURNALS": "o=/d"})
    with pytest.raises(SettingsError, match="replication_mode"):
        load_settings(None, env={"ACKWAL_REPLICATION_MODE": "maybe"})


def test_config_show_lists_the_journals() -> None:
    out = subprocess.run(
        [ACKWAL, "config", "show", "--json", "--set", "journals=orders=/srv/o"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    shown = json.loads(out)
    assert shown["journals"]["value"] == {"orders": "/srv/o"}
    assert shown["replication_mode"]["value"] == "off"


async def test_each_journal_has_its_own_wal_seqs_status_and_metrics(tmp_path: Path) -> None:
    with short_socket_path() as sock:
        settings = make_settings(
            tmp_path / "main",
            sock,
            metrics_addr="127.0.0.1:0",
            journals={"orders": str(tmp_path / "orders"), "risk": str(tmp_path / "risk")},
        )
        async with serve(settings) as svc:
            assert list(svc.journals) == ["main", "orders", "risk"]
            conn = await RawConnection.open(sock)
            hello = await conn.request({"op": "hello", "version": 1, "journal": "orders"})
            assert hello["journals"] == ["main", "orders", "risk"]
            # Interleaved appends to two journals over one connection: independent seqs.
            seqs: dict[str, list[int]] = {"main": [], "orders": []}
            for i in range(6):
                name = "orders" if i % 2 else "main"
                reply = await conn.request(append_message(new_rid(), 0, journal=name))
                seqs[name].append(reply["seq"])
            # seq 1 of each journal is its own RUN_STARTED record
            assert seqs == {"main": [2, 3, 4], "orders": [2, 3, 4]}
            for name, expected_last in (("main", 4), ("orders", 4), ("risk", 1)):
                status = (await conn.request({"op": "status", "journal": name}))["status"]
                assert status["journal"] == name
                assert status["last_seq"] == expected_last
            records = await conn.request({"op": "read", "journal": "orders", "from_seq": 2})
            assert [r["seq"] for r in records["records"]] == [2, 3, 4]
            unknown = await conn.request({"op": "status", "journal": "nope"})
            assert unknown["error"]["code"] == "unknown_journal"
            assert "main, orders, risk" in unknown["error"]["message"]
            assert svc.metrics is not None
            samples = await asyncio.to_thread(scrape, svc.metrics.port)
            assert value(samples, "ackwal_appends_total", journal="main", result="ok") == 3
            assert value(samples, "ackwal_appends_total", journal="orders", result="ok") == 3
            assert value(samples, "ackwal_last_seq", journal="risk") == 1
            await conn.close()
        for name in ("main", "orders", "risk"):
            assert sorted(p.name for p in (tmp_path / name).glob("*.wal"))  # its own segments


async def test_a_journal_that_fails_to_open_closes_the_ones_already_open(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with short_socket_path() as sock:
        settings = make_settings(tmp_path / "main", sock, journals={"bad": str(blocker)})
        with pytest.raises(OSError):
            async with serve(settings):
                pass
        # main's lock was released: a second service can open it
        async with serve(make_settings(tmp_path / "main", sock)) as svc:
            assert svc.journals["main"].last_seq == 3  # run 1 started and sealed, run 2 started
