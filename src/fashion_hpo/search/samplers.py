"""The `--sampler` and `--pruner` choices, seeded per trial so that workers of one study draw apart."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from fashion_hpo.core.quiet import experimental_features
from fashion_hpo.core.seeding import trial_seed
from fashion_hpo.core.settings import (
    PRUNERS,
    SAMPLERS,
)


def make_sampler(name: str, seed: int, startup_trials: int) -> optuna.samplers.BaseSampler:
    """The `--sampler` choice, seeded (TPE after `startup_trials` random ones); an unknown name raises ValueError."""
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, warn_independent_sampling=False)
    if name == "tpe":
        # constant_liar: a worker treats other workers' running trials as bad, so it does not sample next to them.
        with experimental_features():
            return optuna.samplers.TPESampler(n_startup_trials=startup_trials, seed=seed, constant_liar=True)
    raise ValueError(f"unknown sampler {name!r}; expected one of {', '.join(SAMPLERS)}")


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """The `--sampler` choice, created anew for every trial with a seed made of `--seed` and the trial number.

    Workers of one study would all draw the same parameters from samplers seeded alike; trial numbers are unique
    across workers, so this keeps them apart while a one-worker study stays reproducible."""

    def __init__(self, name: str, seed: int, startup_trials: int) -> None:
        self.name, self.seed, self.startup_trials = name, seed, startup_trials
        self.inner = make_sampler(name, seed, startup_trials)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Seed this trial's sampler."""
        self.inner = make_sampler(self.name, trial_seed(self.seed, trial.number), self.startup_trials)
        self.inner.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        """Delegated."""
        return self.inner.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        """Delegated."""
        return self.inner.sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        """Delegated."""
        return self.inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        """Delegated."""
        self.inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        """Delegated."""
        self.inner.reseed_rng()


def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    """The `--pruner` choice, with epochs as the resource; an unknown name raises ValueError."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs)
    if name == "successive-halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"unknown pruner {name!r}; expected one of {', '.join(PRUNERS)}")
