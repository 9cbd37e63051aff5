"""optuna-integration's MLflowCallback, as this project uses it: one nested run per trial, named from its creation,
with a status per trial state.

The one module that uses MLflowCallback (deprecated in optuna-integration 4.9.0, with no replacement named; kept, pinned
below 6, because the project tracks its trials through it). What we rely on of its inside is listed in PRIVATE CONTRACT
below, and tests/test_tracking.py fails if it changes."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import optuna
from mlflow.entities import Param, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import MAX_TAG_VAL_LENGTH
from optuna.trial import FrozenTrial, TrialState
from optuna_integration.mlflow import MLflowCallback
from optuna_integration.mlflow.mlflow import RUN_ID_ATTRIBUTE_KEY  # private: see PRIVATE CONTRACT below

from fashion_hpo.core.constants import (
    INTERRUPTED,
    OPTIMIZED_METRIC,
)
from fashion_hpo.core.quiet import experimental_features
from fashion_hpo.tracking.metrics import TRIAL_METRICS
from fashion_hpo.training.checkpoint import RESUMED_FROM_EPOCH

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
# The status of a finished trial's run per trial state, so that the UI's status column tells them apart.
RUN_STATUS = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "KILLED", TrialState.FAIL: "FAILED"}

# The tag in which the callback records a run's trial number; every trial run carries it from its creation on.
TRIAL_NUMBER_TAG = "number"

# The tag in which the callback records the trial's state. A trial run carries STATE_TAG=RUNNING from its creation
# until the callback writes the final state: reconcile finds a run whose worker died before that (its status may
# already say FINISHED or FAILED, which MLflow set when the objective returned or raised).
STATE_TAG, RUNNING = "state", "RUNNING"


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
        params = run_params(trial.params, self.model) + resume_params(trial)
        client.log_batch(run_id, metrics=TRIAL_METRICS.take(), params=params, tags=tags)
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
        with experimental_features():
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


def resume_params(trial: FrozenTrial) -> list[Param]:
    """A retried trial's run param saying from which saved epoch it resumed (0: it trained from scratch)."""
    resumed = trial.user_attrs.get(RESUMED_FROM_EPOCH)
    return [Param(RESUMED_FROM_EPOCH, str(resumed))] if resumed is not None else []


def truncated(value: str) -> str:
    """A tag value cut to MLflow's maximum length, as the callback cuts it."""
    return value if len(value) <= MAX_TAG_VAL_LENGTH else f"{value[: MAX_TAG_VAL_LENGTH - 3]}..."
