"""A trial's per-epoch metrics and costs, batched into few requests to the tracking server."""

from __future__ import annotations

import time

import mlflow
import optuna
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from fashion_hpo.core.constants import (
    EPOCH_SECONDS,
    REFIT_EPOCH_SECONDS,
    REFIT_TRAIN_LOSS,
    TRAIN_LOSS,
    VAL_ACCURACY,
    VAL_LOSS,
)
from fashion_hpo.training.costs import ModelCosts
from fashion_hpo.training.loop import EpochResult

# Epoch metrics go to the trial's run in one request once this many seconds have passed since the last (live curves
# in the UI); the rest with the callback's batch: a request per epoch was the biggest fixed cost of a short trial.
FLUSH_SECONDS = 1.0


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


def log_refit_epoch(result: EpochResult) -> None:
    """One refit epoch's training loss and seconds on the active run (the study's), step = epoch: the refit's
    curve in the UI. A request per epoch: refit epochs take seconds each."""
    mlflow.log_metrics({REFIT_TRAIN_LOSS: result.train_loss, REFIT_EPOCH_SECONDS: result.seconds}, step=result.epoch)
