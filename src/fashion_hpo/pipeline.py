"""The study pipeline: load data once, search with tracking, refit the best trial, test it once, register it."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import mlflow
import torch
from mlflow.entities.model_registry import ModelVersion
from optuna.trial import FrozenTrial

from fashion_hpo.constants import CHAMPION_ALIAS, OPTIMIZED_METRIC
from fashion_hpo.data import FashionData, load_data
from fashion_hpo.models import build_model
from fashion_hpo.objective import make_objective, trial_seed
from fashion_hpo.registry import ModelCard, log_model, register
from fashion_hpo.search_space import config_from_params
from fashion_hpo.settings import RunSettings, redact_url
from fashion_hpo.study import best_trial, open_study, run_search, trial_counts
from fashion_hpo.tracking import log_epoch, log_study_summary, log_test_results, parent_run, tracked_objective
from fashion_hpo.training import Evaluation, confusion_matrix, evaluate, fit


@dataclass(frozen=True)
class FinalModel:
    """The refit best configuration and its one test-set evaluation."""

    model: torch.nn.Module
    test: Evaluation
    confusion: torch.Tensor


def refit_and_test(data: FashionData, best: FrozenTrial, settings: RunSettings, device: torch.device) -> FinalModel:
    """Retrain the best trial's config on all 60,000 training images, then evaluate once on the test set."""
    config = config_from_params(best.params, settings.model)
    epochs = max(best.intermediate_values, default=settings.epochs)
    torch.manual_seed(trial_seed(settings.seed, best.number))
    model = build_model(config.model).to(device)
    fit(model, config, data.full_train, None, epochs, trial_seed(settings.seed, best.number))
    return FinalModel(model, evaluate(model, data.test), confusion_matrix(model, data.test))


def publish(
    final: FinalModel, data: FashionData, best: FrozenTrial, settings: RunSettings, run_id: str
) -> ModelVersion:
    """Log test results and the model on the parent run, and register it as the champion."""
    log_test_results(final.test, final.confusion)
    card = ModelCard(settings.study_name, best.number, settings.model, best.value, final.test.accuracy)
    info = log_model(final.model, data.test.images[:4].cpu().numpy(), card)
    return register(info.model_uri, settings.registered_model_name, card, run_id)


def print_summary(counts: dict[str, int], best: FrozenTrial | None, settings: RunSettings) -> None:
    """The seed notebook's summary: trial counts, then the best trial's value and params."""
    print(f"\nStudy {settings.study_name!r} statistics:")
    for label in ("finished", "pruned", "complete", "failed"):
        print(f"  Number of {label} trials: {counts[label]}")
    if best is None:
        return
    print(f"Best trial: #{best.number}\n  Value ({OPTIMIZED_METRIC}): {best.value:.4f}\n  Params:")
    for name, value in best.params.items():
        print(f"    {name}: {value}")


def run_study(settings: RunSettings, device: torch.device) -> int:
    """Search, track, refit, test and register; returns the exit code."""
    data = load_data(settings.data_dir, settings.seed, device)
    study = open_study(settings)
    with parent_run(settings) as run_id:
        objective = make_objective(
            data,
            settings.model,
            settings.epochs,
            settings.seed,
            device,
            settings.max_train_samples,
            log_epoch,
        )
        tracked, tracker = tracked_objective(objective, settings)
        run_search(study, tracked, settings, callbacks=[tracker])
        counts, best = trial_counts(study), best_trial(study)
        log_study_summary(study, counts, best)
        print_summary(counts, best, settings)
        if best is None:
            print("No trial completed, so no model was registered.", file=sys.stderr)
            return 1
        final = refit_and_test(data, best, settings, device)
        version = publish(final, data, best, settings, run_id)
    print(f"Test accuracy of the refit best model: {final.test.accuracy:.4f} (loss {final.test.loss:.4f})")
    print(f"Registered: models:/{version.name}/{version.version} (alias: models:/{version.name}@{CHAMPION_ALIAS})")
    print(f"Compare the trials: mlflow ui --backend-store-uri {redact_url(mlflow.get_tracking_uri())}")
    return 0
