"""benchmarks/race.py in its --quick form: the four contenders run to their ends, and their rows make the docs' cell.

It checks what the race reports, never who wins: that is the full run's business (`python benchmarks/race.py`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.test_benchmarks import run_quick

CONTENDERS = ["fashion-hpo", "ray-tune-asha", "seed-loop", "random"]
THRESHOLDS = ["time_to_0.88", "time_to_0.89", "time_to_0.90"]


@pytest.mark.slow
def test_race_quick_run_finishes_trials_of_every_contender_and_tests_each_best(
    real_data_dir: Path, tmp_path: Path
) -> None:
    """Slow (about 1.5 minutes): four real searches of 10 s each, one of them on a local Ray, and their refits."""
    output = tmp_path / "race.json"
    result = run_quick("race.py", real_data_dir, output)
    report = json.loads(output.read_text())
    assert report["budget_s"] == 10 and report["command"] == "python benchmarks/race.py --quick"
    rows = report["results"]
    assert [row["name"] for row in rows] == CONTENDERS and {row["seed"] for row in rows} == {42}
    for row in rows:
        assert row["trials"] >= 1, row
        assert 0 < row["best_val_accuracy"] <= 1 and 0 < row["test_accuracy"] <= 1, row
        assert all(row[key] is None or 0 < row[key] < row["wall_s"] for key in THRESHOLDS), row
        assert row["cpu_s"] > 0 and row["wall_s"] > report["budget_s"], row
    tracked = {row["name"]: (row["tracked_runs"], row["trials"]) for row in rows}
    assert tracked.pop("seed-loop")[0] == 0, "the seed notebook's loop tracks nothing"
    assert all(runs >= trials for runs, trials in tracked.values()), "a run per trial in MLflow"
    assert "ray-tune-asha  seed 42" in result.stdout
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from report_search import race
    finally:
        sys.path.pop(0)
    assert all(f"**{name}** — seed 42: " in race(report) for name in CONTENDERS)
