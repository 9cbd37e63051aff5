"""What a study leaves on its parent run besides trials: counts, the best trial, trials.csv, Optuna's plots, and
the final model's test results with its confusion matrix."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any, cast

import matplotlib

matplotlib.use("Agg")  # plots are files for MLflow, never windows

import matplotlib.pyplot as plt
import mlflow
import optuna
import torch
from optuna.trial import FrozenTrial

from fashion_hpo.constants import (
    CLASS_ACCURACY_PREFIX,
    CLASS_NAMES,
    OPTIMIZED_METRIC,
    TEST_ACCURACY,
    TEST_LOSS,
)
from fashion_hpo.training import Evaluation

log = logging.getLogger(__name__)


def log_study_summary(
    study: optuna.Study, counts: dict[str, int], best: FrozenTrial | None, artifacts: bool = True
) -> None:
    """On the parent run: trial counts, the best trial, and (with `artifacts`) the trials table and Optuna's plots."""
    mlflow.log_metrics({f"trials_{state}": float(n) for state, n in counts.items()})
    if best is not None:
        best_value = cast(float, best.value)  # a complete trial has its value
        mlflow.log_metrics({"best_trial_number": float(best.number), f"best_{OPTIMIZED_METRIC}": best_value})
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

    plots: dict[str, Callable[[optuna.Study], Any]] = {
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
