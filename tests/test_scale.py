"""benchmarks/scale.py and gaps.py run in their --quick form, so they cannot rot: what they report, never a timing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import POSTGRES_URL_VARIABLE
from tests.test_benchmarks import run_quick

PARTS = ("sampler", "storage", "tracking", "other")


@pytest.mark.slow
def test_scale_quick_run_splits_the_overhead_per_size_and_counts_the_workers_trials(
    real_data_dir: Path, tmp_path: Path
) -> None:
    output = tmp_path / "scale.json"
    result = run_quick("scale.py", real_data_dir, output)
    report = json.loads(output.read_text())
    for storage in ("sqlite", "postgresql") if os.environ.get(POSTGRES_URL_VARIABLE) else ("sqlite",):
        rows = report[storage]
        assert [row["size"] for row in rows] == [20, 40]
        for row in rows:
            assert row["timed_trials"] == 2, "3 real trials timed: 2 cycles from one start to the next"
            assert row["overhead"] == pytest.approx(sum(row[part] for part in PARTS))
            assert row["storage"] > 0 and row["tracking"] > 0 and row["training"] > 0
        assert report["overhead_ratio"][storage] == pytest.approx(rows[-1]["overhead"] / rows[0]["overhead"])
    assert {row["size"] for row in report["sampler_growth"]} == {10, 20, 40}
    if os.environ.get(POSTGRES_URL_VARIABLE):
        workers = report["workers"]
        assert [(row["workers"], row["via"], row["trials"]) for row in workers] == [
            (2, "database", 3),
            (2, "proxy", 3),
        ], "both ways, the budget held exactly"
        assert all(row["peak_db_connections"] > 0 and row["tracking_requests"] > 0 for row in workers)
    assert "goal <= 1.3" in result.stdout


@pytest.mark.slow
def test_gaps_quick_run_compares_the_first_and_last_trials_gaps(real_data_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "gaps.json"
    result = run_quick("gaps.py", real_data_dir, output)
    report = json.loads(output.read_text())
    assert report["n_trials"] == 30 and report["window"] == 10
    assert report["median_gap_first_s"] > 0 and report["median_gap_last_s"] > 0
    assert report["gap_ratio"] == pytest.approx(report["median_gap_last_s"] / report["median_gap_first_s"])
    assert 0 < report["summary_s"] < 600 and "--sampler random" in report["command"]
    assert "goal <= 1.3x" in result.stdout
