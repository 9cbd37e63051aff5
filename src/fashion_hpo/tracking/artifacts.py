"""What a study leaves on its parent run besides trials: counts, the best trial, trials.csv, Optuna's plots, and
the final model's test results with its confusion matrix; the datasets it used, and its description."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # plots are files for MLflow, never windows


import matplotlib.pyplot as plt
import mlflow
import optuna
import torch
from mlflow.data.dataset import Dataset
from mlflow.data.numpy_dataset import from_numpy
from mlflow.data.sources import LocalArtifactDatasetSource  # type: ignore[attr-defined]  # defined at import
from optuna.trial import FrozenTrial

from fashion_hpo.core.constants import (
    CLASS_ACCURACY_PREFIX,
    OPTIMIZED_METRIC,
    TEST_ACCURACY,
    TEST_LOSS,
)
from fashion_hpo.core.process import racing
from fashion_hpo.core.settings import RunSettings
from fashion_hpo.data.raw import RAW_FILES, raw_dir
from fashion_hpo.data.splits import FashionData, Split
from fashion_hpo.model.architectures import CLASS_NAMES
from fashion_hpo.search.trials import trial_accuracy
from fashion_hpo.tracking.disk import artifact_failure
from fashion_hpo.tracking.plots import log_figure, log_plots
from fashion_hpo.training.loop import Evaluation

log = logging.getLogger(__name__)

# MLflow's dataset contexts (the input tag mlflow.data.context) for what a run trains on, selects on, tests on.
TRAINING, VALIDATION, TEST = "training", "validation", "test"

TRAIN_IMAGES, TEST_IMAGES = RAW_FILES[0], RAW_FILES[2]


@dataclass(frozen=True)
class SplitInput:
    """A split as an MLflow dataset input of a run: the dataset (name, digest, source, profile) and its context."""

    dataset: Dataset
    context: str


def split_input(split: Split, name: str, source: Path, context: str) -> SplitInput:
    """MLflow's numpy dataset of a split (it computes the digest and profile), sourced at the raw IDX file."""
    dataset = from_numpy(
        split.images.cpu().numpy(),
        source=LocalArtifactDatasetSource(str(source.resolve())),
        targets=split.labels.cpu().numpy(),
        name=name,
    )
    return SplitInput(dataset, context)


def search_inputs(data: FashionData, settings: RunSettings) -> list[SplitInput]:
    """What the trials train on (the first --max-train-samples of the train split) and are selected on."""
    source = raw_dir(settings.data_dir) / TRAIN_IMAGES
    return [
        split_input(data.train.head(settings.max_train_samples), "fashion-mnist-train", source, TRAINING),
        split_input(data.val, "fashion-mnist-validation", source, VALIDATION),
    ]


def refit_inputs(data: FashionData, settings: RunSettings) -> tuple[SplitInput, SplitInput]:
    """What the best configuration is refit on (all 60,000 training images) and tested on, once."""
    folder = raw_dir(settings.data_dir)
    return (
        split_input(data.full_train, "fashion-mnist-train-full", folder / TRAIN_IMAGES, TRAINING),
        split_input(data.test, "fashion-mnist-test", folder / TEST_IMAGES, TEST),
    )


def log_inputs(inputs: Sequence[SplitInput]) -> None:
    """Log the splits as dataset inputs of the active run (the runs table's Dataset column and filter); workers
    started together log the same new dataset at once (`racing`)."""
    datasets: list[Dataset | None] = [i.dataset for i in inputs]
    contexts: list[str | None] = [i.context for i in inputs]
    racing(lambda: mlflow.log_inputs(datasets, contexts=contexts, tags_list=[None] * len(inputs)))


def log_study_summary(
    study: optuna.Study, counts: dict[str, int], best: FrozenTrial | None, artifacts: bool = True
) -> None:
    """On the parent run: trial counts, the best trial, and (with `artifacts`) the trials table and Optuna's plots."""
    mlflow.log_metrics({f"trials_{state}": float(n) for state, n in counts.items()})
    if best is not None:
        best_value = trial_accuracy(best)
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
        log.warning("could not log %s: %s", name, artifact_failure(err, mlflow.get_artifact_uri()))


def log_test_results(test: Evaluation, confusion: torch.Tensor, model_id: str, dataset: Dataset) -> None:
    """On the parent run and its logged model `model_id` (the Models tab, the model version page), measured on
    `dataset`: test loss and accuracy, per-class accuracy; and the confusion matrix as a PNG."""
    per_class = (confusion.diag() / confusion.sum(dim=1).clamp(min=1)).tolist()
    metrics = {TEST_ACCURACY: test.accuracy, TEST_LOSS: test.loss}
    metrics.update(
        {f"{CLASS_ACCURACY_PREFIX}/{n.replace('/', '_')}": a for n, a in zip(CLASS_NAMES, per_class, strict=True)}
    )
    mlflow.log_metrics(metrics, model_id=model_id, dataset=dataset)
    log_figure(confusion_figure(confusion), "confusion_matrix.png")


def confusion_figure(confusion: torch.Tensor) -> plt.Figure:
    """A labelled confusion-matrix heat map (rows: true class, columns: predicted)."""
    figure, ax = plt.subplots(figsize=(8, 7), layout="constrained")
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
