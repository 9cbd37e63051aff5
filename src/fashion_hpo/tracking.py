"""MLflow tracking: one parent run per study invocation, one nested child run per trial, the study's summary.

Every use of optuna-integration's MLflowCallback (deprecated in 5.x, removal planned for 6.0) lives here.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import matplotlib

matplotlib.use("Agg")  # plots are files for MLflow, never windows

import matplotlib.pyplot as plt
import mlflow
import optuna
import torch
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME
from optuna.trial import FrozenTrial, TrialState
from optuna_integration.mlflow import MLflowCallback
from optuna_integration.mlflow.mlflow import RUN_ID_ATTRIBUTE_KEY

from fashion_hpo.constants import (
    CLASS_ACCURACY_PREFIX,
    CLASS_NAMES,
    EPOCH_SECONDS,
    EXCEPTION_MESSAGE,
    EXCEPTION_TYPE,
    INTERRUPTED,
    OPTIMIZED_METRIC,
    TEST_ACCURACY,
    TEST_LOSS,
    TRAIN_LOSS,
    VAL_ACCURACY,
    VAL_LOSS,
)
from fashion_hpo.settings import RunSettings, UsageError, redact_url
from fashion_hpo.storage import sqlite_database, sqlite_file_lock
from fashion_hpo.training import EpochResult, Evaluation

log = logging.getLogger(__name__)

STUDY_TAG = "study_name"
# Optuna's RetryFailedTrialCallback records the number of the trial a retry replaces under this system attribute.
RETRIED_TRIAL_KEY = "failed_trial"
# The callback ends every trial's run FINISHED; these statuses let the UI's status column tell them apart.
RUN_STATUS = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "KILLED", TrialState.FAIL: "FAILED"}


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
        super().__call__(study, trial)
        run_id = trial.system_attrs.get(RUN_ID_ATTRIBUTE_KEY)
        if run_id is not None:
            status = RUN_STATUS.get(trial.state, "FAILED")
            MlflowClient().update_run(run_id, status=status, name=trial_run_name(trial.number))

    def mark_interrupted(self) -> None:
        """End the run of the trial that an interrupt stopped as KILLED (MLflow ended it FAILED)."""
        if self.interrupted_run_id is not None:
            MlflowClient().set_tag(self.interrupted_run_id, "interrupted", "true")
            MlflowClient().update_run(self.interrupted_run_id, status="KILLED")

    def track(self, objective: Callable[[optuna.Trial], float]) -> Callable[[optuna.Trial], float]:
        """Wrap the objective so each trial runs inside its own nested MLflow run."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
            return self.track_in_mlflow()(objective)


def tracked_objective(
    objective: Callable[[optuna.Trial], float], settings: RunSettings
) -> tuple[Callable[[optuna.Trial], float], TrialTracker]:
    """The objective run inside a nested child run per trial, and the callback that closes those runs."""
    tracker = TrialTracker()

    def run_trial(trial: optuna.Trial) -> float:
        tags = {MLFLOW_RUN_NAME: trial_run_name(trial.number), STUDY_TAG: settings.study_name, "model": settings.model}
        retried = trial.storage.get_trial_system_attrs(trial._trial_id).get(RETRIED_TRIAL_KEY)
        if retried is not None:  # a retry of a trial whose worker died: the UI links the two
            tags["retry_of_trial"] = str(retried)
        mlflow.set_tags(tags)
        mlflow.log_param("model", settings.model)
        try:
            return objective(trial)
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt:
            trial.set_user_attr(INTERRUPTED, True)
            tracker.interrupted_run_id = mlflow.active_run().info.run_id
            raise
        except Exception as err:
            trial.set_user_attr(EXCEPTION_TYPE, type(err).__name__)
            trial.set_user_attr(EXCEPTION_MESSAGE, str(err)[:1000])
            raise

    return tracker.track(run_trial), tracker


def end_stale_runs(trial: FrozenTrial) -> None:
    """End the MLflow runs of a trial whose worker stopped sending heartbeats, and of that worker, as FAILED.

    The worker was killed or hung, so nothing else would ever end them; a tag says why."""
    client = MlflowClient()
    run_id = trial.system_attrs.get(RUN_ID_ATTRIBUTE_KEY)
    if run_id is None:
        return  # killed before its run was created
    worker_run_id = client.get_run(run_id).data.tags.get(MLFLOW_PARENT_RUN_ID)
    reason = f"trial {trial.number} stopped sending heartbeats (worker killed or hung); reclaimed and retried"
    fail_running(client, [client.get_run(i) for i in filter(None, (run_id, worker_run_id))], "reclaimed", reason)


def fail_running(client: MlflowClient, runs: list[mlflow.entities.Run], tag: str, reason: str) -> None:
    """End those of `runs` still RUNNING as FAILED, with tag `tag` saying why."""
    for run in runs:
        if run.info.status == "RUNNING":
            client.set_tag(run.info.run_id, tag, reason)
            client.set_terminated(run.info.run_id, status="FAILED")


def end_dead_worker_runs(parent_run_id: str, run_name: str, reason: str) -> None:
    """End the run named `run_name` under `parent_run_id` and its trial runs, where left RUNNING, as FAILED.

    For a worker process that died (killed between or during trials): nothing else would end its runs."""
    client = MlflowClient()
    experiment = [client.get_run(parent_run_id).info.experiment_id]
    worker_runs = client.search_runs(
        experiment, f"tags.mlflow.parentRunId = '{parent_run_id}' and attributes.run_name = '{run_name}'"
    )
    for worker in worker_runs:
        trials = client.search_runs(
            experiment, f"tags.mlflow.parentRunId = '{worker.info.run_id}' and attributes.status = 'RUNNING'"
        )
        fail_running(client, [*trials, worker], "worker_failed", reason)


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


# A reachable server answers at once; an unreachable one should fail in seconds, not after MLflow's
# default retries with backoff (minutes). Users' own settings of these variables win.
PROBE_HTTP_SETTINGS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
}


def check_tracking_store() -> None:
    """Fail fast, before any trial, when the MLflow tracking store cannot be reached."""
    uri = mlflow.get_tracking_uri()
    added = {name: value for name, value in PROBE_HTTP_SETTINGS.items() if name not in os.environ}
    os.environ.update(added)
    try:
        probe_store(uri)
    except Exception as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise UsageError(
            "MLFLOW_TRACKING_URI", f"cannot reach the tracking store {redact_url(uri)}: {reason}"
        ) from None
    finally:
        for name in added:
            os.environ.pop(name, None)


def probe_store(uri: str) -> None:
    """Ask the store for one experiment. Workers started together on a new SQLite store would race to create
    MLflow's tables (a half-migrated schema, `_alembic_tmp_*` clashes): one at a time creates them."""
    with sqlite_file_lock(sqlite_database(uri)):
        MlflowClient().search_experiments(max_results=1)


def choose_experiment(study_name: str) -> None:
    """Use an experiment named after the study, unless `mlflow run` or the user's env already chose one."""
    chosen = ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")
    if not any(os.environ.get(name) for name in chosen):
        mlflow.set_experiment(study_name)


@contextmanager
def parent_run(settings: RunSettings, run_name: str | None = None) -> Iterator[str]:
    """The invocation's run (under `mlflow run`, the project's own run), ended with the right status.

    A worker started by `--workers` nests its run under the run of the command that started it."""
    choose_experiment(settings.study_name)
    run = mlflow.start_run(
        run_name=run_name or settings.run_name or settings.study_name,
        parent_run_id=settings.parent_run_id or None,
        tags={STUDY_TAG: settings.study_name},
    )
    try:
        # `mlflow run` already logged the entry point's parameters; MLflow forbids changing a param.
        logged = run.data.params
        mlflow.log_params({k: v for k, v in settings.loggable().items() if k not in logged})
        yield run.info.run_id
    except KeyboardInterrupt:
        mlflow.end_run("KILLED")  # first, so that a second Ctrl-C cannot leave the run RUNNING
        MlflowClient().set_tag(run.info.run_id, "interrupted", "true")
        raise
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    mlflow.end_run("FINISHED")


def log_study_summary(
    study: optuna.Study, counts: dict[str, int], best: FrozenTrial | None, artifacts: bool = True
) -> None:
    """On the parent run: trial counts, the best trial, and (with `artifacts`) the trials table and Optuna's plots."""
    mlflow.log_metrics({f"trials_{state}": float(n) for state, n in counts.items()})
    if best is not None:
        mlflow.log_metrics({"best_trial_number": float(best.number), f"best_{OPTIMIZED_METRIC}": best.value})
        mlflow.log_params({f"best_{name}": value for name, value in best.params.items()})
    if not artifacts:
        return
    if counts["finished"]:
        try_artifact("trials.csv", lambda: mlflow.log_text(study.trials_dataframe().to_csv(index=False), "trials.csv"))
    log_plots(study, counts["complete"])


def try_artifact(name: str, write: Callable[[], object]) -> None:
    """Write one artifact; a failure (disk full, unwritable store) is a warning, never a lost study result."""
    try:
        write()
    except Exception as err:  # the metrics are already stored; only this file is missing
        log.warning("could not log %s: %s: %s", name, type(err).__name__, err)


def log_plots(study: optuna.Study, n_complete: int) -> None:
    """Optuna's plots as PNG artifacts; a plot that fails is a warning, never a failed study."""
    from optuna.visualization import matplotlib as ovm

    plots = {
        "optimization_history": ovm.plot_optimization_history,
        "parallel_coordinate": ovm.plot_parallel_coordinate,
        "intermediate_values": ovm.plot_intermediate_values,
    }
    if n_complete >= 2:
        plots["param_importances"] = ovm.plot_param_importances
    if n_complete == 0:
        plots = {"intermediate_values": ovm.plot_intermediate_values}
    for name, plot in plots.items():
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
            # Importance estimates on few trials warn per parameter; the plot still says what it can.
            warnings.filterwarnings("ignore", "Some regimes for parameter", UserWarning)
            warnings.filterwarnings("ignore", "Attempting to set identical low and high ylims", UserWarning)
            try:
                log_figure(plot(study).figure, f"plots/{name}.png")
            except Exception as err:
                log.warning("could not log plot %s: %s: %s", name, type(err).__name__, err)


def log_figure(figure: plt.Figure, path: str) -> None:
    """Save a matplotlib figure as an artifact of the active run and free it."""
    try:
        figure.tight_layout()
        mlflow.log_figure(figure, path)
    finally:
        plt.close(figure)


def log_test_results(test: Evaluation, confusion: torch.Tensor) -> None:
    """On the parent run: test loss and accuracy, per-class accuracy, and the confusion matrix as a PNG."""
    per_class = (confusion.diag() / confusion.sum(dim=1).clamp(min=1)).tolist()
    metrics = {TEST_ACCURACY: test.accuracy, TEST_LOSS: test.loss}
    metrics.update(
        {f"{CLASS_ACCURACY_PREFIX}/{n.replace('/', '_')}": a for n, a in zip(CLASS_NAMES, per_class, strict=True)}
    )
    mlflow.log_metrics(metrics)
    log_figure(confusion_figure(confusion), "confusion_matrix.png")


def confusion_figure(confusion: torch.Tensor) -> plt.Figure:
    """A labelled confusion-matrix heat map (rows: true class, columns: predicted)."""
    figure, ax = plt.subplots(figsize=(8, 7))
    ax.imshow(confusion.numpy(), cmap="Blues")
    ticks = range(len(CLASS_NAMES))
    ax.set_xticks(ticks, CLASS_NAMES, rotation=45, ha="right")
    ax.set_yticks(ticks, CLASS_NAMES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = confusion.max().item() / 2
    for i, row in enumerate(confusion.tolist()):
        for j, count in enumerate(row):
            ax.text(j, i, str(count), ha="center", va="center", color="white" if count > threshold else "black")
    ax.set_title("Test-set confusion matrix")
    return figure
