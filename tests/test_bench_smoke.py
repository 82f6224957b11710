"""benchmarks/compare.py runs end to end (a tiny --quick run against ackwal alone), and so does
benchmarks/server_cpu.py.

Only the shape of the output and the duplicate check are asserted, never a figure: timings on a
shared machine say nothing about correctness (benchmarks print figures, tests check rules).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from service.build import describe

ROOT = Path(__file__).resolve().parent.parent
COMPARE = ROOT / "benchmarks" / "compare.py"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ROW_KEYS = {
    "system",
    "clients",
    "acked_per_s",
    "p50_ms",
    "p99_ms",
    "p999_ms",
    "server_cpu",
    "client_cpu",
    "other_cpu",
    "durable_at_ack",
}


def run_benchmark(script: Path, *args: str, timeout: float) -> str:
    """Run a benchmark script as a user would; its standard output, after checking it exited 0."""
    proc = subprocess.run(
        [sys.executable, str(script), *args],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_quick_comparison_of_ackwal_alone_writes_json_and_readable_plots(tmp_path: Path) -> None:
    out = tmp_path / "results"
    run_benchmark(
        COMPARE,
        *("--quick", "--systems", "ackwal-socket", "--seconds", "0.3", "--warmup", "0.1"),
        *("--dir", str(tmp_path), "--out", str(out)),
        timeout=120,
    )

    report = json.loads((out / "compare.json").read_text())
    assert report["settings"]["clients"] == [1, 64]
    assert list(report["systems"]) == ["ackwal-socket"]
    assert report["systems"]["ackwal-socket"]["durable_at_ack"] is True
    assert report["errors"] == []
    rows = report["rows"]
    assert [(r["system"], r["clients"]) for r in rows] == [
        ("ackwal-socket", 1),
        ("ackwal-socket", 64),
    ]
    for row in rows:
        assert row.keys() >= ROW_KEYS
        assert row["acked_per_s"] > 0
        assert row["p50_ms"] <= row["p99_ms"] <= row["p999_ms"]
    assert report["cdf"]["ackwal-socket"][-1][0] == 1.0
    assert {t["target"] for t in report["ratios"]["targets"]} and all(
        t["met"] is None for t in report["ratios"]["targets"]
    )  # nothing to compare with in this run

    (dup,) = report["duplicates"]
    assert dup["retries_acked"] > 0
    assert dup["wrong_answers"] == 0
    assert dup["records_stored"] == dup["distinct_ids_stored"] == dup["unique_acked"]
    assert dup["one_record_per_id"] is True

    for name in ("compare_throughput.png", "compare_latency_cdf.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC


def test_compare_help_names_every_system() -> None:
    out = run_benchmark(COMPARE, "--help", timeout=60)
    for name in ("ackwal-socket", "ackwal-batch", "postgres", "sqlite-grouped", "nats-sync"):
        assert name in out
    text = " ".join(out.split())
    assert "opt-in, never in the default run: ackwal-nosync (not durable)" in text
    assert "ackwal-interpreted" in text


def test_the_no_sync_ceiling_runs_only_when_named_and_is_labelled_not_durable(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    run_benchmark(
        COMPARE,
        *("--quick", "--systems", "ackwal-nosync", "--clients", "4", "--no-duplicates"),
        *("--seconds", "0.3", "--warmup", "0.1", "--dir", str(tmp_path), "--out", str(out)),
        timeout=120,
    )
    report = json.loads((out / "compare.json").read_text())
    assert report["systems"]["ackwal-nosync"]["durable_at_ack"] is False
    (row,) = report["rows"]
    assert row["system"] == "ackwal-nosync" and row["durable_at_ack"] is False
    assert row["acked_per_s"] > 0


def test_replication_benchmark_runs_modes_side_by_side(tmp_path: Path) -> None:
    out = tmp_path / "replication.json"
    run_benchmark(
        ROOT / "benchmarks" / "replication.py",
        *("--quick", "--seconds", "0.5", "--modes", "off,async,sync"),
        *("--dir", str(tmp_path), "--out", str(out)),
        timeout=180,
    )
    rows = json.loads(out.read_text())["rows"]
    assert [r["mode"] for r in rows] == ["off", "async", "sync"]
    for row in rows[1:]:
        assert {"acked_per_s", "p99_ms", "pub_lag_max_records", "standby_drain_s"} <= row.keys()


def test_server_cpu_harness_appends_everything_it_sends(tmp_path: Path) -> None:
    for batch in ("64", "0"):
        out = run_benchmark(
            ROOT / "benchmarks" / "server_cpu.py",
            *("--batch", batch, "--connections", "4", "--total", "512", "--dir", str(tmp_path)),
            timeout=60,
        )
        row = ast.literal_eval(out.strip().splitlines()[-1])
        assert row["entries"] == 512
        assert row["cpu_us_per_entry"] > 0 and row["mean_batch"] >= 1


def test_targets_are_judged_on_the_median_of_the_ratio_rounds() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import compare
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))

    def row(system: str, acked: int, p99: float, round_no: int) -> dict[str, object]:
        return {
            "system": system,
            "clients": 64,
            "acked_per_s": acked,
            "p99_ms": p99,
            "round": round_no,
        }

    rounds = [
        row("ackwal-socket", 40_000, 4.0, 1),
        row("postgres", 10_000, 12.0, 1),
        row("ackwal-socket", 30_000, 5.0, 2),
        row("postgres", 10_000, 10.0, 2),
        row("ackwal-socket", 45_000, 5.0, 3),
        row("postgres", 10_000, 10.0, 3),
        row("ackwal-socket", 50_000, 1.0, 4),  # a round postgres did not finish: no ratio
    ]
    sweep = [r for r in rounds if r["round"] == 1]
    result = compare.ratios(sweep, 64, rounds)
    assert result["vs"]["ackwal-socket / postgres"] == {"throughput": 4.0, "p99": 0.33}
    by_target = {t["target"]: t for t in result["targets"]}
    throughput = by_target["ackwal-socket throughput >= 4x postgres"]
    assert throughput["per_round"] == [4.0, 3.0, 4.5]
    assert throughput["ratio"] == 4.0 and throughput["met"] is True
    p99 = by_target["ackwal-socket p99 < postgres p99"]
    assert p99["per_round"] == [0.33, 0.5, 0.5] and p99["ratio"] == 0.5 and p99["met"] is True
    nats = by_target["ackwal-socket throughput >= 1.5x nats-default"]
    assert nats["per_round"] == [] and nats["ratio"] is None and nats["met"] is None
    # Without rounds (a sweep alone), the sweep's own point is the only round.
    alone = {t["target"]: t for t in compare.ratios(sweep, 64)["targets"]}
    assert alone["ackwal-socket throughput >= 4x postgres"]["per_round"] == [4.0]


def test_the_interpreted_server_runs_only_when_named_and_the_build_is_recorded(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    printed = run_benchmark(
        COMPARE,
        *("--quick", "--systems", "ackwal-socket,ackwal-interpreted", "--clients", "4"),
        *("--no-duplicates", "--seconds", "0.3", "--warmup", "0.1"),
        *("--dir", str(tmp_path), "--out", str(out)),
        timeout=120,
    )
    report = json.loads((out / "compare.json").read_text())
    assert [r["system"] for r in report["rows"]] == ["ackwal-socket", "ackwal-interpreted"]
    assert report["systems"]["ackwal-interpreted"]["durable_at_ack"] is True
    # The build the servers ran (make pytest-compiled: compiled; make pytest: interpreted).
    assert report["settings"]["ackwal_build"] == describe()
    assert f"ackwal build: {describe()}" in printed
