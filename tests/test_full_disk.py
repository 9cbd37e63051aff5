"""A study whose MLflow tracking store, or whose runs' artifacts (plots, the model), fill their file system (a small
tmpfs, mounted as root): one line naming what was written and what to do, exit non-zero, no run left RUNNING, no
model registered from a half-written one; the same command continues once space is free."""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import mlflow
import optuna
import pytest
from optuna.trial import TrialState

from fashion_hpo.core.constants import INTERRUPTED
from fashion_hpo.storage.rdb import budget_used
from fashion_hpo.tracking.disk import disk_full_line
from fashion_hpo.tracking.plots import log_plots
from tests.conftest import RUN_SCOPE_VARIABLES

N_TRIALS = 20
STUDY = ["--n-trials", str(N_TRIALS), "--epochs", "1", "--max-train-samples", "300", "--no-register"]
LEFT_KB = 120  # room for some trials' runs and metrics in the store, not for twenty


@pytest.fixture
def small_fs(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A tmpfs under `tmp_path` (4 MiB, or the size the test's parameter gives), unmounted afterwards; root only (CI
    runs the tests as root)."""
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("the full-disk test mounts a tmpfs and must run as root under CI")
        pytest.skip("mounting a tmpfs needs root (CI runs this test as root)")
    folder = tmp_path / "small"
    folder.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={getattr(request, 'param', '4m')}", "tmpfs", str(folder)], check=True
    )
    try:
        yield folder
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=True)


def fill(folder: Path, left_kb: int) -> Path:
    """A file that takes all but `left_kb` KiB of the file system under `folder`."""
    stats = os.statvfs(folder)
    filler = folder / "filler"
    with filler.open("wb") as file:
        file.write(bytes(stats.f_bavail * stats.f_frsize - left_kb * 1024))
    return filler


def study(work: Path, store: Path, data_dir: Path, flags: list[str] = STUDY) -> subprocess.CompletedProcess[str]:
    """`fashion-hpo study` in `work` (Optuna's storage there, and a new experiment's artifacts), its tracking store
    `store`."""
    env = {k: v for k, v in os.environ.items() if k not in RUN_SCOPE_VARIABLES}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{store}"
    command = [sys.executable, "-m", "fashion_hpo", "study", *flags, "--no-progress-bar", "--data-dir", str(data_dir)]
    return subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=900)


def run_statuses(store: Path) -> list[str]:
    """The status of every run in the tracking store."""
    with sqlite3.connect(store) as db:
        return [status for (status,) in db.execute("SELECT status FROM runs")]


def model_versions(store: Path) -> list[str]:
    """The status of every registered model version in the tracking store."""
    with sqlite3.connect(store) as db:
        return [status for (status,) in db.execute("SELECT status FROM model_versions")]


def trial_states(work: Path) -> list[str]:
    """The state of every trial of the study in `work`'s Optuna storage."""
    loaded = optuna.load_study(study_name="fashion-mnist-mlp", storage=f"sqlite:///{work / 'optuna.db'}")
    return [trial.state.name for trial in loaded.trials]


@pytest.mark.slow  # two small studies on the real data: about a minute
def test_a_tracking_store_that_fills_up_mid_study_is_one_line_and_the_rerun_continues(
    small_fs: Path, tmp_path: Path, real_data_dir: Path
) -> None:
    store, work = small_fs / "mlflow.db", tmp_path / "work"
    work.mkdir()
    mlflow.MlflowClient(f"sqlite:///{store}").search_experiments()  # the store's tables, before the disk fills
    filler = fill(small_fs, LEFT_KB)

    full = study(work, store, real_data_dir)
    assert full.returncode == 1, f"exit {full.returncode}:\n{full.stderr[-3000:]}"
    assert "Traceback" not in full.stderr, full.stderr[-3000:]
    last = full.stderr.strip().splitlines()[-1]
    assert last == (
        f"fashion-hpo study: error: no space left on device writing the MLflow tracking store {store}: free space "
        "there (or choose another MLFLOW_TRACKING_URI) and rerun the same command to continue"
    )
    assert 0 < len(trial_states(work)) < N_TRIALS, "the store did not fill up mid-study"
    assert "RUNNING" not in run_statuses(store)

    filler.unlink()
    rerun = study(work, store, real_data_dir)
    assert rerun.returncode == 0, f"rerun exit {rerun.returncode}:\n{rerun.stderr[-3000:]}"
    trials = optuna.load_study(study_name="fashion-mnist-mlp", storage=f"sqlite:///{work / 'optuna.db'}").trials
    assert budget_used(trials) == N_TRIALS, "the exact total"
    # A trial the full disk cut short (when it filled inside one) is interrupted: it does not count, and the rerun
    # ran another in its place.
    cut = [t for t in trials if t.state not in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert all(t.state == TrialState.FAIL and t.user_attrs.get(INTERRUPTED) for t in cut), cut
    statuses = run_statuses(store)
    assert "RUNNING" not in statuses and statuses.count("FINISHED") >= 1


@pytest.mark.slow  # two small studies on the real data, each with a refit on 60,000 images: about two minutes
@pytest.mark.parametrize("small_fs", ["64m"], indirect=True)
def test_artifacts_that_fill_up_are_one_line_and_no_half_written_model_is_registered(
    small_fs: Path, tmp_path: Path, real_data_dir: Path
) -> None:
    store, flags = tmp_path / "mlflow.db", ["--n-trials", "2", "--epochs", "1", "--max-train-samples", "300"]
    flags += ["--refit-epochs", "1"]
    filler = fill(small_fs, 2048)  # room for the PNG plots, not for an HTML plot (4.8 MB) nor the model

    full = study(small_fs, store, real_data_dir, flags)
    assert full.returncode == 1, f"exit {full.returncode}:\n{full.stderr[-3000:]}"
    assert "Traceback" not in full.stderr, full.stderr[-3000:]
    artifacts = f"{small_fs}/mlruns/"
    assert f"free space in {artifacts}" in full.stderr, "the plots' warnings do not say where to free space"
    last = full.stderr.strip().splitlines()[-1]
    assert last.startswith(
        f"fashion-hpo study: error: no space left on device writing the MLflow run's artifacts {artifacts}"
    ), last
    assert last.endswith(
        "free space there (or choose another MLFLOW_TRACKING_URI) and rerun the same command to continue"
    ), last
    assert "RUNNING" not in run_statuses(store) and model_versions(store) == []

    filler.unlink()
    rerun = study(small_fs, store, real_data_dir, flags)
    assert rerun.returncode == 0, f"rerun exit {rerun.returncode}:\n{rerun.stderr[-3000:]}"
    assert model_versions(store) == ["READY"] and "RUNNING" not in run_statuses(store)


def test_a_full_disk_writing_a_file_is_one_line_naming_it_and_other_errors_are_not() -> None:
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "/data/FashionMNIST/raw/cache.pt")
        except OSError as err:
            raise RuntimeError("could not save the cache") from err
    except RuntimeError as wrapped:
        line = disk_full_line(wrapped)
    assert line == (
        "no space left on device writing /data/FashionMNIST/raw/cache.pt: free space there (or choose another "
        "--data-dir) and rerun the same command to continue"
    )
    assert disk_full_line(OSError(errno.EACCES, "Permission denied", "/data")) is None
    assert disk_full_line(RuntimeError("database is locked")) is None


def test_a_full_disk_while_logging_a_plot_says_where_to_free_space(
    tracking_uri: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    study = optuna.create_study(direction="maximize")
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(mlflow, "log_figure", disk_full)
    with mlflow.start_run(), caplog.at_level(logging.WARNING):
        artifacts = mlflow.get_artifact_uri().removeprefix("file://")
        log_plots(study, n_complete=2)
    assert f"No space left on device; free space in {artifacts} and rerun the same command" in caplog.text
