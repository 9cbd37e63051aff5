"""Many workers on one study: real processes on real PostgreSQL / SQLite storage, an MLflow server, SIGKILL."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import mlflow
import optuna
import pytest
import sqlalchemy
from mlflow.tracking import MlflowClient
from optuna.trial import FrozenTrial, TrialState

from fashion_hpo.core.validation import available_cores
from fashion_hpo.storage.rdb import engine_url
from tests.conftest import subprocess_env, temporary_tracking, tracking_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
STUDY = "shared"
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)


def study_command(data_dir: Path, storage: str, n_trials: int, *extra: str) -> list[str]:
    """A worker's `fashion-hpo study` command: tiny trials, one thread, no registration."""
    command = [sys.executable, "-m", "fashion_hpo", "study", "--study-name", STUDY, "--storage", storage]
    command += ["--n-trials", str(n_trials), "--epochs", "1", "--max-train-samples", "600", "--timeout", "0"]
    return [*command, "--data-dir", str(data_dir), "--threads", "1", "--no-register", "--no-progress-bar", *extra]


def start(command: list[str], work: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start a CLI process tracking into `work` (or into `env`'s tracking URI)."""
    return subprocess.Popen(
        command, cwd=work, env=env or subprocess_env(work), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(process: subprocess.Popen[str], timeout: float = 600) -> str:
    """Wait for a process that must succeed; returns its output."""
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, (out + err)[-4000:]
    return out + err


def assert_one_run_per_trial(storage: str, n_trials: int) -> list[FrozenTrial]:
    """Exactly `n_trials` counted trials; each trial has its own child run, closed, tagged with the study."""
    trials = optuna.load_study(study_name=STUDY, storage=engine_url(storage)).get_trials(deepcopy=False)
    assert sum(t.state in COUNTED for t in trials) == n_trials
    assert all(t.state.is_finished() for t in trials)
    run_ids = [t.system_attrs["mlflow_run_id"] for t in trials]
    assert len(set(run_ids)) == len(trials), "no two trials share a run"
    client = MlflowClient()
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)
    assert [run.info.run_name for run in runs if run.info.status == "RUNNING"] == []
    assert {run.data.tags.get("study_name") for run in runs} == {STUDY}
    children = [run for run in runs if run.info.run_name.startswith("trial-")]
    assert sorted(run.info.run_id for run in children) == sorted(run_ids), "one child run per trial, no more"
    by_id = {run.info.run_id: run for run in runs}
    for trial in trials:
        parent = by_id[by_id[trial.system_attrs["mlflow_run_id"]].data.tags["mlflow.parentRunId"]]
        assert not parent.info.run_name.startswith("trial-"), "trials nest under a worker's run"
    return trials


def test_three_worker_processes_share_one_postgres_study(
    tmp_path: Path, real_data_dir: Path, new_database: Callable[[], str]
) -> None:
    storage = new_database()
    workers = [start(study_command(real_data_dir, storage, 9), tmp_path) for _ in range(3)]
    outputs = [finish(worker) for worker in workers]
    assert all("Traceback" not in out for out in outputs)
    with temporary_tracking(tmp_path):
        trials = assert_one_run_per_trial(storage, 9)
        worker_runs = mlflow.search_runs(search_all_experiments=True, filter_string=f"run_name = '{STUDY}'")
        assert len(worker_runs) == 3
    register = [sys.executable, "-m", "fashion_hpo", "register", "--study-name", STUDY, "--storage", storage]
    out = finish(start([*register, "--data-dir", str(real_data_dir)], tmp_path))
    best = max((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert "Registered: models:/fashion-mnist-classifier/1" in out, "the best across all workers, registered once"
    with temporary_tracking(tmp_path):
        (version,) = MlflowClient().search_model_versions("name = 'fashion-mnist-classifier'")
    assert version.tags["best_trial_number"] == str(best.number)


@pytest.fixture
def mlflow_server(tmp_path: Path, new_database: Callable[[], str]) -> Iterator[str]:
    """`mlflow server` on a free loopback port with a PostgreSQL backend store; yields its URL."""
    with tracking_server(tmp_path, new_database()) as server:
        yield server.url


def test_workers_against_an_mlflow_server_register_the_best_once(
    tmp_path: Path, real_data_dir: Path, new_database: Callable[[], str], mlflow_server: str
) -> None:
    storage = new_database()
    env = {**subprocess_env(tmp_path), "MLFLOW_TRACKING_URI": mlflow_server}
    command = [arg for arg in study_command(real_data_dir, storage, 6, "--workers", "3") if arg != "--no-register"]
    out = finish(start(command, tmp_path, env))
    assert "Registered: models:/fashion-mnist-classifier/1" in out
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
        mlflow.set_tracking_uri(mlflow_server)
        try:
            trials = assert_one_run_per_trial(storage, 6)
            versions = MlflowClient().search_model_versions("name = 'fashion-mnist-classifier'")
        finally:
            mlflow.set_tracking_uri(None)
    best = max((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert [(v.tags["study_name"], v.tags["best_trial_number"]) for v in versions] == [(STUDY, str(best.number))]


def running_trial_of(storage: str, worker_run_name: str) -> FrozenTrial | None:
    """A RUNNING trial past its first epoch (once one trial finished) whose run hangs under the named worker run."""
    try:
        trials = optuna.load_study(study_name=STUDY, storage=engine_url(storage)).get_trials(deepcopy=False)
    except KeyError:
        return None
    if not any(t.state.is_finished() for t in trials):
        return None
    client = MlflowClient()
    for trial in trials:
        # Mid-trial: its run exists, every parameter has been drawn (an epoch is done), and at least one more epoch
        # is left, so the signal cannot land in the trial's end or the next trial's start.
        mid = 1 <= len(trial.intermediate_values) <= 2
        if trial.state == TrialState.RUNNING and mid and "mlflow_run_id" in trial.system_attrs:
            parent_id = client.get_run(trial.system_attrs["mlflow_run_id"]).data.tags["mlflow.parentRunId"]
            if client.get_run(parent_id).info.run_name == worker_run_name:
                return trial
    return None


def kill_mid_trial(storage: str, worker: subprocess.Popen[str], run_name: str, timeout: float = 300) -> FrozenTrial:
    """SIGKILL `worker` while it runs a trial; returns that trial."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert worker.poll() is None, worker.communicate()
        trial = running_trial_of(storage, run_name)
        if trial is not None:
            worker.kill()
            worker.wait()
            return trial
        time.sleep(0.3)
    pytest.fail("the worker never ran a trial")


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_sigkilled_worker_trial_is_reclaimed_retried_and_its_runs_closed(
    tmp_path: Path, real_data_dir: Path, request: pytest.FixtureRequest, database: str
) -> None:
    storage = request.getfixturevalue("new_database")() if database == "postgresql" else f"sqlite:///{tmp_path}/o.db"
    # Epochs long enough (about a second each) that the test, polling every 0.3 s, finds a trial between epochs.
    slow = ["--epochs", "4", "--max-train-samples", "20000", "--pruner", "none"]
    recovery = ["--heartbeat-interval", "1", "--grace-period", "3"]
    command = study_command(real_data_dir, storage, 6, *slow, *recovery)
    doomed = start([*command, "--run-name", "doomed"], tmp_path)
    survivor = start([*command, "--run-name", "survivor"], tmp_path)
    with temporary_tracking(tmp_path):
        killed = kill_mid_trial(storage, doomed, "doomed")
        finish(survivor)
        trials = assert_one_run_per_trial(storage, 6)
        client = MlflowClient()
        killed_run = client.get_run(killed.system_attrs["mlflow_run_id"])
        worker_run = client.get_run(killed_run.data.tags["mlflow.parentRunId"])
    assert trials[killed.number].state == TrialState.FAIL
    assert (killed_run.info.status, worker_run.info.status) == ("FAILED", "FAILED")
    assert "heartbeats" in killed_run.data.tags["reclaimed"] and "reclaimed" in worker_run.data.tags
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == killed.number)
    assert retry.params == trials[killed.number].params and retry.state in COUNTED
    assert_rerun_adds_nothing(tmp_path, command, storage, len(trials))


def assert_rerun_adds_nothing(work: Path, command: list[str], storage: str, n_trials: int) -> None:
    """Rerunning a finished study's command continues it: with its budget spent, no trial and no child run."""
    with temporary_tracking(work):
        children_before = len(mlflow.search_runs(search_all_experiments=True, filter_string="run_name LIKE 'trial-%'"))
    out = finish(start(command, work))
    assert "already has its --n-trials" in out
    with temporary_tracking(work):
        children = mlflow.search_runs(search_all_experiments=True, filter_string="run_name LIKE 'trial-%'")
    assert len(children) == children_before
    assert len(optuna.load_study(study_name=STUDY, storage=engine_url(storage)).trials) == n_trials


def test_workers_flag_on_sqlite_nests_worker_runs_and_registers_once(tmp_path: Path, real_data_dir: Path) -> None:
    storage = f"sqlite:///{tmp_path}/optuna.db"
    command = [arg for arg in study_command(real_data_dir, storage, 4, "--workers", "2") if arg != "--no-register"]
    at = command.index("--threads")
    del command[at : at + 2]  # default threads: the cores split between the workers
    out = finish(start(command, tmp_path))
    assert out.count("Registered: models:/") == 1
    with temporary_tracking(tmp_path):
        assert_one_run_per_trial(storage, 4)
        runs = mlflow.search_runs(search_all_experiments=True)
        top = runs[runs["tags.mlflow.parentRunId"].isna()]
        workers = runs[runs["tags.mlflow.runName"].str.contains("-worker-")]
        artifacts = {run_id: {a.path for a in MlflowClient().list_artifacts(run_id)} for run_id in runs["run_id"]}
    assert {"trials.csv", "plots"} <= artifacts[top.iloc[0]["run_id"]], "the study's table and plots, once"
    assert all(not artifacts[run_id] for run_id in workers["run_id"])
    assert len(top) == 1 and top.iloc[0]["params.workers"] == "2"
    assert sorted(workers["tags.mlflow.runName"]) == [f"{STUDY}-worker-1", f"{STUDY}-worker-2"]
    assert set(workers["tags.mlflow.parentRunId"]) == {top.iloc[0]["run_id"]}
    assert set(workers["params.threads"]) == {str(max(1, available_cores() // 2))}
    assert top.iloc[0]["metrics.test_accuracy"] > 0.5, "the command that started the workers registered"


def test_ctrl_c_reaches_every_worker_and_leaves_nothing_running(tmp_path: Path, real_data_dir: Path) -> None:
    storage = f"sqlite:///{tmp_path}/optuna.db"
    slow = ["--epochs", "10", "--max-train-samples", "3000", "--pruner", "none", "--workers", "2"]
    coordinator = start(study_command(real_data_dir, storage, 50, *slow), tmp_path)
    with temporary_tracking(tmp_path):
        kill_signal_sent = False
        deadline = time.monotonic() + 300
        while not kill_signal_sent and time.monotonic() < deadline:
            if running_trial_of(storage, f"{STUDY}-worker-1") and running_trial_of(storage, f"{STUDY}-worker-2"):
                coordinator.send_signal(signal.SIGINT)
                kill_signal_sent = True
            time.sleep(0.3)
    _out, err = coordinator.communicate(timeout=120)
    assert coordinator.returncode == 130, err[-3000:]
    assert "interrupted (SIGINT)" in err and "Traceback" not in err
    with temporary_tracking(tmp_path):
        runs = mlflow.search_runs(search_all_experiments=True)
    assert "RUNNING" not in set(runs["status"])
    workers = runs[runs["tags.mlflow.runName"].str.contains("-worker-")]
    assert list(workers["status"]) == ["KILLED", "KILLED"]
    assert set(runs[runs["tags.mlflow.parentRunId"].isna()]["status"]) == {"KILLED"}
    trials = optuna.load_study(study_name=STUDY, storage=storage).trials
    assert TrialState.RUNNING not in {t.state for t in trials}


def test_password_in_the_storage_url_is_nowhere_in_the_store_or_output(
    tmp_path: Path, real_data_dir: Path, new_database: Callable[[], str]
) -> None:
    storage = new_database()
    password = sqlalchemy.engine.make_url(storage).password
    assert password
    plain = storage.replace("postgresql+psycopg://", "postgresql://")  # the driver-less spelling works too
    command = [arg for arg in study_command(real_data_dir, plain, 2) if arg != "--no-register"]
    out = finish(start(command, tmp_path))
    assert "Registered: models:/" in out and password not in out
    with temporary_tracking(tmp_path):
        client = MlflowClient()
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        versions = client.search_model_versions()
    assert runs and versions
    for run in runs:
        assert password not in repr((run.data.params, run.data.tags, run.info.run_name))
    assert all(password not in repr((v.tags, v.description)) for v in versions)
    assert "***" in runs[-1].data.params["storage"]
    stored = [tmp_path / "mlflow.db", *(p for p in (tmp_path / "mlruns").rglob("*") if p.is_file())]
    for path in stored:
        assert password.encode() not in path.read_bytes(), path
