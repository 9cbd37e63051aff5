"""Trials that survive preemption: each epoch's state saved, a retry of a trial whose worker died resumed from it.

Unit tests on the tiny synthetic data; the slow test SIGKILLs a real worker after its trial's second epoch."""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
import torch
from mlflow.tracking import MlflowClient
from optuna.trial import FrozenTrial, TrialState

from fashion_hpo.core.constants import VAL_ACCURACY
from fashion_hpo.core.settings import RunSettings
from fashion_hpo.data.splits import FashionData
from fashion_hpo.search.objective import make_objective, study_checkpoints
from fashion_hpo.search.space import config_from_params
from fashion_hpo.storage.rdb import retry_stale_trial
from fashion_hpo.tracking.callback import resume_params
from fashion_hpo.training.checkpoint import (
    RESUMED_FROM_EPOCH,
    EpochCheckpoint,
    checkpoint_folder,
    read_checkpoint,
    training_key,
    trial_checkpoint,
)
from fashion_hpo.training.loop import EpochResult, build_and_fit
from tests.conftest import MLP_PARAMS, subprocess_env
from tests.test_reconcile import stopped, trial_run_of
from tests.test_restarts import QUICK_RECOVERY, load_trials
from tests.test_scale_out import finish, start, study_command

CONFIG = config_from_params(MLP_PARAMS, "mlp")  # dropout on: resuming must restore torch's random state too
EPOCHS = 4


class Stop(Exception):
    """Raised from `on_epoch` to end training, as a dead worker would, after a chosen epoch."""


def stop_after(epoch: int) -> Callable[[EpochResult], None]:
    """An `on_epoch` that stops training after `epoch`."""

    def on_epoch(result: EpochResult) -> None:
        if result.epoch == epoch:
            raise Stop

    return on_epoch


def scores(result: EpochResult) -> tuple[int, float, float, float]:
    """An epoch's result without its wall time."""
    return result.epoch, result.train_loss, result.val.loss, result.val.accuracy


def test_resuming_from_epoch_two_trains_what_an_uninterrupted_run_trains(
    tiny_data: FashionData, tmp_path: Path
) -> None:
    key = training_key(CONFIG, EPOCHS, len(tiny_data.train))
    whole = build_and_fit(CONFIG, tiny_data.train, tiny_data.val, EPOCHS, seed=5)
    first = EpochCheckpoint(tmp_path / "first.pt", key)
    with pytest.raises(Stop):
        build_and_fit(CONFIG, tiny_data.train, tiny_data.val, EPOCHS, 5, stop_after(2), first)
    saved = read_checkpoint(first.path, key)
    assert saved is not None and saved.epoch == 2
    heard: list[EpochResult] = []
    torch.manual_seed(999)  # whatever the global random state before, the checkpoint's is put back
    second = EpochCheckpoint(tmp_path / "second.pt", key, saved)
    resumed = build_and_fit(CONFIG, tiny_data.train, tiny_data.val, EPOCHS, 77, heard.append, second)
    assert [r.epoch for r in heard] == [1, 2, 3, 4], "each epoch heard once: two saved, two trained"
    assert [scores(r) for r in heard[:2]] == [scores(r) for r in whole.history[:2]], "the saved epochs, as they were"
    assert [scores(r) for r in resumed.history] == [scores(r) for r in whole.history]
    for name, tensor in whole.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name
    last = read_checkpoint(second.path, key)
    assert last is not None and last.epoch == 4, "the resumed run saves on after its epochs"


def test_a_checkpoint_of_another_training_or_a_broken_one_is_not_resumed(
    tiny_data: FashionData, tmp_path: Path
) -> None:
    key = training_key(CONFIG, 2, len(tiny_data.train))
    checkpoint = EpochCheckpoint(tmp_path / "t.pt", key)
    build_and_fit(CONFIG, tiny_data.train, tiny_data.val, 2, 0, checkpoint=checkpoint)
    assert read_checkpoint(checkpoint.path, key) is not None
    assert read_checkpoint(checkpoint.path, training_key(CONFIG, 3, len(tiny_data.train))) is None, "other epochs"
    assert read_checkpoint(tmp_path / "missing.pt", key) is None
    (tmp_path / "broken.pt").write_bytes(checkpoint.path.read_bytes()[:100])
    assert read_checkpoint(tmp_path / "broken.pt", key) is None


def test_studies_of_one_name_in_two_storages_keep_their_checkpoints_apart(tmp_path: Path) -> None:
    assert checkpoint_folder(tmp_path, "s", "sqlite:///a.db") != checkpoint_folder(tmp_path, "s", "sqlite:///b.db")
    assert checkpoint_folder(tmp_path, "a/../b", "x").parent == tmp_path


def settings_in(tmp_path: Path) -> RunSettings:
    """Settings of a tiny study whose checkpoints go to `tmp_path`."""
    return RunSettings(epochs=EPOCHS, seed=3, checkpoint_dir=str(tmp_path / "ckpt"))


def study_of_one_failed_trial(tiny_data: FashionData, settings: RunSettings, keep: Path | None) -> optuna.Study:
    """A study whose trial 0 stopped after reporting epoch 2, as a dead worker's would, with its retry queued; `keep`:
    where its epoch-2 checkpoint is kept and put back from (a dead worker's is left behind), None to leave none."""
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())
    study.enqueue_trial(MLP_PARAMS)
    folder = study_checkpoints(settings)

    def die_after_epoch_two(trial: optuna.Trial, result: EpochResult) -> None:
        if result.epoch == 2 and keep is not None:  # epoch 2 saved, and reported once this returns
            shutil.copy(trial_checkpoint(folder, trial.number), keep)
        if result.epoch == 3:
            raise Stop

    study.optimize(make_objective(tiny_data, settings, die_after_epoch_two), n_trials=1, catch=(Stop,))
    assert not trial_checkpoint(folder, 0).exists(), "a trial that ended in its worker removes its checkpoint"
    if keep is not None:
        shutil.copy(keep, trial_checkpoint(folder, 0))
    retry_stale_trial(study, study.trials[0])
    return study


def run_trial(
    study: optuna.Study, tiny_data: FashionData, settings: RunSettings
) -> tuple[FrozenTrial, list[EpochResult]]:
    """Run the study's next (queued) trial; returns it and the epochs its reporter heard."""
    heard: list[EpochResult] = []
    study.optimize(make_objective(tiny_data, settings, lambda t, r: heard.append(r)), n_trials=1)
    return study.trials[-1], heard


def test_a_retry_resumes_after_the_saved_epoch_and_reports_each_epoch_once(
    tiny_data: FashionData, tmp_path: Path
) -> None:
    settings = settings_in(tmp_path)
    study = study_of_one_failed_trial(tiny_data, settings, keep=tmp_path / "left-behind.pt")
    original = study.trials[0]
    retry, heard = run_trial(study, tiny_data, settings)
    assert original.state == TrialState.FAIL and sorted(original.intermediate_values) == [1, 2]
    assert retry.state == TrialState.COMPLETE and retry.user_attrs[RESUMED_FROM_EPOCH] == 2
    assert [r.epoch for r in heard] == [1, 2, 3, 4] and sorted(retry.intermediate_values) == [1, 2, 3, 4]
    assert {s: retry.intermediate_values[s] for s in (1, 2)} == original.intermediate_values
    whole = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())
    whole.enqueue_trial(MLP_PARAMS)
    _, uninterrupted = run_trial(whole, tiny_data, settings_in(tmp_path / "other"))
    assert [r.train_loss for r in heard] == [r.train_loss for r in uninterrupted], "trains as trial 0 did, whole"
    assert list(study_checkpoints(settings).iterdir()) == [], "both trials' checkpoints removed at the retry's end"
    assert [(p.key, p.value) for p in resume_params(retry)] == [(RESUMED_FROM_EPOCH, "2")]


def test_a_retry_that_finds_no_checkpoint_trains_from_scratch_and_says_so(
    tiny_data: FashionData, tmp_path: Path
) -> None:
    settings = settings_in(tmp_path)
    study = study_of_one_failed_trial(tiny_data, settings, keep=None)  # as when it is on another machine's disk
    retry, heard = run_trial(study, tiny_data, settings)
    assert retry.state == TrialState.COMPLETE and retry.user_attrs[RESUMED_FROM_EPOCH] == 0
    assert [r.epoch for r in heard] == [1, 2, 3, 4] and sorted(retry.intermediate_values) == [1, 2, 3, 4]
    whole = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())
    whole.enqueue_trial(MLP_PARAMS)
    _, trial_zero = run_trial(whole, tiny_data, settings_in(tmp_path / "other"))
    assert heard[0].train_loss != trial_zero[0].train_loss, "its own seed from epoch 1: trained from scratch"


def test_a_trial_of_its_own_records_no_resume(tiny_data: FashionData, tmp_path: Path) -> None:
    settings = settings_in(tmp_path)
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial(MLP_PARAMS)
    study.optimize(make_objective(tiny_data, settings), n_trials=1)
    assert RESUMED_FROM_EPOCH not in study.trials[0].user_attrs and resume_params(study.trials[0]) == []
    assert list(study_checkpoints(settings).iterdir()) == []


# --- The real thing: a worker SIGKILLed after its trial's second epoch, and a fresh worker's retry ---------------

# A worker that stops itself (SIGSTOP) once its trial has reported its second epoch to the storage; the test then
# SIGKILLs it. By then the epoch's checkpoint is written: a trial saves before it reports.
AFTER_EPOCH_TWO = """
import os, runpy, signal
import optuna

report = optuna.trial.Trial.report
def report_then_stop(self, value, step):
    report(self, value, step)
    if step == 2:
        os.kill(os.getpid(), signal.SIGSTOP)
optuna.trial.Trial.report = report_then_stop
runpy.run_module("fashion_hpo", run_name="__main__", alter_sys=True)
"""
KILL_EPOCHS = ("--epochs", "4", "--max-train-samples", "600", "--pruner", "none")


def kill_after_epoch_two(command: list[str], work: Path, timeout: float = 300) -> None:
    """Start a worker through AFTER_EPOCH_TWO and SIGKILL it once it stopped itself."""
    doomed = start([sys.executable, "-c", AFTER_EPOCH_TWO, *command[3:]], work, subprocess_env(work))
    deadline = time.monotonic() + timeout
    while not stopped(doomed):
        assert doomed.poll() is None, doomed.communicate()
        assert time.monotonic() < deadline, "the worker never finished its second epoch"
        time.sleep(0.2)
    doomed.kill()
    doomed.communicate(timeout=30)


@pytest.mark.slow
def test_a_sigkilled_workers_trial_resumes_at_epoch_three_in_a_fresh_worker(
    tmp_path: Path, real_data_dir: Path
) -> None:
    storage = f"sqlite:///{tmp_path}/o.db"
    checkpoints = tmp_path / "ckpt"
    command = study_command(
        real_data_dir, storage, 2, *KILL_EPOCHS, *QUICK_RECOVERY, "--checkpoint-dir", str(checkpoints)
    )
    kill_after_epoch_two(command, tmp_path)
    (killed,) = load_trials(storage)
    assert killed.state == TrialState.RUNNING and sorted(killed.intermediate_values) == [1, 2]
    assert len(list(checkpoints.rglob("*.pt"))) == 1, "the killed trial's checkpoint is left behind"
    finish(start(command, tmp_path))
    trials = {t.number: t for t in load_trials(storage)}
    retry = next(t for t in trials.values() if t.system_attrs.get("failed_trial") == killed.number)
    assert trials[killed.number].state == TrialState.FAIL and retry.state == TrialState.COMPLETE
    assert retry.user_attrs[RESUMED_FROM_EPOCH] == 2
    assert sorted(retry.intermediate_values) == [1, 2, 3, 4]
    assert {s: retry.intermediate_values[s] for s in (1, 2)} == killed.intermediate_values, "epochs 1-2 not retrained"
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)
    run, killed_run = trial_run_of(runs, retry.number), trial_run_of(runs, killed.number)
    assert (run.data.tags[RESUMED_FROM_EPOCH], run.data.params[RESUMED_FROM_EPOCH]) == ("2", "2")
    steps = [m.step for m in client.get_metric_history(run.info.run_id, VAL_ACCURACY)]
    assert sorted(steps) == [1, 2, 3, 4], f"the retry's curve, each step once: {steps}"
    killed_steps = [m.step for m in client.get_metric_history(killed_run.info.run_id, VAL_ACCURACY)]
    assert len(set(killed_steps)) == len(killed_steps) and set(killed_steps) <= {1, 2}, killed_steps
    assert list(checkpoints.rglob("*.pt")) == [], "no checkpoint outlives its trials"
    print(f"killed trial {killed.number}: storage {sorted(killed.intermediate_values)}, MLflow {sorted(killed_steps)}")
    print(f"retry {retry.number}: storage {sorted(retry.intermediate_values)}, MLflow {sorted(steps)}")
