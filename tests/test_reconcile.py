"""Runs reconciled with trials: what a killed worker or a tracking outage leaves behind is closed or recreated.

Unit tests build each state on a temporary SQLite store; the slow tests SIGKILL a real `fashion-hpo study` worker at
points of a trial's life, then let a fresh worker finish the study."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from unittest import mock

import mlflow
import optuna
import pytest
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from optuna.trial import FrozenTrial, TrialState

from fashion_hpo.core.constants import STUDY_TAG, VAL_ACCURACY
from fashion_hpo.core.settings import RunSettings
from fashion_hpo.data.splits import FashionData
from fashion_hpo.search.loop import run_search
from fashion_hpo.search.objective import make_objective
from fashion_hpo.search.study import open_study
from fashion_hpo.storage.rdb import engine_url
from fashion_hpo.tracking.callback import RUN_STATUS, TRIAL_NUMBER_TAG, trial_run_id, trial_run_name
from fashion_hpo.tracking.metrics import log_epoch
from fashion_hpo.tracking.reconcile import RECONCILED, RECOVERED, reconcile_runs
from fashion_hpo.tracking.runs import parent_run
from fashion_hpo.tracking.trials import run_context_tags, tracked_objective
from tests.conftest import subprocess_env, temporary_tracking
from tests.test_scale_out import STUDY, finish, running_trial_of, start, study_command
from tests.test_tracking import EPOCHS, PruneTrialOne


@pytest.fixture(scope="module")
def migrated_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow SQLite store, created once: creating one (MLflow's migrations) takes seconds."""
    folder = tmp_path_factory.mktemp("store")
    with temporary_tracking(folder):
        MlflowClient().search_experiments()
    return folder / "mlflow.db"


@pytest.fixture
def work(migrated_store: Path, tmp_path: Path) -> Path:
    """The test's folder, holding an empty MLflow store (a copy of the one created once)."""
    shutil.copy(migrated_store, tmp_path / "mlflow.db")
    return tmp_path


@pytest.fixture
def tracking_store(work: Path) -> Iterator[str]:
    """A fresh MLflow store for one test, as the `tracking_uri` fixture gives, without its seconds of migrations."""
    with temporary_tracking(work) as uri:
        yield uri


def study_settings(tmp_path: Path, n_trials: int, grace_period: int = 600) -> RunSettings:
    """A study of `n_trials` tiny trials on SQLite."""
    storage = f"sqlite:///{tmp_path}/optuna.db"
    return RunSettings(
        n_trials=n_trials,
        epochs=EPOCHS,
        study_name="rec",
        storage=storage,
        baseline_trial=False,
        grace_period=grace_period,
    )


def past_grace(settings: RunSettings) -> RunSettings:
    """The settings as seen past the grace period (Optuna allows none shorter than a second): every finished
    trial's RUNNING run is stuck."""
    return replace(settings, grace_period=0)


def run_trials(
    data: FashionData, settings: RunSettings, tracked: bool = True, closed: bool = True
) -> tuple[optuna.Study, str]:
    """The study's trials (trial 1 pruned), each in its own child run as `fashion-hpo study` runs them, or, with
    `tracked` off, with no run at all (as when the tracking server was down), or, with `closed` off, with runs that
    no callback closed (as when the worker died just before it); returns the study and parent run."""
    study = open_study(settings)
    study.pruner = PruneTrialOne()
    objective = make_objective(data, RunSettings(epochs=EPOCHS, seed=0), report=log_epoch if tracked else None)
    with parent_run(settings) as run_id:
        if tracked:
            wrapped, tracker = tracked_objective(objective, settings)
            callbacks = [tracker] if closed else []
            run_search(study, wrapped, settings, callbacks=callbacks)
        else:
            run_search(study, objective, settings)
    return study, run_id


def left_running(run_ids: list[str]) -> None:
    """The state a worker killed inside the callback leaves: the callback had resumed the run."""
    for run_id in run_ids:
        MlflowClient().update_run(run_id, status="RUNNING")


def unlinked_run(parent_id: str, number: int) -> str:
    """A run as a worker killed between creating a trial's run and linking it leaves: tagged, named, RUNNING."""
    client = MlflowClient()
    experiment = client.get_run(parent_id).info.experiment_id
    tags = {STUDY_TAG: "rec", TRIAL_NUMBER_TAG: str(number), "mlflow.parentRunId": parent_id}
    return client.create_run(experiment, tags=tags, run_name=str(number)).info.run_id


def trial_runs(study_name: str = "rec") -> list[mlflow.entities.Run]:
    """Every run of the study that tracks a trial, in any experiment."""
    client = MlflowClient()
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, f"tags.{STUDY_TAG} = '{study_name}'", max_results=1000)
    return [run for run in runs if TRIAL_NUMBER_TAG in run.data.tags]


def test_run_its_callback_never_closed_gets_params_state_curve_and_status(
    tiny_data: FashionData, tracking_store: str, tmp_path: Path
) -> None:
    settings = study_settings(tmp_path, n_trials=2)
    study, parent_id = run_trials(tiny_data, settings, closed=False)
    run_ids = [trial_run_id(trial) or "" for trial in study.trials]
    assert [MlflowClient().get_run(run_id).data.tags["state"] for run_id in run_ids] == ["RUNNING"] * 2
    assert reconcile_runs(study, settings, parent_id).ended == [], "within the grace period: maybe a live callback"
    assert sorted(reconcile_runs(study, past_grace(settings), parent_id).ended) == sorted(run_ids)
    runs = [MlflowClient().get_run(run_id) for run_id in run_ids]
    assert [run.info.status for run in runs] == ["FINISHED", "KILLED"]
    assert [run.data.tags["state"] for run in runs] == ["COMPLETE", "PRUNED"]
    for run, trial in zip(runs, study.trials, strict=True):
        assert run.data.params == {"model": "mlp", **{k: str(v) for k, v in trial.params.items()}}
        curve = MlflowClient().get_metric_history(run.info.run_id, VAL_ACCURACY)
        assert {m.step: m.value for m in curve} == trial.intermediate_values
        assert "left RUNNING" in run.data.tags[RECONCILED]


def test_running_run_of_a_finished_trial_gets_the_status_of_its_state(
    tiny_data: FashionData, tracking_store: str, tmp_path: Path
) -> None:
    settings = study_settings(tmp_path, n_trials=2)
    study, parent_id = run_trials(tiny_data, settings)
    run_ids = [trial_run_id(trial) or "" for trial in study.trials]
    left_running(run_ids)
    result = reconcile_runs(study, past_grace(settings), parent_id)
    runs = [MlflowClient().get_run(run_id) for run_id in run_ids]
    assert [trial.state for trial in study.trials] == [TrialState.COMPLETE, TrialState.PRUNED]
    assert [run.info.status for run in runs] == ["FINISHED", "KILLED"]
    assert all("left RUNNING" in run.data.tags[RECONCILED] for run in runs)
    assert sorted(result.ended) == sorted(run_ids)


def test_dead_workers_run_is_ended_failed_with_its_stuck_trial_run(
    tiny_data: FashionData, tracking_store: str, tmp_path: Path
) -> None:
    settings = study_settings(tmp_path, n_trials=1)
    study, worker_id = run_trials(tiny_data, settings)
    left_running([trial_run_id(study.trials[0]) or "", worker_id])
    reconcile_runs(study, past_grace(settings), parent_run_id=None)
    worker = MlflowClient().get_run(worker_id)
    assert worker.info.status == "FAILED"
    assert "worker died" in worker.data.tags[RECONCILED]


def test_own_run_is_never_ended(tiny_data: FashionData, tracking_store: str, tmp_path: Path) -> None:
    settings = study_settings(tmp_path, n_trials=1)
    study, parent_id = run_trials(tiny_data, settings)
    left_running([trial_run_id(study.trials[0]) or "", parent_id])
    reconcile_runs(study, past_grace(settings), parent_id)
    assert MlflowClient().get_run(parent_id).info.status == "RUNNING"


def test_run_of_a_trial_that_just_ended_is_left_to_its_callback(
    tiny_data: FashionData, tracking_store: str, tmp_path: Path
) -> None:
    settings = study_settings(tmp_path, n_trials=1)
    study, parent_id = run_trials(tiny_data, settings)
    run_id = trial_run_id(study.trials[0]) or ""
    left_running([run_id])
    assert reconcile_runs(study, settings, parent_id).ended == []
    assert MlflowClient().get_run(run_id).info.status == "RUNNING"


def test_run_of_a_running_trial_is_left_to_the_heartbeat_reclaim(tracking_store: str, tmp_path: Path) -> None:
    settings = study_settings(tmp_path, n_trials=1)
    study = open_study(settings)
    trial = study.ask()
    with parent_run(settings) as parent_id:
        run_id = unlinked_run(parent_id, trial.number)
        assert reconcile_runs(study, past_grace(settings), parent_id).ended == []
    assert MlflowClient().get_run(run_id).info.status == "RUNNING"


def test_unlinked_run_of_a_reclaimed_trial_is_found_by_tag_and_number_and_failed(
    tracking_store: str, tmp_path: Path
) -> None:
    settings = study_settings(tmp_path, n_trials=1)
    study = open_study(settings)
    trial = study.ask()
    with parent_run(settings) as parent_id:
        run_id = unlinked_run(parent_id, trial.number)
        study.tell(trial, state=TrialState.FAIL)  # as the heartbeat reclaim does, just now
        reconcile_runs(study, settings, parent_id, dead={trial.number})
    run = MlflowClient().get_run(run_id)
    assert (run.info.status, run.info.run_name) == ("FAILED", "trial-0000")
    assert "before the run was linked" in run.data.tags[RECONCILED]


def test_finished_trial_without_a_run_gets_one_from_the_trial(
    tiny_data: FashionData, tracking_store: str, tmp_path: Path
) -> None:
    settings = study_settings(tmp_path, n_trials=1)
    study, _ = run_trials(tiny_data, settings, tracked=False)
    (trial,) = study.trials
    with parent_run(settings) as parent_id:
        assert reconcile_runs(study, settings, parent_id).recovered == [0]
    (run,) = trial_runs()
    history = MlflowClient().get_metric_history(run.info.run_id, VAL_ACCURACY)
    assert {m.step: m.value for m in history} == trial.intermediate_values
    assert run.data.params == {"model": "mlp", **{k: str(v) for k, v in trial.params.items()}}
    assert (run.info.status, run.info.run_name, run.data.tags[RECOVERED]) == ("FINISHED", "trial-0000", "true")
    assert run.data.tags["mlflow.parentRunId"] == parent_id


def test_second_reconcile_creates_nothing(tiny_data: FashionData, tracking_store: str, tmp_path: Path) -> None:
    settings = study_settings(tmp_path, n_trials=2)
    study, _ = run_trials(tiny_data, settings, tracked=False)
    with parent_run(settings) as parent_id:
        first = reconcile_runs(study, settings, parent_id)
        second = reconcile_runs(study, settings, parent_id)
    assert (first.recovered, second.recovered) == ([0, 1], [])
    assert sorted(run.data.tags[TRIAL_NUMBER_TAG] for run in trial_runs()) == ["0", "1"]


def test_workers_reconciling_together_create_each_missing_run_once(
    tiny_data: FashionData, tracking_store: str, tmp_path: Path
) -> None:
    settings = study_settings(tmp_path, n_trials=2)
    study, parent_id = run_trials(tiny_data, settings, tracked=False)
    together = threading.Barrier(4, timeout=60)

    def reconcile() -> list[int]:
        together.wait()
        return reconcile_runs(study, settings, parent_id).recovered

    with ThreadPoolExecutor(4) as pool:
        recovered = [number for result in pool.map(lambda _: reconcile(), range(4)) for number in result]
    assert sorted(recovered) == [0, 1]
    assert Counter(run.data.tags[TRIAL_NUMBER_TAG] for run in trial_runs()) == {"0": 1, "1": 1}


def test_run_context_tags_tag_runs_created_meanwhile_and_then_stop(tracking_store: str) -> None:
    with run_context_tags({STUDY_TAG: "rec", TRIAL_NUMBER_TAG: "7"}), mlflow.start_run() as inside:
        pass
    with mlflow.start_run() as after:
        pass
    assert {STUDY_TAG: "rec", TRIAL_NUMBER_TAG: "7"}.items() <= inside.data.tags.items()
    assert STUDY_TAG not in after.data.tags and "MLFLOW_RUN_CONTEXT" not in os.environ


# --- The real thing: workers killed at points of a trial's life, then a fresh worker on the same study ------------

# Short windows (a few milliseconds of database writes) cannot be hit from outside reliably: a worker started through
# this bootstrap stops itself (SIGSTOP) at the point named by STOP_AT, and the test then SIGKILLs it.
STOP_AT = "FASHION_HPO_TEST_STOP_AT"
BOOTSTRAP = """
import os, runpy, signal
from fashion_hpo.storage.rdb import BudgetedStorage
from fashion_hpo.tracking.trials import TrialTracker

def stop():
    os.kill(os.getpid(), signal.SIGSTOP)

if os.environ["FASHION_HPO_TEST_STOP_AT"] == "in-callback":
    # In the callback, before it closes the run: Optuna has recorded the trial's end and MLflow ended its run.
    TrialTracker.__call__ = lambda self, study, trial: stop()
else:
    # Just after the trial's run was created, before the trial links to it (the study's storage class: it wraps
    # Optuna's methods with its reconnecting retry when it is defined).
    link = BudgetedStorage.set_trial_system_attr
    def stop_before_link(self, trial_id, key, value):
        if key == "mlflow_run_id":
            stop()
        return link(self, trial_id, key, value)
    BudgetedStorage.set_trial_system_attr = stop_before_link
runpy.run_module("fashion_hpo", run_name="__main__", alter_sys=True)
"""
POINTS = ("in-callback", "before-link", "training")
N_TRIALS = 5
RECOVERY = ["--heartbeat-interval", "1", "--grace-period", "3"]
# Trials long enough for the "training" worker to be caught mid-trial from outside; every worker trains its trials
# alike, since a study refuses another --epochs or --max-train-samples.
LONGER_TRIALS = ["--epochs", "3", "--max-train-samples", "15000"]


def start_doomed(work: Path, data_dir: Path, storage: str, point: str) -> subprocess.Popen[str]:
    """A worker (its run named after `point`) to be killed at `point`: one that stops itself there, or, for
    "training", one caught mid-trial from outside."""
    command = study_command(data_dir, storage, N_TRIALS, *RECOVERY, *LONGER_TRIALS, "--run-name", point)
    if point == "training":
        return start([*command, "--pruner", "none"], work)
    return start([sys.executable, "-c", BOOTSTRAP, *command[3:]], work, {**subprocess_env(work), STOP_AT: point})


def stopped(process: subprocess.Popen[str]) -> bool:
    """Whether `process` has stopped itself."""
    return Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"


def kill_at_their_points(
    storage: str, doomed: dict[str, subprocess.Popen[str]], timeout: float = 300
) -> FrozenTrial | None:
    """SIGKILL each worker at its point: as it stops itself, or, for "training", mid-trial (polled from outside);
    returns the trial killed mid-training."""
    deadline = time.monotonic() + timeout
    mid_trial = None
    while time.monotonic() < deadline and any(process.returncode is None for process in doomed.values()):
        for point, process in doomed.items():
            if process.returncode is not None:
                continue
            assert process.poll() is None, f"the {point} worker exited: {process.communicate()}"
            caught = running_trial_of(storage, point) if point == "training" else None
            if caught is not None or (point != "training" and stopped(process)):
                process.kill()
                process.communicate(timeout=30)
                mid_trial = caught or mid_trial
        time.sleep(0.5)
    assert all(process.returncode == -signal.SIGKILL for process in doomed.values()), "every worker reached its point"
    return mid_trial


def all_runs(work: Path) -> list[mlflow.entities.Run]:
    """Every run in the store of `work`."""
    with temporary_tracking(work):
        client = MlflowClient()
        return client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)


def by_name(runs: list[mlflow.entities.Run]) -> dict[str, mlflow.entities.Run]:
    """The runs by name (the workers' are named after their points)."""
    return {run.info.run_name: run for run in runs}


def trial_run_of(runs: list[mlflow.entities.Run], number: int) -> mlflow.entities.Run:
    """The one run of trial `number`."""
    (run,) = [r for r in runs if r.data.tags.get(STUDY_TAG) and r.data.tags.get(TRIAL_NUMBER_TAG) == str(number)]
    return run


def trial_under(runs: list[mlflow.entities.Run], worker: str) -> int:
    """The number of the one trial whose run hangs under the run of `worker`."""
    parent = by_name(runs)[worker].info.run_id
    (number,) = [int(r.data.tags[TRIAL_NUMBER_TAG]) for r in runs if r.data.tags.get(MLFLOW_PARENT_RUN_ID) == parent]
    return number


def trials_of(storage: str) -> dict[int, FrozenTrial]:
    """The study's trials by number."""
    return {t.number: t for t in optuna.load_study(study_name=STUDY, storage=engine_url(storage)).trials}


@pytest.mark.slow
def test_fresh_worker_leaves_no_run_running_and_every_trial_with_its_run(work: Path, real_data_dir: Path) -> None:
    storage = f"sqlite:///{work}/optuna.db"
    doomed = {point: start_doomed(work, real_data_dir, storage, point) for point in POINTS}
    with temporary_tracking(work):
        mid_trial = kill_at_their_points(storage, doomed)
    runs, trials = all_runs(work), trials_of(storage)
    assert mid_trial is not None, "a trial killed mid-training"
    in_callback, before_link = trial_under(runs, "in-callback"), trial_under(runs, "before-link")
    # The doomed workers still running reclaim the others' trials as they go: some runs may be reconciled already.
    assert trials[in_callback].state.is_finished() and trial_run_id(trials[in_callback]) is not None
    assert trial_run_id(trials[before_link]) is None and trial_run_of(runs, before_link)

    finish(start(study_command(real_data_dir, storage, N_TRIALS, *RECOVERY, *LONGER_TRIALS), work), timeout=300)
    runs, trials = all_runs(work), trials_of(storage)
    assert all(trial.state.is_finished() for trial in trials.values())
    assert [run.info.run_name for run in runs if run.info.status == "RUNNING"] == []
    assert all(trial_run_of(runs, number) for number in trials), "each trial has its run, and only one"
    assert [by_name(runs)[point].info.status for point in POINTS] == ["FAILED"] * 3, "the killed workers' runs"
    callback_run, link_run = trial_run_of(runs, in_callback), trial_run_of(runs, before_link)
    assert callback_run.info.status == RUN_STATUS[trials[in_callback].state]
    assert "left RUNNING" in callback_run.data.tags[RECONCILED]
    assert (link_run.info.status, link_run.info.run_name) == ("FAILED", trial_run_name(before_link))
    assert "before the run was linked" in link_run.data.tags[RECONCILED]
    assert trial_run_of(runs, mid_trial.number).info.status == "FAILED", "ended by the heartbeat reclaim"


def test_reconcile_reads_no_closed_run_of_a_linked_trial(
    tiny_data: FashionData, tracking_store: str, tmp_path: Path
) -> None:
    """With a finished trial lacking a run, reconcile looks among the runs left running and those it tagged, never
    at every run of the study: the closed runs of linked trials (nearly all, in a large study) are not read."""
    settings = study_settings(tmp_path, n_trials=3)
    study, _ = run_trials(tiny_data, replace(settings, n_trials=2))
    closed = {trial_run_id(t) for t in study.trials}
    study.add_trial(optuna.trial.create_trial(value=0.5, params={}, distributions={}))  # finished, no run
    read: list[str] = []
    search = MlflowClient.search_runs

    def recording(client: MlflowClient, *args: object, **kwargs: object) -> object:
        found = search(client, *args, **kwargs)  # type: ignore[arg-type]
        read.extend(run.info.run_id for run in found)
        return found

    with parent_run(settings) as parent_id, mock.patch.object(MlflowClient, "search_runs", recording):
        first = reconcile_runs(study, settings, parent_id)
        second = reconcile_runs(study, settings, parent_id)
    assert (first.recovered, second.recovered) == ([2], [])
    assert len(closed) == 2 and None not in closed and not closed & set(read)
