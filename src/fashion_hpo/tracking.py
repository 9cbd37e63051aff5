"""Per-trial MLflow tracking: one nested child run per trial, per-epoch metrics, a status per trial state.

The one module that uses optuna-integration's MLflowCallback (deprecated in optuna-integration 4.9.0, with no
replacement named; kept, pinned below 6, because the project tracks its trials through it). What we rely on of
its inside is listed in PRIVATE CONTRACT below, and tests/test_tracking.py fails if it changes.
"""

from __future__ import annotations

import functools
import json
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import mlflow
import optuna
from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_RUN_CONTEXT
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME
from optuna.trial import FrozenTrial, TrialState
from optuna_integration.mlflow import MLflowCallback
from optuna_integration.mlflow.mlflow import RUN_ID_ATTRIBUTE_KEY  # private: see PRIVATE CONTRACT below

from fashion_hpo.constants import (
    EPOCH_SECONDS,
    EXCEPTION_MESSAGE,
    EXCEPTION_TYPE,
    INTERRUPTED,
    OPTIMIZED_METRIC,
    STUDY_TAG,
    TRAIN_LOSS,
    VAL_ACCURACY,
    VAL_LOSS,
)
from fashion_hpo.costs import ModelCosts
from fashion_hpo.process import connection_lost
from fashion_hpo.settings import RunSettings
from fashion_hpo.storage import retried_trial_number
from fashion_hpo.training import EpochResult

# PRIVATE CONTRACT with optuna-integration's MLflowCallback (5.0):
# 1. `track_in_mlflow` stores the child run's id in the trial's system attribute named by RUN_ID_ATTRIBUTE_KEY
#    (module optuna_integration.mlflow.mlflow), and `__call__` resumes the run stored there.
# 2. `__call__` logs the trial's values through the method `_log_metrics(values)`, which TrialTracker overrides.

# A study's objective: one value, or one per objective of a multi-objective study.
Objective = Callable[[optuna.Trial], float | Sequence[float]]
# Tag of the runs of a multi-objective study's Pareto-front trials.
PARETO_TAG = "pareto"
# The callback ends every trial's run FINISHED; these statuses let the UI's status column tell them apart.
RUN_STATUS = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "KILLED", TrialState.FAIL: "FAILED"}
# The tag in which the callback records a run's trial number; every trial run carries it from its creation on.
TRIAL_NUMBER_TAG = "number"


def trial_run_id(trial: FrozenTrial) -> str | None:
    """The id of the child run that tracks `trial`, once the callback has created it."""
    return trial.system_attrs.get(RUN_ID_ATTRIBUTE_KEY)


def trial_run_name(number: int) -> str:
    """A child run's name, zero-padded so the runs table sorts by trial number."""
    return f"trial-{number:04d}"


class TrialTracker(MLflowCallback):
    """optuna-integration's MLflowCallback, with readable run names and statuses per trial state."""

    def __init__(self) -> None:
        self.interrupted_run_id: str | None = None
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "MLflowCallback has been deprecated", FutureWarning)
            super().__init__(
                metric_name=OPTIMIZED_METRIC,
                create_experiment=False,  # the parent run chose the experiment; children follow it
                mlflow_kwargs={"nested": True},
                tag_trial_user_attrs=True,
            )

    def _log_metrics(self, values: list[float] | None) -> None:
        """Skip: the objective logged `val_accuracy` per epoch, and the trial's value is its last step."""

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Log the finished trial's params and tags, then give its run its name and the status of its state."""
        super().__call__(study, trial)
        run_id = trial_run_id(trial)
        if run_id is not None:
            status = RUN_STATUS.get(trial.state, "FAILED")
            MlflowClient().update_run(run_id, status=status, name=trial_run_name(trial.number))

    def mark_interrupted(self) -> None:
        """End the run of the trial that an interrupt stopped as KILLED (MLflow ended it FAILED)."""
        if self.interrupted_run_id is not None:
            MlflowClient().set_tag(self.interrupted_run_id, INTERRUPTED, "true")
            MlflowClient().update_run(self.interrupted_run_id, status="KILLED")

    def track(self, objective: Objective) -> Objective:
        """Wrap the objective so each trial runs inside its own nested MLflow run."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
            return self.track_in_mlflow()(objective)


def running_trial(trial: optuna.Trial) -> FrozenTrial:
    """The stored (frozen) view of a running trial, which carries the system attributes Optuna's retry sets."""
    running = trial.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    return next(t for t in running if t.number == trial.number)


def tracked_objective(
    objective: Objective,
    settings: RunSettings,
    log_trial_inputs: Callable[[], None] | None = None,
) -> tuple[Objective, TrialTracker]:
    """The objective run inside a nested child run per trial, and the callback that closes those runs.

    `log_trial_inputs` logs the datasets a trial uses to its run, once per trial (not per epoch)."""
    tracker = TrialTracker()

    def run_trial(trial: optuna.Trial) -> float | Sequence[float]:
        tags = {MLFLOW_RUN_NAME: trial_run_name(trial.number), STUDY_TAG: settings.study_name, "model": settings.model}
        retried = retried_trial_number(running_trial(trial))
        if retried is not None:  # a retry of a trial whose worker died: the UI links the two
            tags["retry_of_trial"] = str(retried)
        mlflow.set_tags(tags)
        mlflow.log_param("model", settings.model)
        if log_trial_inputs is not None:
            log_trial_inputs()
        try:
            return objective(trial)
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt:
            trial.set_user_attr(INTERRUPTED, True)
            run = mlflow.active_run()
            tracker.interrupted_run_id = run.info.run_id if run is not None else None
            raise
        except Exception as err:
            if connection_lost(err):
                give_up_on_tracking()  # ending the trial's run next would wait through all the retries again
            trial.set_user_attr(EXCEPTION_TYPE, type(err).__name__)
            trial.set_user_attr(EXCEPTION_MESSAGE, str(err)[:1000])
            raise

    tracked = tracker.track(run_trial)

    @functools.wraps(tracked)
    def run_tagged_trial(trial: optuna.Trial) -> float | Sequence[float]:
        # Tagged from its creation on, before the trial links to it: reconcile finds a run whose worker died between.
        with run_context_tags({STUDY_TAG: settings.study_name, TRIAL_NUMBER_TAG: str(trial.number)}):
            try:
                return tracked(trial)
            except Exception as err:
                if connection_lost(err):
                    # Stopped from outside, as by an interrupt: not the trial's failure, so it does not use up
                    # the budget, and the rerun runs a trial in its place.
                    trial.set_user_attr(INTERRUPTED, True)
                    give_up_on_tracking()
                raise

    return run_tagged_trial, tracker


def give_up_on_tracking() -> None:
    """After MLflow spent its retries on an unreachable tracking server, make its later requests in this process
    fail at once: each would otherwise wait through the whole retry window again (about 4 minutes with MLflow's
    defaults), and the study could not stop for many of them."""
    os.environ[MLFLOW_HTTP_REQUEST_MAX_RETRIES.name] = "0"


@contextmanager
def run_context_tags(tags: dict[str, str]) -> Iterator[None]:
    """Tags that MLflow gives every run created meanwhile, through its MLFLOW_RUN_CONTEXT variable."""
    before = MLFLOW_RUN_CONTEXT.get()
    os.environ[MLFLOW_RUN_CONTEXT.name] = json.dumps({**json.loads(before or "{}"), **tags})
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(MLFLOW_RUN_CONTEXT.name, None)
        else:
            os.environ[MLFLOW_RUN_CONTEXT.name] = before


def log_epoch(trial: optuna.Trial, result: EpochResult) -> None:
    """Log one epoch's metrics to the active (child) run in one call, step = epoch.

    Synchronously: MLflow's asynchronous logging starts and drains a thread pool per run, which cost more per trial
    than it saved (benchmarks/tracking_overhead.py: 1.2 s per trial with it)."""
    metrics = {
        TRAIN_LOSS: result.train_loss,
        VAL_ACCURACY: result.val.accuracy,
        VAL_LOSS: result.val.loss,
        EPOCH_SECONDS: result.seconds,
    }
    mlflow.log_metrics(metrics, step=result.epoch)


def log_costs(trial: optuna.Trial, costs: ModelCosts) -> None:
    """Log the trained model's costs (parameters, FLOPs per image, CPU ms per image) to the trial's run."""
    mlflow.log_metrics(costs.as_metrics())


def tag_pareto_front(front: list[FrozenTrial]) -> None:
    """Tag the runs of a multi-objective study's Pareto-front trials `pareto=true`, to filter them in the UI."""
    client = MlflowClient()
    for trial in front:
        run_id = trial_run_id(trial)
        if run_id is not None:
            client.set_tag(run_id, PARETO_TAG, "true")
