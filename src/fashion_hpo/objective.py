"""The Optuna objective: sample a config, train it, report validation accuracy each epoch, prune."""

from __future__ import annotations

from collections.abc import Callable

import optuna

from fashion_hpo.data import FashionData
from fashion_hpo.search_space import suggest_config
from fashion_hpo.seeding import trial_seed
from fashion_hpo.training import EpochResult, NonFiniteLossError, build_and_fit

EpochReporter = Callable[[optuna.Trial, EpochResult], None]
NON_FINITE_LOSS = "non_finite_loss"


def make_objective(
    data: FashionData,
    kind: str,
    epochs: int,
    seed: int,
    max_train_samples: int = 0,
    report: EpochReporter | None = None,
) -> Callable[[optuna.Trial], float]:
    """An objective that trains on (a subset of) the train split, on the data's device, and returns the last
    validation accuracy."""
    train = data.train.head(max_train_samples)

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("model", kind)
        config = suggest_config(trial, kind)

        def on_epoch(result: EpochResult) -> None:
            if report is not None:
                report(trial, result)
            trial.report(result.val.accuracy, result.epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {result.epoch}")

        try:
            history = build_and_fit(config, train, data.val, epochs, trial_seed(seed, trial.number), on_epoch).history
        except NonFiniteLossError as err:
            # Pruned rather than failed, so the sampler still learns that this region diverges.
            trial.set_user_attr("fail_reason", NON_FINITE_LOSS)
            raise optuna.TrialPruned(str(err)) from err
        return history[-1].val.accuracy

    return objective
