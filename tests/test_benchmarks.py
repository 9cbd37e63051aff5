"""The benchmark scripts run (in their --quick form), so they cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def test_pipeline_ratio_quick_run_reports_both_pipelines(real_data_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "pipeline_ratio.json"
    result = run_quick("pipeline_ratio.py", real_data_dir, output)
    report = json.loads(output.read_text())
    assert len(report["trials"]) == 3
    assert report["seed_s"] > 0 and report["ours_s"] > 0
    assert report["ratio"] == report["seed_s"] / report["ours_s"]
    assert "goal >= 10" in result.stdout


def run_quick(script: str, data_dir: Path, output: Path) -> subprocess.CompletedProcess[str]:
    """Run one benchmark script with --quick; it must succeed."""
    command = [sys.executable, str(REPO / "benchmarks" / script), "--quick", "--data-dir", str(data_dir)]
    result = subprocess.run([*command, "--output", str(output)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def test_loop_efficiency_quick_run_reports_both_models(real_data_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "loop.json"
    result = run_quick("loop_efficiency.py", real_data_dir, output)
    report = json.loads(output.read_text())
    assert [row["model"] for row in report["rows"]] == ["mlp 512-256", "cnn 32-64"]
    assert report["peak_gflops"] > 0 and all(row["efficiency"] > 0 for row in report["rows"])
    assert "goal: efficiency >= 0.85" in result.stdout


def test_tracking_overhead_quick_run_compares_on_and_off(real_data_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "overhead.json"
    result = run_quick("tracking_overhead.py", real_data_dir, output)
    report = json.loads(output.read_text())
    assert report["off_s"] > 0 and report["on_s"] > 0
    assert report["overhead"] == report["on_s"] / report["off_s"] - 1
    assert "goal <= 3%" in result.stdout


def test_workers_ratio_quick_run_compares_one_and_two_workers(real_data_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "workers.json"
    result = run_quick("workers_ratio.py", real_data_dir, output)
    report = json.loads(output.read_text())
    assert report["trials_per_hour"]["1"] > 0 and report["trials_per_hour"]["2"] > 0
    assert report["ratio"] == report["trials_per_hour"]["2"] / report["trials_per_hour"]["1"]
    assert "goal >= 1.6x" in result.stdout


def test_pruning_payoff_quick_run_compares_three_pruners(real_data_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "pruning.json"
    result = run_quick("pruning_payoff.py", real_data_dir, output)
    rows = json.loads(output.read_text())["rows"]
    assert list(rows) == ["median", "hyperband", "none"]
    assert rows["none"]["epochs_trained"] == 4 * 2 and rows["none"]["pruned"] == 0
    assert all(row["epochs_trained"] <= rows["none"]["epochs_trained"] for row in rows.values())
    assert "best val acc" in result.stdout


def test_readme_benchmark_table_is_the_one_generated_from_the_json_results() -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import report
    finally:
        sys.path.pop(0)
    readme = (REPO / "README.md").read_text()
    assert report.readme_with(readme, report.table()) == readme, "run: python benchmarks/report.py --write"


def test_quality_quick_run_reads_the_registered_models_test_accuracy(real_data_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "quality.json"
    run_quick("quality.py", real_data_dir, output)
    report = json.loads(output.read_text())
    assert report["trials"]["finished"] == 2 and report["command"].startswith("mlflow run . --env-manager local")
    assert 0.3 < report["test_accuracy"] <= 1 and report["best_params"]
