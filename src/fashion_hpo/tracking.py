"""Per-trial MLflow tracking: one nested child run per trial, per-epoch metrics, a status per trial state.

The one module that uses optuna-integration's MLflowCallback (deprecated in optuna-integration 4.9.0, with no
replacement named; kept, pinned below 6, because the project tracks its trials through it). What we rely on of
its inside is listed in PRIVATE CONTRACT below, and tests/test_tracking.py fails if it changes.
"""

from __future__ import annotations

import functools
import json
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import mlflow
import optuna
from mlflow.entities import Metric, Param, RunTag
from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_RUN_CONTEXT
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import MAX_TAG_VAL_LENGTH
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

# PRIVATE CONTRACT with optuna-integration's MLflowCallback (5.0), and MLflow's tag length limit:
# 1. `track_in_mlflow` stores the child run's id in the trial's system attribute named by RUN_ID_ATTRIBUTE_KEY
#    (module optuna_integration.mlflow.mlflow); TrialTracker's `__call__` finds the run there.
# 2. The callback's own `__call__` writes the tags that `callback_tags` below builds, cut to MLflow's
#    MAX_TAG_VAL_LENGTH (mlflow.utils.validation); TrialTracker writes the same, in one batch with the params.
# 3. The callback keeps the (non-empty) `mlflow_kwargs` dict it was given, not a copy, and `track_in_mlflow` names
#    each new run `mlflow_kwargs["run_name"]`, read as the trial starts: TrialTracker sets it per trial.
# tests/test_tracking.py::test_what_tracking_relies_on_inside_mlflow_callback_still_holds checks all three.

# A study's objective: one value, or one per objective of a multi-objective study.
Objective = Callable[[optuna.Trial], float | Sequence[float]]
# Tag of the runs of a multi-objective study's Pareto-front trials.
PARETO_TAG = "pareto"
# The status of a finished trial's run per trial state, so that the UI's status column tells them apart.
RUN_STATUS = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "KILLED", TrialState.FAIL: "FAILED"}
# The tag in which the callback records a run's trial number; every trial run carries it from its creation on.
TRIAL_NUMBER_TAG = "number"
# The tag in which the callback records the trial's state. A trial run carries STATE_TAG=RUNNING from its creation
# until the callback writes the final state: reconcile finds a run whose worker died before that (its status may
# already say FINISHED or FAILED, which MLflow set when the objective returned or raised).
STATE_TAG, RUNNING = "state", "RUNNING"
# Epoch metrics go to the trial's run in one request once this many seconds have passed since the last (live curves
# in the UI); the rest with the callback's batch: a request per epoch was the biggest fixed cost of a short trial.
FLUSH_SECONDS = 1.0


def trial_run_id(trial: FrozenTrial) -> str | None:
    """The id of the child run that tracks `trial`, once the callback has created it."""
    return trial.system_attrs.get(RUN_ID_ATTRIBUTE_KEY)


def trial_run_name(number: int) -> str:
    """A child run's name, zero-padded so the runs table sorts by trial number."""
    return f"trial-{number:04d}"


class TrialTracker(MLflowCallback):
    """optuna-integration's MLflowCallback, with runs named per trial from their creation, statuses per trial state,
    and each trial's outcome written in one request, plus a status update unless it completed (the callback's own
    `__call__` resumes and ends the run: four requests). One trial at a time (studies run with n_jobs=1)."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.interrupted: tuple[str, dict[str, object]] | None = None  # the run and params of an interrupted trial
        self.lost: Exception | None = None  # how the last trial lost the tracking server, for `__call__` to raise
        self.run_kwargs: dict[str, object] = {"nested": True}  # the callback reads run_name from it per trial
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "MLflowCallback has been deprecated", FutureWarning)
            super().__init__(
                metric_name=OPTIMIZED_METRIC,
                create_experiment=False,  # the parent run chose the experiment; children follow it
                mlflow_kwargs=self.run_kwargs,
                tag_trial_user_attrs=True,
            )

    def name_next_run(self, number: int) -> None:
        """Have the next trial's run created with its readable name (see PRIVATE CONTRACT 3)."""
        self.run_kwargs["run_name"] = trial_run_name(number)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Send the finished trial's unsent metrics, its params and the callback's tags in one batch; then, unless it
        completed (its run ended FINISHED), give its run the status of its state.

        A trial that lost the tracking server stops the study here: Optuna catches what the objective raises, and the
        next trial would lose it again (at once, without a run to link: trial after trial, none using up the budget).
        """
        if self.lost is not None:
            lost, self.lost = self.lost, None
            raise lost
        run_id = trial_run_id(trial)
        if run_id is None:
            return
        client = MlflowClient()
        tags = [RunTag(name, value) for name, value in callback_tags(study, trial).items()]
        client.log_batch(run_id, metrics=TRIAL_METRICS.take(), params=run_params(trial.params, self.model), tags=tags)
        if trial.state != TrialState.COMPLETE:  # MLflow ended the run FAILED, or FINISHED if it returned no number
            client.update_run(run_id, status=RUN_STATUS.get(trial.state, "FAILED"))

    def mark_interrupted(self) -> None:
        """Close the run of the trial that an interrupt stopped (MLflow ended it FAILED): its unsent metrics, params
        and state (Optuna recorded FAIL) with the interrupted tag in one batch, then status KILLED."""
        if self.interrupted is not None:
            run_id, params = self.interrupted
            tags = [RunTag(INTERRUPTED, "true"), RunTag(STATE_TAG, TrialState.FAIL.name)]
            MlflowClient().log_batch(
                run_id, metrics=TRIAL_METRICS.take(), params=run_params(params, self.model), tags=tags
            )
            MlflowClient().update_run(run_id, status="KILLED")

    def track(self, objective: Objective) -> Objective:
        """Wrap the objective so each trial runs inside its own nested MLflow run."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
            return self.track_in_mlflow()(objective)


def callback_tags(study: optuna.Study, trial: FrozenTrial) -> dict[str, str]:
    """The tags MLflowCallback(tag_trial_user_attrs=True) gives a finished trial's run (tests/test_tracking.py
    compares them with the callback's own)."""
    directions = [d.name for d in study.directions]
    tags: dict[str, object] = {
        "number": trial.number,
        "datetime_start": trial.datetime_start,
        "datetime_complete": trial.datetime_complete,
        **({"state": trial.state.name} if trial.state.is_finished() else {}),
        "direction": directions if len(directions) != 1 else directions[0],
        **{f"{name}_distribution": str(d) for name, d in trial.distributions.items()},
        **trial.user_attrs,
    }
    return {name: truncated(str(value)) for name, value in tags.items()}


def run_params(trial_params: dict[str, object], model: str | None) -> list[Param]:
    """A trial's params as its run records them: the model kind (when known) and the sampled ones."""
    return [Param(key, str(value)) for key, value in {**({"model": model} if model else {}), **trial_params}.items()]


def truncated(value: str) -> str:
    """A tag value cut to MLflow's maximum length, as the callback cuts it."""
    return value if len(value) <= MAX_TAG_VAL_LENGTH else f"{value[: MAX_TAG_VAL_LENGTH - 3]}..."


class MetricBatches:
    """Metrics for the active run, sent in one request once FLUSH_SECONDS have passed since the last, and at `flush`."""

    def __init__(self) -> None:
        self.pending: list[Metric] = []
        self.sent_at = time.monotonic()

    def start(self) -> None:
        """Begin a new run's batches: drop what an interrupted run left unsent (at most its last FLUSH_SECONDS)."""
        self.take()

    def add(self, metrics: dict[str, float], step: int = 0) -> None:
        """Queue `metrics` at `step`, timestamped now; send the queue if it is due."""
        now = int(time.time() * 1000)
        self.pending += [Metric(name, float(value), now, step) for name, value in metrics.items()]
        if time.monotonic() - self.sent_at >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Send what is queued to the active run."""
        run = mlflow.active_run()
        if self.pending and run is not None:
            MlflowClient().log_batch(run.info.run_id, metrics=self.take())

    def take(self) -> list[Metric]:
        """What is queued, now no longer queued (to send it with other data in one request)."""
        pending, self.pending, self.sent_at = self.pending, [], time.monotonic()
        return pending


# The running trial's metrics: one trial at a time per process (studies run with n_jobs=1; workers are processes).
TRIAL_METRICS = MetricBatches()


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
        # Tagged from its creation on, before the trial links to it: reconcile finds a run whose worker died between.
        tags = {STUDY_TAG: settings.study_name, TRIAL_NUMBER_TAG: str(trial.number), "model": settings.model}
        tags[STATE_TAG] = RUNNING  # until the callback writes the trial's final state
        retried = retried_trial_number(running_trial(trial))
        if retried is not None:  # a retry of a trial whose worker died: the UI links the two
            tags["retry_of_trial"] = str(retried)
        tracker.name_next_run(trial.number)
        with run_context_tags(tags):
            try:
                return tracked(trial)
            except Exception as err:
                if connection_lost(err):
                    # Stopped from outside, as by an interrupt: not the trial's failure, so it does not use up
                    # the budget, and the rerun runs a trial in its place.
                    trial.set_user_attr(INTERRUPTED, True)
                    give_up_on_tracking()
                    tracker.lost = err
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
    """Queue one epoch's metrics for the trial's run, step = epoch (sent once FLUSH_SECONDS have passed, or with the
    callback's batch).

    Batched synchronously: MLflow's asynchronous logging starts and drains a thread pool per run, which cost more
    per trial than it saved (benchmarks/tracking_overhead.py: 1.2 s per trial with it)."""
    metrics = {
        TRAIN_LOSS: result.train_loss,
        VAL_ACCURACY: result.val.accuracy,
        VAL_LOSS: result.val.loss,
        EPOCH_SECONDS: result.seconds,
    }
    TRIAL_METRICS.add(metrics, step=result.epoch)


def log_costs(trial: optuna.Trial, costs: ModelCosts) -> None:
    """Queue the trained model's costs (parameters, FLOPs per image, CPU ms per image) for the trial's run."""
    TRIAL_METRICS.add(costs.as_metrics())


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
