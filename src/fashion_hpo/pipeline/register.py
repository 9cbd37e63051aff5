"""The last steps of a study, and all of `fashion-hpo register`: refit the best trial on all 60,000 training images,
test it once, log it and register it."""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace

import mlflow
import torch
from mlflow.entities.model_registry import ModelVersion
from optuna.trial import FrozenTrial

from fashion_hpo.core.constants import (
    CHAMPION_ALIAS,
    FLOPS,
    LATENCY_MS,
    N_PARAMS,
)
from fashion_hpo.core.seeding import trial_seed
from fashion_hpo.core.settings import REFIT_EPOCHS_FACTOR, RunSettings
from fashion_hpo.data.splits import FashionData, Split, load_data, scaled
from fashion_hpo.model.architectures import ModelConfig
from fashion_hpo.pipeline.guards import closing_link, stop_on_tracking_outage
from fashion_hpo.pipeline.progress import RefitProgress
from fashion_hpo.pipeline.summary import Registration, describe, no_best_reason
from fashion_hpo.registry.predict import predict_frame
from fashion_hpo.registry.significance import PairedComparison
from fashion_hpo.registry.versions import ModelCard, find_version, log_model, promote, register
from fashion_hpo.search.space import config_from_params
from fashion_hpo.search.study import load_existing_study, with_study_setup
from fashion_hpo.search.trials import best_trial, pareto_front, trial_accuracy, trial_counts
from fashion_hpo.tracking.artifacts import (
    log_inputs,
    log_test_results,
    refit_inputs,
)
from fashion_hpo.tracking.metrics import log_refit_epoch
from fashion_hpo.tracking.runs import (
    check_tracking_store,
    parent_run,
)
from fashion_hpo.training.loop import (
    EpochResult,
    Evaluation,
    build_and_fit,
    confusion_matrix,
    evaluate,
    predict_logits,
)


@dataclass(frozen=True)
class FinalModel:
    """The refit best configuration and its one test-set evaluation."""

    model: torch.nn.Module
    architecture: ModelConfig
    test: Evaluation
    confusion: torch.Tensor


def refit_epochs(best: FrozenTrial, settings: RunSettings) -> int:
    """`--refit-epochs`, or by default REFIT_EPOCHS_FACTOR times the epochs the best trial trained."""
    return settings.refit_epochs or REFIT_EPOCHS_FACTOR * max(best.intermediate_values, default=settings.epochs)


def refit_and_test(data: FashionData, best: FrozenTrial, settings: RunSettings, epochs: int) -> FinalModel:
    """Retrain the best trial's config (same seed) on all 60,000 training images for `epochs`, then test it once;
    each epoch is shown on the console and logged on the active run."""
    config = config_from_params(best.params, best.user_attrs.get("model", settings.model))
    trained = max(best.intermediate_values, default=settings.epochs)
    print(f"Refit trial #{best.number} on {len(data.full_train):,} images for {epochs} epochs (it trained {trained})")
    progress = RefitProgress(settings, epochs)

    def on_epoch(result: EpochResult) -> None:
        log_refit_epoch(result)
        progress(result)

    try:
        seed = trial_seed(settings.seed, best.number)
        model = build_and_fit(config, data.full_train, None, epochs, seed, on_epoch).model
    finally:
        progress.close()
    return FinalModel(model, config.model, evaluate(model, data.test), confusion_matrix(model, data.test))


def register_best(
    data: Callable[[], FashionData], best: FrozenTrial, settings: RunSettings, run_id: str
) -> Registration:
    """Refit, test once, log and register the best trial, then promote it; a trial registered before is reused.

    `data` is called only when there is something to refit, so re-registering a known trial loads nothing."""
    kind = best.user_attrs.get("model", settings.model)
    costs = {name: float(best.user_attrs[name]) for name in (N_PARAMS, FLOPS, LATENCY_MS) if name in best.user_attrs}
    card = ModelCard(
        settings.study_name,
        best.number,
        kind,
        trial_accuracy(best),
        math.nan,
        best.params,
        costs,
        settings.limits.describe(),
    )
    existing = find_version(settings.registered_model_name, card)
    if existing is not None:
        reason = f"trial {best.number} is already registered as version {existing.version}; nothing new to register"
        mlflow.set_tags({"registered_version": existing.version, "promotion": reason})
        return Registration(existing, ", ".join(existing.aliases) or "none", reason, None)
    splits = data()
    training, test = refit_inputs(splits, settings)
    log_inputs([training, test])
    epochs = refit_epochs(best, settings)
    mlflow.set_tag("refit_epochs", epochs)
    final = refit_and_test(splits, best, settings, epochs)
    card = replace(card, test_accuracy=final.test.accuracy)
    info = log_model(final.model, final.architecture, scaled(splits.test.images[:4]).cpu().numpy(), card)
    log_test_results(final.test, final.confusion, info.model_id, test.dataset)
    version = register(info.model_uri, settings.registered_model_name, card, run_id)
    compare = functools.partial(paired_with, final.model, splits.test)
    alias, reason = promote(
        version, final.test.accuracy, settings.promote, settings.limits, compare, settings.significance
    )
    mlflow.set_tags({"registered_version": version.version, "alias": alias, "promotion": reason})
    return Registration(version, alias, reason, final.test)


def paired_with(model: torch.nn.Module, test: Split, champion: ModelVersion) -> PairedComparison:
    """How the refit model and the champion version did on the same test images (the champion loaded as any user
    loads it, through its pyfunc)."""
    import mlflow.pyfunc

    new_right = (predict_logits(model, test.images).argmax(dim=1) == test.labels).cpu().numpy()
    loaded = mlflow.pyfunc.load_model(f"models:/{champion.name}/{champion.version}")
    predicted = predict_frame(loaded, scaled(test.images).cpu().numpy())["class_index"].to_numpy()
    return PairedComparison.of(new_right, predicted == test.labels.cpu().numpy())


def print_registration(registration: Registration) -> None:
    """The test result and where the model is, with why it has its alias."""
    version = registration.version
    if registration.test is not None:
        test = registration.test
        print(f"Test accuracy of the refit best model: {test.accuracy:.4f} (loss {test.loss:.4f})")
    print(f"Registered: models:/{version.name}/{version.version} (alias @{registration.alias}: {registration.reason})")
    print(f"Load it with mlflow.pyfunc.load_model('models:/{version.name}@{CHAMPION_ALIAS}')")


def run_register(settings: RunSettings, device: torch.device) -> int:
    """Refit and register the best trial of an existing study, without searching; returns the exit code."""
    check_tracking_store()
    study = load_existing_study(settings)
    settings = with_study_setup(settings, study)
    best = best_trial(study, settings.limits)
    if best is None:
        print(
            f"Study {settings.study_name!r}: {no_best_reason(study, settings)}; nothing to register.", file=sys.stderr
        )
        return 1
    with (
        stop_on_tracking_outage(),
        parent_run(settings, run_name=f"register-{settings.study_name}") as run_id,
        closing_link(settings),
    ):
        registration = register_best(
            lambda: load_data(settings.data_dir, settings.seed, device), best, settings, run_id
        )
        describe(settings, trial_counts(study), best, pareto_front(study, settings.limits), registration, plots=False)
        print_registration(registration)
    return 0
