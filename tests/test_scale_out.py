"""Many workers on one study: real processes on real PostgreSQL / SQLite storage, an MLflow server, SIGKILL; three
workers started together on a folder with no data yet."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import mlflow
import optuna
import pytest
import sqlalchemy
from mlflow.tracking import MlflowClient
from optuna.trial import FrozenTrial, TrialState

from fashion_hpo.core.constants import VAL_ACCURACY
from fashion_hpo.core.validation import available_cores
from fashion_hpo.data.cache import CACHE_NAME, raw_digests, read_cache
from fashion_hpo.data.raw import LOCK_NAME, RAW_FILES, STAMP_NAME, has_raw_files, raw_dir
from fashion_hpo.storage.rdb import engine_url
from fashion_hpo.tracking.reconcile import trial_number
from tests.conftest import TrackingServer, postgres_databases, subprocess_env, temporary_tracking, tracking_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
STUDY = "shared"
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)
# The tests that register check which trial is registered and where, not the refit's schedule (the end-to-end test
# checks its default of twice the trial's epochs): one epoch on 60,000 images instead of two.
ONE_REFIT_EPOCH = ("--refit-epochs", "1")


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


def load_trials(storage: str) -> list[FrozenTrial]:
    """The study's trials (none before a worker has created the study)."""
    try:
        return optuna.load_study(study_name=STUDY, storage=engine_url(storage)).get_trials(deepcopy=False)
    except KeyError:
        return []


def assert_every_trial_tracked(storage: str, server: TrackingServer, n_trials: int) -> list[FrozenTrial]:
    """`n_trials` counted trials; every finished trial has exactly one run, none is RUNNING, and every counted
    trial's run holds its per-epoch validation accuracy."""
    trials = load_trials(storage)
    assert sum(t.state in COUNTED for t in trials) == n_trials
    assert all(t.state.is_finished() for t in trials)
    client = MlflowClient(tracking_uri=server.url)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)
    assert [(run.info.run_name, run.data.tags) for run in runs if run.info.status == "RUNNING"] == []
    by_number: dict[int, list[str]] = {}
    for run in runs:
        number = trial_number(run)
        if number is not None:
            by_number.setdefault(number, []).append(run.info.run_id)
    assert sorted(by_number) == [t.number for t in trials], "a run for every trial, and no run without its trial"
    assert all(len(ids) == 1 for ids in by_number.values()), f"two runs for one trial: {by_number}"
    for trial in trials:
        if trial.state in COUNTED:
            history = client.get_metric_history(by_number[trial.number][0], VAL_ACCURACY)
            assert sorted(m.step for m in history) == sorted(trial.intermediate_values), trial.number
    return trials


@contextmanager
def tracking_at(url: str) -> Iterator[None]:
    """This process's MLflow client (and its environment) tracking to `url` for the duration."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", url)
        mlflow.set_tracking_uri(url)
        try:
            yield
        finally:
            mlflow.set_tracking_uri(None)


@dataclass(frozen=True)
class SharedStudy:
    """Three `fashion-hpo study` processes started together on one PostgreSQL study and a data folder with no data
    yet, tracking to an MLflow server; then `fashion-hpo register` on the study. Their outputs, and where it all is."""

    server: TrackingServer
    storage: str
    data_dir: Path
    outputs: list[str]
    registered: str


N_SHARED = 9


@pytest.fixture(scope="module")
def shared_study(tmp_path_factory: pytest.TempPathFactory, postgres_url: str) -> Iterator[SharedStudy]:
    """One run of three independent workers (as on three machines) and the register command after them, which the
    tests below each check one side of: the shared study and its runs, the data folder they filled together, and
    the registration of the best trial."""
    work = tmp_path_factory.mktemp("shared")
    data_dir = work / "data"
    assert not data_dir.exists()
    with (
        postgres_databases(postgres_url) as new_database,
        tracking_server(work, f"sqlite:///{work / 'server.db'}") as server,
    ):
        storage = new_database()
        env = {**subprocess_env(work), "MLFLOW_TRACKING_URI": server.url}
        workers = [start(study_command(data_dir, storage, N_SHARED), work, env) for _ in range(3)]
        outputs = [finish(worker) for worker in workers]
        register = [sys.executable, "-m", "fashion_hpo", "register", "--study-name", STUDY, "--storage", storage]
        registered = finish(start([*register, "--data-dir", str(data_dir), *ONE_REFIT_EPOCH], work, env))
        yield SharedStudy(server, storage, data_dir, outputs, registered)


def test_three_worker_processes_share_one_postgres_study(shared_study: SharedStudy) -> None:
    assert all("Traceback" not in out for out in shared_study.outputs)
    with tracking_at(shared_study.server.url):
        assert_one_run_per_trial(shared_study.storage, N_SHARED)
        worker_runs = mlflow.search_runs(search_all_experiments=True, filter_string=f"run_name = '{STUDY}'")
        assert len(worker_runs) == 3


def test_three_workers_start_together_on_a_fresh_folder(shared_study: SharedStudy) -> None:
    assert all("Traceback" not in out for out in shared_study.outputs)
    assert_every_trial_tracked(shared_study.storage, shared_study.server, N_SHARED)
    data_dir = shared_study.data_dir
    assert has_raw_files(data_dir)
    leftovers = {p.name for p in raw_dir(data_dir).iterdir()} - {*RAW_FILES, STAMP_NAME, LOCK_NAME, CACHE_NAME}
    assert not leftovers, "no temporary file left behind"
    digests = raw_digests(raw_dir(data_dir))
    assert digests and read_cache(raw_dir(data_dir) / CACHE_NAME, digests), "the splits cache they wrote is whole"


def test_register_after_the_workers_registers_the_best_of_all_their_trials_once(shared_study: SharedStudy) -> None:
    trials = load_trials(shared_study.storage)
    best = max((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    out = shared_study.registered
    assert "Registered: models:/fashion-mnist-classifier/1" in out, "the best across all workers, registered once"
    with tracking_at(shared_study.server.url):
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
    workers = study_command(real_data_dir, storage, 6, "--workers", "3", *ONE_REFIT_EPOCH)
    out = finish(start([arg for arg in workers if arg != "--no-register"], tmp_path, env))
    assert "Registered: models:/fashion-mnist-classifier/1" in out
    with tracking_at(mlflow_server):
        trials = assert_one_run_per_trial(storage, 6)
        versions = MlflowClient().search_model_versions("name = 'fashion-mnist-classifier'")
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
    # Epochs long enough (about a second each) that the test, polling every 0.3 s, finds a trial between epochs; no
    # baseline trial, whose 1.3M parameters take several times as long on one thread as the sampled ones.
    slow = ["--epochs", "4", "--max-train-samples", "20000", "--pruner", "none", "--no-baseline-trial"]
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
    command = study_command(real_data_dir, storage, 4, "--workers", "2", *ONE_REFIT_EPOCH)
    command = [arg for arg in command if arg != "--no-register"]
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
    command = [arg for arg in study_command(real_data_dir, plain, 2, *ONE_REFIT_EPOCH) if arg != "--no-register"]
    at = command.index("--threads")
    del command[at : at + 2]  # one process: every core for its refit
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
