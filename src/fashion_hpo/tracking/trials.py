"""The objective tracked in MLflow: each trial inside its own nested run, tagged from its creation, closed with the
status of its state (also when it is interrupted or loses the tracking server); the Pareto front tagged."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from unittest import mock

import mlflow
import optuna
from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_RUN_CONTEXT
from mlflow.tracking import MlflowClient
from optuna.trial import FrozenTrial

from fashion_hpo.core.constants import (
    EXCEPTION_MESSAGE,
    EXCEPTION_TYPE,
    INTERRUPTED,
    STUDY_TAG,
)
from fashion_hpo.core.process import connection_lost
from fashion_hpo.core.settings import RunSettings
from fashion_hpo.storage.rdb import retried_trial_number
from fashion_hpo.tracking.callback import RUNNING, STATE_TAG, TRIAL_NUMBER_TAG, Objective, TrialTracker, trial_run_id
from fashion_hpo.tracking.disk import is_disk_full
from fashion_hpo.tracking.metrics import TRIAL_METRICS

# Tag of the runs of a multi-objective study's Pareto-front trials.
PARETO_TAG = "pareto"


def running_trial(trial: optuna.Trial) -> FrozenTrial:
    """The stored (frozen) view of a running trial, which carries the system attributes Optuna's retry sets: one
    read of this trial (Optuna's cache holds no unfinished trial), not a copy of the study's trials.

    `Trial._trial_id` is private, and the one id the storage knows the trial by; Optuna's own callbacks use it
    (tests/test_storage.py::test_a_running_trial_is_read_alone_with_its_retry_attributes fails if it changes)."""
    return trial.storage.get_trial(trial._trial_id)


def tracked_objective(
    objective: Objective,
    settings: RunSettings,
    log_trial_inputs: Callable[[], None] | None = None,
) -> tuple[Objective, TrialTracker]:
    """The objective run inside a nested child run per trial, and the callback that closes those runs.

    `log_trial_inputs` logs the datasets a trial uses to its run, once per trial (not per epoch)."""
    tracker = TrialTracker(settings.model)

    def run_trial(trial: optuna.Trial) -> float | Sequence[float]:
        if log_trial_inputs is not None:
            log_trial_inputs()
        TRIAL_METRICS.start()  # what is still queued when the trial ends goes with the callback's batch
        try:
            return objective(trial)
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt:  # mark_interrupted closes its run, once the study has stopped
            trial.set_user_attr(INTERRUPTED, True)
            run = mlflow.active_run()
            tracker.interrupted = (run.info.run_id, dict(trial.params)) if run is not None else None
            raise
        except Exception as err:
            trial.set_user_attr(EXCEPTION_TYPE, type(err).__name__)
            trial.set_user_attr(EXCEPTION_MESSAGE, str(err)[:1000])
            if connection_lost(err):
                give_up_on_tracking()  # ending the trial's run next would wait through all the retries again
            raise

    tracked = tracker.track(run_trial)

    @functools.wraps(tracked)
    def run_tagged_trial(trial: optuna.Trial) -> float | Sequence[float]:
        tracker.name_next_run(trial.number)
        try:
            with run_context_tags(creation_tags(trial, settings)):
                return tracked(trial)
        except Exception as err:
            if connection_lost(err) or is_disk_full(err):
                # Stopped from outside (the tracking server gone, a disk full), as by an interrupt: not the trial's
                # failure, so it does not use up the budget, and the rerun runs a trial in its place. (Given up on
                # again here: leaving the block restored the environment as it was before the trial.)
                trial.set_user_attr(INTERRUPTED, True)
                give_up_on_tracking()
                tracker.lost = err
            raise

    return run_tagged_trial, tracker


def creation_tags(trial: optuna.Trial, settings: RunSettings) -> dict[str, str]:
    """The tags a trial's run gets from its creation on, before the trial links to it: reconcile finds a run whose
    worker died between by them."""
    tags = {STUDY_TAG: settings.study_name, TRIAL_NUMBER_TAG: str(trial.number), "model": settings.model}
    tags[STATE_TAG] = RUNNING  # until the callback writes the trial's final state
    retried = retried_trial_number(running_trial(trial))
    if retried is not None:  # a retry of a trial whose worker died: the UI links the two
        tags["retry_of_trial"] = str(retried)
    return tags


def give_up_on_tracking() -> None:
    """After MLflow spent its retries on an unreachable tracking server, make its later requests in this process
    fail at once: each would otherwise wait through the whole retry window again (about 4 minutes with MLflow's
    defaults), and the study could not stop for many of them."""
    os.environ[MLFLOW_HTTP_REQUEST_MAX_RETRIES.name] = "0"


def run_context_tags(tags: dict[str, str]) -> AbstractContextManager[object]:
    """Tags that MLflow gives every run created meanwhile, through its MLFLOW_RUN_CONTEXT variable."""
    context = json.dumps({**json.loads(MLFLOW_RUN_CONTEXT.get() or "{}"), **tags})
    return mock.patch.dict(os.environ, {MLFLOW_RUN_CONTEXT.name: context})


def tag_pareto_front(front: list[FrozenTrial], study_name: str) -> None:
    """Tag the runs of a multi-objective study's Pareto-front trials `pareto=true`, to filter them in the UI, and
    untag the runs of trials that a continued study's newer trials (or tighter constraints) put off the front."""
    client = MlflowClient()
    on_front = {run_id for run_id in map(trial_run_id, front) if run_id is not None}
    run = mlflow.active_run()
    tagged: set[str] = set()
    if run is not None:  # the study's trials are runs of the invocation's experiment
        found = client.search_runs([run.info.experiment_id], f"tags.{PARETO_TAG} = 'true'")
        tagged = {r.info.run_id for r in found if r.data.tags.get(STUDY_TAG) == study_name}
    for run_id in on_front - tagged:
        client.set_tag(run_id, PARETO_TAG, "true")
    for run_id in tagged - on_front:
        client.delete_tag(run_id, PARETO_TAG)
