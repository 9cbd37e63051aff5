"""The Optuna objective: sample a config, check its size, train it, report validation accuracy each epoch, prune,
then measure what the trained model costs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import optuna

from fashion_hpo.core.constants import LATENCY_MS, N_PARAMS, OPTIMIZED_METRIC
from fashion_hpo.core.limits import CostLimits
from fashion_hpo.core.seeding import trial_seed
from fashion_hpo.core.settings import RunSettings
from fashion_hpo.data.splits import FashionData
from fashion_hpo.model.architectures import TrialConfig, build_model
from fashion_hpo.search.space import suggest_config
from fashion_hpo.storage.rdb import retry_history
from fashion_hpo.training.checkpoint import (
    RESUMED_FROM_EPOCH,
    EpochCheckpoint,
    checkpoint_folder,
    find_saved,
    remove_checkpoints,
    training_key,
    trial_checkpoint,
)
from fashion_hpo.training.costs import ModelCosts, count_params, measure_costs
from fashion_hpo.training.loop import EpochResult, NonFiniteLossError, build_and_fit

EpochReporter = Callable[[optuna.Trial, EpochResult], None]
CostReporter = Callable[[optuna.Trial, ModelCosts], None]
Objective = Callable[[optuna.Trial], float | Sequence[float]]
NON_FINITE_LOSS = "non_finite_loss"
OVER_MAX_PARAMS = "over_max_params"


def make_objective(
    data: FashionData,
    settings: RunSettings,
    report: EpochReporter | None = None,
    report_costs: CostReporter | None = None,
) -> Objective:
    """An objective that trains the settings' model kind for its epochs on the first `max_train_samples` of the
    train split, on the data's device, and returns the last validation accuracy, followed by the trained model's
    other objectives' costs in a multi-objective study; `report` hears each epoch, `report_costs` the costs.

    Trials are pruned (with Optuna's pruner) only in a single-objective study: Optuna does not prune the others.
    Each trial saves its state after every epoch; a retry of a trial whose worker died resumes from it."""
    kind, epochs, seed, limits = settings.model, settings.epochs, settings.seed, settings.limits
    objectives = settings.objective_names
    train = data.train.head(settings.max_train_samples)
    prune = len(objectives) == 1
    folder = study_checkpoints(settings)

    def objective(trial: optuna.Trial) -> float | Sequence[float]:
        trial.set_user_attr("model", kind)
        config = suggest_config(trial, kind)
        reject_if_too_large(trial, config, limits)

        def on_epoch(result: EpochResult) -> None:
            if report is not None:
                report(trial, result)
            if prune:
                trial.report(result.val.accuracy, result.epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned after epoch {result.epoch}")

        checkpoint, earlier = trial_checkpoint_of(trial, folder, training_key(config, epochs, len(train)))
        try:
            seeded = trial_seed(seed, trial.number)  # a resumed trial's weights and order come from its checkpoint
            fitted = build_and_fit(config, train, data.val, epochs, seeded, on_epoch, checkpoint)
            costs = record_costs(trial, measure_costs(fitted.model), limits, report_costs)
        except NonFiniteLossError as err:
            # Pruned rather than failed, so the sampler still learns that this region diverges.
            trial.set_user_attr("fail_reason", NON_FINITE_LOSS)
            raise optuna.TrialPruned(str(err)) from err
        finally:  # the trial ended here, however: no retry will look for these (a killed worker never gets here)
            remove_checkpoints([checkpoint.path, *earlier])
        values = {OPTIMIZED_METRIC: fitted.history[-1].val.accuracy, **costs.as_metrics()}
        return values[OPTIMIZED_METRIC] if prune else [values[name] for name in objectives]

    return objective


def study_checkpoints(settings: RunSettings) -> Path:
    """The folder of the study's trial checkpoints: --checkpoint-dir, else <data-dir>/checkpoints."""
    root = Path(settings.checkpoint_dir) if settings.checkpoint_dir else settings.data_dir / "checkpoints"
    return checkpoint_folder(root, settings.study_name, settings.storage)


def trial_checkpoint_of(trial: optuna.Trial, folder: Path, key: str) -> tuple[EpochCheckpoint, list[Path]]:
    """The running trial's checkpoint, holding the saved state of the newest trial it retries that left one here,
    and the checkpoint paths of those trials; a retry records how many epochs it resumes from (0: none found).

    The stored trial is read once for the retry's attributes, as tracking/trials.py `running_trial` reads it."""
    retried = retry_history(trial.storage.get_trial(trial._trial_id))
    earlier = [trial_checkpoint(folder, number) for number in reversed(retried)]
    saved = find_saved(earlier, key)
    if retried:
        trial.set_user_attr(RESUMED_FROM_EPOCH, saved.epoch if saved is not None else 0)
    return EpochCheckpoint(trial_checkpoint(folder, trial.number), key, saved), earlier


def reject_if_too_large(trial: optuna.Trial, config: TrialConfig, limits: CostLimits) -> None:
    """Record the configuration's parameter count; over `--max-params`, prune it before it trains an epoch."""
    n_params = count_params(build_model(config.model))
    trial.set_user_attr(N_PARAMS, n_params)
    excess = limits.excess(N_PARAMS, n_params)
    if excess is None:
        return
    trial.set_constraint(N_PARAMS, excess)  # the sampler learns the feasible region from it
    if excess > 0:
        trial.set_user_attr("fail_reason", OVER_MAX_PARAMS)
        raise optuna.TrialPruned(f"{n_params} parameters > --max-params {limits.max_params}")


def record_costs(
    trial: optuna.Trial, costs: ModelCosts, limits: CostLimits, report_costs: CostReporter | None
) -> ModelCosts:
    """Keep the trained model's costs on the trial (and its run), with the latency constraint when one is set."""
    for name, value in asdict(costs).items():
        trial.set_user_attr(name, value)
    excess = limits.excess(LATENCY_MS, costs.latency_ms)
    if excess is not None:
        trial.set_constraint(LATENCY_MS, excess)
    if report_costs is not None:
        report_costs(trial, costs)
    return costs
