"""The benchmark scripts run (in their --quick form, the first three through benchmarks/gpu.sh), so they cannot rot.

They check what each script reports and prints, never a timing: speed is the benchmarks' business, not a test's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


@pytest.fixture(scope="module")
def gpu_script_on_cpu(real_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """benchmarks/gpu.sh on this CUDA-less machine: its stdout, and the folder with the three JSON files."""
    output = tmp_path_factory.mktemp("gpu")
    command = [str(REPO / "benchmarks" / "gpu.sh"), "--data-dir", str(real_data_dir), "--output-dir", str(output)]
    env = {**os.environ, "PYTHON": sys.executable}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout, output


@pytest.mark.slow
def test_gpu_script_falls_back_to_the_quick_cpu_runs(gpu_script_on_cpu: tuple[str, Path]) -> None:
    stdout, output = gpu_script_on_cpu
    assert "no CUDA device here; falling back to the CPU" in stdout
    names = ("pipeline_ratio", "loop_efficiency", "tracking_overhead")
    for name in names:
        assert f"== {name} (cpu) ==" in stdout
        assert json.loads((output / f"{name}.json").read_text())["device"].startswith("cpu")


@pytest.mark.slow
def test_pipeline_ratio_reports_both_pipelines(gpu_script_on_cpu: tuple[str, Path]) -> None:
    stdout, output = gpu_script_on_cpu
    report = json.loads((output / "pipeline_ratio.json").read_text())
    assert len(report["trials"]) == 3 and len(report["seed_space"]["trials"]) == 3
    assert report["seed_s"] > 0 and report["ours_s"] > 0 and report["seed_space"]["ours_s"] > 0
    assert "goal >= 10" in stdout and "the seed notebook's space" in stdout


@pytest.mark.slow
def test_loop_efficiency_reports_both_models_and_epoch_times(gpu_script_on_cpu: tuple[str, Path]) -> None:
    stdout, output = gpu_script_on_cpu
    report = json.loads((output / "loop_efficiency.json").read_text())
    assert [row["model"] for row in report["rows"]] == ["mlp 512-256", "cnn 32-64"]
    assert report["peak_gflops"] > 0 and all(row["efficiency"] > 0 and row["epoch_s"] > 0 for row in report["rows"])
    assert "goal: efficiency >= 0.85" in stdout


@pytest.mark.slow
def test_tracking_overhead_compares_on_and_off(gpu_script_on_cpu: tuple[str, Path]) -> None:
    stdout, output = gpu_script_on_cpu
    report = json.loads((output / "tracking_overhead.json").read_text())
    assert report["off_s"] > 0 and report["on_s"] > 0
    assert {"overhead", "per_trial_s"} <= set(report)
    assert report["tracking_alone"]["tracked_s"] > 0 and report["tracking_alone"]["untracked_s"] > 0
    assert "tracking alone" in stdout
    assert "goal <= 3%" in stdout


def test_gpu_script_rejects_an_unknown_argument() -> None:
    result = subprocess.run([str(REPO / "benchmarks" / "gpu.sh"), "--fast"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "unknown argument --fast" in result.stderr


def run_quick(script: str, data_dir: Path, output: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """Run one benchmark script with --quick (and `flags`); it must succeed."""
    command = [sys.executable, str(REPO / "benchmarks" / script), "--quick", "--data-dir", str(data_dir), *flags]
    result = subprocess.run([*command, "--output", str(output)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


@pytest.mark.slow
def test_workers_ratio_quick_run_compares_one_and_two_workers(real_data_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "workers.json"
    result = run_quick("workers_ratio.py", real_data_dir, output)
    report = json.loads(output.read_text())
    assert report["trials_per_hour"]["1"] > 0 and report["trials_per_hour"]["2"] > 0
    assert "goal >= 1.6x" in result.stdout


@pytest.mark.slow
def test_pruning_payoff_quick_run_compares_three_pruners(real_data_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "pruning.json"
    result = run_quick("pruning_payoff.py", real_data_dir, output)
    rows = json.loads(output.read_text())["rows"]
    assert list(rows) == ["median", "hyperband", "none"]
    assert rows["none"]["epochs_trained"] == 4 * 2 and rows["none"]["pruned"] == 0
    assert all(row["epochs_trained"] <= rows["none"]["epochs_trained"] for row in rows.values())
    assert "best val acc" in result.stdout


def test_docs_benchmark_table_is_the_one_generated_from_the_json_results() -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import report
    finally:
        sys.path.pop(0)
    page = (REPO / "docs" / "benchmarks.md").read_text()
    assert report.BEGIN in page and report.END in page, "docs/benchmarks.md holds the table between the markers"
    assert report.page_with(page, report.table()) == page, "run: python benchmarks/report.py --write"


@pytest.mark.slow
def test_quality_quick_run_reads_the_registered_models_test_accuracy(real_data_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "quality.json"
    run_quick("quality.py", real_data_dir, output)
    report = json.loads(output.read_text())
    assert report["trials"]["finished"] == 2 and report["command"].startswith("mlflow run . --env-manager local")
    assert 0.3 < report["test_accuracy"] <= 1 and report["best_params"]
    assert report["refit_epochs"] == 1, "as --quick asked"
    assert report["n_params"] > 0 and report["latency_ms"] > 0, "the registered model's costs"
    assert 0 < report["baseline_val_accuracy"] <= report["best_val_accuracy"], "the baseline trial, to compare"


@pytest.mark.slow
def test_cnn_speedups_quick_run_prices_each_variant_as_a_trial(real_data_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "cnn.json"
    result = run_quick("cnn_speedups.py", real_data_dir, output)
    report = json.loads(output.read_text())
    assert list(report["rows"]) == ["ours (NCHW)", "channels-last", "torch.compile"]
    for variant, row in report["rows"].items():
        if "error" in row:  # torch.compile without a working C++ toolchain: reported, not hidden
            assert variant == "torch.compile" and f"{variant:<14} unavailable" in result.stdout
            continue
        assert row["trial_s"] > row["one_time_s"] >= 0 and row["vs_ours"] > 0
    assert set(report["eval_batch_s"]) == {"512", "4096", "10000"}


@pytest.mark.slow
def test_champion_load_quick_run_compares_the_loaders_with_the_imports(tmp_path: Path) -> None:
    output = tmp_path / "load.json"
    result = run_quick("champion_load.py", REPO / "data", output)
    report = json.loads(output.read_text())
    assert report["import_s"] > 0 and len(report["load_s"]) == 5 and report["predict_s"] > 0
    assert report["load_ratio"] == report["load_s"]["pyfunc, state dict rebuilt"] / report["import_s"]
    assert "goal <= 0.5x" in result.stdout and "goal <= 1.5x" in result.stdout


@pytest.mark.slow
def test_startup_quick_run_times_each_process_to_its_first_trial(real_data_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "startup.json"
    before = sorted((real_data_dir / "FashionMNIST" / "raw").iterdir())
    run_quick("startup.py", real_data_dir, output)
    assert sorted((real_data_dir / "FashionMNIST" / "raw").iterdir()) == before, "it works on a private copy"
    rows = json.loads(output.read_text())["first_trial_s"]
    assert list(rows) == ["workers 1, no cache", "workers 1, cache", "workers 2, no cache", "workers 2, cache"]
    assert [len(seconds) for seconds in rows.values()] == [1, 1, 2, 2] and all(
        s > 0 for seconds in rows.values() for s in seconds
    )


@pytest.mark.slow
def test_refit_augmentation_quick_run_compares_plain_flips_and_shifts(real_data_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "augmentation.json"
    result = run_quick("refit_augmentation.py", real_data_dir, output)
    rows = json.loads(output.read_text())["rows"]
    assert list(rows) == ["plain", "flip", "flip + shift 2 px"]
    assert rows["plain"]["gain"] == 0 and all(0 < row["val"] <= 1 and row["epoch_s"] > 0 for row in rows.values())
    assert "flip + shift 2 px" in result.stdout


@pytest.mark.slow
def test_refit_epochs_quick_run_compares_one_and_two_schedules(real_data_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "refit.json"
    result = run_quick("refit_epochs.py", real_data_dir, output)
    rows = json.loads(output.read_text())["rows"]
    assert list(rows) == ["mlp", "cnn"]
    for row in rows.values():
        assert [len(curve) for curve in row["curves"].values()] == [1, 2]
        assert list(row["val"]) == ["1", "2"] and all(0 < val <= 1 for val in row["val"].values())
    assert "2 epochs" in result.stdout


@pytest.mark.slow
def test_refit_epochs_trains_one_baseline_for_the_lengths_asked(real_data_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "refit.json"
    result = run_quick("refit_epochs.py", real_data_dir, output, "--model", "cnn", "--factors", "3")
    rows = json.loads(output.read_text())["rows"]
    assert list(rows) == ["cnn"] and list(rows["cnn"]["curves"]) == ["3"] and len(rows["cnn"]["curves"]["3"]) == 3
    assert "3 epochs" in result.stdout and "best epoch" in result.stdout


@pytest.mark.slow
def test_cnn_width_quick_run_prices_each_width_as_trials(real_data_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "width.json"
    result = run_quick("cnn_width.py", real_data_dir, output)
    rows = json.loads(output.read_text())["rows"]
    assert list(rows) == ["32-64 (baseline)", "64-128", "32-64-128", "128-128"]
    assert all(row["epoch_s"] > 0 and row["trials_in_30_min"] > 0 for row in rows.values())
    assert rows["32-64 (baseline)"]["vs_baseline"] == 1
    assert rows["128-128"]["flops"] > rows["64-128"]["flops"] > rows["32-64 (baseline)"]["flops"]
    assert "per 30 min" in result.stdout


@pytest.mark.slow
def test_cost_measurement_quick_run_sets_it_against_a_trial(real_data_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "costs.json"
    result = run_quick("cost_measurement.py", real_data_dir, output)
    rows = json.loads(output.read_text())["rows"]
    assert list(rows) == ["mlp", "cnn"]
    assert all(row["costs_s"] > 0 and row["trial_s"] > 0 and 0 < row["share"] < 1 for row in rows.values())
    assert "share" in result.stdout


@pytest.mark.slow
def test_threads_quick_run_times_one_and_two_threads_and_passive_waits(real_data_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "threads.json"
    run_quick("threads.py", real_data_dir, output)
    report = json.loads(output.read_text())
    assert set(report["median_seconds"]) == {"1 thread", "2 threads", "2 threads, passive wait"}
    assert all(seconds > 0 for seconds in report["median_seconds"].values())
    assert (
        report["ratio_2_threads_to_1"] == report["median_seconds"]["2 threads"] / report["median_seconds"]["1 thread"]
    )


@pytest.mark.slow
def test_patience_quick_run_replays_the_rule_on_a_real_study(real_data_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "patience.json"
    run_quick("patience.py", real_data_dir, output)
    report = json.loads(output.read_text())
    rows = report["with_patience"]
    assert [(row["patience"], row["min_delta"]) for row in rows] == [(p, d) for p in (5, 10, 20) for d in (0.0, 0.001)]
    for row in rows:
        assert 0 < row["trials"] <= report["study"]["trials"] and row["search_s"] <= report["study"]["search_s"]
        assert row["lost_val_accuracy"] >= 0
